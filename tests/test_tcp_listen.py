"""Listening sockets bounded as Linux bounds them (issue 12 kind E for the agent's own listeners):
the SYN queue (request sockets, tcp_max_syn_backlog, no syncookies), the accept queue
(sk_max_ack_backlog = min(backlog, somaxconn), sk_acceptq_is_full), the pfmemalloc filter on
the request-socket path -- segment by segment, counters by their Linux names."""

import pytest

from client_agent.mm.gfp import GFP_ATOMIC
from client_agent.net.ipv4.tcp import REQSK_SIZE, SOMAXCONN, TCP_MAX_SYN_BACKLOG
from client_agent.wire import tcp as wtcp
from tcp_kit import DOT, P, R, S, Script


@pytest.fixture
def sc():
    s = Script(nr_pages=1024)
    yield s
    s.finish()


def _listen(sc, backlog=None, port=2049):
    ln = sc.tcp.socket()
    ln.bind(("", port))
    if backlog is None:
        ln.listen()
    else:
        ln.listen(backlog)
    sc.aport = port
    return ln


def _handshake(sc, sport, isn=1000):
    sc.inject(S, isn, 0, 65535, opts=wtcp.opt_syn(1460, 7, True, (100, 0)), sport=sport)
    sa = [o for o in sc.sent() if o.dport == sport][-1]
    assert sa.flags == S | DOT
    sc.inject(DOT, isn + 1, sa.seq + 1, 1024, opts=wtcp.opt_established((101, sa.opts.tsval),
                                                                        None), sport=sport)
    return sa


def test_listen_backlog_is_capped_at_somaxconn(sc):
    ln = _listen(sc, backlog=1 << 20)
    assert ln.max_ack_backlog == SOMAXCONN == 4096
    assert ln.snapshot()["send_q"] == 4096                 # ss shows the limit as Send-Q


def test_syn_flood_is_bounded_and_an_established_peer_is_still_served(sc):
    ln = _listen(sc)                                       # backlog 4096
    _handshake(sc, 40000)
    peer = ln.accept()
    assert peer is not None and peer.established
    sc.sent()
    free_before = sc.alloc.nr_free
    ext = sc.stack.snmp["TcpExt"]
    # 2000 SYNs from as many ports (a SYN flood from one address, no syncookies)
    for i in range(2000):
        sc.inject(S, 7 * i, 0, 65535, opts=wtcp.opt_syn(1460, 7, True, (1, 0)),
                  sport=1024 + i)
    # tcp_conn_request: once qlen leaves less than a quarter of tcp_max_syn_backlog, SYNs of
    # unproven peers are dropped -- the SYN queue stops at 128 - 32 + 1 = 97 requests
    kept = TCP_MAX_SYN_BACKLOG - (TCP_MAX_SYN_BACKLOG >> 2) + 1
    assert len(ln.reqs) == kept
    assert sc.tcp.reqsk_mem == kept * REQSK_SIZE
    assert ext["ListenDrops"] == 2000 - kept and ext["TCPReqQFullDrop"] == 0
    assert sc.stack.drop_reasons["TCP_REQQ_FULL"] == 2000 - kept
    synacks = [o for o in sc.sent() if o.flags == S | DOT]
    assert len(synacks) == kept
    # no page is held for any of them: the SYN-ACKs were freed once sent
    assert sc.alloc.nr_free == free_before
    assert sc.stack.rx_in_flight() == 0
    # the established peer is still served: its data is read and acknowledged
    sc.inject(DOT | P, 1001, peer.snd_una, 1024, data=b"x" * 500, sport=40000,
              opts=wtcp.opt_established((102, 0), None))
    assert peer.recv(sc.now) == b"x" * 500
    sc.at(sc.now + 0.3)
    assert any(o.sport == 2049 and o.dport == 40000 and o.ack == 1501 for o in sc.sent())
    # the requests expire after tcp_synack_retries (fewer once the queue is mostly old)
    sc.at(sc.now + 200)
    assert not ln.reqs and sc.tcp.reqsk_mem == 0
    assert all(type(v).__name__ == "TcpSock" for v in sc.tcp.ehash.values())
    assert ext["TCPSynRetrans"] > 0
    # and a new peer can connect again
    _handshake(sc, 50000)
    assert ln.accept() is not None


