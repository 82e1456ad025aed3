"""A task of the agent that raises is a testbed bug, visible and never silent (client_agent/tasks.py):
recorded (name, exception, traceback, time), counted ``tasks_crashed``, logged once, what waited on
it failed with an error (an RPC call on a dead transport: -EIO; a page under writeback: EIO, counted
as a write error, ``nr_writeback`` back to 0), and the watchdog's outcome ``testbed_bug`` -- never the
deadlock a dead writeback task or kswapd would otherwise look like. No root: the in-memory wire and
a manual clock; the bug is injected with ``Scheduler.throw`` (an exception raised at the task's
yield, as a typo in the code it runs would)."""

import json

import pytest

from client_agent.mm.anon import page_bytes
from client_agent.tasks import Scheduler, Sleep, WaitEvent
from tests.nas_wire_kit import agent_and_nas
from testbed.watchdog import Watchdog, hung_task_report


# -- the scheduler ------------------------------------------------------------------------------
def test_crash_is_recorded_counted_logged_once_and_its_waiters_failed():
    logs, failed = [], []
    s = Scheduler(log=logs.append)
    s.epoch = 10.0

    def waiter():
        got = yield WaitEvent("reply")
        return got

    def buggy():
        yield Sleep(12.5)
        {}["typo"]

    w = s.spawn("waiter", waiter())
    b = s.spawn("rx", buggy(), on_crash=lambda t: (failed.append(t.name), s.wake("reply", "EIO")))
    s.run(10.0)
    s.run(12.5)
    assert b.state == "crashed" and w.state == "done" and w.result == "EIO"
    assert failed == ["rx"]
    assert s.counters["tasks_crashed"] == 1
    [c] = s.stats()["crashes"]
    assert (c["name"], c["pid"], c["exception"], c["message"], c["t_s"]) == ("rx", b.pid, "KeyError", "'typo'", 2.5)
    assert c["traceback"].startswith("Traceback (most recent call last)") and '{}["typo"]' in c["traceback"]
    assert c["on_crash"] == "waiters failed"
    assert logs == [f"BUG: task rx:{b.pid} crashed: KeyError: 'typo'"]


def test_declared_errors_end_a_task_failed_not_crashed_and_a_raising_hook_is_kept():
    s = Scheduler()

    def refuse():
        yield Sleep(1.0)
        raise LookupError("no such export")

    t = s.spawn("swapon", refuse(), errors=(LookupError,))
    s.run(0.0)
    s.run(1.0)
    assert t.state == "failed" and t.exited and t.error == "LookupError: no such export"
    assert s.counters["tasks_failed"] == 1 and s.counters["tasks_crashed"] == 0 and not s.crashes

    def bad_hook(task):
        raise ValueError("hook bug")
    t2 = s.spawn("x", refuse(), on_crash=bad_hook)
    s.run(1.0)
    s.run(2.0)
    assert t2.state == "crashed"
    [c] = s.crashes
    assert c["on_crash"] == "on_crash raised ValueError: hook bug" and "hook bug" in c["traceback"]


def test_throw_raises_at_the_yield_and_finally_blocks_run():
    s = Scheduler()
    cleaned = []

    def parked():
        try:
            yield WaitEvent("never")
        finally:
            cleaned.append(True)

    t = s.spawn("p", parked())
    s.run(0.0)
    assert t.state == "waiting"
    assert s.throw(t, RuntimeError("injected"))
    s.run(0.0)
    assert t.state == "crashed" and cleaned == [True] and t.error == "RuntimeError: injected"
    assert not s.throw(t, RuntimeError("again"))            # exited: nothing to do
    assert s.wake("never") == 0                             # its wait is gone


# -- the agent on the in-memory wire --------------------------------------------------------------
def _swapping(proto: str):
    """An agent swapping a 1200-page workload to the NAS over ``proto``, run until pages are
    under writeback with RPC calls waiting for their replies."""
    loop, agent, img = agent_and_nas("swap.img", 1024)
    h = agent.handlers(lambda: None)
    h["swapon"]({"op": "swapon", "device": {"kind": "nfs", "server": "198.18.0.1",
                                            "image": "swap.img", "proto": proto}})
    h["workload"]({"op": "workload", "pages": 1200, "seed": 4})
    assert loop.run_until(lambda: agent.swap.writeback and agent.transport.pending, 30.0)
    return loop, agent, img, h


