"""Issue 12, kind C: the receive path's state behaves as Linux's for duplicates, unsolicited and
malformed input, and every table it can grow is bounded and charged as Linux does it.

Reassembly: net/ipv4/ip_fragment.c ip_frag_queue + inet_fragment.c inet_frag_queue_insert.
ARP and the neighbour table: net/ipv4/arp.c arp_process, net/core/neighbour.c neigh_alloc,
neigh_forced_gc, __neigh_update, neigh_periodic_work.
"""

from client_agent.net.ipfrag import IPQ_QSIZE
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
