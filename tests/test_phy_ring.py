"""The ring NIC's parts without a kernel: TPACKET_V3/V2 rings laid out in a bytearray as
af_packet.c lays them out, the virtio-net header, the capabilities, and the stack's partial
UDP checksum when the device offloads it."""

import struct

import pytest

from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.phy.caps import NO_OFFLOADS, Checksum, device_caps, parse_offloads
from client_agent.phy.ring import (BLK_STATUS_OFF, TP_STATUS_AVAILABLE, TP_STATUS_KERNEL, TP_STATUS_SEND_REQUEST,
                                   TP_STATUS_USER, TP_STATUS_WRONG_FORMAT, V2_TX_DATA_OFF, RxRingV2, RxRingV3, TxRingV2)
from client_agent.phy.vnet import (NO_OFFLOAD_HDR, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR, gro_pages, gso_segments,
                                   tx_header)
from client_agent.wire.udp import UdpPacket

BS = 4096


def _v3_block(buf, blk, frames, status=TP_STATUS_USER):
    """Fill block ``blk`` as prb_open_block/prb_fill_curr_block/prb_close_block do."""
    base = blk * BS
    first = 48                                       # BLK_PLUS_PRIV(0)
    off = base + first
    for i, f in enumerate(frames):
        mac = 82
        nxt = (mac + len(f) + 7) & ~7 if i + 1 < len(frames) else 0
        struct.pack_into("=IIIIIIHH", buf, off, nxt, 0, 0, len(f), len(f), TP_STATUS_USER | 8, mac, mac + 14)
        buf[off + mac:off + mac + len(f)] = f
        off += nxt
    struct.pack_into("=III", buf, base + BLK_STATUS_OFF, status, len(frames), first)


def test_v3_walks_blocks_in_order_and_releases_each_after_its_last_frame():
    buf = bytearray(BS * 3)
    ring = RxRingV3(buf, BS, 3)
    _v3_block(buf, 0, [b"a" * 60, b"b" * 100])
    _v3_block(buf, 1, [b"c" * 70])
    got = []
    for off, snap, ln, status, mac in ring.next_frames(2):
        got.append(bytes(buf[off + mac:off + mac + snap]))
        assert status & 8                             # TP_STATUS_CSUMNOTREADY seen per frame
    assert got == [b"a" * 60, b"b" * 100]
    assert struct.unpack_from("=I", buf, BLK_STATUS_OFF)[0] == TP_STATUS_KERNEL   # block 0 given back
    assert struct.unpack_from("=I", buf, BS + BLK_STATUS_OFF)[0] == TP_STATUS_USER
    got = [bytes(buf[o + m:o + m + s]) for o, s, _l, _st, m in ring.next_frames(64)]
    assert got == [b"c" * 70] and ring.blocks == 2 and ring.blk == 2
    assert list(ring.next_frames(64)) == [] and not ring.ready()   # block 2 is still the kernel's


def test_v3_budget_splits_a_block_without_releasing_it_early():
    buf = bytearray(BS * 2)
    ring = RxRingV3(buf, BS, 2)
    _v3_block(buf, 0, [bytes([i]) * 50 for i in range(5)])
    assert len(list(ring.next_frames(3))) == 3
    assert struct.unpack_from("=I", buf, BLK_STATUS_OFF)[0] == TP_STATUS_USER     # 2 frames still unread
    assert ring.ready()
    assert [buf[o + m] for o, _s, _l, _st, m in ring.next_frames(3)] == [3, 4]
    assert struct.unpack_from("=I", buf, BLK_STATUS_OFF)[0] == TP_STATUS_KERNEL


def test_v2_slots_wrap_around():
    fs, nr = 2048, 4
    buf = bytearray(fs * nr)
    ring = RxRingV2(buf, BS, fs, nr)
    for rnd in range(2):
        for i in range(nr):
            struct.pack_into("=IIIH", buf, i * fs, TP_STATUS_USER, 60, 60, 80)
            buf[i * fs + 80] = rnd * 10 + i
        assert [buf[o + m] for o, _s, _l, _st, m in ring.next_frames(64)] == [rnd * 10 + i for i in range(nr)]
        assert all(struct.unpack_from("=I", buf, i * fs)[0] == TP_STATUS_KERNEL for i in range(nr))


