"""What `testbed run` / `testbed stat` print: every figure under its own name, never Python's None
and never a made-up figure (the new-user trial's findings). Pure formatting functions fed with
snapshots and report entries of the shapes the runner, the simulation and linux_vm/run.py write."""

import io

from testbed.commands.run import summary_line
from testbed.runner import Progress, compact
from testbed.watchdog import retrans_text, retransmissions

NBD_SNAP = {"swap": {"active": True, "NBD_CMD_WRITE": 40, "requests_requeued": 3, "request_timeouts": 1,
                     "connect_count": 2}}
AOE_SNAP = {"swap": {"device": "e7.0", "aoenet": {"tx": 9}, "counters": {"retransmit": 5, "write_ok": 4}}}
NFS_SNAP = {"nfs": {"counters": {"rpc_calls": 10, "rpc_retrans": 2}}}


def _entry(**over):
    e = {"name": "nbd-memalloc", "outcome": "recovered", "expect": "recovered", "seed": 1,
         "pages_written": 31, "pages_verified": 31, "pages_lost": 0, "reserve_low_pages": 188,
         "rpc_retrans": None, "counters": {"PFMemallocDrop": 7, "rx_nobuf": 0}}
    e.update(over)
    return e


def test_retransmissions_names_each_protocols_own_counter():
    assert retransmissions(NBD_SNAP) == {"counter": "requests_requeued", "count": 3}
    assert retransmissions(AOE_SNAP) == {"counter": "aoe_retransmit", "count": 5}
    # the aoe driver's counters are a Counter: no key is a real 0, not a made-up one
    assert retransmissions({"swap": {"aoenet": {}, "counters": {}}}) == {"counter": "aoe_retransmit", "count": 0}
    assert retransmissions(NFS_SNAP) == {"counter": "rpc_retrans", "count": 2}
    assert retransmissions({"swap": {"pswpout": 3}}) is None      # nothing counts resends: n/a


def test_progress_line_of_a_block_run_has_no_none():
    buf = io.StringIO()
    c = compact(1.0, {**NBD_SNAP, "alloc": {"zoneinfo": {"free": 100, "min": 10, "low": 20, "high": 30},
                                            "reserve": {"atomic_floor": 5}}, "workload": {"allocated": 5}})
    Progress(buf).show(1.0, c, force=True)
    line = buf.getvalue()
    assert "None" not in line
    assert "requests_requeued 3" in line and "retrans None" not in line


def test_summary_line_block_sim_and_nothing():
    assert "requests_requeued 0," in summary_line(
        _entry(retransmissions={"counter": "requests_requeued", "count": 0}), "r.json")
    line = summary_line(_entry(simulated=True, retransmissions={"counter": "aoe_retransmit", "count": 5}), "r.json")
    assert "[simulated, seed 1]" in line and "aoe_retransmit 5," in line and "rpc_retrans" not in line
    assert "rpc_retrans 4," in summary_line(_entry(rpc_retrans=4), "r.json")      # an older NFS entry
    line = summary_line(_entry(), "r.json")
    assert "retransmissions n/a" in line and "None" not in line
    assert retrans_text({"rpc_retrans": None}) == "retransmissions n/a"


def test_sim_block_run_reports_requeues_not_an_invented_rpc_retrans():
    from testbed import scenario
    from testbed.sim import run_sim
    sc = scenario.load("nbd-memalloc-undersized")
    r = run_sim({**sc.to_dict(), "transport": "udp", "max_duration_s": 3.0}, 1)
    assert r["rpc_retrans"] is None and r["rpc"] == {}
    assert r["retransmissions"] == {"counter": "requests_requeued",
                                    "count": r["block"]["agent"]["requests_requeued"]}
    assert "rpc_retrans" not in r["tcp"]["rpc"] and r["tcp"]["rpc"]["connect_count"] == 1


def test_summary_line_of_a_linux_client_run():
    e = _entry(name="memalloc", client="linux", pages_verified=None, pages_lost=None, reserve_low_pages=572,
               rpc_retrans=2, retransmissions={"counter": "rpc_retrans", "count": 2},
               counters={"PFMemallocDrop": 0, "rx_nobuf": None})
    line = summary_line(e, "r.json")
    assert "None" not in line
    assert "verified n/a, lost n/a, free low 572 pages (sampled), rpc_retrans 2," in line
    assert "rx_nobuf n/a (linux client)" in line and "reserve low" not in line
    assert "reserve low 188," in summary_line(_entry(), "r.json")      # the agent's own low-water mark


def test_guest_stop_text_never_says_none():
    from testbed.linux_vm.run import guest_stop_text
    assert guest_stop_text({"exit": -9, "killed": True}) == "guest: killed by pid (ended by SIGKILL)"
    assert guest_stop_text({"exit": None, "killed": True}) == "guest: killed by pid (exit status not collected)"
    assert guest_stop_text({"exit": 0, "killed": False}) == "guest: QEMU exited by itself (QEMU exit status 0)"


def test_progress_label_of_an_agent_is_unchanged():
    from testbed.watchdog import progress_label
    assert progress_label({"alloc": {"vmstat": {"pswpout": 3}}}) == "pswpout"
    assert progress_label({"alloc": {"vmstat": {"pswpout": 3, "nr_written": 4}},
                           "filemap": {"active": True}}) == "pswpout + nr_written"
