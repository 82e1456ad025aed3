"""run_nas_bench produces the bench JSON shape with measured figures and a measured ganesha baseline."""

import shutil

import pytest

from nas_server.bench import CASES, run_nas_bench


def test_run_nas_bench_shape_and_baseline():
    figs = run_nas_bench(total_bytes=4 << 20, seed=3)
    assert len(figs) == 2 * len(CASES)
    for f in figs:
        assert set(f) >= {"name", "value", "unit", "baseline", "ratio", "target", "met"}
        assert f["unit"] == "MiB/s" and f["value"] > 1.0, f
        if shutil.which("ganesha.nfsd"):
            assert f["baseline"] and f["baseline"] > 1.0, f.get("baseline_error")
            # value and baseline are rounded to 0.1 MiB/s for display and the ratio (from the
            # unrounded figures) to 0.001: allow each rounding's relative error.
            tol = 0.06 / f["value"] + 0.06 / f["baseline"] + 0.0006 / f["ratio"] + 0.001
            assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=tol)
