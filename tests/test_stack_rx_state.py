"""Issue 12, kind C: the receive path's state behaves as Linux's for duplicates, unsolicited and
malformed input, and every table it can grow is bounded and charged as Linux does it.

Reassembly: net/ipv4/ip_fragment.c ip_frag_queue + inet_fragment.c inet_frag_queue_insert.
ARP and the neighbour table: net/ipv4/arp.c arp_process, net/core/neighbour.c neigh_alloc,
neigh_forced_gc, __neigh_update, neigh_periodic_work.
"""

from client_agent.net.ipv4.ip_fragment import IPQ_QSIZE
from client_agent.phy.wire_pair import WirePair
from client_agent.wire import arp, ethernet, ipv4, udp
from test_stack_kit import A, B, IP_B, MAC_A, MAC_B, kit, udp_frame  # noqa: F401

TRUESIZE = 4096 + 576                   # one-page receive buffer


def _rx(kit, **kw):
    w = WirePair()
    sb = kit.stack(kit.alloc(**kw), w.b, MAC_B, IP_B)
    sk = sb.udp_socket()
    sk.bind(("", 7000))
    return w, sb, sk


def _frags(seg, pieces, ident=77, src=A):
    """IP fragments of the UDP segment ``seg``: ``pieces`` is [(start, end)], MF unless the
    piece ends the segment."""
    return [udp_frame(seg=seg[o:e], src=src, ident=ident, frag_off=o,
                      flags=ipv4.IP_MF if e < len(seg) else 0) for o, e in pieces]


def _send(w, sb, frames, now=0.0):
    for f in frames:
        w.a.transmit(f, now)
    sb.poll(now, budget=len(frames) + 1)


def _drops(sb):
    return {k: v for k, v in sb.drop_reasons.items() if v}


SEG = udp.emit(A, B, 5000, 7000, b"0123456789abcdef")       # 24 bytes: 8 header + 16 data


# -------------------------------------------------------------------------- reassembly
def test_issue_example_resent_run_is_a_duplicate_and_the_datagram_completes(kit):
    # [0,8) MF, [8,16) MF, then a resend of [0,16) MF, then [16,24): the resend lies wholly
    # inside the run [0,16) -- a duplicate (Linux since "net: ipv4: do not handle duplicate
    # fragments as overlapping"), not an overlap.
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(SEG, [(0, 8), (8, 16), (0, 16), (16, 24)]))
    assert _drops(sb) == {"DUP_FRAG": 1}
    assert sk.recvfrom() == (b"0123456789abcdef", ("198.18.0.1", 5000))
    ip = sb.snmp["Ip"]
    assert (ip["ReasmReqds"], ip["ReasmOKs"], ip["ReasmFails"], ip["ReasmOverlaps"]) == (4, 1, 0, 0)
    assert sb.reasm.mem == 0 and not sb.reasm.queues


def test_exact_duplicate_of_a_middle_fragment_is_dropped_and_the_queue_kept(kit):
    seg = udp.emit(A, B, 5000, 7000, b"m" * 32)                 # 40 bytes
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(seg, [(0, 8), (8, 16), (16, 24), (8, 16), (24, 40)]))
    assert _drops(sb) == {"DUP_FRAG": 1}
    assert sk.recvfrom()[0] == b"m" * 32
    assert sb.snmp["Ip"]["ReasmFails"] == 0 and sb.snmp["Ip"]["ReasmOKs"] == 1


def test_fragment_inside_a_run_is_a_duplicate_even_with_other_bytes(kit):
    # inet_frag_queue_insert compares offsets only: a fragment inside a run is a duplicate and
    # its bytes are never looked at; the queued bytes are delivered.
    seg = udp.emit(A, B, 5000, 7000, b"r" * 32)
    w, sb, sk = _rx(kit)
    inside = udp_frame(seg=b"X" * 16, ident=77, frag_off=8, flags=ipv4.IP_MF)
    _send(w, sb, _frags(seg, [(0, 8), (8, 16), (16, 32)]) + [inside] + _frags(seg, [(32, 40)]))
    assert _drops(sb) == {"DUP_FRAG": 1}
    assert sk.recvfrom()[0] == b"r" * 32


def test_overlap_with_different_data_kills_the_whole_queue(kit):
    # [0,16) queued, then [8,24) MF: starts inside the tail fragment and ends beyond it --
    # an overlap (RFC 5722): the datagram and every fragment of it are discarded.
    seg = udp.emit(A, B, 5000, 7000, b"o" * 32)
    w, sb, sk = _rx(kit)
    bad = udp_frame(seg=b"Y" * 16, ident=77, frag_off=8, flags=ipv4.IP_MF)
    _send(w, sb, _frags(seg, [(0, 16)]) + [bad])
    assert _drops(sb) == {"FRAG_OVERLAP": 2}
    ip = sb.snmp["Ip"]
    assert (ip["ReasmOverlaps"], ip["ReasmFails"]) == (1, 1)
    assert not sb.reasm.queues and sb.reasm.mem == 0 and sb.alloc.owner_pages() == {}
    # the rest of the datagram now opens a new queue that never completes
    _send(w, sb, _frags(seg, [(16, 40)]), now=1.0)
    assert sk.recvfrom() is None and sb.reasm.queued() == 1