def _watchdog_outcome(agent, samples=80) -> Watchdog:
    """Feed the agent's snapshots to the watchdog every 0.2 s of loop time (stall threshold 2 s)."""
    wd = Watchdog(2.0)
    for i in range(samples):
        agent.loop.run_until(lambda: False, 0.2)
        if wd.feed(i * 0.2, agent.snapshot(traces=False)):
            break
    return wd


def _teardown(agent):
    agent.swap.release()
    agent.transport.close()
    agent.kswapd.stop()
    for t in list(agent.sched.tasks.values()):
        agent.sched.kill(t)
    for sk in list(agent.stack.tcp.sockets):     # netns exit: closing TCP sockets (as testbed.sim)
        sk.abort(agent.loop.time())


@pytest.mark.parametrize("proto,task_attr", [("tcp", "task"), ("udp", "rx_task")])
def test_transport_receive_task_crash_fails_its_calls_with_eio_and_ends_writeback(proto, task_attr):
    """(a) xprtiod (TCP) or rpciod-rx (UDP) raises: every pending call fails with -EIO, each page
    under writeback ends with a counted write error, nr_writeback returns to 0, no new writeback
    starts on the dead transport, and the watchdog says testbed_bug with the task's traceback."""
    loop, agent, _img, h = _swapping(proto)
    xprt = agent.transport.xprt
    rx = getattr(xprt, task_attr)
    in_flight = len(agent.swap.writeback)
    assert in_flight > 0 and rx.state == "waiting"
    agent.sched.throw(rx, RuntimeError("typo in the receive path"))
    assert loop.run_until(lambda: not agent.swap.writeback, 5.0)     # no hang
    snap = h["snapshot"]({"op": "snapshot"})
    assert snap["alloc"]["vmstat"]["nr_writeback"] == 0 and snap["swap"]["writeback"] == 0
    assert snap["sched"]["counters"]["tasks_crashed"] == 1
    [c] = snap["sched"]["crashes"]
    assert (c["name"], c["exception"], c["message"]) == (rx.name, "RuntimeError", "typo in the receive path")
    assert snap["nfs"]["xprt_dead"] == f"{rx.name}: RuntimeError: typo in the receive path"
    assert snap["nfs"]["counters"]["xprt_task_crashed"] == 1
    # every page that was in flight ended its writeback with EIO, by name; none hung
    sw = snap["swap"]
    assert sw["write_error_reasons"] == {"rpc transport dead": in_flight}
    assert sw["write_error_errnos"] == {"EIO": in_flight} and sw["write_errors"] == in_flight
    assert not agent.transport.pending and agent.transport.xprt.slots_in_use == 0
    assert not [t for t in agent.sched.tasks.values() if t.name == "rpc-swap"]
    pswpout = snap["alloc"]["vmstat"]["pswpout"]
    logs = [line for _t, line in agent.nfs_log]
    assert logs.count(f"BUG: task {rx.name}:{rx.pid} crashed: RuntimeError: typo in the receive path") == 1
    assert sum(line.startswith("Write error -5 on dio swapfile") for line in logs) == in_flight
    wd = _watchdog_outcome(agent)
    assert wd.outcome == "testbed_bug" and rx.name in wd.reasons[0]
    text = hung_task_report(agent.snapshot(), 2.0)
    assert text.startswith("BUG: 1 task(s) of the agent crashed: this run is a testbed bug")
    assert "Traceback (most recent call last)" in text and "typo in the receive path" in text
    # kswapd starts no writeback on the dead transport (it would fail at once, for ever)
    assert agent.alloc.vmstat["pswpout"] == pswpout and agent.alloc.vmstat["nr_writeback"] == 0
    _teardown(agent)
    assert agent.alloc.nr_free == agent.alloc.nr_pages, agent.alloc.owner_pages()


