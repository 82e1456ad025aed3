"""A thin driver for ``AoeDev`` on a real interface: AF_PACKET bound to (ifname, 0x88A2), the wall clock.

Invariant owned here: the only AoE initiator code that touches a socket or the clock; the core
decides everything (what to send, when to retransmit). Used for interop against vblade and
nas-server until the agent's own stack takes AoE frames through ``dev_add_pack(ETH_P_AOE)``.
A frame the kernel dropped before we read it shows in ``tp_drops`` (PACKET_STATISTICS).
"""

from __future__ import annotations

import select
import socket
import struct
import time

from netns_setup.nsutil import link_mtu_mac
from protocols.aoe import ETH_P_AOE

from .aoe import STATE_UP, AoeDev, AoeRequest

SOL_PACKET = 263
PACKET_STATISTICS = 6
MAX_FRAME_BYTES = 65536 + 14


class AoeSocketDriver:
    def __init__(self, ifname: str, shelf: int, slot: int, **dev_kw):
        mtu, mac = link_mtu_mac(ifname)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_AOE))
        try:
            self.sock.bind((ifname, ETH_P_AOE))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.dev = AoeDev(mac, shelf, slot, mtu=mtu, netif=ifname, **dev_kw)
        self.tx_frames = self.rx_frames = self.tx_errors = 0
        self.tp_drops = 0
        self.frames_seen: list[tuple[float, bytes, str]] = []   # (time, frame, "rx"/"tx") when record=True
        self.record = False

    def _flush(self) -> None:
        dev = self.dev
        while dev.outbox:
            frame = dev.outbox.popleft()
            try:
                self.sock.send(frame)
                self.tx_frames += 1
            except OSError:
                self.tx_errors += 1
            if self.record:
                self.frames_seen.append((time.monotonic(), frame, "tx"))

    def run_until(self, done, timeout_s: float) -> None:
        """Drive the core until ``done()`` or ``timeout_s`` passes (TimeoutError with the core's snapshot)."""
        dev = self.dev
        deadline = time.monotonic() + timeout_s
        buf = bytearray(MAX_FRAME_BYTES)
        while True:
            self._flush()
            if done():
                return
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"AoE e{dev.aoemajor}.{dev.aoeminor} on {dev.netif}: not done after {timeout_s} s; "
                                   f"state {dev.snapshot()}")
            nt = dev.next_timer()
            wait = min(deadline, nt if nt is not None else deadline) - now
            r, _, _ = select.select([self.sock], [], [], max(0.0, wait))
            now = time.monotonic()
            if r:
                while True:
                    try:
                        n = self.sock.recv_into(buf)
                    except (BlockingIOError, InterruptedError):
                        break
                    self.rx_frames += 1
                    frame = bytes(buf[:n])
                    if self.record:
                        self.frames_seen.append((now, frame, "rx"))
                    dev.receive(frame, now)
            nt = dev.next_timer()
            if nt is not None and now >= nt:
                dev.timer(now)

    def activate(self, timeout_s: float = 10.0) -> None:
        self.dev.activate(time.monotonic())
        self.run_until(lambda: self.dev.state == STATE_UP, timeout_s)

    def wait(self, reqs: list[AoeRequest], timeout_s: float = 30.0) -> None:
        self.run_until(lambda: all(r.done for r in reqs), timeout_s)

    def stats(self) -> dict:
        packets, drops = struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.tp_drops += drops
        return {"tx_frames": self.tx_frames, "rx_frames": self.rx_frames, "tx_errors": self.tx_errors, "tp_drops": self.tp_drops}

    def close(self) -> None:
        self.dev.close(time.monotonic())
        self.sock.close()
