"""The four scenarios of issue 6 on the in-memory wire (testbed/sim.py): outcomes emerge from the
allocator, the rcvbufs and the demux; each test asserts the figures that explain the outcome."""

import pytest

from testbed import scenario as S
from testbed.sim import run_sim

NAMES = ("no-reserve", "reserve-no-filter", "memalloc", "memalloc-undersized")


def params(name, **over):
    """The built-in scenario file's parameters, exactly as `testbed run` uses them."""
    sc = S.load(name)
    checks, _ = S.preflight(sc)
    assert S.failing(sc, checks) == [], name
    return {**sc.to_dict(), "max_duration_s": 30.0, **over}


BASE = {k: v for k, v in params("memalloc").items() if k not in ("name", "description", "expect")}


@pytest.fixture(scope="module")
def results():
    return {n: run_sim(params(n), 1) for n in NAMES}


def test_every_builtin_scenario_ends_as_it_expects(results):
    for n in NAMES:
        assert results[n]["outcome"] == S.load(n).expect, (n, results[n]["outcome"])


def _common(r):
    assert r["leaked_pages"] == 0, r["leaked_owners"]
    assert r["verify_failures"] == 0
    assert r["pages_verified"] == r["acked_pages"]
    assert r["memalloc_socks_after_swapoff"] == 0


def test_no_reserve_deadlocks_on_nomem_replies(results):
    r = results["no-reserve"]
    _common(r)
    assert r["zoneinfo"]["min"] == 512 and r["atomic_floor"] == 192
    assert r["outcome"] == "deadlock"
    assert r["PFMemallocDrop"] == 0 and r["rx_pfmemalloc"] == 0
    assert r["rx_nobuf"] > 1000                      # the replies (and the flood) find no memory
    # nobody may go below the atomic floor on rx; over TCP (the default) kswapd's own WRITE records
    # sit in the write/retransmit queue until ACKed -- allocated in kswapd's PF_MEMALLOC context,
    # 16 calls x 2 pages (a 4260-byte record's bytes) = 32 pages below the floor (testbed/scenario.py
    # tcp_figures), and no further: 192 - 32 = 160. (Over UDP each frame is freed at once: >= 190.)
    f = S.tcp_figures(S.load("no-reserve"))
    assert r["reserve_low_point"] >= 192 - 16 * f["request_skb_pages"] - 2 == 158
    assert r["workload"]["done"] is False
    assert r["nr_writeback"] > 0                     # pages stuck under writeback
    assert r["rpc_retrans"] > 0
    assert any("not responding, still trying" in line for _t, line in r["logs"])


def test_reserve_without_demux_filter_is_eaten_by_the_flood(results):
    r = results["reserve-no-filter"]
    _common(r)
    assert r["outcome"] == "deadlock"
    assert r["rx_pfmemalloc"] > 0 and r["PFMemallocDrop"] == 0
    assert r["reserve_low_point"] == 0               # the whole reserve went to noise queues
    assert r["rx_nobuf"] > 1000
    assert r["workload"]["done"] is False


def test_memalloc_cure_recovers_and_every_acked_page_verifies(results):
    r = results["memalloc"]
    _common(r)
    assert r["outcome"] == "recovered"
    assert r["PFMemallocDrop"] > 1000
    assert r["rx_nobuf"] == 0
    assert r["reserve_low_point"] < r["atomic_floor"]     # the reserve was really used
    assert r["workload"]["done"] and r["nr_writeback"] == 0
    assert r["acked_pages"] == r["pswpout"] > 2800
    assert r["pages_verified"] == r["acked_pages"]


def test_memalloc_undersized_reserve_below_the_slot_table_deadlocks(results):
    # min_free_kbytes 64 -> min 16, atomic floor 6 pages: fewer than the 16 RPC buffers a full
    # slot table pins with __GFP_MEMALLOC once the flood holds free at the floor.
    r = results["memalloc-undersized"]
    _common(r)
    assert r["atomic_floor"] == 6
    assert r["outcome"] == "deadlock"
    assert r["reserve_low_point"] == 0               # the reserve is all pinned
    # replies NOMEM; the calls time out and are resent in vain. (No transmit need fail: the
    # record's 2 write-queue pages leave the floor's last pages to the frames -- with 3 one-page
    # buffers per record one new-data frame did, tx_nobuf 1.)
    assert r["rx_nobuf"] > 1000 and r["rpc_retrans"] > 0
    assert r["pswpout"] < 100


def test_reserve_of_48_pages_covers_the_slot_table_and_recovers():
    # Over TCP, min_free_kbytes 1024 -> floor 96 >= 16 x (1 RPC buffer + 2 write/retransmit-queue
    # pages + 1 reply) + 1 transmit + 1 received ACK = 66: the preflight says a deadlock is
    # impossible, and the model agrees. (Over UDP 512 -> floor 48 >= 33 was the same statement.)
    sc = S.from_dict({**params("memalloc-undersized"), "min_free_kbytes": 1024, "expect": "deadlock"})
    assert "reserve_undersized" in [c.name for c in S.failing(sc, S.preflight(sc)[0])]
    r = run_sim({**BASE, "min_free_kbytes": 1024}, 1)
    _common(r)
    assert r["atomic_floor"] == 96 and r["outcome"] == "recovered"
    assert r["PFMemallocDrop"] > 0


def test_same_seed_same_result():
    p = {**BASE, "memalloc": False, "max_duration_s": 10.0}
    assert run_sim(p, 7) == run_sim(p, 7)


def test_unstable_writes_resent_after_server_crash():
    r = run_sim({**BASE, "memalloc": True, "stable": "UNSTABLE", "crash_at_s": 0.5,
                 "flood_pps": 0}, 3)
    _common(r)
    assert r["outcome"] in ("completed", "recovered")
    assert r["swap"]["verifier_changes"] > 0 and r["swap"]["resends"] > 0
    assert r["nas"]["commits"] > 0
    assert r["pages_verified"] == r["acked_pages"] == r["pswpout"]