def test_full_syn_queue_counts_reqqfulldrop(sc):
    ln = _listen(sc, backlog=2)
    for i in range(5):
        sc.inject(S, 100 * i, 0, sport=3000 + i)
    ext = sc.stack.snmp["TcpExt"]
    # inet_csk_reqsk_queue_is_full: qlen > sk_max_ack_backlog
    assert len(ln.reqs) == 3
    assert (ext["TCPReqQFullDrop"], ext["ListenDrops"], ext["ListenOverflows"]) == (2, 2, 0)
    assert ln.synflood_warned
    assert ln.snapshot()["syn_recv"] == 3


def _syn(sc, sport, isn=1000):
    sc.inject(S, isn, 0, 65535, opts=wtcp.opt_syn(1460, 7, True, (100, 0)), sport=sport)
    return [o for o in sc.sent() if o.dport == sport and o.flags == S | DOT][-1]


def _ack(sc, sport, sa, isn=1000, tsval=101):
    sc.inject(DOT, isn + 1, sa.seq + 1, 1024, sport=sport,
              opts=wtcp.opt_established((tsval, sa.opts.tsval), None))


def test_accept_queue_overflow_keeps_the_request_until_there_is_room(sc):
    ln = _listen(sc, backlog=1)
    _handshake(sc, 41000)
    sa1, sa2 = _syn(sc, 41001), _syn(sc, 41002)           # both SYNs find room
    _ack(sc, 41001, sa1)
    assert len(ln.accept_queue) == 2                      # sk_acceptq_is_full: 2 > 1
    ext = sc.stack.snmp["TcpExt"]
    # the third handshake's ACK finds the accept queue full (tcp_v4_syn_recv_sock overflow)
    _ack(sc, 41002, sa2)
    assert len(ln.accept_queue) == 2 and len(ln.reqs) == 1
    assert (ext["ListenOverflows"], ext["ListenDrops"]) == (1, 1)
    assert sc.stack.drop_reasons["TCP_LISTEN_OVERFLOW"] == 1
    (req,) = ln.reqs.values()
    assert req.acked                                      # tcp_abort_on_overflow = 0
    # a SYN from a fourth peer while the accept queue is full: dropped in tcp_conn_request
    sc.inject(S, 9, 0, sport=41003)
    assert (ext["ListenOverflows"], ext["ListenDrops"]) == (2, 2) and len(ln.reqs) == 1
    # the owner accepts one; the SYN-ACK retransmission makes the peer ACK again
    assert ln.accept() is not None
    sc.sent()
    sc.at(sc.now + 1.0)
    again = [o for o in sc.sent() if o.dport == 41002]
    assert again and again[0].flags == S | DOT and again[0].seq == sa2.seq
    _ack(sc, 41002, again[0], tsval=103)
    assert not ln.reqs and len(ln.accept_queue) == 2
    assert sc.stack.snmp["Tcp"]["PassiveOpens"] == 3


def test_rst_and_bad_ack_to_a_request(sc):
    ln = _listen(sc)
    sc.inject(S, 1000, 0, sport=42000)
    sa = sc.expect(S | DOT, ack=1001)
    # an ACK of something we never sent: the listener answers with a RST, the request stays
    sc.inject(DOT, 1001, sa.seq + 77, sport=42000)
    rst = sc.expect(R, seq=sa.seq + 77)
    assert rst.dport == 42000 and len(ln.reqs) == 1
    # an in-window RST: the request goes (EmbryonicRsts), the attempt failed
    sc.inject(R, 1001, 0, sport=42000)
    assert not ln.reqs and sc.tcp.reqsk_mem == 0
    assert sc.stack.snmp["TcpExt"]["EmbryonicRsts"] == 1
    assert sc.stack.snmp["Tcp"]["AttemptFails"] == 1


def test_pfmemalloc_ack_to_a_request_is_dropped_at_the_listeners_filter(sc):
    # a SOCK_MEMALLOC socket makes reserve-backed receive buffers possible
    swap, iss, syn = sc.active_open(wscale=0)
    swap.sk_set_memalloc()
    ln = _listen(sc)
    sc.pport = 43000
    sc.inject(S, 1000, 0)
    sa = sc.expect(S | DOT, ack=1001)
    sc.exhaust(GFP_ATOMIC)                                # every received frame: pfmemalloc
    ext = sc.stack.snmp["TcpExt"]
    sc.inject(DOT, 1001, sa.seq + 1)
    assert ext["PFMemallocDrop"] == 1 and sc.stack.drop_reasons["PFMEMALLOC"] == 1
    assert len(ln.reqs) == 1 and ln.accept() is None and ln.drops == 1
    sc.release()
    sc.inject(DOT, 1001, sa.seq + 1)                      # the peer's ACK again, ordinary
    assert ln.accept() is not None