def test_tx_ring_fills_slots_and_refuses_one_the_kernel_still_holds():
    fs, nr = 2048, 2
    buf = bytearray(fs * nr)
    ring = TxRingV2(buf, BS, fs, nr)
    hdr = VNET_HDR.pack(1, 0, 42, 0, 34, 6)
    assert ring.put(hdr, b"x" * 100)
    assert struct.unpack_from("=II", buf, 0) == (TP_STATUS_SEND_REQUEST, 110)
    assert bytes(buf[V2_TX_DATA_OFF:V2_TX_DATA_OFF + 110]) == hdr + b"x" * 100
    assert ring.put(b"", b"y" * 10)
    assert not ring.put(b"", b"z")                   # slot 0 not yet sent: the ring is full
    struct.pack_into("=I", buf, 0, TP_STATUS_AVAILABLE)
    assert ring.put(b"", b"z") and ring.head == 1
    struct.pack_into("=I", buf, fs, TP_STATUS_WRONG_FORMAT)   # the kernel refused slot 1
    assert ring.put(b"", b"w") and ring.wrong_format == 1


def _udp_frame(payload_len, frag=0):
    ip = bytes([0x45, 0, 0, 0, 0, 0, frag >> 8, frag & 0xFF, 64, 17, 0, 0]) + bytes(8)
    return bytes(12) + b"\x08\x00" + ip + bytes(8 + payload_len)


def test_tx_header_asks_the_kernel_for_the_udp_checksum_of_whole_datagrams_only():
    flags, gso, hdr_len, gso_size, start, off = VNET_HDR.unpack(tx_header(_udp_frame(100), True))
    assert (flags, gso, start, off) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 34, 6) and hdr_len == 42
    assert tx_header(_udp_frame(100, frag=0x2000), True) is NO_OFFLOAD_HDR       # MF: a first fragment
    assert tx_header(_udp_frame(100, frag=0x00B9), True) is NO_OFFLOAD_HDR       # a later fragment
    assert tx_header(_udp_frame(100), False) is NO_OFFLOAD_HDR
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert tx_header(arp, True) is NO_OFFLOAD_HDR


def test_gro_frames_are_charged_a_buffer_per_segment():
    assert gso_segments(14 + 20 + 20 + 10 * 1448, 54, 1448) == 10
    assert gro_pages(14 + 20 + 20 + 10 * 1448, 54, 1448) == 10   # Linux: each segment keeps its buffer
    assert gro_pages(1000, 54, 0) == 1


def test_parse_offloads():
    caps = parse_offloads("tx,rx")
    assert caps.tx_csum and caps.rx_csum and not caps.gro and caps.checksum.udp == Checksum.RX
    assert caps.names() == ["tx", "rx"]
    assert parse_offloads("none") == NO_OFFLOADS and parse_offloads("") == NO_OFFLOADS
    with pytest.raises(ValueError, match="unknown offload 'lro'; known: tx, rx, gro, tso"):
        parse_offloads("tx,lro")
    with pytest.raises(ValueError, match="needs 'tx'"):
        parse_offloads("tso")
    tso = parse_offloads("tx,tso")
    assert tso.tso and tso.tx_csum and tso.tx_csum_tcp and tso.names() == ["tx", "tso"]
    assert device_caps(object()) == NO_OFFLOADS


class _Dev:
    mtu = 1500
    mac = b"\x02\x00\x00\x00\x00\x02"

    def __init__(self, caps):
        self.caps = caps
        self.sent = []

    def transmit(self, frame, now):
        self.sent.append(frame)
        return True

    def receive(self, now, budget):
        return []

    def poll_at(self):
        return None


