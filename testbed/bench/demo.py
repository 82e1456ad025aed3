"""Section "demo": wall time of `testbed demo` (target ≤ 120 s), run as a separate process.

The demo is run exactly as a user runs it (``python -m testbed.cli demo --out <tmp>``; ``--quick``
added under ``testbed bench --quick``, said in the notes), in a child process with a time limit, so
a missing or broken demo becomes an error line for this section, never a crash of the bench. Its
report directory is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult
from testbed.rig import REPO

TARGET = "value <= 120"
FULL_LIMIT_S = 400.0
QUICK_LIMIT_S = 200.0
STOP_GRACE_S = 30.0


@REGISTRY.register("demo", "wall time of `testbed demo` (namespaces)", needs_root=True)
def demo_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section demo needs root for network namespaces; run `sudo testbed bench --section demo`")
    out = tempfile.mkdtemp(prefix="bench-demo-")
    argv = [sys.executable, "-m", "testbed.cli", "demo", "--out", os.path.join(out, "report")]
    if ctx.quick:
        argv.append("--quick")
    limit = QUICK_LIMIT_S if ctx.quick else FULL_LIMIT_S
    res = SectionResult(params={"argv": argv[1:], "time_limit_s": limit})
    ctx.progress(f"  demo: {' '.join(argv[2:])} (at most {limit:.0f} s)")
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": REPO})
    try:
        try:
            _, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            # SIGTERM first: testbed turns it into a clean teardown of the demo's namespaces
            p.terminate()
            try:
                p.communicate(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
            raise BenchError(f"testbed demo did not finish within {limit:g} s (stopped)") from None
    finally:
        wall = time.monotonic() - t0
        shutil.rmtree(out, ignore_errors=True)
    if p.returncode == 2 and "invalid choice" in err:
        raise BenchError("`testbed demo` does not exist yet (the CLI has no demo command)")
    tail = (err.strip().splitlines() or [""])[-1][:200]
    if p.returncode not in (0, 1):
        # 1 = the demo ran but a scenario missed its expected outcome: still a wall time
        raise BenchError(f"testbed demo exited {p.returncode} after {wall:.1f} s: {tail}")
    notes = ["run with --quick (testbed bench --quick)"] if ctx.quick else []
    if p.returncode == 1:
        notes.append(f"the demo exited 1 (a scenario did not meet its expectation): {tail}")
    res.add("wall_s", round(wall, 2), "s", target=TARGET, notes="; ".join(notes) or None)
    ctx.progress(f"  demo: {wall:.1f} s, exit {p.returncode}")
    return res
