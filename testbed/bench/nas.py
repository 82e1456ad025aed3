"""Section "nas": a thin adapter over ``nas_server.bench.run_nas_bench`` (written with the NAS).

That function returns plain figure dicts whose ``target`` is a bare number meaning "ratio >= N"
(the NAS's throughput over nfs-ganesha's, same client); this adapter turns them into ``Figure``s
(target ``"ratio >= N"``), keeps the producer's own ``met: false`` verdicts, and moves the extra keys
(``baseline_kind``, ``baseline_error``) into ``notes``. If the module is missing, the section says so
as an error rather than inventing figures.
"""

from __future__ import annotations

import inspect
from typing import Any

from . import REGISTRY
from .framework import BenchContext, BenchError, Figure, SectionResult, Target

QUICK_BYTES = 8 << 20    # per case; enough for a steady rate, seconds not minutes
FULL_BYTES = 32 << 20


def adapt_figure(d: dict[str, Any]) -> Figure:
    d = dict(d)
    target = d.get("target")
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        d["target"] = Target("ratio", ">=", float(target))
    extras = {k: v for k, v in d.items() if k not in ("name", "value", "unit", "baseline", "ratio", "target", "met", "notes") and v is not None}
    notes = [d["notes"]] if d.get("notes") else []
    notes += [f"{k}: {v}" for k, v in extras.items()]
    d["notes"] = "; ".join(notes) or None
    return Figure.from_dict(d)


@REGISTRY.register("nas", "NAS throughput with the reference client, baseline nfs-ganesha (namespaces)", needs_root=True)
def nas_section(ctx: BenchContext) -> SectionResult:
    from nas_server.bench import run_nas_bench

    kwargs: dict[str, Any] = {}
    sig = inspect.signature(run_nas_bench).parameters
    total = QUICK_BYTES if ctx.quick else FULL_BYTES
    if "total_bytes" in sig:
        kwargs["total_bytes"] = total
    if "seed" in sig:
        kwargs["seed"] = ctx.seed
    ctx.progress(f"  nas: reference client, {total >> 20} MiB per case, against nas-server then nfs-ganesha")
    try:
        raw = run_nas_bench(**kwargs)
    except (RuntimeError, OSError) as e:
        raise BenchError(f"nas bench failed: {e}") from None
    res = SectionResult(params={"total_bytes": total, "seed": ctx.seed})
    for d in raw:
        res.add(adapt_figure(d))
    return res
