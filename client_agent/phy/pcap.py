"""pcap capture: a writer (struct-written headers, no scapy on the hot path) and a device tap.

Invariant: the file is a valid classic pcap (magic a1b2c3d4, v2.4, LINKTYPE_ETHERNET,
microsecond timestamps taken from the ``now`` the frame was seen at) after every ``write``
returns -- each record is written whole, and ``flush`` is called on close.

Two places to capture, on purpose different:
- ``PcapTap(inner, path)`` wraps a device and records every frame the wire carried to or from
  it -- pfmemalloc ones included (the driver sees everything);
- ``stack.taps.append(PcapWriter(path).write)`` records what the stack's taps saw, which, as in
  Linux (``__netif_receive_skb_core`` skips ``ptype_all`` for pfmemalloc skbs), excludes frames
  received into reserve memory.
"""

from __future__ import annotations

import struct

from .device import Device, ForwardsOnRx

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    def __init__(self, path, snaplen: int = SNAPLEN) -> None:
        self.path = path
        self.snaplen = snaplen
        self._f = open(path, "wb")
        self._f.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.frames = 0

    def write(self, frame, now: float) -> None:
        sec = int(now)
        usec = int(round((now - sec) * 1_000_000))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        data = bytes(frame[: self.snaplen])
        self._f.write(_RECORD.pack(sec, usec, len(data), len(frame)) + data)
        self.frames += 1

    __call__ = write

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()


class PcapTap(ForwardsOnRx, Device):
    """Records frames in both directions of ``inner`` into one pcap file."""

    def __init__(self, inner: Device, path) -> None:
        self.inner = inner
        self.mac = inner.mac
        self.mtu = inner.mtu
        self.writer = PcapWriter(path)

    def transmit(self, frame: bytes, now: float) -> bool:
        self.writer.write(frame, now)
        return self.inner.transmit(frame, now)

    def receive(self, now: float, budget: int) -> list:
        frames = self.inner.receive(now, budget)
        for item in frames:
            self.writer.write(item[0] if type(item) is tuple else item, now)
        return frames

    def poll_at(self) -> float | None:
        return self.inner.poll_at()

    def close(self) -> None:
        self.writer.close()
