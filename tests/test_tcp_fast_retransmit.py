"""Fast retransmit on the third duplicate ACK and NewReno recovery (RFC 5681, RFC 6582), and
the SACK variant (RFC 2018 + RFC 6675 IsLost), segment by segment."""


from client_agent.net.ipv4 import tcp as T
from client_agent.wire import tcp as wtcp
from tcp_kit import DOT, P, sc

MSS = 1448


def _flight(sc, sack, n=10):
    sk, iss, syn = sc.active_open(sack=sack)
    una = iss + 1
    sc.inject(DOT, 5001, una, 65535, opts=sc.ts(599))           # the scaled window from now on
    sk.nodelay = True
    assert sk.send(b"d" * (MSS * n), sc.now) == MSS * n
    segs = sc.sent()
    assert [o.seq - una for o in segs] == [MSS * i for i in range(n)]
    return sk, una, segs


def test_three_dupacks_newreno(sc):
    sk, una, segs = _flight(sc, sack=False)
    sc.at(0.01)
    # segments 0 and 3 lost; 1, 2, 4.. arrive: dupacks for una
    for i in (1, 2):
        sc.inject(DOT, 5001, una, opts=sc.ts(600 + i, segs[i]))
        sc.expect_nothing()
    sc.inject(DOT, 5001, una, opts=sc.ts(603, segs[4]))          # third dupack
    rtx = sc.expect(DOT, seq=una)
    assert len(rtx.data) == MSS and sk.ca_state == T.CA_RECOVERY
    ext = sc.stack.snmp["TcpExt"]
    assert (ext["TCPRenoRecovery"], ext["TCPFastRetrans"]) == (1, 1)
    assert sk.snd_ssthresh == 5 and sk.high_seq == una + MSS * 10
    # more dupacks (segments 5..9 arrived): PRR lets new data out as half the flight drains
    for i in range(5, 10):
        sc.inject(DOT, 5001, una, opts=sc.ts(600 + i, segs[i]))
    assert sc.sent() == [] or all(o.seq >= una + MSS * 10 for o in sc.sent())
    # partial ACK up to the second hole (segment 3): NewReno resends it at once
    sc.inject(DOT, 5001, una + MSS * 3, opts=sc.ts(611, rtx))
    got = sc.sent()
    assert got and got[0].seq == una + MSS * 3
    assert sk.ca_state == T.CA_RECOVERY and ext["TCPFastRetrans"] == 2
    # full ACK of everything up to high_seq ends recovery with cwnd = ssthresh
    # (tcp_end_cwnd_reduction); the same ACK then grows it (tcp_cong_control ->
    # tcp_cong_avoid): the window was cwnd-limited (10 segments into cwnd 10,
    # tcp_cwnd_validate), and its 7 newly ACKed segments are one cwnd (5) and 2 credits
    # (tcp_cong_avoid_ai; tcp_init_cwnd_reduction zeroed the count)
    sc.inject(DOT, 5001, una + MSS * 10, opts=sc.ts(612, got[0]))
    assert sk.ca_state == T.CA_OPEN and sk.snd_ssthresh == 5
    assert (sk.snd_cwnd, sk.snd_cwnd_cnt) == (6, 2)
    mib = sc.stack.snmp["Tcp"]
    assert mib["RetransSegs"] == 2 and ext["TCPTimeouts"] == 0


def _sack(sc, blocks, tsval, una):
    return wtcp.opt_established((tsval, 0), blocks)


