"""AF_PACKET with mmap'ed rings: the agent's NIC without a system call per frame.

``RingDevice`` is the same Device as ``afpacket.AfPacketDevice`` (same ``receive``/``transmit``/
``sample_stats``/``counters``), so the stack never knows which one it drives:

- receive: ``PACKET_RX_RING`` with ``TPACKET_V3`` (blocks the kernel fills and retires as a whole
  -- when full or after ``tp_retire_blk_tov`` ms -- then hands to us with ``TP_STATUS_USER``; we
  walk its ``tpacket3_hdr`` chain by ``tp_next_offset`` and give the block back with
  ``TP_STATUS_KERNEL`` once every frame in it was copied out) or ``TPACKET_V2`` (fixed slots, one
  status word each: no block timeout, so no added latency when the link is quiet). The only
  system call is the readiness wait; ``packet_poll`` reports readable once a block (V3) or a
  slot (V2) is the user's.
- transmit: ``PACKET_TX_RING`` (``TPACKET_V2`` slots on a second packet socket bound with
  protocol 0, so it never receives): ``transmit`` copies the frame into the next free slot and
  marks it ``TP_STATUS_SEND_REQUEST``; ``flush_tx`` -- called by the agent's loop before it waits
  (``Loop.before_wait``), or when ``TX_BATCH`` frames are queued -- is one ``send()`` for all of
  them (``tpacket_snd``). A slot the kernel has not released yet (its skb still in flight) is
  not reused; a full ring makes ``transmit`` return False (the stack's FULL_RING drop). With
  ``tx_ring=False`` each frame is one ``send()`` as in AfPacketDevice.
- offloads (``caps.DeviceCapabilities``): ``PACKET_VNET_HDR`` on the transmit socket for ``tx``
  (NEEDS_CSUM per unfragmented UDP frame, the veth completes it: see ``afpacket.VethTxChecksum``),
  on the receive socket for ``gro`` (the virtio header's gso_type/gso_size of a merged frame).

Invariants kept from afpacket.py: ``PACKET_IGNORE_OUTGOING`` (fallback: the slot's
``sll_pkttype``); a frame the sending kernel left CHECKSUM_PARTIAL (``TP_STATUS_CSUMNOTREADY``)
is reported ``csum_unnecessary``; ``tp_drops`` come from ``PACKET_STATISTICS``
(``tpacket_stats_v3`` for V3, with ``tp_freeze_q_cnt``: how often every block was the user's);
no global sysctl is changed; the device allocates nothing from the agent's pool. A frame the
ring truncated (``tp_snaplen < tp_len``) is never handed up: it is counted
(``rx_ring_truncated``) and dropped.
"""

from __future__ import annotations

import errno
import mmap
import socket
import struct

from .afpacket import (_STATS, PACKET_STATISTICS, PACKET_VNET_HDR, SOL_PACKET, TP_STATUS_CSUM_VALID,
                       TP_STATUS_CSUMNOTREADY, AfPacketError, VethTxChecksum, _ioctl_mtu, ignore_outgoing,
                       open_packet_socket)
from .caps import DeviceCapabilities, parse_offloads
from .vnet import NO_OFFLOAD_HDR, VNET_HDR, VNET_HDR_LEN, gro_pages, tx_header

PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_TX_RING = 13
TPACKET_V2 = 1
TPACKET_V3 = 2
SO_SNDBUFFORCE = 32
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4
TPACKET_ALIGNMENT = 16
PAGE = mmap.PAGESIZE