def test_resend_spanning_two_runs_is_an_overlap_as_in_linux(kit):
    # Out of order: the last fragment [32,40) first, then [0,8) and [8,16) fill in by binary
    # search, each a run of its own (only appends at the tail grow a run). A resend of [0,16)
    # is covered by queued data but lies inside no single run: Linux calls that an overlap,
    # and so does the agent. (In order, the same resend is a duplicate: the issue example.)
    seg = udp.emit(A, B, 5000, 7000, b"s" * 32)
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(seg, [(32, 40), (0, 8), (8, 16)]))
    q = next(iter(sb.reasm.queues.values()))
    assert [(r[0], r[1]) for r in q.runs] == [(0, 8), (8, 16), (32, 40)]
    _send(w, sb, _frags(seg, [(0, 16)]), now=0.5)
    assert _drops(sb) == {"FRAG_OVERLAP": 4} and sb.snmp["Ip"]["ReasmOverlaps"] == 1
    assert not sb.reasm.queues and sb.alloc.owner_pages() == {}


def test_fragment_beyond_max_dist_reinitialises_only_its_queue(kit):
    # ip_frag_too_far: the source's peer counts every fragment queued from it; a queue whose
    # last fragment is more than ipfrag_max_dist (64) counts behind is reinitialised.
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(SEG, [(0, 8)], ident=1))
    _send(w, sb, [udp_frame(seg=b"\0" * 8, ident=1000 + i, flags=ipv4.IP_MF) for i in range(63)])
    _send(w, sb, _frags(SEG, [(8, 16)], ident=1))           # 64 counts on: not too far
    assert sb.drop_reasons["FRAG_TOO_FAR"] == 0
    _send(w, sb, [udp_frame(seg=b"\0" * 8, ident=2000 + i, flags=ipv4.IP_MF) for i in range(64)])
    _send(w, sb, _frags(SEG, [(16, 24)], ident=1))          # 65 counts on: too far
    assert sb.drop_reasons["FRAG_TOO_FAR"] == 2             # [0,8) and [8,16) dropped
    assert sb.snmp["Ip"]["ReasmFails"] == 1
    q = sb.reasm.queues[(A, B, 17, 1)]
    assert q.nfrags == 1 and q.meat == 8 and sk.recvfrom() is None
    assert len(sb.reasm.peers) == 1 and sb.reasm.peers[A].refcnt == 1 + 63 + 64


def test_reassembly_memory_limit_reached_by_many_incomplete_datagrams(kit):
    # ipfrag_high_thresh: each incomplete datagram charges its queue (struct ipq) and its
    # fragment's truesize; once mem exceeds the limit every fragment -- of a new datagram or of
    # a queued one -- is refused (inet_frag_find returns NULL), ReasmFails counted.
    w, sb, sk = _rx(kit, nr_pages=2048)
    sb.reasm.high_thresh_bytes = thresh = 64 * 1024
    per = TRUESIZE + IPQ_QSIZE
    n_fit = thresh // per + 1                                # the one that crosses is still taken
    frames = [udp_frame(seg=b"\0" * 8, ident=i, flags=ipv4.IP_MF) for i in range(n_fit + 50)]
    _send(w, sb, frames)
    assert len(sb.reasm.queues) == n_fit and sb.reasm.mem == n_fit * per > thresh
    assert sb.drop_reasons["FRAG_MEM_LIMIT"] == 50 and sb.snmp["Ip"]["ReasmFails"] == 50
    assert sb.alloc.owner_pages() == {"ipfrag": n_fit}
    # a fragment completing a queued datagram is refused too while over the limit
    _send(w, sb, [udp_frame(seg=b"\0" * 8, ident=0, frag_off=8)], now=1.0)
    assert sb.drop_reasons["FRAG_MEM_LIMIT"] == 51 and sk.recvfrom() is None
    # every page comes back when the queues time out
    sb.poll(31.0)
    assert sb.drop_reasons["FRAG_REASM_TIMEOUT"] == n_fit and sb.reasm.mem == 0
    assert sb.alloc.owner_pages() == {} and sb.alloc.nr_free == sb.alloc.nr_pages
    assert sb.snmp["Ip"]["ReasmTimeout"] == n_fit