def test_swap_writeback_task_crash_ends_that_page_with_eio_and_the_rest_completes():
    """(b) one rpc-swap task raises while its WRITE waits for the reply: its RPC slot and buffer
    are released (the call's finally), its page leaves writeback with a counted EIO and goes back
    to the LRU; every other page completes and verifies."""
    loop, agent, img, h = _swapping("tcp")
    victim = next(t for t in agent.sched.tasks.values() if t.name == "rpc-swap" and t.state == "waiting")
    agent.sched.throw(victim, RuntimeError("typo in writeback"))
    assert loop.run_until(lambda: agent.swap.workload["done"] and not agent.swap.writeback, 60.0)
    snap = h["snapshot"]({"op": "snapshot"})
    assert snap["alloc"]["vmstat"]["nr_writeback"] == 0
    assert snap["sched"]["counters"]["tasks_crashed"] == 1
    [c] = snap["sched"]["crashes"]
    assert (c["name"], c["pid"], c["exception"], c["on_crash"]) == ("rpc-swap", victim.pid, "RuntimeError", "waiters failed")
    sw = snap["swap"]
    assert sw["write_error_reasons"] == {"writeback task crashed": 1} and sw["write_errors"] == 1
    assert snap["nfs"]["xprt_dead"] is None                # the transport lives on
    assert agent.transport.xprt.slots_in_use == 0
    m = h["swap_map"]({"op": "swap_map"})
    assert len(m["acked"]) == sw["acked"] > 1200 - 1024
    for slot, (pid, gen) in m["acked"].items():
        assert img.read(int(slot) * 4096, 4096) == page_bytes(4, pid, gen)
    wd = _watchdog_outcome(agent, samples=3)
    assert wd.outcome == "testbed_bug"                      # though the workload completed
    _teardown(agent)
    assert agent.alloc.nr_free == agent.alloc.nr_pages, agent.alloc.owner_pages()


def test_kswapd_crash_is_a_testbed_bug_not_the_deadlock_it_looks_like():
    """(c) kswapd raises: as in Linux it is not restarted and reclaim stops (nothing waits on it
    to fail); pages already under writeback complete (nr_writeback 0), the workload stays
    blocked -- which the watchdog would call a deadlock -- and the outcome is testbed_bug."""
    loop, agent, _img, h = _swapping("tcp")
    kswapd = agent.kswapd.task
    agent.sched.throw(kswapd, RuntimeError("typo in shrink_list"))
    assert loop.run_until(lambda: not agent.swap.writeback, 10.0)
    assert kswapd.state == "crashed"
    snap = h["snapshot"]({"op": "snapshot"})
    assert snap["alloc"]["vmstat"]["nr_writeback"] == 0 and not snap["workload"]["done"]
    [c] = snap["sched"]["crashes"]
    assert (c["name"], c["kthread"], c["exception"], c["on_crash"]) == ("kswapd0", True, "RuntimeError", None)
    assert snap["swap"]["write_errors"] == 0
    wd = _watchdog_outcome(agent)
    assert wd.outcome == "testbed_bug" and "kswapd0" in wd.reasons[0]
    # the same timeline without the crash record is what the watchdog calls a deadlock
    blind = Watchdog(2.0)
    for i in range(40):
        loop.run_until(lambda: False, 0.2)
        s = agent.snapshot(traces=False)
        s.pop("sched")
        if blind.feed(i * 0.2, s):
            break
    assert blind.outcome == "deadlock"
    _teardown(agent)


def test_swapon_refused_is_a_failed_op_not_a_crash():
    loop, agent, _img = agent_and_nas("swap.img", 64)
    h = agent.handlers(lambda: None)
    from client_agent.agent import BadRequest
    with pytest.raises(BadRequest, match="did not finish: failed NfsError: LOOKUP nope.img"):
        h["swapon"]({"op": "swapon", "server": "198.18.0.1", "image": "nope.img", "timeout_s": 10.0})
    c = agent.sched.stats()["counters"]
    assert c["tasks_failed"] == 1 and c["tasks_crashed"] == 0


# -- the simulation, the report, `testbed run`, chaos -------------------------------------------
SIM_TARGETS = ("xprtiod-tcp", "rpc-swap", "kswapd0")


@pytest.fixture(scope="module")
def sim_results():
    from testbed import scenario as scn
    from testbed.sim import run_sim
    sc = scn.load("memalloc", {})
    return {name: run_sim({**sc.to_dict(), "task_fault_at_s": [(2.0, name)]}, sc.seed)
            for name in SIM_TARGETS}


