"""Event loop: deterministic timers on a ManualClock, real readers on a MonotonicClock."""

import socket
import time

from client_agent.loop import Loop, ManualClock, MonotonicClock
from client_agent.mm.gfp import GFP_KERNEL
from client_agent.mm.page_alloc import PageAllocator
from client_agent.tasks import Scheduler, Sleep, WaitEvent, WaitPages


def test_manual_clock_orders_timers_and_jumps_time():
    clock = ManualClock(100.0)
    loop = Loop(clock)
    log = []
    loop.call_at(103.0, lambda: log.append(("c", clock.now())))
    loop.call_at(101.0, lambda: log.append(("a", clock.now())))
    loop.call_at(101.0, lambda: log.append(("a2", clock.now())))   # same deadline: call order
    cancelled = loop.call_at(102.0, lambda: log.append(("never", clock.now())))
    loop.call_soon(lambda: log.append(("soon", clock.now())))
    cancelled.cancel()
    t0 = time.monotonic()
    assert loop.run_until(lambda: len(log) == 4, timeout_s=60.0)
    assert time.monotonic() - t0 < 0.5            # virtual time: no real sleeping
    assert log == [("soon", 100.0), ("a", 101.0), ("a2", 101.0), ("c", 103.0)]
    assert clock.now() == 103.0
    assert loop.lag_max_s == 0.0 and loop.timers_fired == 3
    # Nothing left: run_until times out at exactly its deadline, without spinning.
    assert not loop.run_until(lambda: False, timeout_s=5.0)
    assert clock.now() == 108.0


def test_callbacks_scheduling_callbacks_and_stop():
    clock = ManualClock()
    loop = Loop(clock)
    log = []

    def tick(n):
        log.append((n, clock.now()))
        if n < 3:
            loop.call_later(0.5, tick, n + 1)
        else:
            loop.stop()

    loop.call_soon(tick, 0)
    loop.run_forever()
    assert log == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5)]
    # With nothing scheduled and nothing registered, run_forever returns instead of spinning.
    loop.run_forever()
    assert clock.now() == 1.5
    assert loop.snapshot()["timers_pending"] == 0


def test_real_socketpair_reader_and_lag():
    loop = Loop(MonotonicClock())
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []

    def on_readable():
        got.append(a.recv(100))

    loop.add_reader(a, on_readable)
    loop.call_later(0.02, b.send, b"ping")
    assert loop.run_until(lambda: got, timeout_s=5.0)
    assert got == [b"ping"]
    assert loop.fd_events == 1 and loop.timers_fired == 1
    assert 0.0 <= loop.lag_max_s < 1.0
    assert loop.remove_reader(a) and not loop.remove_reader(a)
    # Timeout with a registered but silent socket: returns after about timeout_s of real time.
    loop.add_reader(a, on_readable)
    t0 = time.monotonic()
    assert not loop.run_until(lambda: len(got) > 1, timeout_s=0.05)
    assert 0.04 <= time.monotonic() - t0 < 1.0
    assert loop.remove_reader(a)
    a.close()
    b.close()
    # Nothing scheduled and nothing registered on a real clock: return, never block forever.
    t0 = time.monotonic()
    assert not loop.run_until(lambda: False, timeout_s=None)
    assert time.monotonic() - t0 < 0.5


def test_selector_data_convention_matches_control_server():
    """ControlServer.attach(loop.selector) registers data=callable(mask): the loop calls it."""
    import selectors
    loop = Loop(ManualClock())
    a, b = socket.socketpair()
    masks = []
    loop.selector.register(a, selectors.EVENT_READ, lambda mask: (masks.append(mask), a.recv(10)))
    b.send(b"x")
    assert loop.run_until(lambda: masks, timeout_s=1.0)
    assert masks == [selectors.EVENT_READ]
    a.close()
    b.close()


def test_scheduler_driven_by_manual_loop():
    clock = ManualClock()
    loop = Loop(clock)
    alloc = PageAllocator(8192, min_free_kbytes=2048)
    sched = Scheduler(alloc)
    sched.attach_loop(loop)
    with alloc.pf_memalloc():
        hog = alloc.alloc(8192 - 520, GFP_KERNEL, "hog")
    log = []

    def writer():
        pages = yield WaitPages(16, GFP_KERNEL, "pagecache")
        log.append(("writer got", len(pages), clock.now()))

    def freer():
        yield Sleep(2.0)
        alloc.free(hog[:100])
        log.append(("freed", clock.now()))
        value = yield WaitEvent("reply", until=10.0)
        log.append(("reply", value, clock.now()))

    sched.spawn("writer", writer())
    sched.spawn("freer", freer())
    loop.call_at(5.0, sched.wake, "reply", "ok")
    assert loop.run_until(lambda: len(log) == 3, timeout_s=60.0)
    assert log == [("freed", 2.0), ("writer got", 16, 2.0), ("reply", "ok", 5.0)]
    assert alloc.vmstat["allocstall"] == 1
