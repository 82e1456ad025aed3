"""`testbed bench` framework: figures, targets, sections, the JSON document and the table.

Invariants owned here:
- A figure is a measurement, never a pass/fail test: ``met`` says whether it reached its target,
  and a missed target never makes ``testbed bench`` fail (exit 0). Only an error -- a section that
  could not measure -- gives a non-zero exit, and the section's entry then carries ``"error"``.
- Every figure serialises to exactly ``{"name", "value", "unit", "baseline", "ratio", "target",
  "met"}`` plus an optional ``"notes"``; ``ratio = value / baseline`` whenever both are numbers and
  the baseline is not zero, else null. A figure with ``invalid=True`` (the kernel dropped frames,
  the receiver overflowed...) has ``met = false`` and says why in ``notes``, whatever its value.
- Numbers are rounded when a figure is made: value and baseline to ``VALUE_DIGITS`` significant
  digits, the ratio to ``RATIO_DIGITS`` (``met`` is checked on the rounded numbers, so a reader of
  the JSON reaches the same verdict), so the JSON shows ``70.71``, never ``70.71000000000001``.
- ``target`` is a string a reader and a program can both check: ``"<on> <op> <bound>"`` with
  ``<on>`` in ``value | ratio`` and ``<op>`` in ``<= | >= | ==`` (e.g. ``"ratio <= 1.4"``).

The document (schema_version 1)::

    {"schema_version": 1, "machine": {...}, "quick": bool,
     "sections": {NAME: {"figures": [...], "params": {...}, "duration_s": float, ["error": str]}}}
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

SCHEMA_VERSION = 1
FIGURE_KEYS = ("name", "value", "unit", "baseline", "ratio", "target", "met")
VALUE_DIGITS = 6   # significant digits kept of a figure's value and baseline (sections may round more)
RATIO_DIGITS = 4   # ... and of its ratio
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b,
}


from testbed.rig_errors import RigError  # noqa: E402  (the rig's one-line errors end a section too)


class BenchError(Exception):
    """A section could not measure (not a missed target). One line: what, with which values, fix."""


@dataclass(frozen=True)
class Target:
    on: str      # "value" or "ratio"
    op: str      # "<=", ">=", "=="
    bound: float

    def __post_init__(self) -> None:
        if self.on not in ("value", "ratio") or self.op not in _OPS:
            raise ValueError(f"target {self.on!r} {self.op!r}: use on=value|ratio and op in {sorted(_OPS)}")

    @classmethod
    def parse(cls, text: str) -> "Target":
        try:
            on, op, bound = text.split()
            return cls(on, op, float(bound))
        except ValueError:
            raise ValueError(f"target {text!r} is not '<value|ratio> <op> <number>', e.g. 'ratio <= 1.4'") from None

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        x = value if self.on == "value" else ratio
        if not _is_number(x):
            return None
        return _OPS[self.op](float(x), self.bound)

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.bound:g}"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Figure:
    name: str
    value: float | int | None
    unit: str
    baseline: float | int | None = None
    target: Target | str | None = None
    notes: str | None = None
    invalid: bool = False   # the measurement itself is not trustworthy: met is forced false

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            self.target = Target.parse(self.target)
        self.value, self.baseline = round_sig(self.value, VALUE_DIGITS), round_sig(self.baseline, VALUE_DIGITS)

    @property
    def ratio(self) -> float | None:
        if _is_number(self.value) and _is_number(self.baseline) and self.baseline != 0:
            return round_sig(float(self.value) / float(self.baseline), RATIO_DIGITS)
        return None

    @property
    def met(self) -> bool | None:
        if self.invalid:
            return False
        if self.target is None:
            return None
        return self.target.check(self.value, self.ratio)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "value": _clean(self.value), "unit": self.unit,
                             "baseline": _clean(self.baseline), "ratio": _clean(self.ratio),
                             "target": None if self.target is None else str(self.target), "met": self.met}
        if self.notes:
            d["notes"] = self.notes
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Figure":
        """A figure from a plain dict (sections written elsewhere, e.g. nas_server.bench)."""
        missing = [k for k in ("name", "value", "unit") if k not in d]
        if missing:
            raise BenchError(f"figure {d!r} lacks {missing}; a figure needs at least name, value, unit")
        fig = cls(d["name"], d["value"], d["unit"], d.get("baseline"), d.get("target"), d.get("notes"))
        if "met" in d and d["met"] is False and fig.met is not False:
            fig.invalid = True  # the producer judged it; keep its verdict
        return fig


def round_sig(x: Any, digits: int) -> Any:
    """A finite non-zero float rounded to ``digits`` significant digits; anything else unchanged."""
    if isinstance(x, float) and math.isfinite(x) and x != 0:
        return round(x, digits - 1 - math.floor(math.log10(abs(x))))
    return x


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class SectionResult:
    figures: list[Figure] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        fig = args[0] if args and isinstance(args[0], Figure) else Figure(*args, **kwargs)
        self.figures.append(fig)
        return fig


@dataclass
class BenchContext:
    quick: bool
    seed: int = 1
    progress: Callable[[str], None] = lambda _m: None


SectionFn = Callable[[BenchContext], SectionResult]


@dataclass(frozen=True)
class Section:
    name: str
    fn: SectionFn
    help: str
    needs_root: bool = False


class Registry:
    """Sections by name; they run and print in ``order`` (names not in it: registration order, after)."""

    def __init__(self, order: tuple[str, ...] = ()) -> None:
        self._sections: dict[str, Section] = {}
        self.order = order

    def register(self, name: str, help: str, *, needs_root: bool = False) -> Callable[[SectionFn], SectionFn]:
        def deco(fn: SectionFn) -> SectionFn:
            if name in self._sections:
                raise ValueError(f"bench section {name!r} registered twice")
            self._sections[name] = Section(name, fn, help, needs_root)
            return fn
        return deco

    def names(self) -> list[str]:
        rank = {n: i for i, n in enumerate(self.order)}
        return sorted(self._sections, key=lambda n: rank.get(n, len(rank)))

    def get(self, name: str) -> Section:
        try:
            return self._sections[name]
        except KeyError:
            raise BenchError(f"no bench section {name!r}; sections: {', '.join(self._sections) or 'none'}") from None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("pyroute2", "scapy", "psutil"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod)
        except Exception:
            versions[mod] = None
    return {"cpu_model": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "pyroute2": versions["pyroute2"], "scapy": versions["scapy"],
            "psutil": versions["psutil"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_sections(registry: Registry, names: list[str] | None, *, quick: bool, seed: int = 1,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the named sections (default: all) and return the whole document. Errors are recorded."""
    say = progress or (lambda _m: None)
    chosen = [registry.get(n) for n in (names or registry.names())]
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "machine": machine_info(), "quick": quick, "sections": {}}
    for sec in chosen:
        say(f"section {sec.name}: {sec.help}")
        t0 = time.monotonic()
        entry: dict[str, Any]
        try:
            res = sec.fn(BenchContext(quick=quick, seed=seed, progress=say))
            entry = {"figures": [f.to_json() for f in res.figures], "params": res.params}
        except (BenchError, RigError) as e:
            entry = {"figures": [], "params": {}, "error": str(e)}
        except Exception as e:  # a bug: keep the traceback in the log, the document says which section
            traceback.print_exc(file=sys.stderr)
            entry = {"figures": [], "params": {}, "error": f"{type(e).__name__}: {e}"}
        entry["duration_s"] = round(time.monotonic() - t0, 3)
        doc["sections"][sec.name] = entry
    return doc


