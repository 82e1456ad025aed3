"""The contract's outcome rules on synthetic timelines sampled every 0.2 s; the hung-task text."""

from testbed.watchdog import Watchdog, hung_task_report

DT = 0.2


def snap(free, pswpout, done=False, kswapd=False, valid=True, reasons=(), low=640, high=768, floor=192):
    return {"alloc": {"zoneinfo": {"free": free, "min": 512, "low": low, "high": high, "managed": 8192},
                      "vmstat": {"pswpout": pswpout}, "reserve": {"atomic_floor": floor, "nr_free_lowwater": free},
                      "kswapd": {"wanted": kswapd}},
            "workload": {"done": done}, "valid": valid, "invalid_reasons": list(reasons)}


def run(samples, threshold=6.0):
    wd = Watchdog(threshold)
    for i, s in enumerate(samples):
        t = round(i * DT, 6)
        if wd.feed(t, s):
            return wd, t
    return wd, None


def test_deadlock_after_exactly_the_threshold():
    # pswpout grows until t=2.0 (sample 10), then stays; free below low throughout.
    samples = [snap(300, min(i, 10)) for i in range(200)]
    wd, t = run(samples, threshold=6.0)
    assert wd.outcome == "deadlock"
    assert abs(t - 8.0) < 1e-6          # last growth at 2.0 + 6.0: not one sample earlier
    assert wd.time_to_stall_s == 2.0
    # one sample short of the threshold: no outcome yet
    wd2, t2 = run(samples[:40], threshold=6.0)
    assert t2 is None and wd2.finish() == "unfinished"


def test_no_deadlock_while_reclaim_not_needed():
    # pswpout flat but free above low and kswapd asleep: idle, not stuck.
    wd, t = run([snap(5000, 0) for _ in range(100)], threshold=2.0)
    assert t is None and wd.finish() == "unfinished"


def test_stall_clock_starts_when_reclaim_becomes_needed():
    samples = [snap(5000, 3) for _ in range(20)] + [snap(600, 3, kswapd=True) for _ in range(100)]
    wd, t = run(samples, threshold=6.0)
    assert wd.outcome == "deadlock" and abs(t - (4.0 + 6.0)) < 1e-6


def test_recovered_after_a_stall():
    samples = ([snap(700 - 80 * i, i) for i in range(8)]            # 140 < floor 192 first at i=7 (t=1.4)
               + [snap(100, 10 + i) for i in range(10)]
               + [snap(900, 30, done=True)])
    wd, t = run(samples)
    assert wd.outcome == "recovered"
    assert wd.time_to_stall_s == 1.4 and abs(wd.time_to_recover_s - (t - 1.4)) < 1e-9
    assert wd.reserve_low_pages == 100


def test_completed_without_a_stall():
    samples = [snap(700 - 10 * i, i) for i in range(10)] + [snap(800, 10, done=True)]
    wd, t = run(samples)
    assert wd.outcome == "completed" and wd.time_to_recover_s is None
    # done but free not above high yet: keep watching
    wd, t = run([snap(700, 1, done=True)] * 5)
    assert t is None


def test_invalid_on_tp_drops_or_softnet():
    samples = [snap(300, i) for i in range(5)] + [snap(300, 6, valid=False, reasons=["kernel dropped 3 frames (tp_drops)"])]
    wd, t = run(samples)
    assert wd.outcome == "invalid" and "tp_drops" in wd.reasons[0] and abs(t - 1.0) < 1e-9
    wd = Watchdog(6.0)
    assert wd.feed(0.0, snap(300, 0), extra_invalid=["softnet dropped 2"]) == "invalid"


def test_hung_task_report_lists_tasks_memory_drops_and_xids():
    s = snap(150, 10)
    s["tasks"] = [{"pid": 2, "name": "kswapd0", "state": "blocked", "kthread": True, "wait": "WaitEvent",
                   "reason": "rpc slot: reply to xid 0x1234", "waited_s": 9.5},
                  {"pid": 5, "name": "workload", "state": "blocked", "kthread": False, "wait": "WaitPages",
                   "reason": "anon page", "waited_s": 2.0, "pages": {"n": 1, "gfp": 0xcc0, "owner": "anon"}},
                  {"pid": 7, "name": "idle", "state": "running", "wait": None, "reason": None, "waited_s": None}]
    s["stack"] = {"counters": {"rx_nobuf": 77, "PFMemallocDrop": 0}, "drop_reasons": {"NOMEM": 77}}
    s["nfs"] = {"rpc_calls": 40, "rpc_retrans": 12, "not_responding": True}
    text = hung_task_report(s, 6.0, missing_xids=[0x1234, 0x1235])
    assert "INFO: task kswapd0:2 blocked for more than 6 seconds (9.5 s)" in text
    assert "workload:5 waiting" in text and "idle" not in text
    assert "free:150 min:512 low:640 high:768 atomic_floor:192" in text
    assert "NOMEM:77" in text and "rx_nobuf:77" in text
    assert "rpc_retrans:12" in text and "not responding" in text
    assert "never received by the NFS socket: 2: xid 0x00001234 0x00001235" in text


def _backoff(s, left_s, reconnect=True):
    """``s`` with xprtiod asleep in xs_connect's delay, ``left_s`` to go (client_agent/tasks.py)."""
    return {**s, "tasks": [{"name": "xprtiod-tcp/198.18.0.1:2049", "state": "sleeping", "wait": "Sleep",
                            "reason": "xs_connect delay to 198.18.0.1:2049", "until_s": left_s,
                            **({"reconnect": True} if reconnect else {})}]}


def test_a_reconnect_backoff_is_not_a_stall_the_attempt_after_it_is():
    """chaos real0 (CI, 2026-11-30): the NAS restarted at t=0.6, two reconnects failed while it was
    down, xprtiod slept 6 s in xs_connect's delay, and the stall clock (started at 0.6) reached 6 s
    during that sleep: a false deadlock. The stall now counts from the end of the delay."""
    # pswpout stops at t=0.6 (sample 3); from t=1.0 to t=3.6 the transport sleeps until t=3.6+6=9.6
    samples = [snap(300, min(i, 3)) for i in range(5)]
    samples += [_backoff(snap(300, 3), round(9.6 - i * DT, 6)) for i in range(5, 48)]
    samples += [snap(300, 3) for _ in range(48, 200)]            # the attempt at 9.6 fails: no progress
    wd, t = run(samples, threshold=6.0)
    assert wd.outcome == "deadlock" and abs(t - (9.6 + 6.0)) < 1e-6 and abs(wd.time_to_stall_s - 9.6) < 1e-6
    assert wd.reasons[0].endswith("(counted from the end of a reconnect backoff at t=9.6s)"), wd.reasons
    # the same samples without the reconnect flag (any other sleep): the stall counts from 0.6
    plain = samples[:5] + [_backoff(snap(300, 3), 1.0, reconnect=False) for _ in range(5, 48)] + samples[48:]
    wd2, t2 = run(plain, threshold=6.0)
    assert wd2.outcome == "deadlock" and abs(t2 - 6.6) < 1e-6
    # and if the attempt after the delay succeeds, the run goes on to recover
    ok = samples[:48] + [snap(300 if i < 60 else 900, 3 + i - 47, done=i >= 60) for i in range(48, 61)]
    ok[4] = snap(150, 3)                                          # below the floor once: a stall seen
    wd3, _ = run(ok, threshold=6.0)
    assert wd3.outcome == "recovered"