def test_inet_peer_table_bounded_by_threshold(kit):
    # The per-source inet_peer (ipfrag_max_dist's counter) is freed once unreferenced and the
    # table holds inet_peer_threshold peers; a peer with a live queue is never freed.
    w, sb, sk = _rx(kit, nr_pages=4096)
    sb.reasm.peer_threshold = 8
    held = [udp_frame(seg=b"\0" * 8, src=bytes([198, 18, 1, i]), ident=1, flags=ipv4.IP_MF)
            for i in range(4)]
    _send(w, sb, held)                                       # 4 queues pin 4 peers
    for i in range(100):                                     # 100 sources, each datagram done
        src = bytes([198, 18, 2, i])
        seg = udp.emit(src, B, 5000, 7000, b"p" * 8)
        _send(w, sb, _frags(seg, [(0, 8), (8, 16)], ident=5, src=src), now=i * 0.2)
        assert sk.recvfrom()[0] == b"p" * 8
    assert len(sb.reasm.peers) <= 8
    assert all(bytes([198, 18, 1, i]) in sb.reasm.peers for i in range(4))
    assert sb.reasm.peer_stats["peers_freed"] == 100 + 4 - len(sb.reasm.peers)


# -------------------------------------------------------------------------- ARP / neighbours
STRANGER = ipv4.ip_aton("198.18.0.66")
MAC_S = bytes.fromhex("020000000066")


def _arp(op, sha, spa, tpa, *, tha=b"\0" * 6, dst_mac=MAC_B):
    return ethernet.emit(dst_mac, sha, ethernet.ETH_P_ARP, arp.ArpPacket(op, sha, spa, tha, tpa).emit())


def _arp_replies(w, now):
    return [arp.ArpPacket.new_checked(f[14:]) for f in w.a.receive(now, 100000)
            if f[12:14] == b"\x08\x06"]


def test_issue_example_unsolicited_arp_reply_creates_no_entry(kit):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    _send(w, sb, [_arp(arp.ARPOP_REPLY, MAC_S, STRANGER, B, tha=MAC_B)])
    assert sb.neigh.lookup(STRANGER) is None
    assert sb.snmp["ArpCache"]["allocs"] == 0 and sb.snmp["ArpCache"]["entries"] == 0
    assert sb.rx_fate == {"arp": 1} and _drops(sb) == {}
    # a gratuitous ARP (request, sender == target) from it creates none either
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, MAC_S, STRANGER, STRANGER, dst_mac=ethernet.BROADCAST)])
    assert sb.neigh.lookup(STRANGER) is None and sb.snmp["ArpCache"]["allocs"] == 0


def test_arp_accept_lets_unsolicited_arp_create_entries(kit):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    sb.arp_accept = 2                                   # only senders in our subnet
    far = ipv4.ip_aton("198.19.0.66")
    _send(w, sb, [_arp(arp.ARPOP_REPLY, MAC_S, far, B, tha=MAC_B),
                  _arp(arp.ARPOP_REPLY, MAC_S, STRANGER, B, tha=MAC_B)])
    assert sb.neigh.lookup(far) is None
    n = sb.neigh.lookup(STRANGER)
    assert (n.state, n.mac) == ("REACHABLE", MAC_S)
    sb.arp_accept = 1
    garp_ip = ipv4.ip_aton("198.18.0.67")
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, MAC_S, garp_ip, garp_ip, dst_mac=ethernet.BROADCAST)])
    assert sb.neigh.lookup(garp_ip).state == "STALE"     # a request asserts no reachability


def test_request_to_us_makes_a_stale_entry_and_the_first_reply_wins_within_locktime(kit):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, MAC_S, STRANGER, B, dst_mac=ethernet.BROADCAST)])
    n = sb.neigh.lookup(STRANGER)
    assert (n.state, n.mac) == ("STALE", MAC_S)          # neigh_event_ns
    assert [(r.op, r.tpa) for r in _arp_replies(w, 0.0)] == [(arp.ARPOP_REPLY, STRANGER)]
    # a reply to our MAC confirms it, after locktime
    _send(w, sb, [_arp(arp.ARPOP_REPLY, MAC_S, STRANGER, B, tha=MAC_B)], now=2.0)
    assert n.state == "REACHABLE"
    # another MAC for it within locktime (1 s) of that update: ignored ("use the FIRST one")
    other = bytes.fromhex("0200000000aa")
    _send(w, sb, [_arp(arp.ARPOP_REPLY, other, STRANGER, B, tha=MAC_B)], now=2.5)
    assert n.mac == MAC_S and n.updated == 2.0
    # ... but a gratuitous ARP overrides at once, and as a request it leaves the entry STALE
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, other, STRANGER, STRANGER, dst_mac=ethernet.BROADCAST)], now=2.6)
    assert (n.mac, n.state) == (other, "STALE")
    # after locktime a reply with a new MAC is taken
    third = bytes.fromhex("0200000000bb")
    _send(w, sb, [_arp(arp.ARPOP_REPLY, third, STRANGER, B, tha=MAC_B)], now=4.0)
    assert (n.mac, n.state) == (third, "REACHABLE")
    assert sb.snmp["ArpCache"]["allocs"] == 1


