"""The agent's event loop: a timer heap, a selector and an injectable clock -- nothing else.

Invariant owned here: callbacks run one at a time, in a deterministic order -- in each
iteration ready file descriptors first, then the ready queue: ``call_soon`` callbacks in call
order followed by the timers that fell due, by (deadline, call order) -- and a timer never runs
before its deadline by the loop's clock. This is the only module
of the agent's core that reads the time (``MonotonicClock``); everything it drives is given
``now``.

With a ``ManualClock`` the loop never sleeps: when no callback is ready and the selector (polled
without blocking) has nothing, time jumps straight to the next timer. A scenario on the in-memory
wire therefore runs deterministically and as fast as the CPU allows, while the same code on
real sockets uses ``MonotonicClock``.

Selector registrations follow netns_setup/control.py's convention: ``data`` is a callable taking
the ready mask, so ``ControlServer.attach(loop.selector)`` just works. Exceptions raised by
callbacks propagate out of ``run_until()``/``run_forever()``: a callback that raises is a bug,
and the loop does not hide it (tasks have their own crash recording, see tasks.py).

Lag: for every timer the loop records how late it ran (``now - deadline``); max and mean are
the run-validity self-check's measure of whether the agent kept up.
"""

from __future__ import annotations

import heapq
import itertools
import math
import selectors
import time
from collections import deque
from typing import Any, Callable


_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE
try:
    import select as _select
    _NOT_EPOLLIN = ~_select.EPOLLIN
    _NOT_EPOLLOUT = ~_select.EPOLLOUT
except AttributeError:          # no epoll here: only the selectors path is used
    _NOT_EPOLLIN = _NOT_EPOLLOUT = 0


class MonotonicClock:
    """Real time for real runs (time.monotonic: immune to wall-clock steps)."""
    virtual = False

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """Virtual time for tests and deterministic replays; the loop advances it to each timer."""
    virtual = True

    def __init__(self, start: float = 0.0):
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"ManualClock cannot go back in time (advance({dt_s}))")
        self.t += dt_s

    def set(self, t: float) -> None:
        if t < self.t:
            raise ValueError(f"ManualClock cannot go back in time: now {self.t}, asked {t}")
        self.t = float(t)


class TimerHandle:
    """What call_at/call_later/call_soon return; ``cancel()`` is idempotent and O(1)."""
    __slots__ = ("when", "seq", "fn", "args", "cancelled")

    def __init__(self, when: float | None, seq: int, fn: Callable, args: tuple):
        self.when = when
        self.seq = seq
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.fn = None  # drop references early; the heap entry is skipped lazily
        self.args = ()

    def __lt__(self, other: "TimerHandle") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<TimerHandle when={self.when} seq={self.seq}{state}>"


