"""Protocol timers of one stack: a heap of deadlines any protocol registers in (kernel/time/timer.c's
``timer_list``, for a sans-I/O stack).

Invariants owned here:
- A ``Timer`` is pending at most once: ``mod_timer`` on a pending timer moves it (the old heap
  entry is left behind and skipped, lazy deletion), ``del_timer`` makes it not pending. A
  callback runs only if its timer is still pending at the same expiry when its turn comes.
- ``run(now)`` runs every timer whose expiry is ``<= now`` in expiry order (ties: arming order),
  including timers armed by a callback for a time ``<= now``; ``next_deadline()`` is the earliest
  pending expiry or None.
- Timer *sources* are tables that keep their own deadlines (the neighbour table, IP reassembly:
  each an object with ``next_deadline()`` and ``run_timers(now)``); the stack runs them in
  registration order before the heap. New protocols (TCP's retransmit and delayed-ACK timers)
  use ``Timer`` objects on the heap.

No clock is read here: the stack's ``poll(now)`` and ``run_timers(now)`` pass the time in and the
driver arms its one OS timer at ``Stack.next_deadline()``.
"""

from __future__ import annotations

import heapq
from typing import Callable


class Timer:
    """One deadline and its callback ``fn(now)`` (struct timer_list)."""

    __slots__ = ("fn", "expires", "name")

    def __init__(self, fn: Callable[[float], None], name: str = "") -> None:
        self.fn = fn
        self.expires: float | None = None     # None: not pending
        self.name = name

    @property
    def pending(self) -> bool:
        return self.expires is not None


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list = []           # (expires, seq, timer)
        self._seq = 0
        self.sources: list = []         # objects with next_deadline() and run_timers(now)

    def add_source(self, source) -> None:
        """Register a table that keeps its own deadlines (``next_deadline()``, ``run_timers(now)``)."""
        self.sources.append(source)

    def mod_timer(self, timer: Timer, expires: float) -> None:
        """Arm (or move) ``timer`` to ``expires``."""
        timer.expires = expires
        self._seq += 1
        heapq.heappush(self._heap, (expires, self._seq, timer))

    def del_timer(self, timer: Timer) -> bool:
        """Disarm; True if it was pending."""
        was = timer.expires is not None
        timer.expires = None
        return was

    def _top(self) -> float | None:
        h = self._heap
        while h and h[0][2].expires != h[0][0]:
            heapq.heappop(h)            # moved or deleted since it was pushed
        return h[0][0] if h else None

    def next_deadline(self) -> float | None:
        ds = [d for d in (s.next_deadline() for s in self.sources) if d is not None]
        top = self._top()
        if top is not None:
            ds.append(top)
        return min(ds) if ds else None

    def run(self, now: float) -> float | None:
        """Run what is due at ``now``; return ``next_deadline()`` as it is afterwards."""
        fired = False
        nd = None
        for s in self.sources:
            d = s.next_deadline()
            if d is not None:
                if d <= now:
                    s.run_timers(now)
                    fired = True
                elif nd is None or d < nd:
                    nd = d
        h = self._heap
        while h:
            top = self._top()
            if top is None or top > now:
                break
            _e, _s, timer = heapq.heappop(h)
            timer.expires = None
            timer.fn(now)
            fired = True
        if fired:
            # a callback may have armed anything, in any table: ask them all again
            return self.next_deadline()
        if h:
            top = self._top()
            if top is not None and (nd is None or top < nd):
                nd = top
        return nd

    def __len__(self) -> int:
        return sum(1 for e, _s, t in self._heap if t.expires == e)
