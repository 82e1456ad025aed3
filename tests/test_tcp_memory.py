"""TCP's memory behaviour (kernel-mechanism.md §8): the prune path, the pfmemalloc filter, the
protocol-wide limit a pfmemalloc segment passes but rcvbuf does not, the backlog limit, and the
GFP contexts of ACKs and retransmissions -- segment by segment, counters by their Linux names."""

import pytest

from client_agent.mm.gfp import GFP_ATOMIC
from tcp_kit import DOT, P, S, Script

PAGES = 256      # min_free_kbytes 128 -> min 32 pages; GFP_ATOMIC floor 12


@pytest.fixture
def sc():
    s = Script(nr_pages=PAGES)
    yield s
    s.finish()


def _ext(sc):
    return sc.stack.snmp["TcpExt"]


def test_ofo_queue_pruned_from_the_top_when_rcvbuf_is_full(sc):
    sk, iss, syn = sc.active_open(wscale=0, rcvbuf=32768)
    una = iss + 1
    # a hole at 5001; 1000-byte segments beyond it (truesize 4672 each)
    for i in range(1, 9):
        sc.inject(DOT | P, 5001 + 1000 * i, una, data=b"o" * 1000, opts=sc.ts(600))
    ext = _ext(sc)
    # 7 fit (6 * 4672 + 1000 <= 32768); the 8th would land last: nothing to prune below it
    assert len(sk.ofo) == 7 and ext["TCPOFOQueue"] == 7
    assert (ext["PruneCalled"], ext["RcvPruned"], ext["TCPOFODrop"], ext["OfoPruned"]) == \
        (1, 1, 1, 0)
    # a lower out-of-order segment: the highest ones go (TCP_OFO_QUEUE_PRUNE) to make room
    sc.inject(DOT | P, 5001 + 500, una, data=b"l" * 400, opts=sc.ts(601))
    assert ext["OfoPruned"] == 1 and sc.stack.drop_reasons["TCP_OFO_QUEUE_PRUNE"] >= 1
    assert sk.ofo[0].seq == 5501 and sk.ofo[-1].seq == 5001 + 6000
    assert sk.selective_acks == [] or sk.selective_acks[0][0] == 5501   # SACK state reset
    # the hole fills: what is left of the OFO queue moves behind it, in order
    sc.inject(DOT | P, 5001, una, data=b"h" * 500, opts=sc.ts(602))
    got = sk.recv(sc.now)
    assert got.startswith(b"h" * 500 + b"l" * 400) and sk.rcv_nxt == 5001 + len(got)
    sk.check_accounting()


def test_in_order_drop_but_empty_queue_always_takes_one(sc):
    sk, iss, syn = sc.active_open(wscale=0)
    una = iss + 1
    sc.tcp.tcp_mem = [0, 0, 0]                      # protocol-wide limit: nothing fits
    ext = _ext(sc)
    sc.inject(DOT | P, 5001, una, data=b"a" * 100, opts=sc.ts(600))
    assert len(sk.receive_queue) == 1                # forced: the queue was empty
    assert ext["PruneCalled"] == 1 and ext["TCPRcvQDrop"] == 0
    sc.inject(DOT | P, 5101, una, data=b"b" * 100, opts=sc.ts(601))
    assert len(sk.receive_queue) == 1 and ext["TCPRcvQDrop"] == 1
    assert sc.stack.drop_reasons["PROTO_MEM"] == 1
    acks = sc.sent()
    assert acks and acks[-1].ack == 5101             # an immediate ACK (ICSK_ACK_NOMEM)
    assert sk.recv(sc.now) == b"a" * 100
    sc.inject(DOT | P, 5101, una, data=b"b" * 100, opts=sc.ts(602))   # the peer resends
    assert sk.recv(sc.now) == b"b" * 100


def _memalloc_world(sc):
    """One SOCK_MEMALLOC socket (the swap transport) makes reserve-backed receive buffers
    possible; the pool is then drained to the GFP_ATOMIC floor so every frame is pfmemalloc."""
    swap, iss, syn = sc.active_open(wscale=0)
    swap.sk_set_memalloc()
    assert sc.alloc.memalloc_socks == 1
    return swap, iss + 1


def test_pfmemalloc_segment_to_non_memalloc_socket_is_dropped(sc):
    swap, sw_una = _memalloc_world(sc)
    sw_port = sc.aport
    sc.pport += 1
    other, iss, syn = sc.active_open(wscale=0)
    o_una, o_port = iss + 1, sc.aport
    ln = sc.tcp.socket()
    ln.bind(("", 2049))
    ln.listen()
    sc.exhaust(GFP_ATOMIC)
    ext = _ext(sc)
    sc.inject(DOT | P, 5001, o_una, data=b"n" * 100, opts=sc.ts(600), dport=o_port)
    sc.inject(S, 1, 0, dport=2049)                   # the listener filters too
    assert ext["PFMemallocDrop"] == 2 and sc.stack.drop_reasons["PFMEMALLOC"] == 2
    assert not other.receive_queue and ln.accept() is None
    sc.expect_nothing()                              # dropped before TCP saw them: no reply
    # the same kind of segment to the memalloc socket is taken, and ACKed from the reserve
    sc.pport -= 1
    sc.inject(DOT | P, 5001, sw_una, data=b"m" * 100, opts=sc.ts(601), dport=sw_port)
    assert swap.recv(sc.now) == b"m" * 100
    sc.at(sc.now + 0.5)
    assert any(o.dport == sc.pport and o.ack == 5101 for o in sc.sent())
    assert sc.stack.counters["rx_pfmemalloc"] == 3


