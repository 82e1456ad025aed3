"""Every drop reason produced on purpose, counted exactly once, with its SNMP counter."""

import pytest

from client_agent.net.ipv4.ip_fragment import IPQ_QSIZE
from client_agent.phy.wire_pair import WirePair
from client_agent.wire import arp, checksum, ethernet, icmp, ipv4, udp
from test_stack_kit import A, B, IP_A, IP_B, MAC_A, MAC_B, kit, run, udp_frame  # noqa: F401


def _ip(proto, body, **kw):
    return ethernet.emit(MAC_B, MAC_A, ethernet.ETH_P_IP, ipv4.emit_header(A, B, proto, len(body), **kw) + body)


def _patch_ip(frame, off, value: bytes, fix_csum=True):
    b = bytearray(frame)
    b[14 + off:14 + off + len(value)] = value
    if fix_csum:
        hl = (b[14] & 15) * 4
        b[24:26] = b"\0\0"
        b[24:26] = checksum.checksum(bytes(b[14:14 + hl])).to_bytes(2, "big")
    return bytes(b)


GOOD = udp_frame(b"data")
CASES = [
    # (name, frames, reason, snmp (table, counter))
    ("runt", [b"\x02" * 10], "PKT_TOO_SMALL", None),
    ("ethertype", [ethernet.emit(MAC_B, MAC_A, 0x88B5, b"x" * 50)], "UNHANDLED_PROTO", None),
    ("otherhost", [udp_frame(dst_mac=bytes.fromhex("020000000099"))], "OTHERHOST", None),
    ("ip_short", [ethernet.emit(MAC_B, MAC_A, 0x0800, b"\x45" * 10)], "IP_INHDR", ("Ip", "InHdrErrors")),
    ("ip_version", [_patch_ip(GOOD, 0, b"\x55")], "IP_INHDR", ("Ip", "InHdrErrors")),
    ("ip_csum", [_patch_ip(GOOD, 8, b"\x07", fix_csum=False)], "IP_CSUM", ("Ip", "InCsumErrors")),
    ("ip_trunc", [GOOD[:-2]], "PKT_TOO_SMALL", ("Ip", "InTruncatedPkts")),
    ("ip_notme", [udp_frame(dst=bytes([198, 18, 1, 9]))], "IP_INADDRERRORS", ("Ip", "InAddrErrors")),
    ("noproto", [_ip(132, b"\0" * 20)], "IP_NOPROTO", ("Ip", "InUnknownProtos")),
    ("udp_short", [_ip(17, b"\0" * 6)], "PKT_TOO_SMALL", ("Udp", "InErrors")),
    ("udp_len", [_ip(17, udp.emit(A, B, 1, 7000, b"ab")[:4] + b"\x00\x30" + b"\0\0ab")],
     "PKT_TOO_SMALL", ("Udp", "InErrors")),
    ("udp_csum", [udp_frame(seg=udp.emit(A, B, 5000, 7000, b"data")[:-1] + b"X")], "UDP_CSUM",
     ("Udp", "InCsumErrors")),
    ("no_socket", [udp_frame(dport=7001)], "NO_SOCKET", ("Udp", "NoPorts")),
    ("rcvbuf", [GOOD, GOOD], "SOCKET_RCVBUFF", ("Udp", "RcvbufErrors")),
    ("icmp_short", [_ip(1, b"\x08\0\0")], "PKT_TOO_SMALL", ("Icmp", "InErrors")),
    ("icmp_csum", [_ip(1, icmp.emit_echo(8, 1, 1, b"q")[:-1] + b"r")], "ICMP_CSUM", ("Icmp", "InCsumErrors")),
    ("icmp_type", [_ip(1, icmp.emit_echo(200, 1, 1))], "UNHANDLED_PROTO", ("Icmp", "InErrors")),
    ("arp_short", [ethernet.emit(MAC_B, MAC_A, ethernet.ETH_P_ARP, arp.PACKET_BYTES[:20])], "PKT_TOO_SMALL", None),
    ("dup_frag", [udp_frame(seg=b"\0" * 16, flags=ipv4.IP_MF)] * 2, "DUP_FRAG", ("Ip", "ReasmReqds")),
    ("overlap", [udp_frame(seg=b"\0" * 16, flags=ipv4.IP_MF), udp_frame(seg=b"\0" * 16, flags=ipv4.IP_MF, frag_off=8)],
     "FRAG_OVERLAP", ("Ip", "ReasmOverlaps")),
    ("frag_invalid", [udp_frame(seg=b"\0" * 16, frag_off=64), udp_frame(seg=b"\0" * 16, frag_off=80)],
     "FRAG_INVALID", ("Ip", "ReasmFails")),
    ("too_big", [udp_frame(seg=b"\0" * 16, frag_off=65520)], "PKT_TOO_BIG", ("Ip", "ReasmFails")),
]


@pytest.mark.parametrize("name,frames,reason,snmp", CASES, ids=[c[0] for c in CASES])
def test_each_drop_reason_counted_once(kit, name, frames, reason, snmp):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    sk = sb.udp_socket()
    sk.bind(("", 7000))
    sk.rcvbuf = 0                       # first datagram admitted (rmem 0 <= 0), the second not
    before = dict(sb.snmp[snmp[0]]) if snmp else None
    for f in frames:
        w.a.transmit(f, 0.0)
    sb.poll(0.0)
    drops = {k: v for k, v in sb.drop_reasons.items() if v}
    if name == "overlap":
        assert drops == {"FRAG_OVERLAP": 2}           # the queued fragment and the incoming one
    elif name == "frag_invalid":
        assert drops == {"FRAG_INVALID": 2}
    else:
        assert drops == {reason: 1}
    if snmp:
        assert sb.snmp[snmp[0]][snmp[1]] == before[snmp[1]] + (2 if name == "dup_frag" else 1)
    if name == "rcvbuf":
        assert sk.drops == 1 and sk.rmem_alloc == 4096 + 576


