"""`testbed bench`: measured figures with baselines, ratios and targets (see framework.py).

Sections register themselves on ``REGISTRY`` when their module is imported; ``load_sections()``
imports them all, in the order they print. A new section: a module here with a function decorated
``@REGISTRY.register("name", "what it measures")`` returning a ``SectionResult``, and its module
name added to ``SECTION_MODULES``.
"""

from __future__ import annotations

import importlib

from .framework import (BenchContext, BenchError, Figure, Registry, SectionResult, Target, format_table,
                        has_errors, machine_info, run_sections, summarize_runs)

# Order is the order sections run and print in.
SECTION_MODULES = ("rx", "nas", "writeback", "recovery", "memory", "scale", "demo", "capacity", "rx_tcp", "rx_inproc",
                   "wb_inproc")
REGISTRY = Registry(order=SECTION_MODULES)


def load_sections() -> Registry:
    for mod in SECTION_MODULES:
        importlib.import_module(f"testbed.bench.{mod}")
    return REGISTRY


__all__ = ["REGISTRY", "load_sections", "BenchContext", "BenchError", "Figure", "Registry", "SectionResult",
           "Target", "format_table", "has_errors", "machine_info", "run_sections", "summarize_runs"]
