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

- With the ``tx`` offload (phy/caps.py) the socket carries ``PACKET_VNET_HDR``: each
  unfragmented UDP frame goes out with NEEDS_CSUM and the veth completes its checksum
  (``VethTxChecksum``); receive then scatters the virtio header into its own buffer.

``ring.RingDevice`` is the same device over mmap'ed rings; ``client-agent --nic`` chooses.

The device performs no allocation from the agent's pool: the stack allocates each frame's pages
(GFP_ATOMIC, before reading any header) when it takes the frame from ``receive()``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from .caps import DeviceCapabilities, parse_offloads
from .vnet import NO_OFFLOAD_HDR, VNET_HDR_LEN, tx_header

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23          # Linux >= 4.20
SO_RCVBUFFORCE = 33                  # needs CAP_NET_ADMIN; falls back to SO_RCVBUF (capped by rmem_max)
PACKET_VNET_HDR = 15
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_CSUM_VALID = 1 << 7
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
_STATS = struct.Struct("=II")         # struct tpacket_stats: tp_packets, tp_drops
MAX_FRAME_BYTES = 65536 + 14          # veth MTU may be up to 65535
DEFAULT_RCVBUF_BYTES = 32 << 20       # holds ~8k 4 KiB frames: a NAPI stall of the agent never overflows it at the flood rates used


# The socket device as it always was: it reports the kernel's "checksum valid/not ready" per
# frame (PACKET_AUXDATA) and sends complete frames.
SOCKET_DEFAULT_OFFLOADS = parse_offloads("rx")


class AfPacketError(OSError):
    pass


class AfPacketDevice:
    """A veth seen through an AF_PACKET socket. ``receive`` returns ``(frame, csum_unnecessary)``."""

    def __init__(self, ifname: str, *, rcvbuf_bytes: int = DEFAULT_RCVBUF_BYTES, mtu: int | None = None,
                 offloads: DeviceCapabilities | None = None):
        self.ifname = ifname
        caps = SOCKET_DEFAULT_OFFLOADS if offloads is None else offloads
        if caps.gro:
            raise AfPacketError(errno.EINVAL, "offload gro needs PACKET_VNET_HDR on receive: use --nic ring-v3")
        self.sock = open_packet_socket(ifname, vnet_hdr=caps.tx_csum)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf_bytes)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        self.rcvbuf_bytes = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self._filter_outgoing = not ignore_outgoing(self.sock)
        self.sock.setblocking(False)
        # getsockname/ioctl, not /sys/class/net: sysfs shows the namespace it was mounted in.
        self.mac = bytes(self.sock.getsockname()[4][:6])
        self.mtu = mtu if mtu is not None else _ioctl_mtu(self.sock, ifname)
        self.caps = caps
        self._vnet = caps.tx_csum
        self._csum_ok_mask = (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID) if caps.rx_csum else TP_STATUS_CSUMNOTREADY
        self._veth_csum = VethTxChecksum(self.sock, ifname) if caps.tx_csum else None
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "rx_csum_notready": 0, "tx_packets": 0,
                         "tx_bytes": 0, "tx_errors": 0, "tx_csum_partial": 0, "tp_packets": 0, "tp_drops": 0}
        self._buf = bytearray(MAX_FRAME_BYTES)
        self._view = memoryview(self._buf)
        self._vhdr = bytearray(VNET_HDR_LEN)

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- receive: a NAPI-style batch of at most ``budget`` frames --------------------------
    def receive(self, now: float, budget: int) -> list[tuple[bytes, bool]]:
        out = []
        recvmsg_into = self.sock.recvmsg_into
        # PACKET_VNET_HDR (on for tx checksum offload) puts the virtio header first: scatter it
        # into its own buffer; the auxdata status carries the same checksum state.
        bufs = [self._vhdr, self._buf] if self._vnet else [self._buf]
        skip = VNET_HDR_LEN if self._vnet else 0
        ok_mask = self._csum_ok_mask
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
            n -= skip
            notready = False
            for level, typ, data in anc:
                if level == SOL_PACKET and typ == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                    status = _AUXDATA.unpack_from(data)[0]
                    notready = bool(status & ok_mask)
            c["rx_packets"] += 1
            c["rx_bytes"] += n
            if notready:
                c["rx_csum_notready"] += 1
            out.append((bytes(self._view[:n]), notready))
        return out

    def transmit(self, frame: bytes, now: float, gso_size: int = 0) -> bool:
        """One ``send``; with ``tx`` the virtio header first (NEEDS_CSUM; ``gso_size`` > 0: a TSO
        frame the kernel segments, see vnet.tx_header)."""
        try:
            if self._vnet:
                hdr = tx_header(frame, True, gso_size)
                self.sock.sendmsg([hdr, frame])
                if hdr is not NO_OFFLOAD_HDR:
                    self.counters["tx_csum_partial"] += 1
            else:
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
        if self._veth_csum is not None:
            self._veth_csum.restore()
        self.sock.close()