def test_address_probe_from_0_0_0_0_is_answered_and_creates_no_entry(kit):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, MAC_S, b"\0\0\0\0", B, dst_mac=ethernet.BROADCAST)])
    assert sb.neigh.entries == {} and sb.snmp["ArpCache"]["allocs"] == 0
    replies = _arp_replies(w, 0.0)
    assert [(r.op, r.spa, r.tpa, r.tha) for r in replies] == [(arp.ARPOP_REPLY, B, b"\0\0\0\0", MAC_S)]


def _sender(i):
    return bytes([198, 18, 4 + i // 250, 1 + i % 250]), bytes([2, 0, 0, 1, i >> 8, i & 255])


def test_gc_thresh3_reached_by_a_flood_of_distinct_senders(kit):
    # 1100 hosts each ask for our address within one instant: 1024 entries (gc_thresh3) are
    # made and answered; forced GC finds nothing to free (every entry updated < 5 s ago), so
    # the other 76 get "neighbor table overflow!" (table_fulls) and no reply, as in Linux.
    w = WirePair()
    alloc = kit.alloc()
    from client_agent.net import Stack
    sb = Stack(alloc, w.b, MAC_B, IP_B, 15)
    kit.stacks.append(sb)
    frames = []
    for i in range(1100):
        ip, mac = _sender(i)
        frames.append(_arp(arp.ARPOP_REQUEST, mac, ip, B, dst_mac=ethernet.BROADCAST))
    _send(w, sb, frames)
    st = sb.snmp["ArpCache"]
    assert len(sb.neigh.entries) == 1024 == st["entries"] == sb.neigh.gc_entries
    assert st["table_fulls"] == 76 and st["forced_gc_runs"] == 76 and st["allocs"] == 1024
    assert len(_arp_replies(w, 0.0)) == 1024
    assert sb.neigh.lookup(_sender(1099)[0]) is None
    # a send to a new next hop finds no room either: dropped NEIGH_CREATEFAIL, -EINVAL
    sk = sb.udp_socket()
    assert sk.sendto(b"x", ("198.18.9.9", 9), 0.0) == -22
    assert _drops(sb) == {"NEIGH_CREATEFAIL": 1} and sb.snmp["Ip"]["OutDiscards"] == 1
    assert st["table_fulls"] == 77 and alloc.owner_pages() == {}
    # 10 s later the entries are older than 5 s: forced GC frees gc_entries + 1 - gc_thresh2
    # of them, oldest first, and the new sender gets its entry and its reply
    _send(w, sb, [frames[1099]], now=10.0)
    assert len(sb.neigh.entries) == 1024 - 513 + 1 and st["destroys"] == 513
    assert sb.neigh.lookup(_sender(0)[0]) is None and sb.neigh.lookup(_sender(513)[0]) is not None
    assert sb.neigh.lookup(_sender(1099)[0]).state == "STALE"
    assert len(_arp_replies(w, 10.0)) == 1
    # permanent entries are exempt from the limit
    sb.neigh.add_permanent(_sender(1200)[0], MAC_S)
    assert sb.neigh.gc_entries == 512 and len(sb.neigh.entries) == 513


def test_periodic_gc_only_above_gc_thresh1(kit):
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    sb.neigh.gc_thresh1 = 4
    ask = [_arp(arp.ARPOP_REQUEST, MAC_S, bytes([198, 18, 0, 100 + i]), B,
                dst_mac=ethernet.BROADCAST) for i in range(5)]
    _send(w, sb, ask[:3])
    assert sb.next_deadline() is None                   # below gc_thresh1: no periodic work
    sb.poll(1000.0)
    assert len(sb.neigh.entries) == 3                   # unused STALE entries stay
    _send(w, sb, ask[3:], now=1000.0)
    assert sb.next_deadline() == 1005.0                 # on the 15 s grid
    sb.poll(1005.0)
    # at >= gc_thresh1 entries the work removes those unused for gc_stale_time (60 s): the
    # three asked at 0; the two from 1000 stay, and below gc_thresh1 the work stops
    assert sorted(n.ip[3] for n in sb.neigh.entries.values()) == [103, 104]
    st = sb.snmp["ArpCache"]
    assert st["destroys"] == 3 and st["periodic_gc_runs"] == 1 and sb.next_deadline() is None