@pytest.mark.parametrize("offload", [True, False])
def test_stack_leaves_a_partial_checksum_only_when_the_device_fills_it(offload):
    dev = _Dev(parse_offloads("tx") if offload else NO_OFFLOADS)
    alloc = PageAllocator(256)
    st = Stack(alloc, dev, dev.mac, "198.18.0.2", 24)
    st.neigh.add_permanent(bytes([198, 18, 0, 1]), b"\x02\x00\x00\x00\x00\x01", 0.0)
    sk = st.udp_socket()
    sk.bind(("0.0.0.0", 5000))
    src, dst = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    for n in (100, 1472, 1473):
        dev.sent.clear()
        assert sk.sendto(bytes(range(256)) * (n // 256) + bytes(n % 256), ("198.18.0.1", 7), 0.0) >= 0
        first = dev.sent[0]
        ucsum = int.from_bytes(first[40:42], "big")
        if offload and n <= 1472:
            # CHECKSUM_PARTIAL: the pseudo-header sum; the kernel's sum over the segment completes it
            pseudo = (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 17 + 8 + n) % 0xFFFF or 0xFFFF
            assert len(dev.sent) == 1 and ucsum == pseudo
            seg = bytearray(first[34:])
            s = sum(int.from_bytes(seg[i:i + 2].ljust(2, b"\0"), "big") for i in range(0, len(seg), 2))
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            seg[6:8] = (~s & 0xFFFF or 0xFFFF).to_bytes(2, "big")
            assert UdpPacket.new_checked(bytes(seg)).verify_checksum(src, dst)
        elif n <= 1472:
            assert UdpPacket.new_checked(first[34:]).verify_checksum(src, dst)
        else:
            assert len(dev.sent) == 2          # fragmented: the stack summed it whatever the device offers
            whole = first[34:] + dev.sent[1][34:]
            assert UdpPacket.new_checked(whole).verify_checksum(src, dst)
    assert alloc.nr_free == alloc.nr_pages          # every transmit buffer went back to the pool


def test_with_ufo_a_datagram_longer_than_the_mtu_leaves_as_one_buffer_the_kernel_fragments():
    dev = _Dev(parse_offloads("tx,ufo"))
    got = []
    alloc = PageAllocator(256)
    dev.transmit = lambda frame, now, gso_size=0: got.append((frame, gso_size, alloc.nr_pages - alloc.nr_free)) or True
    st = Stack(alloc, dev, dev.mac, "198.18.0.2", 24)
    st.neigh.add_permanent(bytes([198, 18, 0, 1]), b"\x02\x00\x00\x00\x00\x01", 0.0)
    sk = st.udp_socket()
    sk.bind(("0.0.0.0", 5000))
    assert sk.sendto(b"u" * 4200, ("198.18.0.1", 7), 0.0) >= 0
    ((frame, gso, in_use),) = got
    assert gso == 1480 and len(frame) == 14 + 20 + 8 + 4200 and in_use == 2   # one GSO buffer: 2 pages
    flags, gso_type, hdr_len, gso_size, start, off = VNET_HDR.unpack(tx_header(frame, True, gso))
    assert (flags, gso_type, gso_size, start, off) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, 3, 1480, 34, 6)
    assert st.snmp["Ip"]["FragCreates"] == 0 and alloc.nr_free == alloc.nr_pages
    pseudo = (int.from_bytes(bytes([198, 18, 0, 2]), "big") + int.from_bytes(bytes([198, 18, 0, 1]), "big")
              + 17 + 4208) % 0xFFFF
    assert int.from_bytes(frame[40:42], "big") == pseudo                     # partial: the kernel sums it
    with pytest.raises(ValueError, match="needs 'tx'"):
        parse_offloads("ufo")


def _device_over(buf, caps, mtu=1500):
    """A RingDevice reading a ring in ``buf`` (no socket): the receive path alone."""
    from client_agent.phy.ring import RingDevice
    dev = object.__new__(RingDevice)
    dev.version, dev.caps, dev.mtu = 3, caps, mtu
    dev._rx_view = memoryview(buf)
    dev.rx = RxRingV3(dev._rx_view, BS, len(buf) // BS)
    dev._filter_outgoing = False
    dev._rx_vnet = caps.gro
    dev._max_plain = mtu + 14 + 4
    dev._csum_ok_mask = 8 | 0x80 if caps.rx_csum else 8
    dev.counters = {k: 0 for k in ("rx_packets", "rx_bytes", "rx_csum_notready", "rx_ring_truncated",
                                   "rx_gso_frames", "rx_gso_dropped", "rx_blocks")}
    return dev


def _v3_frame(buf, blk, frame, status, snaplen=None, vnet=None):
    base = blk * BS
    off, mac = base + 48, 92
    struct.pack_into("=IIIIIIHH", buf, off, 0, 0, 0, len(frame) if snaplen is None else snaplen, len(frame),
                     TP_STATUS_USER | status, mac, mac + 14)
    buf[off + mac:off + mac + len(frame)] = frame
    if vnet is not None:
        buf[off + mac - 10:off + mac] = vnet
    struct.pack_into("=III", buf, base + BLK_STATUS_OFF, TP_STATUS_USER, 1, 48)


def test_ring_device_reports_checksum_state_as_the_caps_say():
    for caps, status, want in ((parse_offloads("rx"), 0x80, True), (NO_OFFLOADS, 0x80, False),
                               (NO_OFFLOADS, 8, True), (parse_offloads("rx"), 0, False)):
        buf = bytearray(BS * 2)
        dev = _device_over(buf, caps)
        _v3_frame(buf, 0, b"f" * 100, status)
        assert dev.receive(0.0, 64) == [(b"f" * 100, want)]
        assert dev.counters["rx_csum_notready"] == (1 if status == 8 else 0)


def test_ring_device_drops_a_truncated_frame_and_counts_it():
    buf = bytearray(BS * 2)
    dev = _device_over(buf, NO_OFFLOADS)
    _v3_frame(buf, 0, b"t" * 300, 0, snaplen=200)
    assert dev.receive(0.0, 64) == []
    assert dev.counters["rx_ring_truncated"] == 1 and dev.counters["rx_packets"] == 0


def test_ring_device_takes_a_gro_frame_only_with_gro_and_charges_it_per_segment():
    big = b"g" * 3000                                 # longer than MTU 1500: a merged frame
    vnet = VNET_HDR.pack(0, 1, 54, 1448, 0, 0)        # GSO_TCPV4: 1448 + 1448 + 50 bytes of payload
    buf = bytearray(BS * 2)
    dev = _device_over(buf, NO_OFFLOADS)
    _v3_frame(buf, 0, big, 0, vnet=vnet)
    assert dev.receive(0.0, 64) == [] and dev.counters["rx_gso_dropped"] == 1
    buf = bytearray(BS * 2)
    dev = _device_over(buf, parse_offloads("gro"))
    _v3_frame(buf, 0, big, 0, vnet=vnet)
    (item,) = dev.receive(0.0, 64)
    assert item[0] == big and item[2] == 3 == gro_pages(3000, 54, 1448)
    assert dev.counters["rx_gso_frames"] == 1 and dev.counters["rx_packets"] == 1


def test_stack_charges_a_gro_frame_what_the_device_says():
    from client_agent.wire.udp import emit as udp_emit
    from client_agent.wire.ipv4 import emit_header
    dev = _Dev(parse_offloads("gro"))
    alloc = PageAllocator(256)
    st = Stack(alloc, dev, dev.mac, "198.18.0.2", 24)
    sk = st.udp_socket()
    sk.bind(("0.0.0.0", 9000))
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    seg = udp_emit(src, dst, 1234, 9000, b"d" * 3000)
    frame = dev.mac + b"\x02\x00\x00\x00\x00\x01\x08\x00" + emit_header(src, dst, 17, len(seg)) + seg
    st.rx_frame((frame, True, 3), 0.0)
    assert alloc.nr_pages - alloc.nr_free == 3       # one buffer per merged segment, not ceil(len/4096) = 1
    data, _addr = sk.recvfrom()
    assert data == b"d" * 3000 and alloc.nr_free == alloc.nr_pages


def _v2_device_over(buf, fs, nr, caps, filter_outgoing=False):
    from client_agent.phy.ring import RingDevice
    dev = object.__new__(RingDevice)
    dev.version, dev.caps, dev.mtu = 2, caps, 1500
    dev._rx_view = memoryview(buf)
    dev.rx = RxRingV2(dev._rx_view, BS, fs, nr)
    dev._filter_outgoing = filter_outgoing
    dev._rx_vnet = False
    dev._max_plain = 1500 + 14 + 4
    dev._csum_ok_mask = 8 | 0x80 if caps.rx_csum else 8
    dev.counters = {k: 0 for k in ("rx_packets", "rx_bytes", "rx_csum_notready", "rx_ring_truncated",
                                   "rx_gso_frames", "rx_gso_dropped", "rx_blocks")}
    return dev


def test_the_v2_receive_gives_the_same_frames_and_counters_as_the_ring_walk():
    """receive_v2 (the ring-v2 NIC's inline walk) against receive over RxRingV2.next_frames: the
    same items, counters and slots given back, across a budget split and a wrap-around, with a
    truncated, an oversized and an outgoing frame among them."""
    from client_agent.phy.ring import RingDevice
    fs, nr = 2048, 6
    kinds = [("ok", 0x80), ("ok", 8), ("trunc", 0), ("out", 0), ("big", 0), ("ok", 0), ("ok", 0x80), ("ok", 0)]
    results = []
    for use_v2 in (False, True):
        buf = bytearray(fs * nr)
        dev = _v2_device_over(buf, fs, nr, parse_offloads("rx"), filter_outgoing=True)
        got, head = [], 0
        for rnd, budget in ((0, 4), (1, 64), (2, 64)):
            for i, (kind, st) in enumerate(kinds[rnd * 3:rnd * 3 + 3] if rnd < 2 else kinds[6:]):
                off = ((head + i) % nr) * fs
                frame = bytes([rnd * 16 + i]) * (1600 if kind == "big" else 100)
                snap = 60 if kind == "trunc" else len(frame)
                struct.pack_into("=IIIH", buf, off, TP_STATUS_USER | st, len(frame), snap, 80)
                buf[off + 32 + 10] = 4 if kind == "out" else 0          # sll_pkttype
                buf[off + 80:off + 80 + snap] = frame[:snap]
            n = 3 if rnd < 2 else 2
            head = (head + n) % nr
            recv = RingDevice.receive_v2 if use_v2 else RingDevice.receive
            got.append(recv(dev, 0.0, budget))
            if budget == 4:                                  # 3 ready (one truncated): the 4th stops it
                assert len(got[-1]) == 2
        assert all(struct.unpack_from("=I", buf, i * fs)[0] == TP_STATUS_KERNEL for i in range(nr))
        results.append((got, dict(dev.counters), dev.rx.head))
    assert results[0] == results[1]
    got, counters, _head = results[1]
    assert counters["rx_ring_truncated"] == 1 and counters["rx_gso_dropped"] == 1
    assert counters["rx_packets"] == 5 and counters["rx_csum_notready"] == 1
    assert [len(g) for g in got] == [2, 1, 2]


def test_the_v2_receive_honours_the_budget():
    from client_agent.phy.ring import RingDevice
    fs, nr = 2048, 8
    buf = bytearray(fs * nr)
    dev = _v2_device_over(buf, fs, nr, parse_offloads("rx"))
    for i in range(5):
        struct.pack_into("=IIIH", buf, i * fs, TP_STATUS_USER, 100, 100, 80)
    assert len(RingDevice.receive_v2(dev, 0.0, 3)) == 3 and dev.rx.head == 3
    assert len(RingDevice.receive_v2(dev, 0.0, 0)) == 0 and dev.rx.head == 3
    assert len(RingDevice.receive_v2(dev, 0.0, 64)) == 2 and dev.rx.head == 5
