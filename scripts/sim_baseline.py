"""Record (or check) the deterministic simulation's results of every built-in scenario, seeds 1-5.

    .venv/bin/python scripts/sim_baseline.py --write   # rewrite tests/data/sim_baseline.json
    .venv/bin/python scripts/sim_baseline.py           # compare today's code with the fixture

The fixture is the "behaviour unchanged" yardstick of the agent reshape (issue 13): every field of
``testbed.sim.run_sim``'s result except the per-sample timeline and the transport's log lines, which
are kept as SHA-256 digests (a change anywhere in them changes the digest). Fields may be added to the
result later; the comparison reads only the fixture's fields.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "data" / "sim_baseline.json"
SEEDS = (1, 2, 3, 4, 5)
DIGESTED = ("timeline", "logs")


def names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "scenarios").glob("*.toml"))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def summarise(result: dict) -> dict:
    """The result as JSON-comparable data: lists for tuples, digests for the long series."""
    out = {k: v for k, v in result.items() if k not in DIGESTED}
    for k in DIGESTED:
        out[k + "_sha256"] = digest(result[k])
        out[k + "_len"] = len(result[k])
    return json.loads(json.dumps(out, sort_keys=True))


def record(name: str, seed: int) -> dict:
    from testbed import scenario as S
    from testbed.sim import run_sim
    return summarise(run_sim(S.load(name).to_dict(), seed))


def diff(old, new, path="") -> list[str]:
    """Every place ``new`` differs from ``old``, reading only ``old``'s keys."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in old:
            if k not in new:
                out.append(f"{path}.{k}: missing")
            else:
                out += diff(old[k], new[k], f"{path}.{k}")
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.monotonic()
    results = {}
    for name in names():
        for seed in SEEDS:
            t = time.monotonic()
            results[f"{name}/{seed}"] = record(name, seed)
            print(f"{name} seed {seed}: {results[f'{name}/{seed}']['outcome']} "
                  f"({time.monotonic() - t:.1f} s)", file=sys.stderr)
    print(f"{len(results)} runs in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if "--write" in argv:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(results, sort_keys=True, indent=1) + "\n")
        return 0
    old = json.loads(FIXTURE.read_text())
    bad = [f"{k}{d}" for k in old for d in diff(old[k], results.get(k, {}))]
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
