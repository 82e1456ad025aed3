"""The receive path's pfmemalloc cure (kernel-mechanism.md §3-4) on the real PageAllocator."""

from client_agent.mm.gfp import GFP_ATOMIC
from client_agent.phy.wire_pair import WirePair
from client_agent.wire import arp, ethernet, ipv4
from test_stack_kit import A, B, IP_B, MAC_A, MAC_B, kit, udp_frame  # noqa: F401

PAGES = 256          # min_free_kbytes 128 -> min 32 pages, GFP_ATOMIC floor 3*32/8 = 12


def _setup(kit):
    w = WirePair()
    alloc = kit.alloc(PAGES)
    sb = kit.stack(alloc, w.b, MAC_B, IP_B)
    seen = []
    sb.taps.append(lambda f, now: seen.append(f))
    return w, alloc, sb, seen


def _swap_and_other(sb):
    """An NFS-swap-like socket with SOCK_MEMALLOC on 2049 and an ordinary one on 5353."""
    swap = sb.udp_socket()
    swap.bind(("", 2049))
    swap.sk_set_memalloc()
    other = sb.udp_socket()
    other.bind(("", 5353))
    return swap, other


def test_without_memalloc_sockets_exhaustion_is_rx_nobuf(kit):
    w, alloc, sb, seen = _setup(kit)
    assert alloc.wmark_min == 32 and alloc.watermark_floor(GFP_ATOMIC) == 12
    assert kit.exhaust(alloc) == 12
    w.a.transmit(udp_frame(), 0.0)
    sb.poll(0.0)
    assert sb.counters["rx_nobuf"] == 1 and sb.drop_reasons["NOMEM"] == 1 and seen == []
    assert alloc.nr_free == 12


def test_pfmemalloc_arp_request_still_gets_its_reply(kit):
    w, alloc, sb, seen = _setup(kit)
    sk = sb.udp_socket()
    sk.bind(("", 2049))
    sk.sk_set_memalloc()
    assert alloc.memalloc_socks == 1
    kit.exhaust(alloc)
    req = ethernet.emit(ethernet.BROADCAST, MAC_A, ethernet.ETH_P_ARP,
                        arp.ArpPacket(1, MAC_A, A, b"\0" * 6, B).emit())
    w.a.transmit(req, 0.0)
    sb.poll(0.0)
    replies = w.a.receive(0.0, 10)
    assert len(replies) == 1 and arp.ArpPacket.new_checked(replies[0][14:]).op == 2
    assert sb.counters["rx_pfmemalloc"] == 1 and seen == []          # taps skip reserve frames
    assert sb.rx_fate == {"arp": 1} and alloc.nr_free == 12          # both buffers returned
    assert alloc.snapshot()["reserve"]["pgalloc_pfmemalloc"] == 2    # rx buffer + the reply


def test_exhausted_pool_feeds_only_the_memalloc_socket(kit):
    w, alloc, sb, seen = _setup(kit)
    swap, other = _swap_and_other(sb)
    sb.neigh.add_permanent(A, MAC_A)
    kit.exhaust(alloc)
    for i in range(5):
        w.a.transmit(udp_frame(b"nfs%d" % i, dport=2049, ident=i), 0.0)
        w.a.transmit(udp_frame(b"noise", dport=5353, ident=100 + i), 0.0)
    w.a.transmit(ethernet.emit(MAC_B, MAC_A, ethernet.ETH_P_AOE, b"\0" * 40), 0.0)
    sb.poll(0.0)
    assert [swap.recvfrom()[0] for _ in range(5)] == [b"nfs%d" % i for i in range(5)]
    assert other.recvfrom() is None and other.drops == 5
    assert sb.counters["PFMemallocDrop"] == 5 == sb.snmp["TcpExt"]["PFMemallocDrop"]
    # AoE has no socket and fails skb_pfmemalloc_protocol: dropped before any protocol
    assert sb.drop_reasons["PFMEMALLOC"] == 6
    assert seen == [] and sb.counters["rx_pfmemalloc"] == 11
    # the rcvbuf limit applies to the memalloc socket as well
    swap.rcvbuf = 2 * 4672
    for i in range(4):
        w.a.transmit(udp_frame(b"x", dport=2049, ident=200 + i), 0.0)
    sb.poll(0.0)
    assert len(swap.rxq) == 3 and sb.drop_reasons["SOCKET_RCVBUFF"] == 1 and swap.drops == 1
    # the ICMP echo reply to a pfmemalloc request is built from the reserve (PF_MEMALLOC)
    w.a.transmit(ethernet.emit(MAC_B, MAC_A, 0x0800, ipv4.emit_header(A, B, 1, 8) +
                               __import__("client_agent.wire.icmp", fromlist=["x"]).emit_echo(8, 1, 2)), 0.0)
    sb.poll(0.0)
    assert sb.snmp["Icmp"]["OutEchoReps"] == 1
    swap.close()
    assert alloc.memalloc_socks == 0


def test_policy_off_the_reserve_feeds_any_socket(kit):
    w, alloc, sb, seen = _setup(kit)
    swap, other = _swap_and_other(sb)
    sb.policy.pfmemalloc_demux_drop = False
    kit.exhaust(alloc)
    for i in range(10):
        w.a.transmit(udp_frame(b"noise", dport=5353, ident=i), 0.0)
    sb.poll(0.0)
    assert len(other.rxq) == 10 and sb.counters["PFMemallocDrop"] == 0
    assert alloc.nr_free == 2 and alloc.owner_pages()[other.owner] == 10   # the reserve is gone, into the noise socket
    w.a.transmit(udp_frame(b"nfs", dport=2049), 0.0)
    w.a.transmit(udp_frame(b"nfs", dport=2049), 0.0)
    w.a.transmit(udp_frame(b"nfs", dport=2049), 0.0)
    sb.poll(0.0)
    # ... so the memalloc socket's own reply no longer fits: the deadlock the drop prevents
    assert len(swap.rxq) == 2 and sb.counters["rx_nobuf"] == 1


def test_reassembled_datagram_is_pfmemalloc_if_any_fragment_is(kit):
    w, alloc, sb, seen = _setup(kit)
    swap, other = _swap_and_other(sb)
    from client_agent.wire import udp
    seg = udp.emit(A, B, 1, 5353, b"y" * 24)
    first = udp_frame(seg=seg[:16], flags=ipv4.IP_MF, ident=9)
    last = udp_frame(seg=seg[16:], frag_off=16, ident=9)
    w.a.transmit(first, 0.0)
    sb.poll(0.0)                         # first fragment in normal memory
    kit.exhaust(alloc)
    w.a.transmit(last, 0.0)              # last one from the reserve
    sb.poll(0.0)
    assert sb.snmp["Ip"]["ReasmOKs"] == 1 and other.recvfrom() is None
    assert sb.counters["PFMemallocDrop"] == 1 and sb.rx_fate["PFMEMALLOC"] == 1
    assert sb.rx_fate["ip_frag_merged"] == 1
