"""Handshake with options (RFC 9293 3.5, RFC 7323, RFC 2018), segment by segment."""


from client_agent.net.ipv4.tcp import ESTABLISHED, SYN_RECV
from client_agent.wire import tcp as wtcp
from tcp_kit import DOT, IP_A, S, Script, sc


def test_active_open_offers_and_applies_options(sc):
    sk = sc.tcp.socket()
    assert sk.connect((IP_A, 40000), 0.0) == 0
    syn = sc.expect(S)
    o = syn.opts
    assert (o.mss, o.wscale, o.sack_ok, o.saw_tstamp, o.tsecr) == (1460, 7, True, True, 0)
    assert syn.win == 64240 and syn.raw[12] >> 4 == 10       # 40 bytes of header, Linux's SYN
    sc.aport = syn.sport
    sc.at(0.010)
    sc.inject(S | DOT, 7000, syn.seq + 1, 1000, opts=wtcp.opt_syn(1200, 3, True, (55, o.tsval)))
    ack = sc.expect(DOT, seq=syn.seq + 1, ack=7001)
    assert ack.opts.tsecr == 55 and ack.win == 502          # 64240 aligned up to 128, >> 7
    assert sk.state == ESTABLISHED
    assert sk.mss_cache == 1200 - 12                         # peer's MSS minus the TS option
    assert sk.snd_wscale == 3 and sk.sack_ok and sk.tstamp_ok
    assert sk.srtt_us == 10000 * 8                           # one sample from the SYN: 10 ms
    mib = sc.stack.snmp["Tcp"]
    assert (mib["ActiveOpens"], mib["CurrEstab"], mib["OutSegs"], mib["InSegs"]) == (1, 1, 2, 1)
    # the peer's window is scaled from now on: 1000 << 3
    sc.inject(DOT, 7001, syn.seq + 1, 1000, opts=sc.ts(56, ack))
    assert sk.snd_wnd == 8000


def test_peer_without_options_gets_none(sc):
    sk = sc.tcp.socket()
    sk.connect((IP_A, 40000), 0.0)
    syn = sc.expect(S)
    sc.aport = syn.sport
    sc.inject(S | DOT, 1, syn.seq + 1, 5000)
    ack = sc.expect(DOT, ack=2)
    assert ack.raw[12] >> 4 == 5                             # no options at all
    assert (sk.mss_cache, sk.wscale_ok, sk.sack_ok, sk.tstamp_ok) == (536, False, False, False)
    assert ack.win == 64240                                  # unscaled window
    assert sk.send(b"x" * 2000, sc.now) == 2000
    segs = sc.sent()
    # one write-queue buffer, sent with nothing in flight: tcp_mss_split_point's Nagle check
    # (tcp_nagle_check) does not hold its partial last segment
    assert [len(s.data) for s in segs] == [536, 536, 536, 392]
    assert sk.send(b"y" * 100, sc.now) == 100
    assert sc.sent() == []                                   # Nagle holds the small one
    sc.inject(DOT, 2, segs[-1].seq + 392, 5000)
    assert len(sc.expect(DOT | wtcp.PSH).data) == 100


