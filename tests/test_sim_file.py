"""File-backed consumers on the in-memory wire (testbed/sim.py, consumer = mmap|write): which ones
deadlock under the same flood with Linux's policy (only swap marks its transport SOCK_MEMALLOC) and
with the extended one (beyond Linux). Outcomes emerge from the allocator, rpc_malloc, the dirty
limits and the demux; each test asserts the figures that explain it."""

import pytest

from testbed import scenario as S
from testbed.sim import run_sim

NAMES = ("file-mmap-linux", "file-mmap-extended", "file-write-linux",
         "file-write-dirty100-linux", "file-write-dirty100-extended")


def params(name, **over):
    sc = S.load(name)
    checks, _ = S.preflight(sc)
    assert S.failing(sc, checks) == [], name
    return {**sc.to_dict(), "max_duration_s": 30.0, **over}


@pytest.fixture(scope="module")
def results():
    return {n: run_sim(params(n), 1) for n in NAMES}


def _common(r):
    assert r["leaked_pages"] == 0, r["leaked_owners"]
    assert r["leaked_tasks"] == []
    assert r["verify_failures"] == 0
    assert r["pages_verified"] == r["acked_pages"] == r["filemap"]["acked"]
    assert r["memalloc_socks_after_swapoff"] == 0
    assert r["pswpout"] == 0                          # swapless: only file pages were written


def test_every_file_scenario_ends_as_it_expects(results):
    for n in NAMES:
        assert results[n]["outcome"] == S.load(n).expect, (n, results[n]["outcome"])


def test_mmap_linux_deadlocks_file_writeback_gets_no_memory(results):
    r = results["file-mmap-linux"]
    _common(r)
    assert r["outcome"] == "deadlock" and r["policy"] == "linux" and not r["beyond_linux"]
    assert r["filemap"]["memalloc"] is False
    assert r["rpc"]["rpc_alloc_nomem"] > 1000         # rpc_malloc (GFP_NOWAIT) fails below min
    assert r["rx_nobuf"] > 1000 and r["PFMemallocDrop"] == 0
    assert r["reserve_low_point"] >= r["atomic_floor"]
    assert r["filemap"]["pageout"] > 0 and r["filemap"]["nr_clean"] == 0
    assert r["filemap"]["nr_dirty"] > 5000            # memory full of dirty mapped pages
    assert r["workload"]["done"] is False


def test_mmap_extended_recovers_beyond_linux(results):
    r = results["file-mmap-extended"]
    _common(r)
    assert r["outcome"] == "recovered" and r["beyond_linux"]
    assert r["filemap"]["memalloc"] is True
    assert r["PFMemallocDrop"] > 1000 and r["rx_nobuf"] == 0
    assert r["reserve_low_point"] < r["atomic_floor"]  # the reserve was really used
    assert r["acked_pages"] == r["nr_written"] == 10240
    assert r["filemap"]["pageout"] > 1000              # kswapd wrote dirty file pages itself


def test_write_with_default_dirty_limits_is_throttled_and_completes(results):
    r = results["file-write-linux"]
    _common(r)
    f = r["filemap"]
    assert r["outcome"] == "completed"
    assert f["balance_dirty_pages"] > 100              # the writer was throttled
    assert f["dropped_clean"] > 1000 and f["pageout"] == 0   # reclaim never needed the network
    assert r["reserve_low_point"] >= r["zoneinfo"]["min"]
    assert r["acked_pages"] == 10240


def test_write_unthrottled_deadlocks_under_linux_and_recovers_extended(results):
    lin, ext = results["file-write-dirty100-linux"], results["file-write-dirty100-extended"]
    _common(lin)
    _common(ext)
    assert lin["outcome"] == "deadlock" and lin["workload"]["done"] is False
    assert lin["rpc"]["rpc_alloc_nomem"] > 1000
    assert ext["outcome"] == "recovered" and ext["PFMemallocDrop"] > 1000
    assert ext["acked_pages"] == 10240


def test_file_scenarios_are_deterministic():
    p = params("file-mmap-extended", max_duration_s=8.0)
    assert run_sim(p, 5) == run_sim(p, 5)


def test_unstable_file_writes_are_committed():
    r = run_sim(params("file-write-linux", stable="UNSTABLE", flood_pps=0, workload_pages=2000,
                       max_duration_s=20.0), 2)
    _common(r)
    assert r["outcome"] == "completed"
    assert r["filemap"]["commits"] > 0 and r["acked_pages"] == 2000
