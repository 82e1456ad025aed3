"""TCP on a device that offloads (issue 18): checksum offload (CHECKSUM_PARTIAL, csum_offset 16)
and TSO (one GSO buffer, gso_size = MSS). The device here plays the kernel's part in C --
``tcp_gso_segment`` + ``skb_checksum_help`` -- so the scripted peer sees the wire frames, and every
one must be <= MTU + 14 with a good checksum (tcp_kit.parse_frame asserts the checksum)."""

import struct

import pytest

from client_agent.mm.page_alloc import PageAllocator
from client_agent.net import Stack
from client_agent.phy.caps import NO_OFFLOADS, parse_offloads
from client_agent.phy.vnet import (TCP_CSUM_OFFSET, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                                   VNET_HDR, tx_header)
from client_agent.phy.wire_pair import WireEnd, WirePair
from client_agent.wire.checksum import fold, ones_sum
from client_agent.wire.ipv4 import emit_header
from tcp_kit import A, MAC_A, MAC_B, IP_B, DOT, P, Script

MSS = 1448                                  # 1460 - 12 bytes of timestamps


def _complete(frame: bytearray) -> None:
    """skb_checksum_help: the pseudo-header sum in the field + the segment's sum, complemented."""
    start = 14 + (frame[14] & 15) * 4
    s = ones_sum(bytes(frame[start:]))
    frame[start + 16:start + 18] = (~fold(s) & 0xFFFF).to_bytes(2, "big")


def gso_segment(frame: bytes, gso_size: int) -> list[bytes]:
    """tcp4_gso_segment as the kernel does it for a GSO_TCPV4 buffer: the payload cut every
    ``gso_size`` bytes, each piece with the headers copied, seq advanced, PSH/FIN only on the
    last, CWR only on the first, IP total length and id per piece, checksums completed."""
    ihl = (frame[14] & 15) * 4
    th = 14 + ihl
    doff = (frame[th + 12] >> 4) * 4
    hdr = frame[:th + doff]
    payload = frame[th + doff:]
    src, dst = frame[26:30], frame[30:34]
    seq = struct.unpack_from("!I", frame, th + 4)[0]
    ident = struct.unpack_from("!H", frame, 18)[0]
    out = []
    for i, off in enumerate(range(0, len(payload), gso_size)):
        piece = payload[off:off + gso_size]
        last = off + gso_size >= len(payload)
        f = bytearray(hdr + piece)
        f[14:14 + ihl] = emit_header(src, dst, 6, len(f) - 14 - ihl, ident=(ident + i) & 0xFFFF,
                                     flags=0x4000)
        struct.pack_into("!I", f, th + 4, (seq + off) & 0xFFFFFFFF)
        if not last:
            f[th + 13] &= ~0x09                 # PSH and FIN: the last piece's only
        if i:
            f[th + 13] &= ~0x80                 # CWR: the first piece's only (th->cwr = 0)
        # the pseudo-header sum for this piece's length, then skb_checksum_help
        f[th + 16:th + 18] = fold(ones_sum(src + dst) + 6 + len(f) - th).to_bytes(2, "big")
        _complete(f)
        out.append(bytes(f))
    return out


class OffloadEnd(WireEnd):
    """A wire end with the offloads of a veth behind PACKET_VNET_HDR: it reads the virtio header
    the ring NIC would write (vnet.tx_header) and does what the kernel does with it."""

    def __init__(self, end: WireEnd, caps) -> None:
        self.__dict__.update(end.__dict__)
        self.caps = caps
        self.gso_frames: list[tuple[int, int]] = []       # (frame length, gso_size)
        self.wire_frames = 0

    def transmit(self, frame: bytes, now: float, gso_size: int = 0) -> bool:
        flags, gso_type, _hl, gsz, start, off = VNET_HDR.unpack(tx_header(frame, self.caps.tx_csum, gso_size))
        if gso_type == VIRTIO_NET_HDR_GSO_TCPV4:
            assert flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and off == TCP_CSUM_OFFSET and gsz == gso_size
            self.gso_frames.append((len(frame), gso_size))
            frames = gso_segment(frame, gso_size)
        elif flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            f = bytearray(frame)
            _complete(f) if off == TCP_CSUM_OFFSET else None
            frames = [bytes(f)]
        else:
            frames = [frame]
        for f in frames:
            assert len(f) <= self.mtu + 14
            self.wire_frames += 1
            if not WireEnd.transmit(self, f, now):
                return False
        return True