def test_passive_open_answers_with_what_was_offered(sc):
    ln = sc.tcp.socket()
    ln.bind(("", 2049))
    ln.listen(4)
    sc.aport = 2049
    sc.inject(S, 1000, 0, 65535, opts=wtcp.opt_syn(1460, None, True, None))   # SACK, no WS/TS
    sa = sc.expect(S | DOT, ack=1001)
    assert (sa.opts.mss, sa.opts.wscale, sa.opts.sack_ok, sa.opts.saw_tstamp) == (1460, -1,
                                                                                   True, False)
    assert ln.accept() is None
    # a request socket, not a full socket, until the handshake's ACK (TCP_NEW_SYN_RECV)
    assert [s for s in sc.tcp.sockets if s.parent is ln] == []
    (req,) = ln.reqs.values()
    assert req.state == SYN_RECV and sc.tcp.reqsk_mem == 320
    # the peer's SYN again: the same SYN-ACK again
    sc.inject(S, 1000, 0, 65535, opts=wtcp.opt_syn(1460, None, True, None))
    assert sc.expect(S | DOT, ack=1001).seq == sa.seq
    sc.inject(DOT, 1001, sa.seq + 1, 65535)
    child = ln.accept()
    assert child is not None and child.state == ESTABLISHED and not ln.reqs
    assert sc.tcp.reqsk_mem == 0 and child.snd_una == sa.seq + 1
    assert child.sack_ok and not child.tstamp_ok and not child.wscale_ok
    mib = sc.stack.snmp["Tcp"]
    assert (mib["PassiveOpens"], mib["CurrEstab"], mib["RetransSegs"]) == (1, 1, 1)
    assert sc.stack.snmp["TcpExt"]["TCPSynRetrans"] == 1


def test_synack_retransmitted_then_given_up(sc):
    ln = sc.tcp.socket()
    ln.bind(("", 2049))
    ln.listen()
    sc.aport = 2049
    sc.inject(S, 1000)
    sa = sc.expect(S | DOT)
    times = []
    for _ in range(5):                                       # tcp_synack_retries = 5
        sc.at(sc.now + 64)
        for o in sc.sent():
            assert o.flags == S | DOT and o.seq == sa.seq
            times.append(o)
    assert len(times) == 5
    sc.at(sc.now + 200)
    # reqsk_timer_handler: gone after tcp_synack_retries, each firing a TCPTimeouts
    ext = sc.stack.snmp["TcpExt"]
    assert not ln.reqs and sc.tcp.reqsk_mem == 0 and not sc.tcp.ehash
    assert (ext["TCPTimeouts"], ext["TCPSynRetrans"]) == (6, 5)
    assert sc.stack.snmp["Tcp"]["RetransSegs"] == 5


def test_simultaneous_open(sc):
    sk = sc.tcp.socket()
    sk.connect((IP_A, 40000), 0.0)
    syn = sc.expect(S)
    sc.aport = syn.sport
    sc.inject(S, 9000, 0, 65535, opts=wtcp.opt_syn(1460, 7, True, (1, 0)))   # crossing SYN
    sa = sc.expect(S | DOT, seq=syn.seq, ack=9001)
    assert sk.state == SYN_RECV
    sc.inject(S | DOT, 9000, syn.seq + 1, 65535, opts=wtcp.opt_syn(1460, 7, True, (2, sa.opts.tsval)))
    # its SYN-ACK is a retransmitted SYN for us now: state goes on by its ACK
    sc.inject(DOT, 9001, syn.seq + 1, 512, opts=sc.ts(3, sa))
    assert sk.state == ESTABLISHED


def test_isn_replays_from_the_seed():
    seqs = []
    for seed in (7, 7, 8):
        s = Script(seed=seed)
        sk = s.tcp.socket()
        sk.connect((IP_A, 40000), 1.5)
        s.now = 1.5
        seqs.append(s.expect(S).seq)
        s.finish()
    assert seqs[0] == seqs[1] != seqs[2]


def test_syn_retries_then_etimedout(sc):
    sk = sc.tcp.socket()
    sk.connect((IP_A, 40000), 0.0)
    syn = sc.expect(S)
    when = []
    for t in range(1, 200):
        sc.at(float(t))
        when += [sc.now for o in sc.sent() if o.flags == S and o.seq == syn.seq]
    assert when == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0]         # 1 s doubling: 6 retries
    assert sk.state == 7 and sk.recv(sc.now) == -110        # ETIMEDOUT at 127 s
    ext = sc.stack.snmp["TcpExt"]
    assert sc.stack.snmp["Tcp"]["AttemptFails"] == 1 and ext["TCPTimeouts"] == 6