_U32 = struct.Struct("=I")
_REQ = struct.Struct("=IIII")                 # struct tpacket_req
_REQ3 = struct.Struct("=IIIIIII")             # struct tpacket_req3
_STATS3 = struct.Struct("=III")               # struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status (off 8),
# num_pkts (12), offset_to_first_pkt (16), blk_len, seq_num, ts_first_pkt, ts_last_pkt.
BLK_STATUS_OFF = 8
_BLK_PKTS = struct.Struct("=II")              # num_pkts, offset_to_first_pkt at offset 12
# struct tpacket3_hdr (48 bytes): tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status,
# tp_mac, tp_net, hv1, padding; read: next_offset, snaplen, len, status, mac.
_V3_PKT = struct.Struct("=I8xIIIH")
V3_SLL_OFF = 48                               # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
# struct tpacket2_hdr (32 bytes): tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec, tp_nsec,
# vlan_tci, vlan_tpid, padding; read: status, len, snaplen, mac.
_V2_PKT = struct.Struct("=IIIH")
V2_SLL_OFF = 32
V2_TX_DATA_OFF = 32                           # tp_hdrlen - sizeof(struct sockaddr_ll) = 52 - 20
SLL_PKTTYPE = 10                              # offsetof(struct sockaddr_ll, sll_pkttype)

DEFAULT_RX_RING_BYTES = 8 << 20               # V3: ~40k 106-byte frames, ~5k 1500-byte ones
# V2 spends a whole slot (2 KiB at MTU 1500) on each frame: 16 MiB = 8192 slots, ~100 ms of an
# 80 kpps flood (8 MiB ran out in a 50 ms stall of the agent at 80 kpps: tp_drops).
DEFAULT_RX_RING_BYTES_V2 = 16 << 20
DEFAULT_BLOCK_BYTES = 1 << 16                 # V3 block; 128 KiB with gro (a merged frame fits)
DEFAULT_BLOCK_TOV_MS = 1                      # retire a partly filled block after 1 ms (1 jiffy at HZ=250: 4 ms)
DEFAULT_TX_SLOTS = 256
TX_BATCH = 64                                 # queued frames that trigger a send() without waiting for the loop
DEFAULT_SNDBUF_BYTES = 4 << 20


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


class RxRingV3:
    """Walks a TPACKET_V3 receive ring held in ``buf`` (an mmap, or a bytearray in tests).

    ``next_frames(budget)`` yields ``(offset, snaplen, len, status, mac)`` of up to ``budget``
    frames, releasing each block (status -> TP_STATUS_KERNEL) right after its last frame was
    yielded, so the caller must have copied what it needs before asking for the next frame."""

    def __init__(self, buf, block_size: int, block_nr: int) -> None:
        self.buf, self.block_size, self.block_nr = buf, block_size, block_nr
        self.blk = 0           # the block we read next (or are reading)
        self.left = 0          # frames of it not yet read
        self.off = 0           # offset of its next frame
        self.blocks = 0        # blocks consumed

    def ready(self) -> bool:
        return self.left > 0 or bool(_U32.unpack_from(self.buf, self.blk * self.block_size + BLK_STATUS_OFF)[0] & TP_STATUS_USER)

    def next_frames(self, budget: int):
        buf = self.buf
        unpack_pkt = _V3_PKT.unpack_from
        for _ in range(budget):
            if not self.left:
                base = self.blk * self.block_size
                if not _U32.unpack_from(buf, base + BLK_STATUS_OFF)[0] & TP_STATUS_USER:
                    return
                num, first = _BLK_PKTS.unpack_from(buf, base + 12)
                if not num:                      # never retired empty, but never stall on one
                    self._release(base)
                    continue
                self.left, self.off = num, base + first
            off = self.off
            nxt, snap, ln, status, mac = unpack_pkt(buf, off)
            self.left -= 1
            self.off = off + nxt
            yield off, snap, ln, status, mac
            if not self.left:
                self._release(self.blk * self.block_size)

    def _release(self, base: int) -> None:
        _U32.pack_into(self.buf, base + BLK_STATUS_OFF, TP_STATUS_KERNEL)
        self.blk = (self.blk + 1) % self.block_nr
        self.left = 0
        self.blocks += 1