def has_errors(doc: dict[str, Any]) -> bool:
    return any("error" in s for s in doc["sections"].values())


def _median(xs: list[float]) -> float | None:
    import statistics
    return statistics.median(xs) if xs else None


def summarize_runs(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The document of ``len(docs)`` repeated runs of the same sections: ``sections`` holds, per
    figure (matched by section and name), the median value, baseline and ratio over the runs
    that measured it, ``target`` checked on those medians, and ``runs`` (how many measured it),
    ``values``/``ratios`` (each run's, in run order; null where a run did not measure it) and
    ``spread`` (``{"value": [min, max], "ratio": [min, max]}``). A figure that any run marked
    invalid (``met`` false whatever its value) stays ``met = false`` with that run's notes; any
    other figure keeps its notes: once if every run that measured it said the same, else each
    run's as ``"run K: ..."`` joined by ``"; "`` (the median is no one run's). A
    section that failed in any run carries ``error`` ("run K: ..."). The runs' own documents
    follow under ``runs``. Raises ValueError for an empty list."""
    if not docs:
        raise ValueError("summarize_runs needs at least one run's document")
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "machine": docs[0]["machine"],
                           "quick": docs[0]["quick"], "repeat": len(docs), "sections": {}}
    names: list[str] = []
    for d in docs:
        names += [n for n in d["sections"] if n not in names]
    for sname in names:
        per_run = [d["sections"].get(sname) for d in docs]
        entry: dict[str, Any] = {"figures": [], "params": next((s["params"] for s in per_run if s), {}),
                                 "duration_s": [s and s.get("duration_s") for s in per_run]}
        errors = [f"run {k + 1}: {s['error']}" for k, s in enumerate(per_run) if s and "error" in s]
        if errors:
            entry["error"] = "; ".join(errors)
        fnames: list[str] = []
        for s in per_run:
            fnames += [f["name"] for f in (s or {}).get("figures", []) if f["name"] not in fnames]
        for fname in fnames:
            figs = [next((f for f in (s or {}).get("figures", []) if f["name"] == fname), None) for s in per_run]
            have = [f for f in figs if f is not None]
            vals = [f["value"] for f in have if _is_number(f["value"])]
            bases = [f["baseline"] for f in have if _is_number(f["baseline"])]
            ratios = [f["ratio"] for f in have if _is_number(f["ratio"])]
            fig = Figure(fname, _median(vals), have[0]["unit"], _median(bases), have[0]["target"])
            bad = [f"run {k + 1}: {f.get('notes') or 'invalid'}" for k, f in enumerate(figs)
                   if f is not None and f["met"] is False and Figure.from_dict(f).invalid]
            if bad:
                fig.invalid, fig.notes = True, "; ".join(bad)
            else:
                fig.notes = _runs_notes(figs)
            j = fig.to_json()
            # the ratio of medians is not the median of ratios; the runs' own ratios set both
            j["ratio"] = _clean(round_sig(_median(ratios), RATIO_DIGITS))
            if fig.target is not None and not bad:
                j["met"] = fig.target.check(j["value"], j["ratio"])
            j.update(runs=len(have), values=[f and f["value"] for f in figs],
                     ratios=[f and f["ratio"] for f in figs],
                     spread={"value": [min(vals), max(vals)] if vals else None,
                             "ratio": [min(ratios), max(ratios)] if ratios else None})
            entry["figures"].append(j)
        out["sections"][sname] = entry
    out["runs"] = docs
    return out


def _runs_notes(figs: list[dict[str, Any] | None]) -> str | None:
    """The notes of one figure over repeated runs (None where a run did not measure it): the
    common note if the runs that measured it agree, else ``"run K: ..."`` for each that has one."""
    said = [(k, f.get("notes")) for k, f in enumerate(figs) if f is not None]
    if len({n for _k, n in said}) == 1:
        return said[0][1]
    return "; ".join(f"run {k + 1}: {n}" for k, n in said if n) or None


# -- the table -------------------------------------------------------------------------------------
def _fmt_num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        a = abs(x)
        if a >= 1000:
            return f"{x:.0f}"
        if a >= 100:
            return f"{x:.1f}"
        if a >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    return str(x)


def format_table(doc: dict[str, Any]) -> str:
    """One row per figure: section/name, value, unit, baseline, ratio, target, met (✓/✗/–). For a
    summary of repeated runs (``summarize_runs``) value and ratio are medians, the runs' range
    in parentheses."""
    header = ("figure", "value", "unit", "baseline", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for sname, sec in doc["sections"].items():
        if "error" in sec:
            rows.append((f"{sname}: ERROR", "", "", "", "", "", "✗"))
            notes.append(f"{sname}: {sec['error']}")
        for f in sec["figures"]:
            met = {True: "✓", False: "✗", None: "–"}[f["met"]]
            ratio = "–" if f["ratio"] is None else f"{f['ratio']:.2f}×"
            value = _fmt_num(f["value"])
            spread = f.get("spread") or {}
            if spread.get("value") and f.get("runs", 1) > 1:     # a summary of repeated runs
                value += " ({}–{})".format(*map(_fmt_num, spread["value"]))
            if spread.get("ratio") and f.get("runs", 1) > 1:
                ratio += " ({:.2f}–{:.2f})".format(*spread["ratio"])
            rows.append((f"{sname}.{f['name']}", value, f["unit"], _fmt_num(f["baseline"]),
                         ratio, f["target"] or "–", met))
            if f.get("notes"):
                notes.append(f"{sname}.{f['name']}: {f['notes']}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]
    if notes:
        out.append("")
        out.extend(f"note: {n}" for n in notes)
    return "\n".join(out)