def test_pfmemalloc_passes_tcp_mem_but_not_rcvbuf(sc):
    swap, una = _memalloc_world(sc)
    sc.tcp.tcp_mem = [0, 0, 0]
    ext = _ext(sc)
    sc.inject(DOT | P, 5001, una, data=b"1" * 100, opts=sc.ts(600))          # forced (empty)
    sc.inject(DOT | P, 5101, una, data=b"2" * 100, opts=sc.ts(601))          # ordinary: no
    assert ext["TCPRcvQDrop"] == 1 and len(swap.receive_queue) == 1
    sc.exhaust(GFP_ATOMIC)                                                    # now pfmemalloc
    sc.inject(DOT | P, 5101, una, data=b"2" * 100, opts=sc.ts(602))
    assert len(swap.receive_queue) == 2 and ext["TCPRcvQDrop"] == 1          # past tcp_mem
    swap.rcvbuf = 4672 + 50                          # rcvbuf binds, even after collapsing
    sc.inject(DOT | P, 5201, una, data=b"3" * 100, opts=sc.ts(603))
    assert ext["TCPRcvCollapsed"] == 2 and len(swap.receive_queue) == 1      # 2 -> 1 page
    assert ext["TCPRcvQDrop"] == 2 and ext["PruneCalled"] == 3 and ext["RcvPruned"] == 1
    sc.release()
    assert swap.recv(sc.now) == b"1" * 100 + b"2" * 100


def test_backlog_limit_binds_pfmemalloc_too(sc):
    swap, una = _memalloc_world(sc)
    swap.rcvbuf = swap.sndbuf = 4096
    swap.lock_sock()                                 # the owner holds the socket
    limit = 2 * swap.rcvbuf + swap.sndbuf // 2 + 65536
    seq = 5001
    ext = _ext(sc)
    while ext["TCPBacklogDrop"] == 0:
        sc.inject(DOT | P, seq, una, data=b"k" * 1000, opts=sc.ts(600))
        seq += 1000
        assert seq < 5001 + 100 * 1000
    # sk_rcvqueues_full looks at the queue before this buffer: one may overshoot
    assert swap.backlog_len - 4672 <= limit < swap.backlog_len
    sc.exhaust(GFP_ATOMIC)
    sc.inject(DOT | P, seq, una, data=b"k" * 1000, opts=sc.ts(600))
    assert sc.stack.counters["rx_pfmemalloc"] == 1   # from the reserve, for SOCK_MEMALLOC...
    assert ext["TCPBacklogDrop"] == 2                # ...and still refused past the limit
    assert sc.stack.drop_reasons["SOCKET_BACKLOG"] == 2 and ext["PFMemallocDrop"] == 0
    swap.release_sock(sc.now)
    assert not swap.backlog and swap.backlog_len == 0 and sc.alloc.pf_memalloc_depth == 0
    assert swap.rcv_nxt > 5001                       # what fitted was queued


def test_failed_ack_allocation_backs_off_on_the_delack_timer(sc):
    sk, iss, syn = sc.active_open(wscale=0)
    una = iss + 1
    free = sc.exhaust(GFP_ATOMIC)
    sc.alloc.free(sc.held.pop())                     # one page for the received frame only
    sc.inject(DOT | P, 5001, una, data=b"q" * 100, opts=sc.ts(600))
    assert sc.alloc.nr_free == free
    sc.expect_nothing()                              # the ACK found no page: nothing sent
    assert sk.counters["ack_nomem"] == 1 and sk.t_delack == pytest.approx(sc.now + 0.2)
    sc.release()
    sc.at(sc.now + 0.21)
    sc.expect(DOT, ack=5101)
    assert _ext(sc)["DelayedACKs"] == 1 and sk.recv(sc.now) == b"q" * 100


def test_retransmission_is_plain_gfp_atomic(sc):
    swap, una = _memalloc_world(sc)
    swap.nodelay = True
    assert swap.send(b"r" * 100, sc.now) == 100
    sc.expect(DOT | P, seq=una)
    sc.exhaust(GFP_ATOMIC)
    sc.at(sc.now + 0.25)                             # RTO: no page at GFP_ATOMIC
    sc.expect_nothing()
    ext = _ext(sc)
    assert ext["TCPRetransFail"] == 1 and sc.stack.snmp["Tcp"]["RetransSegs"] == 0
    # new data from the same memalloc socket does get the reserve (sk_gfp_mask)
    sc.alloc.free(sc.held.pop())
    assert swap.send(b"s" * 10, sc.now) == 10
    sc.alloc.memalloc_noreclaim_save()               # a PF_MEMALLOC context lends the reserve
    sc.at(sc.now + 0.5)
    sc.alloc.memalloc_noreclaim_restore(0)
    assert any(o.seq == una and len(o.data) == 100 for o in sc.sent())
    assert sc.stack.snmp["Tcp"]["RetransSegs"] >= 1
