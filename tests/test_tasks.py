"""Task model: waits, wakeups, the allocation slow path (allocstall, throttle) and snapshots."""

import json

from client_agent.mm.gfp import GFP_ATOMIC, GFP_KERNEL, GFP_NOFS, Gfp
from client_agent.mm.page_alloc import PageAllocator
from client_agent.tasks import (
    TIMEOUT, Scheduler, Sleep, Wait, WaitEvent, WaitPages,
)


def pool_with_free(free):
    """8192 pages, min 512 / low 640 / high 768; hold everything but ``free`` pages."""
    a = PageAllocator(8192, min_free_kbytes=2048)
    with a.pf_memalloc():
        held = a.alloc(8192 - free, GFP_KERNEL, "hog")
    assert a.nr_free == free
    return a, held


def test_sleep_order_and_next_deadline():
    s = Scheduler()
    log = []

    def sleeper(name, t):
        now = yield Sleep(t)
        log.append((name, now))

    s.spawn("b", sleeper("b", 2.0))
    s.spawn("a", sleeper("a", 1.0))
    assert s.run(0.0) == 1.0
    assert [t["state"] for t in s.snapshot()] == ["sleeping", "sleeping"]
    assert s.run(1.5) == 2.0
    assert log == [("a", 1.5)]
    assert s.run(2.0) is None
    assert log == [("a", 1.5), ("b", 2.0)]
    assert s.tasks == {} and s.counters["tasks_exited"] == 2


def test_wait_event_wake_value_timeout_and_snapshot():
    s = Scheduler()
    got = []

    def reader():
        got.append((yield WaitEvent("rx", reason="recvfrom udp:2049")))
        got.append((yield WaitEvent("rx", until=5.0)))

    s.spawn("nfsd-reader", reader())
    s.run(1.0)
    [snap] = s.snapshot()
    assert snap["state"] == "waiting" and snap["reason"] == "recvfrom udp:2049"
    assert snap["since"] == 1.0 and snap["wait"] == "WaitEvent"
    assert s.run(3.0) is None
    assert s.snapshot()[0]["waited_s"] == 2.0
    assert s.wake("other") == 0
    assert s.wake("rx", b"datagram") == 1
    assert s.run(3.5) == 5.0                      # now waiting with a deadline
    assert got == [b"datagram"]
    s.run(5.0)
    assert got == [b"datagram", TIMEOUT]
    assert s._events == {}                        # the timed-out entry was dropped
    json.dumps(s.snapshot())


def test_alloc_succeeds_inline_and_nonblocking_gets_none():
    a, held = pool_with_free(600)
    s = Scheduler(a)
    out = []

    def t():
        out.append((yield WaitPages(50, GFP_KERNEL, "anon")))     # 600-50=550 >= 512: at once
        out.append((yield WaitPages(100, GFP_ATOMIC, "rx")))      # 450 >= 192: at once
        out.append((yield WaitPages(300, GFP_ATOMIC, "rx")))      # 150 < 192, cannot block: None

    s.spawn("t", t())
    assert s.run(0.0) is None
    assert [len(x) if x else x for x in out] == [50, 100, None]
    assert a.vmstat["allocstall"] == 0 and a.nr_free == 450


def test_blocked_allocation_counts_allocstall_and_wakes_on_free():
    a, held = pool_with_free(520)
    s = Scheduler(a)
    got = []

    def writer():
        pages = yield WaitPages(16, GFP_KERNEL, "pagecache")       # 520-16 < 512: must wait
        got.append(pages)

    def other():
        yield Sleep(10.0)

    s.spawn("writer", writer())
    s.spawn("idle", other())
    s.run(1.0)
    snap = {t["name"]: t for t in s.snapshot()}
    assert snap["writer"]["state"] == "blocked" and snap["writer"]["since"] == 1.0
    assert snap["writer"]["pages"] == {"n": 16, "gfp": int(GFP_KERNEL), "owner": "pagecache"}
    assert snap["idle"]["state"] == "sleeping"     # a blocked allocation blocks only its task
    assert a.vmstat["allocstall"] == 1
    assert a.on_pages_freed is not None
    a.free(held[:7])                               # 527: 527-16 = 511 < 512, still not enough
    s.run(2.0)
    assert got == [] and a.vmstat["allocstall"] == 1   # re-checks do not count again
    a.free(held[7:8])                              # 528 - 16 = 512 >= 512
    s.run(3.0)
    assert len(got[0]) == 16 and a.nr_free == 512
    assert a.on_pages_freed is None                # nobody waits: free() back on its fast path


