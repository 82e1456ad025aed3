"""nas-server's AoE port: ``AoeTarget`` on an AF_PACKET socket bound to one interface (EtherType 0x88A2).

Invariant owned here: this is the only AoE code that touches a socket or the clock. Replies leave
at the ``send_at`` the core gave them (its stated service time), from a timer heap serviced by
the server's one selector loop -- no thread, no sleep. A frame the kernel dropped before we read
it shows in ``tp_drops`` (PACKET_STATISTICS); a reply the socket refused is counted in
``tx_errors``.
"""

from __future__ import annotations

import heapq
import selectors
import socket
import struct
import time
from collections import Counter

from netns_setup.nsutil import link_mtu_mac
from protocols.aoe import ETH_P_AOE

from .aoe_target import AoeTarget

SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
RCVBUF_BYTES = 4 << 20
BATCH = 64
MAX_FRAME_BYTES = 65536 + 14


class AoePort:
    def __init__(self, ifname: str, core_factory, sel: selectors.BaseSelector, log=None):
        """Open the socket on ``ifname``; ``core_factory(mac, mtu)`` builds the ``AoeTarget``."""
        self.ifname = ifname
        try:
            mtu, mac = link_mtu_mac(ifname)
        except ValueError as e:
            raise ValueError(f"--aoe-interface: {e}") from None
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_AOE))
        except PermissionError:
            raise PermissionError(f"--aoe-interface {ifname}: an AF_PACKET socket needs CAP_NET_RAW; run as root") from None
        try:
            self.sock.bind((ifname, ETH_P_AOE))
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.core: AoeTarget = core_factory(mac, mtu)
        self.log = log or (lambda s: None)
        self.stats: Counter = Counter()
        self._heap: list = []
        self._seq = 0
        self._buf = bytearray(MAX_FRAME_BYTES)
        self.sel = sel
        sel.register(self.sock, selectors.EVENT_READ, lambda m: self._on_readable())

    def start(self) -> None:
        """Announce every disk (vblade's ``aoead``): initiators that lost us rediscover us."""
        self._queue(self.core.advertise(time.monotonic()))
        self.send_due()

    def _queue(self, replies) -> None:
        for at, frame in replies:
            self._seq += 1
            heapq.heappush(self._heap, (at, self._seq, frame))

    def _on_readable(self) -> None:
        view = memoryview(self._buf)
        for _ in range(BATCH):
            try:
                n = self.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.stats["rx_errors"] += 1
                self.log(f"aoe: receive error on {self.ifname}: {e}")
                break
            self.stats["rx_frames"] += 1
            self._queue(self.core.handle(bytes(view[:n]), time.monotonic()))
        self.send_due()

    def send_due(self) -> float:
        """Send replies whose time has come; return seconds until the next one (0.5 if none)."""
        now = time.monotonic()
        q = self._heap
        while q and q[0][0] <= now:
            _at, _seq, frame = heapq.heappop(q)
            try:
                self.sock.send(frame)
                self.stats["tx_frames"] += 1
            except OSError as e:
                self.stats["tx_errors"] += 1
                self.log(f"aoe: reply of {len(frame)} bytes not sent on {self.ifname}: {e}")
        return min(0.5, q[0][0] - now) if q else 0.5

    def snapshot(self) -> dict:
        try:
            packets, drops = struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.stats["tp_packets"] += packets
            self.stats["tp_drops"] += drops
        except OSError:
            pass
        return dict(self.core.snapshot(), interface=self.ifname, port=dict(self.stats), replies_waiting=len(self._heap))

    def close(self) -> None:
        try:
            self.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