class Loop:
    def __init__(self, clock=None, selector: selectors.BaseSelector | None = None):
        self.clock = clock if clock is not None else MonotonicClock()
        self.selector = selector if selector is not None else selectors.DefaultSelector()
        # An epoll selector is polled through its epoll object and fd table directly (what
        # EpollSelector.select does, without building a (key, mask) list per wakeup); any
        # other selector through select().
        sel = self.selector
        self._epoll = None
        if type(sel) is getattr(selectors, "EpollSelector", None):
            self._epoll = sel._selector
            self._fd_to_key = sel._fd_to_key
        self._timers: list[TimerHandle] = []
        self._ready: deque[TimerHandle] = deque()
        self._seq = itertools.count()
        self._stopping = False
        # Called before each wait on the selector: a device's transmit doorbell (a TX ring's one
        # send() for every frame queued since the last wait -- the end of a batch, as xmit_more).
        self.before_wait: list[Callable[[], Any]] = []
        # Figures for the run-validity self-check.
        self.iterations = 0
        self.fd_events = 0
        self.timers_fired = 0
        self.lag_max_s = 0.0
        self._lag_sum_s = 0.0

    # ------------------------------------------------------------------ scheduling
    def time(self) -> float:
        return self.clock.now()

    def call_at(self, when: float, fn: Callable, *args: Any) -> TimerHandle:
        h = TimerHandle(float(when), next(self._seq), fn, args)
        heapq.heappush(self._timers, h)
        return h

    def call_later(self, delay_s: float, fn: Callable, *args: Any) -> TimerHandle:
        return self.call_at(self.clock.now() + delay_s, fn, *args)

    def call_soon(self, fn: Callable, *args: Any) -> TimerHandle:
        h = TimerHandle(None, next(self._seq), fn, args)
        self._ready.append(h)
        return h

    def add_reader(self, fileobj, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` whenever ``fileobj`` is readable (replaces an earlier reader)."""
        data = lambda mask: fn()  # noqa: E731 -- the control.py convention: data(mask)
        try:
            self.selector.register(fileobj, selectors.EVENT_READ, data)
        except KeyError:
            self.selector.modify(fileobj, selectors.EVENT_READ, data)

    def remove_reader(self, fileobj) -> bool:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            return False
        return True

    def stop(self) -> None:
        """Make run_until()/run_forever() return after the current iteration."""
        self._stopping = True

    # ------------------------------------------------------------------ running
    def run_until(self, pred: Callable[[], bool] | None, timeout_s: float | None) -> bool:
        """Run until ``pred()`` is true (checked after every iteration), ``stop()``, or
        ``timeout_s`` of loop time. Returns whether ``pred`` held (False on timeout/stop)."""
        deadline = None if timeout_s is None else self.clock.now() + timeout_s
        self._stopping = False
        while True:
            if pred is not None and pred():
                return True
            if self._stopping:
                self._stopping = False
                return False
            if deadline is not None and self.clock.now() >= deadline:
                return False
            if not self._run_once(deadline):
                return pred is not None and bool(pred())

    def has_ready(self) -> bool:
        """Callbacks are queued to run in the next iteration (call_soon, a repoll)."""
        return bool(self._ready)

    def run_once(self) -> bool:
        """One iteration, as ``run_until`` runs them (on a ManualClock with nothing ready, time
        jumps to the next timer). False: nothing can ever happen again."""
        return self._run_once(None)

    def run_forever(self) -> None:
        """Run until ``stop()`` (or, on a ManualClock, until nothing can ever happen)."""
        self.run_until(None, None)

    def _run_once(self, deadline: float | None) -> bool:
        """One iteration. False: nothing can ever happen again (virtual time, nothing
        scheduled, nothing registered), so the caller must not spin."""
        self.iterations += 1
        clock = self.clock
        timers = self._timers
        while timers and timers[0].cancelled:          # lazy deletion of cancelled timers
            heapq.heappop(timers)

        for fn in self.before_wait:
            fn()

        # 1. How long may we wait? Not at all if callbacks are ready; else until the first
        #    timer, cut short by run_until's deadline; None = until a file is ready.
        wake_at = timers[0].when if timers else None
        if deadline is not None and (wake_at is None or deadline < wake_at):
            wake_at = deadline
        if self._ready:
            timeout = 0.0
        elif wake_at is None:
            timeout = None
        else:
            timeout = max(0.0, wake_at - clock.now())

        # 2. Wait on the selector. A virtual clock only polls: time does not pass by waiting.
        ep = self._epoll
        if ep is not None and not clock.virtual:
            fd_to_key = self._fd_to_key
            if timeout is None:
                if not fd_to_key:
                    return False                         # nothing scheduled, nothing to read
                ready = ep.poll(-1, len(fd_to_key))
            elif fd_to_key:
                # EpollSelector.select's rounding: up to the next millisecond, never early.
                ready = ep.poll(math.ceil(timeout * 1e3) * 1e-3 if timeout > 0 else 0,
                                len(fd_to_key))
            else:
                ready = ()
                if timeout > 0:
                    time.sleep(timeout)
            # 3. Ready files: data(mask), the control.py convention. Keys are looked up before
            #    any callback runs, as select() does (a callback may close and reuse an fd).
            for key, ev in [(fd_to_key.get(fd), ev) for fd, ev in ready]:
                if key is not None:
                    mask = ((_EVENT_WRITE if ev & _NOT_EPOLLIN else 0)
                            | (_EVENT_READ if ev & _NOT_EPOLLOUT else 0)) & key.events
                    self.fd_events += 1
                    key.data(mask)
            return self._run_ready(clock)
        registered = bool(self.selector.get_map())
        if timeout is None and not registered:
            return False                                 # nothing scheduled, nothing to read
        if clock.virtual:
            events = self.selector.select(0) if registered else []
            if not events and not self._ready:
                if wake_at is None:
                    events = self.selector.select(None)  # only a real file can wake us now
                elif wake_at > clock.now():
                    clock.set(wake_at)                   # jump straight to the next timer
        else:
            if registered:
                events = self.selector.select(timeout)
            else:
                events = []
                if timeout > 0:
                    time.sleep(timeout)

        # 3. Ready files: data(mask), the control.py convention.
        for key, mask in events:
            self.fd_events += 1
            key.data(mask)

        return self._run_ready(clock)

    def _run_ready(self, clock) -> bool:
        # 4. Due timers join the ready queue in (deadline, call order); measure their lag.
        timers = self._timers
        now = clock.now()
        ready = self._ready
        while timers and timers[0].when <= now:
            h = heapq.heappop(timers)
            if h.cancelled:
                continue
            lag = now - h.when
            self.timers_fired += 1
            self._lag_sum_s += lag
            if lag > self.lag_max_s:
                self.lag_max_s = lag
            ready.append(h)

        # 5. Run what was ready at this point; what they schedule waits for the next iteration.
        popleft = ready.popleft
        for _ in range(len(ready)):
            h = popleft()
            if h.cancelled:
                continue
            fn, args = h.fn, h.args
            # a handle runs once; cancelling it afterwards is a no-op (h.cancel(), inline)
            h.cancelled = True
            h.fn = None
            h.args = ()
            fn(*args)
        return True

    # ------------------------------------------------------------------ observation
    @property
    def lag_avg_s(self) -> float:
        return self._lag_sum_s / self.timers_fired if self.timers_fired else 0.0

    def snapshot(self) -> dict:
        return {
            "clock": "manual" if self.clock.virtual else "monotonic",
            "now": self.clock.now(),
            "iterations": self.iterations,
            "fd_events": self.fd_events,
            "timers_fired": self.timers_fired,
            "timers_pending": sum(1 for h in self._timers if not h.cancelled),
            "lag_max_s": self.lag_max_s,
            "lag_avg_s": self.lag_avg_s,
            "readers": len(self.selector.get_map()),
        }
