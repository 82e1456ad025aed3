"""Two in-memory devices joined by a wire with an optional one-way latency.

Invariant: every frame transmitted on one end is received on the other exactly once, in
transmit order, at ``transmit_now + latency_s`` or later; nothing is lost, copied twice or
reordered here (FaultInjector does that, seeded). Frames are immutable ``bytes``, so a frame
handed over is a copy the sender cannot change afterwards.

``loop`` is optional: when given (anything with ``call_at(t, fn)``), a delayed frame also asks
the loop to run at its due time and calls the receiving end's ``on_rx`` hook if one is set, so a
manual-clock loop does not sleep past a frame. Without a loop, the stack's ``poll`` returns the
device's ``poll_at()`` as a deadline, which is enough.
"""

from __future__ import annotations

from collections import deque

from .device import Device


class WireEnd(Device):
    def __init__(self, name: str, mac: bytes, mtu: int) -> None:
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.peer: WireEnd | None = None
        self.latency_s = 0.0
        self.loop = None
        self.on_rx = None                  # optional callable(): a frame became receivable
        self._rxq: deque[tuple[float, bytes]] = deque()
        self.counters = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                         "tx_dropped_mtu": 0}

    def transmit(self, frame: bytes, now: float) -> bool:
        # The MTU bounds the L3 packet; the Ethernet header (14 bytes) comes on top.
        if len(frame) > self.mtu + 14:
            self.counters["tx_dropped_mtu"] += 1
            return False
        frame = bytes(frame)
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += len(frame)
        due = now + self.latency_s
        peer = self.peer
        peer._rxq.append((due, frame))
        if self.loop is not None and self.latency_s > 0:
            self.loop.call_at(due, peer._notify)
        elif peer.on_rx is not None:
            peer.on_rx()
        return True

    def _notify(self) -> None:
        if self.on_rx is not None:
            self.on_rx()

    def receive(self, now: float, budget: int) -> list[bytes]:
        q = self._rxq
        out = []
        while q and len(out) < budget and q[0][0] <= now:
            out.append(q.popleft()[1])
        if out:
            self.counters["rx_packets"] += len(out)
            self.counters["rx_bytes"] += sum(map(len, out))
        return out

    def poll_at(self) -> float | None:
        return self._rxq[0][0] if self._rxq else None

    @property
    def pending(self) -> int:
        return len(self._rxq)


class WirePair:
    """``pair.a`` and ``pair.b``: what one transmits the other receives ``latency_s`` later."""

    def __init__(self, loop=None, latency_s: float = 0.0, mtu: int = 1500,
                 mac_a: bytes = b"\x02\x00\x00\x00\x00\x01",
                 mac_b: bytes = b"\x02\x00\x00\x00\x00\x02") -> None:
        if latency_s < 0:
            raise ValueError(f"latency_s={latency_s} is negative")
        self.a = WireEnd("a", mac_a, mtu)
        self.b = WireEnd("b", mac_b, mtu)
        self.a.peer, self.b.peer = self.b, self.a
        for end in (self.a, self.b):
            end.latency_s = latency_s
            end.loop = loop