def open_packet_socket(ifname: str, *, vnet_hdr: bool = False, setup=None) -> socket.socket:
    """An AF_PACKET SOCK_RAW socket bound to ``ifname`` for every EtherType.

    ``vnet_hdr`` sets PACKET_VNET_HDR; ``setup(sock)`` runs before the bind (the kernel refuses
    PACKET_VERSION / PACKET_VNET_HDR / rings once they are set up, and a ring set up before the
    bind receives no frame into the socket queue meanwhile). Raises AfPacketError with what to do."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise AfPacketError(errno.EPERM, "AF_PACKET needs CAP_NET_RAW: run as root (sudo) or inside the host's namespace as the runner does") from None
    try:
        if vnet_hdr:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        if setup is not None:
            setup(sock)
        sock.bind((ifname, ETH_P_ALL))
    except OSError as e:
        sock.close()
        if isinstance(e, AfPacketError):
            raise
        raise AfPacketError(e.errno, f"cannot bind AF_PACKET to {ifname!r}: {e.strerror}; is this process in the host's namespace, and is the interface up?") from None
    return sock


def ignore_outgoing(sock: socket.socket) -> bool:
    """PACKET_IGNORE_OUTGOING (Linux >= 4.20): our own transmissions are not looped back. False on
    older kernels: the caller then drops PACKET_OUTGOING frames by their pkttype."""
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        return True
    except OSError:
        return False


class VethTxChecksum:
    """The veth's own transmit checksum feature (NETIF_F_HW_CSUM, ``ethtool -K IF tx``), turned
    off while a device hands it CHECKSUM_PARTIAL frames, and restored on close.

    Why: a veth that claims HW_CSUM passes a partial checksum on untouched (the receiving kernel
    trusts CHECKSUM_PARTIAL), so every capture on the path would show a pseudo-header sum. With
    the feature off, ``validate_xmit_skb`` -> ``skb_checksum_help`` completes it in C at transmit,
    as a NIC's checksum engine would: the wire carries correct checksums and the agent computes
    none. One device's feature flag in the host's own namespace (ETHTOOL_GTXCSUM/STXCSUM), not a
    sysctl."""

    def __init__(self, sock: socket.socket, ifname: str) -> None:
        self.sock, self.ifname = sock, ifname
        self.was_on = _ethtool_value(sock, ifname, ETHTOOL_GTXCSUM)
        if self.was_on:
            _ethtool_value(sock, ifname, ETHTOOL_STXCSUM, 0)

    def restore(self) -> None:
        if self.was_on:
            try:
                _ethtool_value(self.sock, self.ifname, ETHTOOL_STXCSUM, 1)
            except OSError:
                pass            # the veth is gone with its namespace: nothing to restore
            self.was_on = False


def _ethtool_value(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    """SIOCETHTOOL with a ``struct ethtool_value`` (cmd, data); returns data as the kernel left it."""
    import ctypes
    import fcntl
    val = ctypes.create_string_buffer(struct.pack("=II", cmd, data), 8)
    ifr = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(val)) + bytes(16)
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    return struct.unpack("=II", val.raw)[1]


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