def test_frag_timeout_too_far_and_mem_limit(kit):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    frag = lambda ident, off=0: udp_frame(seg=b"\0" * 16, flags=ipv4.IP_MF, ident=ident, frag_off=off)
    w.a.transmit(frag(1), 0.0)
    sb.poll(0.0)
    assert sb.alloc.owner_pages() == {"ipfrag": 1} and sb.next_deadline() == 30.0
    sb.poll(29.9)
    assert sb.drop_reasons["FRAG_REASM_TIMEOUT"] == 0
    sb.poll(30.0)
    assert sb.drop_reasons["FRAG_REASM_TIMEOUT"] == 1 and sb.snmp["Ip"]["ReasmTimeout"] == 1
    assert sb.alloc.nr_free == sb.alloc.nr_pages
    # ipfrag_max_dist: 65 fragments of other datagrams from the same source in between
    w.a.transmit(frag(100), 31.0)
    for i in range(65):
        w.a.transmit(frag(200 + i), 31.0)
    w.a.transmit(frag(100, 16), 31.0)
    sb.poll(31.0, budget=1000)
    assert sb.drop_reasons["FRAG_TOO_FAR"] == 1 and len(sb.reasm.queues) == 66
    assert sb.reasm.mem == 66 * (4096 + 576 + IPQ_QSIZE)      # truesize + each queue's struct ipq
    # ipfrag_high_thresh: no fragment is queued while mem exceeds it
    sb.reasm.high_thresh_bytes = 10 * 4672
    w.a.transmit(frag(999), 32.0)
    sb.poll(32.0)
    assert sb.drop_reasons["FRAG_MEM_LIMIT"] == 1 and sb.reasm.queued() == 66
    sb.poll(61.0)
    assert sb.drop_reasons["FRAG_REASM_TIMEOUT"] == 67 and sb.reasm.mem == 0


def test_arp_retries_failure_queue_full_and_permanent(kit):
    w = WirePair()
    sa = kit.stack(kit.alloc(), w.a, MAC_A, IP_A)
    sa.neigh.unres_qlen_bytes = 3 * 4672
    sk = sa.udp_socket()
    for i in range(5):
        assert sk.sendto(b"q%d" % i, ("198.18.0.77", 9), 0.0) == 2
    assert sa.drop_reasons["NEIGH_QUEUEFULL"] == 2 and sa.snmp["ArpCache"]["unresolved_discards"] == 2
    n = sa.neigh.lookup(ipv4.ip_aton("198.18.0.77"))
    assert n.state == "INCOMPLETE" and len(n.queue) == 3 and sa.alloc.owner_pages() == {sk.owner: 3}
    assert sa.poll(0.0) == 1.0
    sa.poll(1.0)
    sa.poll(2.0)
    requests = [f for f in w.b.receive(2.0, 100) if f[12:14] == b"\x08\x06"]
    assert len(requests) == 3 and n.state == "INCOMPLETE"
    sa.poll(3.0)
    assert n.state == "FAILED" and sa.drop_reasons["NEIGH_FAILED"] == 3
    assert sa.snmp["ArpCache"]["res_failed"] == 1 and sa.alloc.owner_pages() == {}
    # a permanent entry is not changed by a conflicting (gratuitous) reply
    sa.neigh.add_permanent(B, MAC_B)
    evil = bytes.fromhex("0200000000ee")
    garp = ethernet.emit(ethernet.BROADCAST, evil, ethernet.ETH_P_ARP, arp.ArpPacket(2, evil, B, evil, B).emit())
    w.b.transmit(garp, 4.0)
    w.b.transmit(ethernet.emit(MAC_A, evil, ethernet.ETH_P_ARP, arp.ArpPacket(1, evil, B, b"\0" * 6, A).emit()), 4.0)
    sa.poll(4.0)
    assert sa.neigh.lookup(B).mac == MAC_B and sa.neigh.lookup(B).state == "PERMANENT"
    assert sa.snmp["ArpCache"]["permanent_update_refused"] == 2
    assert sa.rx_fate == {"arp": 2}
    # the request was still answered (to the MAC that asked)
    reply = w.b.receive(4.0, 10)[-1]
    assert reply[:6] == evil and arp.ArpPacket.new_checked(reply[14:]).op == 2


def test_no_route_and_tx_nomem(kit):
    w, sa, sb = kit.pair(nr_pages=256)
    sk = sa.udp_socket()
    assert sk.sendto(b"x", ("203.0.113.1", 9), 0.0) == -101          # ENETUNREACH
    assert sa.drop_reasons["IP_OUTNOROUTES"] == 1 and sa.snmp["Ip"]["OutNoRoutes"] == 1
    kit.exhaust(sa.alloc, gfp=0x800)                                  # GFP_NOWAIT floor: min
    assert sk.sendto(b"x", (IP_B, 9), 0.0) == -105                    # ENOBUFS
    assert sa.drop_reasons["NOMEM"] == 1 and sa.counters["tx_nobuf"] == 1
    assert sa.snmp["Udp"]["SndbufErrors"] == 1 and sk.counters["tx_nobufs"] == 1