@pytest.mark.parametrize("name", SIM_TARGETS)
def test_sim_outcome_is_testbed_bug_with_the_task_and_its_exception(sim_results, name):
    r = sim_results[name]
    assert r["outcome"] == "testbed_bug" and r["duration_s"] == pytest.approx(2.1)
    assert r["task_faults_injected"][0]["thrown"] and r["tasks_crashed"] == 1
    [c] = r["task_crashes"]
    assert c["name"].startswith(name) and c["exception"] == "RuntimeError" and c["t_s"] == 2.0
    assert "fault injected into" in c["traceback"]
    assert c["name"] in r["watchdog_reasons"][0]
    assert r["leaked_pages"] == 0 and r["leaked_tasks"] == []
    errors = r["swap"]["write_error_reasons"]
    if name == "xprtiod-tcp":          # every page that was in flight ended with EIO; none left
        assert r["nr_writeback"] == 0 and errors == {"rpc transport dead": r["swap"]["write_errors"]} and errors
    elif name == "rpc-swap":
        assert errors == {"writeback task crashed": 1}
    else:
        assert errors == {}


def test_chaos_counts_a_crash_as_a_failed_run(sim_results):
    from testbed.chaos import check
    problems = check(sim_results["kswapd0"])
    assert problems and problems[0].startswith("testbed bug: task kswapd0:")
    assert "Traceback (most recent call last)" in problems[0]


def test_testbed_run_sim_exits_1_with_one_line_and_keeps_the_traceback(tmp_path, capsys, monkeypatch):
    from testbed import sim_report
    from testbed.cli import main
    real = sim_report.run_sim
    monkeypatch.setattr(sim_report, "run_sim",
                        lambda p, seed: real({**p, "task_fault_at_s": [(1.0, "kswapd0")]}, seed))
    out = tmp_path / "report"
    rc = main(["run", "memalloc", "--sim", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f"testbed: memalloc: testbed bug, not a result -- task kswapd0:{err[0].split('kswapd0:')[1].split()[0]} "
                   f"crashed at t=1.000 s: RuntimeError: fault injected into kswapd0 at t=1.0 s (sim); "
                   f"traceback in {out}/watchdog.txt"]
    entry = json.loads((out / "report.json").read_text())["scenarios"][0]
    assert entry["outcome"] == "testbed_bug"
    assert "Traceback (most recent call last)" in entry["task_crashes"][0]["traceback"]
    wtxt = (out / "watchdog.txt").read_text()
    assert wtxt.startswith("outcome: testbed_bug (1 task(s) of the agent crashed")
    assert "BUG: task kswapd0:" in wtxt and "Traceback (most recent call last)" in wtxt


def test_file_writeback_task_crash_ends_that_page_with_eio_recorded_on_the_mapping():
    """The page cache's writeback task (rpc-file) raises: its page leaves writeback (clean, not
    acknowledged), the error is on the mapping (fsync reports EIO) and counted by name."""
    from tests.nas_wire_kit import file_teardown
    loop, agent, _img = agent_and_nas("file.img", 2048)
    h = agent.handlers(lambda: None)
    h["fileon"]({"op": "fileon", "server": "198.18.0.1", "memalloc": False})
    h["file_workload"]({"op": "file_workload", "kind": "write", "pages": 1500, "seed": 4})
    assert loop.run_until(lambda: any(t.name == "rpc-file" and t.state == "waiting"
                                      for t in agent.sched.tasks.values()), 30.0)
    victim = next(t for t in agent.sched.tasks.values() if t.name == "rpc-file" and t.state == "waiting")
    agent.sched.throw(victim, RuntimeError("typo in nfs_writepage"))
    assert loop.run_until(lambda: agent.filemap.workload["done"], 600.0)
    f = h["snapshot"]({"op": "snapshot"})["filemap"]
    assert f["nr_writeback"] == 0 and f["write_error_reasons"] == {"writeback task crashed": 1}
    assert f["wb_err"] == "EIO" and f["acked"] == 1500 - 1
    assert agent.sched.stats()["crashes"][0]["name"] == "rpc-file"
    file_teardown(agent)
