"""AF_PACKET device: the agent's NIC on a real veth (the only phy that touches the kernel).

Invariants owned here:
- Frames handed to the stack are exactly the frames the kernel's veth delivered to this host
  (``PACKET_IGNORE_OUTGOING``: our own transmissions are not looped back into the receive path).
- Frames whose checksum the sending kernel left unfinished (``TP_STATUS_CSUMNOTREADY`` in
  ``PACKET_AUXDATA``: CHECKSUM_PARTIAL on a veth) are reported as ``csum_unnecessary`` -- the
  veth never corrupts them, exactly as the kernel treats them -- so the stack skips L4 checksum
  verification for them instead of counting them as ``UDP_CSUM`` drops.
- Frames the *kernel* dropped before we read them (our socket's queue overflowed) are counted
  from ``PACKET_STATISTICS`` as ``tp_drops``; they never reached the agent's allocator, so a run
  with ``tp_drops > 0`` is not a valid measurement of the agent's own drops.
- The receive buffer is raised with ``SO_RCVBUFFORCE`` on this socket only; no global sysctl
  (``rmem_max``) is ever changed.

The device performs no allocation from the agent's pool: the stack allocates each frame's pages
(GFP_ATOMIC, before reading any header) when it takes the frame from ``receive()``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23          # Linux >= 4.20
SO_RCVBUFFORCE = 33                  # needs CAP_NET_ADMIN; falls back to SO_RCVBUF (capped by rmem_max)
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_CSUM_VALID = 1 << 7
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
_STATS = struct.Struct("=II")         # struct tpacket_stats: tp_packets, tp_drops
MAX_FRAME_BYTES = 65536 + 14          # veth MTU may be up to 65535
DEFAULT_RCVBUF_BYTES = 32 << 20       # holds ~8k 4 KiB frames: a NAPI stall of the agent never overflows it at the flood rates used


class AfPacketError(OSError):
    pass


class AfPacketDevice:
    """A veth seen through an AF_PACKET socket. ``receive`` returns ``(frame, csum_unnecessary)``."""

    def __init__(self, ifname: str, *, rcvbuf_bytes: int = DEFAULT_RCVBUF_BYTES, mtu: int | None = None):
        self.ifname = ifname
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise AfPacketError(errno.EPERM, "AF_PACKET needs CAP_NET_RAW: run as root (sudo) or inside the host's namespace as the runner does") from None
        try:
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError as e:
            self.sock.close()
            raise AfPacketError(e.errno, f"cannot bind AF_PACKET to {ifname!r}: {e.strerror}; is this process in the host's namespace, and is the interface up?") from None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf_bytes)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        self.rcvbuf_bytes = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._filter_outgoing = False
        except OSError:
            self._filter_outgoing = True  # older kernels: drop PACKET_OUTGOING by the address's pkttype
        self.sock.setblocking(False)
        # getsockname/ioctl, not /sys/class/net: sysfs shows the namespace it was mounted in.
        self.mac = bytes(self.sock.getsockname()[4][:6])
        self.mtu = mtu if mtu is not None else _ioctl_mtu(self.sock, ifname)
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "rx_csum_notready": 0, "tx_packets": 0,
                         "tx_bytes": 0, "tx_errors": 0, "tp_packets": 0, "tp_drops": 0}
        self._buf = bytearray(MAX_FRAME_BYTES)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- receive: a NAPI-style batch of at most ``budget`` frames --------------------------
    def receive(self, now: float, budget: int) -> list[tuple[bytes, bool]]:
        out = []
        recvmsg_into = self.sock.recvmsg_into
        bufs = [self._buf]
        c = self.counters
        for _ in range(budget):
            try:
                n, anc, _flags, addr = recvmsg_into(bufs, _CMSG_SPACE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if self._filter_outgoing and addr[2] == socket.PACKET_OUTGOING:
                continue
            notready = False
            for level, typ, data in anc:
                if level == SOL_PACKET and typ == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                    status = _AUXDATA.unpack_from(data)[0]
                    notready = bool(status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID))
            c["rx_packets"] += 1
            c["rx_bytes"] += n
            if notready:
                c["rx_csum_notready"] += 1
            out.append((bytes(self._view[:n]), notready))
        return out

    def transmit(self, frame: bytes, now: float) -> bool:
        try:
            self.sock.send(frame)
        except (BlockingIOError, OSError):
            self.counters["tx_errors"] += 1
            return False
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += len(frame)
        return True

    def poll_at(self) -> float | None:
        return None

    def sample_stats(self) -> dict:
        """Read PACKET_STATISTICS (the kernel resets it on read) and accumulate tp_packets/tp_drops.
        After ``close()`` the totals so far (a snapshot taken during shutdown must not raise)."""
        if self.sock.fileno() < 0:
            return {"tp_packets": self.counters["tp_packets"], "tp_drops": self.counters["tp_drops"]}
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        packets, drops = _STATS.unpack(raw)
        self.counters["tp_packets"] += packets
        self.counters["tp_drops"] += drops
        return {"tp_packets": self.counters["tp_packets"], "tp_drops": self.counters["tp_drops"]}

    def close(self) -> None:
        self.sock.close()


def _ioctl_mtu(sock: socket.socket, ifname: str) -> int:
    import fcntl
    SIOCGIFMTU = 0x8921
    req = struct.pack("16si12x", ifname.encode()[:15], 0)
    return struct.unpack_from("16si", fcntl.ioctl(sock.fileno(), SIOCGIFMTU, req))[1]


def softnet_drops() -> int:
    """Σ over CPUs of the second column of /proc/net/softnet_stat (backlog drops, all namespaces)."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(line.split()[1], 16) for line in f if line.strip())
    except OSError:
        return 0


def pin_to_cpu(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