class OffloadScript(Script):
    def __init__(self, offloads: str, nr_pages: int = 1024) -> None:
        self.wire = WirePair()
        caps = parse_offloads(offloads) if offloads else NO_OFFLOADS
        self.dev = OffloadEnd(self.wire.b, caps)
        self.wire.b = self.dev
        self.wire.a.peer = self.dev
        self.alloc = PageAllocator(nr_pages)
        self.stack = Stack(self.alloc, self.dev, MAC_B, IP_B, 24, seed=1)
        self.stack.neigh.add_permanent(A, MAC_A)
        self.tcp = self.stack.tcp
        self.now = 0.0
        self.pport = 40000
        self.aport = 0
        self.pending = []
        self.held = []


@pytest.mark.parametrize("offloads", ["", "tx", "tx,tso"])
def test_a_burst_reaches_the_wire_as_mss_frames_with_good_checksums(offloads):
    s = OffloadScript(offloads)
    sk, iss, _syn = s.active_open(win=65535)
    data = bytes(range(256)) * 40                    # 10240 bytes: 8 segments with cwnd 10
    seen_alloc = []
    orig = s.dev.transmit

    def spy(frame, now, gso_size=0):
        seen_alloc.append((gso_size, s.alloc.nr_pages - s.alloc.nr_free))
        return orig(frame, now, gso_size)
    s.dev.transmit = spy
    out_segs0 = s.tcp.mib["OutSegs"]
    assert sk.send(data, s.now) == len(data)
    segs = s.sent()
    # whatever the device offers, the wire carries 7 full frames of one MSS with good checksums
    # (Nagle holds the 104-byte tail while data is in flight): the one write-queue buffer goes
    # out as 5 + 2 segments (tcp_cwnd_test: at most half of cwnd 10 per buffer, "at least 2 GSO
    # packets in flight"), two GSO buffers or 7 frames
    assert [len(o.data) for o in segs] == [MSS] * 7
    assert [o.seq for o in segs] == [(iss + 1 + i * MSS) & 0xFFFFFFFF for i in range(7)]
    assert not any(o.flags & P for o in segs)
    assert s.tcp.mib["OutSegs"] - out_segs0 == 7     # tcp_skb_pcount: every piece counted
    assert [b.pcount for b in sk.rtx_queue] == [5, 2] and sk.packets_out == 7
    (rest,) = sk.write_queue
    assert bytes(rest.data) == data[7 * MSS:]
    if offloads == "tx,tso":
        # a GSO buffer per write-queue buffer, gso_size = MSS, charged once: its bytes in pages
        assert s.dev.gso_frames == [(14 + 20 + 32 + 5 * MSS, MSS), (14 + 20 + 32 + 2 * MSS, MSS)]
        assert [x[0] for x in seen_alloc] == [MSS, MSS]
        assert seen_alloc[0][1] >= (14 + 20 + 32 + 5 * MSS + 4095) >> 12   # its pages charged
    else:
        assert s.dev.gso_frames == [] and len(seen_alloc) == 7
    s.inject(DOT, 5001, (iss + 1 + 7 * MSS) & 0xFFFFFFFF, 65535, opts=s.ts(600, segs[-1]))
    (tail,) = s.sent()
    assert tail.data == data[7 * MSS:] and tail.flags & P
    assert b"".join(o.data for o in segs) + tail.data == data
    s.inject(DOT, 5001, (iss + 1 + len(data)) & 0xFFFFFFFF, 65535, opts=s.ts(601, tail))
    assert not sk.rtx_queue and sk.packets_out == 0
    s.finish()


def test_tso_retransmits_one_buffer_at_a_time():
    s = OffloadScript("tx,tso")
    sk, iss, _syn = s.active_open(win=65535)
    data = b"x" * (4 * MSS)
    assert sk.send(data, s.now) == len(data)
    segs = s.sent()
    assert [len(o.data) for o in segs] == [MSS] * 4 and segs[-1].flags & P
    assert len(s.dev.gso_frames) == 1
    # the RTO resends the first buffer alone (tcp_retransmit_skb: no TSO on the retransmit path)
    s.at(s.now + 1.5)
    re = s.sent()
    assert re and re[0].seq == (iss + 1) & 0xFFFFFFFF and len(re[0].data) == MSS
    assert len(s.dev.gso_frames) == 1
    s.finish()


def test_tso_needs_tx_and_a_fault_wrapper_does_not_offer_it():
    with pytest.raises(ValueError, match="needs 'tx'"):
        parse_offloads("tso")
    from client_agent.phy.fault import BothWays
    inner = OffloadEnd(WirePair().b, parse_offloads("tx,tso"))
    inner.fileno = lambda: -1
    inner.sample_stats = lambda: {}
    wrapped = BothWays(inner, {"seed": 1})
    assert wrapped.caps.tx_csum and not wrapped.caps.tso
