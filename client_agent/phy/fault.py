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

from .caps import device_caps
from .device import Device


def _faulty(dev, inner, seed: int, *, loss: float, dup: float, reorder: float, corrupt: float,
            delay_s: float, reorder_gap_s: float) -> None:
    """The common set-up of both injectors: validated probabilities, a seeded RNG, a held heap."""
    for name, p in (("loss", loss), ("dup", dup), ("reorder", reorder), ("corrupt", corrupt)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p} is not a probability in [0, 1]")
    dev.inner, dev.mac, dev.mtu = inner, inner.mac, inner.mtu
    dev.rng = random.Random(seed)
    dev.loss, dev.dup, dev.reorder, dev.corrupt = loss, dup, reorder, corrupt
    dev.delay_s, dev.reorder_gap_s = delay_s, reorder_gap_s
    dev._held = []            # (due, seq, frame or item)
    dev._seq = 0


class FaultInjector(Device):
    def __init__(self, inner: Device, seed: int, *, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, delay_s: float = 0.0, reorder_gap_s: float = 0.001,
                 corrupt: float = 0.0) -> None:
        _faulty(self, inner, seed, loss=loss, dup=dup, reorder=reorder, corrupt=corrupt,
                delay_s=delay_s, reorder_gap_s=reorder_gap_s)
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


class RxFaultInjector(Device):
    """The same faults on a device's *ingress* (frames the wire delivered, before the stack sees
    them): loss, duplication, reordering, delay. Decisions come from a seeded RNG in the order the
    frames arrive, so a real run's faults are keyed by packet index. Items pass through as the
    inner device gave them (plain frames or ``(frame, csum_unnecessary)`` pairs)."""

    def __init__(self, inner: Device, seed: int, *, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, delay_s: float = 0.0, reorder_gap_s: float = 0.001) -> None:
        _faulty(self, inner, seed, loss=loss, dup=dup, reorder=reorder, corrupt=0.0,
                delay_s=delay_s, reorder_gap_s=reorder_gap_s)
        self.counters = {"rx_frames": 0, "lost": 0, "passed": 0, "duplicated": 0, "reordered": 0}

    def transmit(self, frame: bytes, now: float) -> bool:
        return self.inner.transmit(frame, now)

    def receive(self, now: float, budget: int) -> list:
        c = self.counters
        rng = self.rng
        out = []
        for item in self.inner.receive(now, budget):
            c["rx_frames"] += 1
            if self.loss and rng.random() < self.loss:
                c["lost"] += 1
                continue
            c["passed"] += 1
            copies = 2 if self.dup and rng.random() < self.dup else 1
            if copies == 2:
                c["duplicated"] += 1
            for _ in range(copies):
                due = now + self.delay_s
                if self.reorder and rng.random() < self.reorder:
                    c["reordered"] += 1
                    due = now + self.delay_s + self.reorder_gap_s   # the frames behind it overtake
                self._seq += 1
                heapq.heappush(self._held, (due, self._seq, item))
        held = self._held
        while held and held[0][0] <= now and len(out) < budget:
            out.append(heapq.heappop(held)[2])
        return out

    def poll_at(self) -> float | None:
        mine = self._held[0][0] if self._held else None
        theirs = self.inner.poll_at()
        if mine is None:
            return theirs
        return mine if theirs is None else min(mine, theirs)


FAULT_KEYS = {"loss": float, "dup": float, "reorder": float, "delay_ms": float, "seed": int}


def parse_fault_spec(text: str) -> dict:
    """``loss=0.05,dup=0.01,reorder=0.02,delay_ms=1,seed=7`` -> dict; ValueError with the fix."""
    spec: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in FAULT_KEYS:
            raise ValueError(f"fault spec {text!r}: {part!r} is not KEY=VALUE with KEY one of "
                             f"{', '.join(FAULT_KEYS)} (e.g. loss=0.05,dup=0.01,seed=7)")
        try:
            spec[key] = FAULT_KEYS[key](value)
        except ValueError:
            raise ValueError(f"fault spec {text!r}: {key}={value!r} is not a number") from None
        if key in ("loss", "dup", "reorder") and not 0.0 <= spec[key] <= 0.5:
            raise ValueError(f"fault spec {text!r}: {key}={spec[key]} outside 0..0.5")
        if key == "delay_ms" and not 0.0 <= spec[key] <= 1000.0:
            raise ValueError(f"fault spec {text!r}: delay_ms={spec[key]} outside 0..1000")
    return spec


class BothWays(Device):
    """Faults on both directions of a real device (netem is not in this kernel): egress through a
    ``FaultInjector``, ingress through an ``RxFaultInjector``, each with its own seeded RNG.
    Passes ``fileno``, ``sample_stats``, ``close``, ``caps`` and ``flush_tx`` through; ``counters`` are the inner device's
    plus ``fault_tx_*`` / ``fault_rx_*``."""

    def __init__(self, inner, spec: dict) -> None:
        seed = spec.get("seed", 0)
        kw = dict(loss=spec.get("loss", 0.0), dup=spec.get("dup", 0.0), reorder=spec.get("reorder", 0.0),
                  delay_s=spec.get("delay_ms", 0.0) / 1000)
        self.real = inner
        self.rx = RxFaultInjector(inner, seed * 2 + 1, **kw)
        self.tx = FaultInjector(self.rx, seed * 2, **kw)
        self.mac, self.mtu = inner.mac, inner.mtu
        # The stack must see the real NIC's offloads (which frames carry a partial checksum),
        # and the loop must ring its transmit doorbell.
        # TSO/UFO excepted: a fault injector acts per wire frame, and a GSO buffer is many of them.
        from dataclasses import replace as _replace
        self.caps = _replace(device_caps(inner), tso=False, ufo=False)
        if hasattr(inner, "flush_tx"):
            self.flush_tx = inner.flush_tx

    def fileno(self) -> int:
        return self.real.fileno()

    def transmit(self, frame: bytes, now: float) -> bool:
        return self.tx.transmit(frame, now)

    def receive(self, now: float, budget: int) -> list:
        return self.tx.receive(now, budget)

    def poll_at(self) -> float | None:
        return self.tx.poll_at()

    def sample_stats(self) -> dict:
        return self.real.sample_stats()

    def close(self) -> None:
        self.real.close()

    @property
    def counters(self) -> dict:
        c = dict(getattr(self.real, "counters", {}))
        c.update({f"fault_tx_{k}": v for k, v in self.tx.counters.items()})
        c.update({f"fault_rx_{k}": v for k, v in self.rx.counters.items()})
        return c
