"""Seeded fault injection on a device's egress: loss, duplication, reordering, delay, corruption.

netem is not in the test machine's kernel, so faults are made here, deterministically: the same
seed and the same transmit sequence give the same faults. Like netem, faults apply on transmit;
wrap each end to fault both directions.

Invariant: every frame handed to ``transmit`` ends in exactly one of ``lost`` or the inner
device (once, or twice when duplicated), and ``counters`` say which:
``tx_frames == lost + passed`` and ``inner transmissions == passed + duplicated``.
Held (delayed/reordered) frames are released to the inner device by ``receive``/``flush`` once due,
so the stack's poll (which calls ``receive``) and ``poll_at`` keep them moving.
"""

from __future__ import annotations

import heapq
import random

from .device import Device


class FaultInjector(Device):
    def __init__(self, inner: Device, seed: int, *, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, delay_s: float = 0.0, reorder_gap_s: float = 0.001,
                 corrupt: float = 0.0) -> None:
        for name, p in (("loss", loss), ("dup", dup), ("reorder", reorder), ("corrupt", corrupt)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability in [0, 1]")
        self.inner = inner
        self.mac = inner.mac
        self.mtu = inner.mtu
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder, self.corrupt = loss, dup, reorder, corrupt
        self.delay_s = delay_s
        self.reorder_gap_s = reorder_gap_s
        self._held: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self.counters = {"tx_frames": 0, "lost": 0, "passed": 0, "duplicated": 0,
                         "reordered": 0, "corrupted": 0}

    def transmit(self, frame: bytes, now: float) -> bool:
        c = self.counters
        rng = self.rng
        c["tx_frames"] += 1
        if self.loss and rng.random() < self.loss:
            c["lost"] += 1
            return True              # the sender cannot tell: the wire ate it
        c["passed"] += 1
        copies = 1
        if self.dup and rng.random() < self.dup:
            c["duplicated"] += 1
            copies = 2
        for _ in range(copies):
            f = frame
            if self.corrupt and rng.random() < self.corrupt:
                c["corrupted"] += 1
                b = bytearray(f)
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
                f = bytes(b)
            due = now + self.delay_s
            if self.reorder and rng.random() < self.reorder:
                # netem: with a delay the chosen frame jumps the queue; without one it is held
                # back a little so the frames behind it overtake.
                c["reordered"] += 1
                due = now if self.delay_s else now + self.reorder_gap_s
            if due <= now and not self._held:
                self.inner.transmit(f, now)
            else:
                self._seq += 1
                heapq.heappush(self._held, (due, self._seq, f))
        self.flush(now)
        return True

    def flush(self, now: float) -> None:
        held = self._held
        while held and held[0][0] <= now:
            due, _seq, f = heapq.heappop(held)
            self.inner.transmit(f, due)

    def receive(self, now: float, budget: int) -> list:
        self.flush(now)
        return self.inner.receive(now, budget)

    def poll_at(self) -> float | None:
        mine = self._held[0][0] if self._held else None
        theirs = self.inner.poll_at()
        if mine is None:
            return theirs
        return mine if theirs is None else min(mine, theirs)