class RxRingV2:
    """Walks a TPACKET_V2 receive ring: ``frame_nr`` slots of ``frame_size`` bytes, blocks of
    ``block_size``. Same contract as RxRingV3 (each slot released after it was yielded)."""

    def __init__(self, buf, block_size: int, frame_size: int, frame_nr: int) -> None:
        self.buf, self.block_size, self.frame_size, self.frame_nr = buf, block_size, frame_size, frame_nr
        self.per_block = block_size // frame_size
        self.head = 0
        self.blocks = 0

    def _slot(self, i: int) -> int:
        return (i // self.per_block) * self.block_size + (i % self.per_block) * self.frame_size

    def ready(self) -> bool:
        return bool(_U32.unpack_from(self.buf, self._slot(self.head))[0] & TP_STATUS_USER)

    def next_frames(self, budget: int):
        buf = self.buf
        unpack_pkt = _V2_PKT.unpack_from
        release = _U32.pack_into
        head, nr = self.head, self.frame_nr
        fs, pb, bs = self.frame_size, self.per_block, self.block_size
        contiguous = pb * fs == bs                # no slack at a block's end: slot i at i * fs
        for _ in range(budget):
            off = head * fs if contiguous else (head // pb) * bs + (head % pb) * fs
            status, ln, snap, mac = unpack_pkt(buf, off)
            if not status & TP_STATUS_USER:
                return
            yield off, snap, ln, status, mac
            release(buf, off, TP_STATUS_KERNEL)
            head = head + 1 if head + 1 < nr else 0
            self.head = head


class TxRingV2:
    """A TPACKET_V2 transmit ring in ``buf``: ``put`` fills the next free slot (False: the kernel
    still holds it), the owner's ``send()`` hands every SEND_REQUEST slot to ``tpacket_snd``."""

    def __init__(self, buf, block_size: int, frame_size: int, frame_nr: int) -> None:
        self.buf, self.block_size, self.frame_size, self.frame_nr = buf, block_size, frame_size, frame_nr
        self.per_block = block_size // frame_size
        self.head = 0
        self.wrong_format = 0
        self.max_data = frame_size - V2_TX_DATA_OFF

    def _slot(self, i: int) -> int:
        return (i // self.per_block) * self.block_size + (i % self.per_block) * self.frame_size

    def head_status(self) -> int:
        return _U32.unpack_from(self.buf, self._slot(self.head))[0]

    def last_status(self) -> int:
        return _U32.unpack_from(self.buf, self._slot((self.head - 1) % self.frame_nr))[0]

    def put(self, hdr: bytes, frame) -> bool:
        off = self._slot(self.head)
        buf = self.buf
        status = _U32.unpack_from(buf, off)[0]
        if status != TP_STATUS_AVAILABLE:
            if status != TP_STATUS_WRONG_FORMAT:
                return False
            self.wrong_format += 1                 # the kernel refused it: counted, slot reused
        d = off + V2_TX_DATA_OFF
        h = len(hdr)
        n = h + len(frame)
        if h:
            buf[d:d + h] = hdr
        buf[d + h:d + n] = frame
        _U32.pack_into(buf, off + 4, n)            # tp_len
        _U32.pack_into(buf, off, TP_STATUS_SEND_REQUEST)
        self.head = self.head + 1 if self.head + 1 < self.frame_nr else 0
        return True


class TxSocket:
    """The transmit half: a packet socket bound to ``ifname`` with protocol 0 (it never receives:
    no second copy of every frame), ``PACKET_VNET_HDR`` when ``vnet``, a larger ``SO_SNDBUFFORCE``
    (this socket only), and with ``ring`` a TPACKET_V2 ``PACKET_TX_RING`` of about ``slots`` slots
    sized for ``mtu``. ``kick()`` is the one ``send()`` that hands every SEND_REQUEST slot to
    ``tpacket_snd``; it returns True while slots are still queued (the socket's sndbuf was full)."""

    def __init__(self, ifname: str, mtu: int, *, vnet: bool, ring: bool, slots: int = DEFAULT_TX_SLOTS,
                 gso: bool = False) -> None:
        self.ring = None
        self._mm = self._view = None
        self.gso_sock = None
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        geom = None
        try:
            if vnet:
                s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            if ring:
                s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
                fsize = _pow2_at_least(V2_TX_DATA_OFF + (VNET_HDR_LEN if vnet else 0) + mtu + 14 + 4)
                bsize = max(fsize, PAGE)
                bnr = max(slots // (bsize // fsize), 1)
                geom = (bsize, fsize, bnr * (bsize // fsize))
                s.setsockopt(SOL_PACKET, PACKET_TX_RING, _REQ.pack(bsize, bnr, fsize, geom[2]))
            s.bind((ifname, 0))
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, DEFAULT_SNDBUF_BYTES)
            except PermissionError:
                pass
            s.setblocking(False)
            if geom is not None:
                self._mm = mmap.mmap(s.fileno(), geom[0] * bnr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                self._view = memoryview(self._mm)
                self.ring = TxRingV2(self._view, *geom)
        except OSError as e:
            s.close()
            raise AfPacketError(e.errno, f"cannot set up the transmit socket on {ifname!r}: {e.strerror}") from None
        self.sock = s
        self.mac = bytes(s.getsockname()[4][:6])
        if gso and geom is not None:
            # A socket with a TX ring sends only its ring (packet_sendmsg -> tpacket_snd ignores
            # the message's own bytes), and a GSO frame is longer than a slot: TSO frames go
            # through a second transmit socket, ring-less, with PACKET_VNET_HDR (packet_snd).
            g = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                g.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                g.bind((ifname, 0))
                try:
                    g.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, DEFAULT_SNDBUF_BYTES)
                except PermissionError:
                    pass
                g.setblocking(False)
            except OSError as e:
                g.close()
                self.close()
                raise AfPacketError(e.errno, f"cannot set up the TSO socket on {ifname!r}: {e.strerror}") from None
            self.gso_sock = g
        elif gso:
            self.gso_sock = s

    def kick(self) -> bool:
        """One send(); raises OSError other than EAGAIN/EINTR. True: slots still queued."""
        try:
            self.sock.send(b"")
        except (BlockingIOError, InterruptedError):
            pass                                   # sndbuf full: the slots stay queued
        return self.ring.last_status() == TP_STATUS_SEND_REQUEST

    def close(self) -> None:
        self.ring = None
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self.gso_sock is not None and self.gso_sock is not self.sock:
            self.gso_sock.close()
        self.gso_sock = None
        self.sock.close()


class RingDevice:
    """A veth through mmap'ed AF_PACKET rings. ``receive`` returns ``(frame, csum_unnecessary)``
    items, or ``(frame, csum_unnecessary, pages)`` for a GRO'd frame (``pages``: what Linux's
    truesize of the merged skb is in pool pages, see vnet.gro_pages)."""

    def __init__(self, ifname: str, *, version: int = 3, offloads: DeviceCapabilities | None = None,
                 mtu: int | None = None, rx_ring_bytes: int | None = None,
                 block_bytes: int | None = None, block_tov_ms: int = DEFAULT_BLOCK_TOV_MS,
                 tx_ring: bool = True, tx_slots: int = DEFAULT_TX_SLOTS) -> None:
        if version not in (2, 3):
            raise AfPacketError(errno.EINVAL, f"ring version must be 2 or 3, got {version}")
        caps = parse_offloads("rx") if offloads is None else offloads
        if caps.gro and version != 3:
            raise AfPacketError(errno.EINVAL, "offload gro needs the TPACKET_V3 ring (a merged frame is up to 64 KiB)")
        self.ifname, self.version, self.caps = ifname, version, caps
        if rx_ring_bytes is None:
            rx_ring_bytes = DEFAULT_RX_RING_BYTES if version == 3 else DEFAULT_RX_RING_BYTES_V2
        self._rx_vnet = caps.gro
        vnet_len = VNET_HDR_LEN if self._rx_vnet else 0
        self._mm_rx = None
        self._rx_view = None
        self.tx = self.tx_ring = self.rx = None
        self._kick = False
        self._veth_csum = None

        def rx_setup(sock: socket.socket) -> None:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3 if version == 3 else TPACKET_V2)
            self._filter_outgoing = not ignore_outgoing(sock)
            self.mtu = mtu if mtu is not None else _ioctl_mtu(sock, ifname)
            if version == 3:
                bsize = block_bytes or (1 << 17 if caps.gro else DEFAULT_BLOCK_BYTES)
                bsize = max(_align(bsize, PAGE), _pow2_at_least(self.mtu + 14 + 4 + 128))
                bnr = max(rx_ring_bytes // bsize, 4)
                fsize = 2048 if bsize >= 2048 else bsize
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                                _REQ3.pack(bsize, bnr, fsize, (bsize // fsize) * bnr, block_tov_ms, 0, 0))
                self._rx_geom = (bsize, bnr)
                self._rx_len = bsize * bnr
            else:
                # slot: tpacket2_hdr + sockaddr_ll (aligned, >= 16 for the MAC) + vnet + frame
                need = _align(V2_SLL_OFF + 20 + 16, TPACKET_ALIGNMENT) + vnet_len + self.mtu + 14 + 4
                fsize = _pow2_at_least(need)
                bsize = max(fsize, PAGE)
                fnr = max(rx_ring_bytes // fsize, 8)
                bnr = max(fnr // (bsize // fsize), 1)
                fnr = bnr * (bsize // fsize)
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ.pack(bsize, bnr, fsize, fnr))
                self._rx_geom = (bsize, fsize, fnr)
                self._rx_len = bsize * bnr

        self.sock = open_packet_socket(ifname, vnet_hdr=self._rx_vnet, setup=rx_setup)
        try:
            self._mm_rx = mmap.mmap(self.sock.fileno(), self._rx_len, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._rx_view = memoryview(self._mm_rx)
            if version == 3:
                self.rx = RxRingV3(self._rx_view, *self._rx_geom)
            else:
                self.rx = RxRingV2(self._rx_view, *self._rx_geom)
                self.receive = self.receive_v2
            self.sock.setblocking(False)
            self.mac = bytes(self.sock.getsockname()[4][:6])
            self.tx = TxSocket(ifname, self.mtu, vnet=caps.tx_csum, ring=tx_ring, slots=tx_slots, gso=caps.tso or caps.ufo)
            self.tx_ring = self.tx.ring
            if caps.tx_csum:
                self._veth_csum = VethTxChecksum(self.sock, ifname)
        except BaseException:
            self.close()
            raise
        self._csum_ok_mask = (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID) if caps.rx_csum else TP_STATUS_CSUMNOTREADY
        self._max_plain = self.mtu + 14 + 4     # longer than this: a GRO'd frame
        self._tx_hdr = caps.tx_csum
        self._kick = False
        self._queued = 0
        self._last_now = 0.0
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "rx_csum_notready": 0, "rx_ring_truncated": 0,
                         "rx_gso_frames": 0, "rx_gso_dropped": 0, "rx_blocks": 0,
                         "tx_packets": 0, "tx_bytes": 0, "tx_errors": 0, "tx_ring_full": 0,
                         "tx_csum_partial": 0, "tx_sends": 0, "tx_gso": 0,
                         "tp_packets": 0, "tp_drops": 0, "tp_freeze_q_cnt": 0}

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- receive --------------------------------------------------------------------------
    def receive(self, now: float, budget: int) -> list:
        out = []
        view = self._rx_view
        c = self.counters
        ok_mask = self._csum_ok_mask
        max_plain = self._max_plain
        sll = V3_SLL_OFF if self.version == 3 else V2_SLL_OFF
        filt = self._filter_outgoing
        blocks0 = self.rx.blocks
        append = out.append
        nbytes = notready = 0
        for off, snap, ln, status, mac in self.rx.next_frames(budget):
            if filt and view[off + sll + SLL_PKTTYPE] == socket.PACKET_OUTGOING:
                continue
            if snap < ln:
                c["rx_ring_truncated"] += 1
                continue
            a = off + mac
            if snap <= max_plain:
                append((bytes(view[a:a + snap]), status & ok_mask != 0))
            elif not self._rx_vnet:
                c["rx_gso_dropped"] += 1           # a merged frame on a NIC without gro
                continue
            else:
                _flags, gso_type, hdr_len, gso_size, _cs, _co = VNET_HDR.unpack_from(view, a - VNET_HDR_LEN)
                c["rx_gso_frames"] += 1
                append((bytes(view[a:a + snap]), status & ok_mask != 0,
                        gro_pages(snap, min(hdr_len, snap), gso_size) if gso_type else None))
            nbytes += snap
            if status & TP_STATUS_CSUMNOTREADY:
                notready += 1
        c["rx_packets"] += len(out)
        c["rx_bytes"] += nbytes
        c["rx_csum_notready"] += notready
        c["rx_blocks"] += self.rx.blocks - blocks0
        return out

    def receive_v2(self, now: float, budget: int) -> list:
        """``receive`` for the TPACKET_V2 ring (what ``__init__`` installs as ``receive`` for
        version 2): the same frames, checks and counters, walking the slots inline instead of
        through ``RxRingV2.next_frames`` -- no generator per poll. A V2 ring carries no merged
        frame (``gro`` needs V3), so a frame longer than the MTU is ``rx_gso_dropped``."""
        rx = self.rx
        view = self._rx_view
        unpack = _V2_PKT.unpack_from
        head, nr, fs, pb, bs = rx.head, rx.frame_nr, rx.frame_size, rx.per_block, rx.block_size
        contiguous = pb * fs == bs
        off = head * fs if contiguous else (head // pb) * bs + (head % pb) * fs
        status, ln, snap, mac = unpack(view, off)
        if not status & TP_STATUS_USER or budget <= 0:
            return []
        out = []
        append = out.append
        c = self.counters
        ok_mask = self._csum_ok_mask
        max_plain = self._max_plain
        filt = self._filter_outgoing
        release = _U32.pack_into
        nbytes = notready = 0
        while True:
            if filt and view[off + V2_SLL_OFF + SLL_PKTTYPE] == socket.PACKET_OUTGOING:
                pass
            elif snap < ln:
                c["rx_ring_truncated"] += 1
            elif snap <= max_plain:
                a = off + mac
                append((bytes(view[a:a + snap]), status & ok_mask != 0))
                nbytes += snap
                if status & TP_STATUS_CSUMNOTREADY:
                    notready += 1
            else:
                c["rx_gso_dropped"] += 1           # a merged frame on a NIC without gro
            release(view, off, TP_STATUS_KERNEL)   # copied out: the slot is the kernel's again
            head = head + 1 if head + 1 < nr else 0
            budget -= 1
            if not budget:
                break
            off = head * fs if contiguous else (head // pb) * bs + (head % pb) * fs
            status, ln, snap, mac = unpack(view, off)
            if not status & TP_STATUS_USER:
                break
        rx.head = head
        if out:
            c["rx_packets"] += len(out)
            c["rx_bytes"] += nbytes
            c["rx_csum_notready"] += notready
        return out

    # -- transmit -------------------------------------------------------------------------
    def transmit(self, frame: bytes, now: float, gso_size: int = 0) -> bool:
        """Queue ``frame`` (one ``send()`` per batch, see flush_tx). ``gso_size`` > 0: a TSO frame
        (``caps.tso``), longer than a slot: the queued slots are sent first (order kept), then
        the frame with its virtio header in one ``sendmsg`` on the ring-less TSO socket
        (``TxSocket.gso_sock``) -- one system call for the segments the kernel cuts from it."""
        self._last_now = now
        c = self.counters
        hdr = tx_header(frame, True, gso_size) if self._tx_hdr else b""
        ring = self.tx_ring
        if ring is None or (gso_size and len(hdr) + len(frame) > ring.max_data):
            if ring is not None and self._kick:
                self.flush_tx()
            try:
                if gso_size:
                    self.tx.gso_sock.sendmsg([hdr, frame])
                elif self._tx_hdr:
                    self.tx.sock.sendmsg([hdr, frame])
                else:
                    self.tx.sock.send(frame)
            except OSError:
                c["tx_errors"] += 1
                return False
            c["tx_sends"] += 1
        else:
            if len(hdr) + len(frame) > ring.max_data:
                c["tx_errors"] += 1
                return False
            if not ring.put(hdr, frame):
                self.flush_tx()                    # the kernel may free slots on this send
                if not ring.put(hdr, frame):
                    c["tx_ring_full"] += 1
                    c["tx_errors"] += 1
                    return False
            self._kick = True
            self._queued += 1
            if self._queued >= TX_BATCH:
                self.flush_tx()
        if hdr and hdr is not NO_OFFLOAD_HDR:
            c["tx_csum_partial"] += 1
        if gso_size:
            c["tx_gso"] += 1
        c["tx_packets"] += 1
        c["tx_bytes"] += len(frame)
        return True

    def flush_tx(self) -> None:
        """One ``send()``: the kernel transmits every slot marked SEND_REQUEST (``tpacket_snd``)."""
        if not self._kick:
            return
        self._queued = 0
        self.counters["tx_sends"] += 1
        try:
            # still queued (the socket's sndbuf was full): keep kicking from the loop
            self._kick = self.tx.kick()
        except OSError:
            self.counters["tx_errors"] += 1
            self._kick = False
        wf = self.tx_ring.wrong_format
        if wf:
            self.counters["tx_errors"] += wf
            self.tx_ring.wrong_format = 0

    def poll_at(self) -> float | None:
        # Frames left queued in the transmit ring (sndbuf was full): come back soon.
        return self._last_now + 0.001 if self._kick else None

    def sample_stats(self) -> dict:
        """PACKET_STATISTICS (reset on read): tp_packets/tp_drops, and tp_freeze_q_cnt for V3."""
        c = self.counters
        if self.version == 3:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
            packets, drops, freeze = _STATS3.unpack(raw)
            c["tp_freeze_q_cnt"] += freeze
        else:
            packets, drops = _STATS.unpack(self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))
        c["tp_packets"] += packets
        c["tp_drops"] += drops
        return {"tp_packets": c["tp_packets"], "tp_drops": c["tp_drops"], "tp_freeze_q_cnt": c["tp_freeze_q_cnt"]}

    def close(self) -> None:
        if self.tx_ring is not None and self._kick:
            self.flush_tx()
        if self._veth_csum is not None:
            self._veth_csum.restore()
            self._veth_csum = None
        self.rx = self.tx_ring = None
        if self._rx_view is not None:
            self._rx_view.release()
            self._rx_view = None
        if self._mm_rx is not None:
            self._mm_rx.close()
            self._mm_rx = None
        if self.tx is not None:
            self.tx.close()
            self.tx = None
        if getattr(self, "sock", None) is not None:      # absent when open_packet_socket failed
            self.sock.close()


def open_device(ifname: str, nic: str, offloads: DeviceCapabilities | None = None):
    """The device ``--nic`` names: ``socket`` (recvmsg/send per frame), ``ring-v3`` or ``ring-v2``
    (rings; transmit ring on), ``ring-v3-send`` (receive ring, one send() per frame)."""
    from .afpacket import AfPacketDevice
    if nic == "socket":
        dev = AfPacketDevice(ifname, offloads=offloads)
    elif nic in ("ring-v3", "ring-v2", "ring-v3-send"):
        dev = RingDevice(ifname, version=3 if nic.startswith("ring-v3") else 2, offloads=offloads,
                         tx_ring=not nic.endswith("-send"))
    else:
        dev = None
    if dev is not None:
        dev.nic_kind = nic                  # what the snapshot reports as the NIC's kind
        return dev
    raise AfPacketError(errno.EINVAL, f"unknown --nic {nic!r}; known: {', '.join(NICS)}")


NICS = ("socket", "ring-v3", "ring-v2", "ring-v3-send")
# client-agent's NIC when neither --nic nor $CLIENT_AGENT_NIC names one (benchmarks/README.md, "nic")
DEFAULT_NIC = "ring-v2"
GRO_NICS = ("ring-v3", "ring-v3-send")     # a merged frame needs a V3 block (up to 64 KiB)