def test_throttle_below_half_min_until_level_restored():
    a, held = pool_with_free(256)                  # 256 <= 512/2: throttled
    s = Scheduler(a)
    got = []

    def reclaimer():
        got.append((yield WaitPages(1, GFP_KERNEL, "anon")))

    s.spawn("user", reclaimer())
    s.run(0.0)
    assert s.snapshot()[0]["state"] == "throttled"
    assert a.vmstat["pgscan_direct_throttle"] == 1 and a.kswapd_wanted
    assert s.run(100.0) is None                    # with __GFP_FS: no timeout, waits for kswapd
    assert s.snapshot()[0]["state"] == "throttled"
    a.free(held[:1])                               # 257 > 256: level restored
    s.run(101.0)
    # Woken, it retried, failed at min and stalled in "direct reclaim" (allocstall).
    assert s.snapshot()[0]["state"] == "blocked" and a.vmstat["allocstall"] == 1
    assert s.snapshot()[0]["since"] == 0.0         # waiting for the same allocation since 0
    a.free(held[1:300])
    s.run(102.0)
    assert len(got[0]) == 1 and a.vmstat["pgscan_direct_throttle"] == 1


def test_throttle_without_fs_lasts_at_most_one_second_and_kthreads_are_exempt():
    a, held = pool_with_free(200)
    s = Scheduler(a)

    def alloc(gfp):
        yield WaitPages(1, gfp, "x")

    nofs = s.spawn("nfs-writeback", alloc(GFP_NOFS))
    kswapd = s.spawn("kswapd0", alloc(GFP_KERNEL), kthread=True)
    assert s.run(10.0) == 11.0                     # the 1 s bound is the next deadline
    assert nofs.state == "throttled" and kswapd.state == "blocked"
    assert a.vmstat["pgscan_direct_throttle"] == 1 and a.vmstat["allocstall"] == 1
    s.run(11.0)
    assert nofs.state == "blocked" and a.vmstat["allocstall"] == 2


def test_crash_is_recorded_and_others_keep_running():
    s = Scheduler()
    done = []

    def bad():
        yield Sleep(1.0)
        raise RuntimeError("rpc reply with xid 7 not found")

    def good():
        yield Sleep(2.0)
        done.append(True)

    s.spawn("bad", bad())
    s.spawn("good", good())
    s.run(0.0)
    s.run(1.0)
    s.run(2.0)
    assert done == [True]
    crashed = [t for t in s.snapshot() if t["state"] == "crashed"]
    assert crashed[0]["name"] == "bad"
    assert crashed[0]["error"] == "RuntimeError: rpc reply with xid 7 not found"
    assert s.counters["tasks_crashed"] == 1

    def yields_garbage():
        yield 42

    t = s.spawn("garbage", yields_garbage())
    s.run(3.0)
    assert t.state == "crashed" and "yielded 42" in t.error
    t2 = s.spawn("base", (x for x in [Wait(reason="nothing")]))
    s.run(3.0)
    assert t2.state == "crashed"


def test_kill_blocked_task_runs_its_finally_and_unparks_it():
    a, held = pool_with_free(600)
    s = Scheduler(a)

    def t():
        mine = yield WaitPages(50, GFP_KERNEL, "mine")
        try:
            yield WaitPages(100, GFP_KERNEL, "more")     # 550-100 < 512: blocks
        finally:
            a.free(mine)

    task = s.spawn("t", t())
    s.run(0.0)
    assert task.state == "blocked" and a.nr_free == 550
    s.kill(task)
    assert task.state == "killed" and a.nr_free == 600
    assert s._page_waiters == [] and s.tasks == {} and a.on_pages_freed is None
    assert a.owner_pages() == {"hog": 7592}


def test_pf_memalloc_scope_is_per_task():
    a, held = pool_with_free(512)                  # at min: ordinary allocations fail
    s = Scheduler(a)
    got = {}

    def memalloc_task():
        with a.pf_memalloc():
            yield Sleep(1.0)                       # the scope survives the yield ...
            got["memalloc"] = yield WaitPages(1, GFP_KERNEL, "rpc")

    def plain_task():
        yield Sleep(1.0)                           # ... and is not lent to another task
        got["plain"] = yield WaitPages(1, GFP_KERNEL & ~Gfp.DIRECT_RECLAIM, "other")

    s.spawn("rpciod", memalloc_task())
    s.spawn("plain", plain_task())
    s.run(0.0)
    assert a.pf_memalloc_depth == 0
    s.run(1.0)
    assert got["memalloc"][0].pfmemalloc
    assert got["plain"] is None


def test_join_and_wake_from_outside_kicks_on_runnable():
    kicks = []
    s = Scheduler(on_runnable=lambda: kicks.append(1))

    def child():
        yield WaitEvent("go")
        return 7

    def parent(c):
        result = yield WaitEvent(c)
        return result * 6

    c = s.spawn("child", child())
    p = s.spawn("parent", parent(c))
    assert kicks == [1]                            # coalesced until the next run()
    s.run(0.0)
    s.wake("go")
    s.wake("go")                                   # nobody waits any more
    assert kicks == [1, 1]
    assert s.run(0.0) is None
    assert c.result == 7 and p.result == 42 and p.state == "done"