def test_sack_recovery_resends_only_the_holes(sc):
    sk, una, segs = _flight(sc, sack=True)
    sc.at(0.01)
    # 0 and 3 lost; the peer SACKs 1-2 and 4-9 as they arrive
    blocks = [(una + MSS, una + 3 * MSS)]
    sc.inject(DOT, 5001, una, opts=_sack(sc, blocks, 601, una))
    sc.expect_nothing()                                          # 2 SACKed above 0: not lost
    sc.inject(DOT, 5001, una, opts=_sack(sc, [(una + 4 * MSS, una + 5 * MSS)] + blocks, 602, una))
    # 0 has 3 SACKed above it now (RFC 6675 IsLost, DupThresh 3); 3 has 1
    got = sc.sent()
    assert [o.seq - una for o in got] == [0] and sk.ca_state == T.CA_RECOVERY
    sc.inject(DOT, 5001, una, opts=_sack(sc, [(una + 4 * MSS, una + 6 * MSS)] + blocks, 603, una))
    assert all(o.seq - una != 3 * MSS for o in sc.sent())     # 3 has only 2 above it
    sc.inject(DOT, 5001, una, opts=_sack(sc, [(una + 4 * MSS, una + 10 * MSS)] + blocks, 604, una))
    assert [o.seq - una for o in sc.sent() if o.seq - una < 10 * MSS] == [3 * MSS]
    ext = sc.stack.snmp["TcpExt"]
    assert ext["TCPSackRecovery"] == 1 and ext["TCPRenoRecovery"] == 0
    assert ext["TCPFastRetrans"] == 2 and sk.sacked_out == 8
    sc.inject(DOT, 5001, una + 10 * MSS, opts=sc.ts(605))
    assert sk.ca_state == T.CA_OPEN and sk.sacked_out == 0 and sk.packets_out == 0


def test_receiver_reports_sack_blocks_most_recent_first(sc):
    sk, una, segs = _flight(sc, sack=True, n=1)
    sc.inject(DOT, 5001, una + MSS, opts=sc.ts(600))
    sacks = []
    for off in (1000, 3000, 2000):                               # holes before each
        sc.inject(DOT | P, 5001 + off, una + MSS, data=b"q" * 500, opts=sc.ts(601))
        sacks.append(sc.expect(DOT, ack=5001).opts.sack)        # OFO data: ACKed at once
    assert sacks == [[(6001, 6501)],
                     [(8001, 8501), (6001, 6501)],
                     [(7001, 7501), (8001, 8501), (6001, 6501)]]   # RFC 2018 §4 order
    sc.inject(DOT | P, 5001, una + MSS, data=b"p" * 1000, opts=sc.ts(602))
    a = sc.expect(DOT, ack=6501)                                 # 6001-6501 joined the queue
    assert a.opts.sack == [(7001, 7501), (8001, 8501)]
    assert sk.recv(sc.now) == b"p" * 1000 + b"q" * 500
    ext = sc.stack.snmp["TcpExt"]
    assert ext["TCPOFOQueue"] == 3 and len(sk.ofo) == 2


def test_cwnd_grows_in_congestion_avoidance_when_each_ack_covers_the_whole_flight(sc):
    # The iSCSI stall of docs/block.md: reorders had cut cwnd to ssthresh = 2; the peer then
    # ACKs every second full segment, so each ACK covers the whole flight (snd_una reaches
    # cwnd_usage_seq on every ACK). tcp_cwnd_validate records the window's cwnd limit at
    # transmit time, so those ACKs find it (tcp_is_cwnd_limited) and cwnd grows one segment
    # per window of ACKs (tcp_cong_avoid_ai). The agent used to clear the limit on each such
    # ACK before tcp_cong_avoid looked at it: cwnd stayed 2 for the rest of the connection.
    sk, una, segs = _flight(sc, sack=True, n=10)
    sc.at(0.01)
    sc.inject(DOT, 5001, una + 10 * MSS, opts=sc.ts(600, segs[-1]))
    sk.snd_cwnd, sk.snd_ssthresh, sk.snd_cwnd_cnt = 2, 2, 0      # as the reorders left it
    flights = []
    for tsval in range(601, 609):
        while sk.send(b"e" * MSS, sc.now) == MSS:                 # the writer keeps it full
            pass
        sent = sc.sent()
        flights.append((len(sent), sk.snd_cwnd))
        last = sent[-1]
        sc.inject(DOT, 5001, last.seq + len(last.data), opts=sc.ts(tsval, last))
    # each flight fills cwnd; its one ACK (cwnd segments: cnt >= cwnd) adds a segment
    assert flights == [(n, n) for n in range(2, 10)]
    assert sk.snd_cwnd == 10 and sk.snd_ssthresh == 2 and sk.ca_state == T.CA_OPEN
