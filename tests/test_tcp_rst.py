"""RST in each state (RFC 9293 3.10.7, RFC 5961 §3 as Linux applies it), segment by segment."""

import errno


from client_agent.net.ipv4 import tcp as T
from tcp_kit import DOT, F, IP_A, P, R, S, sc


def _est(sc):
    sk, iss, syn = sc.active_open()
    return sk, iss + 1


def test_rst_at_rcv_nxt_resets_established(sc):
    sk, una = _est(sc)
    sc.inject(R, 5001)
    assert sk.state == T.CLOSE and sk.recv(sc.now) == -errno.ECONNRESET
    mib, ext = sc.stack.snmp["Tcp"], sc.stack.snmp["TcpExt"]
    assert (mib["EstabResets"], mib["CurrEstab"]) == (1, 0)
    assert sc.stack.drop_reasons["TCP_RESET"] == 1 and ext["TCPChallengeACK"] == 0


def test_rst_in_window_but_not_exact_gets_a_challenge_ack(sc):
    sk, una = _est(sc)
    sc.inject(R, 5001 + 1000)                                  # blind in-window RST
    sc.expect(DOT, seq=una, ack=5001)
    assert sk.state == T.ESTABLISHED
    sc.inject(R, 5001 + 2000)                                  # within 500 ms: rate limited
    sc.expect_nothing()
    ext = sc.stack.snmp["TcpExt"]
    assert (ext["TCPChallengeACK"], ext["TCPACKSkippedChallenge"]) == (1, 1)


def test_rst_out_of_window_is_dropped_silently(sc):
    sk, una = _est(sc)
    sc.inject(R, 5001 + 10_000_000)
    sc.expect_nothing()
    assert sk.state == T.ESTABLISHED
    assert sc.stack.drop_reasons["TCP_INVALID_SEQUENCE"] == 1


def test_syn_in_established_gets_a_challenge_ack(sc):
    sk, una = _est(sc)
    sc.inject(S, 5001)
    sc.expect(DOT, ack=5001)
    ext = sc.stack.snmp["TcpExt"]
    assert sk.state == T.ESTABLISHED and ext["TCPSYNChallenge"] == 1
    assert sc.stack.drop_reasons["TCP_INVALID_SYN"] == 1


def test_rst_in_syn_sent_is_connection_refused(sc):
    sk = sc.tcp.socket()
    sk.connect((IP_A, 40000), 0.0)
    syn = sc.expect(S)
    sc.aport = syn.sport
    sc.inject(R | DOT, 0, syn.seq + 5)                         # unacceptable ACK: ignored
    assert sk.state == T.SYN_SENT
    sc.inject(R | DOT, 0, syn.seq + 1)
    assert sk.state == T.CLOSE and sk.recv(sc.now) == -errno.ECONNREFUSED
    assert sc.stack.snmp["Tcp"]["AttemptFails"] == 1


def test_rst_in_syn_recv_kills_the_embryo(sc):
    ln = sc.tcp.socket()
    ln.bind(("", 2049))
    ln.listen()
    sc.aport = 2049
    sc.inject(S, 1000)
    sc.expect(S | DOT, ack=1001)
    sc.inject(R, 1001)
    assert ln.accept() is None and [s for s in sc.tcp.sockets if s.parent is ln] == []
    ext, mib = sc.stack.snmp["TcpExt"], sc.stack.snmp["Tcp"]
    assert ext["EmbryonicRsts"] == 1 and mib["AttemptFails"] == 1


def test_rst_to_a_listener_is_ignored_and_ack_gets_rst(sc):
    ln = sc.tcp.socket()
    ln.bind(("", 2049))
    ln.listen()
    sc.aport = 2049
    sc.inject(R, 1)
    sc.expect_nothing()
    sc.inject(DOT, 1, 777)
    sc.expect(R, seq=777)
    assert ln.state == T.LISTEN and sc.stack.snmp["Tcp"]["OutRsts"] == 1


def test_no_socket_answers_rst(sc):
    sc.aport = 9
    sc.inject(S, 100)
    sc.expect(R | DOT, seq=0, ack=101)
    sc.inject(R, 100)
    sc.expect_nothing()                                        # never a RST for a RST
    assert sc.stack.drop_reasons["NO_SOCKET"] == 2 and sc.stack.snmp["Tcp"]["OutRsts"] == 1


def test_rst_in_fin_wait1_and_fin_wait2(sc):
    for wait2 in (False, True):
        sk, una = _est(sc)
        sk.shutdown_wr(sc.now)
        fin = sc.expect(F | DOT, seq=una)
        if wait2:
            sc.inject(DOT, 5001, una + 1)
            assert sk.state == T.FIN_WAIT2
        else:
            assert sk.state == T.FIN_WAIT1
        sc.inject(R, 5001)
        assert sk.state == T.CLOSE and sk.recv(sc.now) == -errno.ECONNRESET
        sk.close(sc.now)
        sc.pport += 1


def test_rst_in_close_wait_is_epipe(sc):
    sk, una = _est(sc)
    sc.inject(F | DOT, 5001, una)
    assert sk.state == T.CLOSE_WAIT
    sc.inject(R, 5002)
    assert sk.state == T.CLOSE and sk.sk_err == errno.EPIPE


def test_rst_in_last_ack_and_closing(sc):
    sk, una = _est(sc)
    sc.inject(F | DOT, 5001, una)
    sk.close(sc.now)
    sc.expect(F | DOT, seq=una, ack=5002)
    assert sk.state == T.LAST_ACK
    sc.inject(R, 5002)
    assert sk not in sc.tcp.sockets                            # orphan: destroyed at once
    sc.pport += 1
    sk, una = _est(sc)
    sk.shutdown_wr(sc.now)
    sc.expect(F | DOT, seq=una)
    sc.inject(F | DOT, 5001, una)                              # FIN crossing ours: CLOSING
    sc.expect(DOT, ack=5002)
    assert sk.state == T.CLOSING
    sc.inject(R, 5002)
    assert sk.state == T.CLOSE


def test_time_wait_acks_a_retransmitted_fin_and_dies_on_rst(sc):
    sk, una = _est(sc)
    sk.close(sc.now)
    sc.expect(F | DOT, seq=una)
    sc.inject(F | DOT, 5001, una + 1)
    sc.expect(DOT, ack=5002)
    tw = sc.time_wait()
    assert type(tw) is T.TimewaitSock and tw.state == T.TIME_WAIT
    assert sk.state == T.CLOSE and sk not in sc.tcp.sockets    # the orphan itself is gone
    sc.at(30.0)
    sc.inject(F | DOT, 5001, una + 1)                          # our ACK was lost
    sc.expect(DOT, seq=una + 1, ack=5002)
    sc.inject(R, 5002)
    assert sc.time_wait() is None and sc.tcp.tw_count == 0 and sc.aport not in sc.tcp.bound
    ext = sc.stack.snmp["TcpExt"]
    # TW is counted as the record is scheduled for 60 s (__inet_twsk_schedule: TWKilled only
    # for a timeout <= 4 s); the RST (TIME_WAIT assassination) counts nothing
    assert (ext["TWKilled"], ext["TW"]) == (0, 1)


def test_time_wait_lasts_60_s(sc):
    sk, una = _est(sc)
    sk.close(sc.now)
    sc.expect(F | DOT, seq=una)
    sc.inject(F | DOT, 5001, una + 1)
    sc.expect(DOT)
    assert sc.stack.snmp["TcpExt"]["TW"] == 1
    sc.at(59.9)
    assert sc.time_wait().state == T.TIME_WAIT and sc.aport in sc.tcp.bound   # the port stays taken
    sc.at(60.1)
    assert sc.time_wait() is None and sc.aport not in sc.tcp.bound
    assert sc.stack.snmp["TcpExt"]["TW"] == 1


def test_close_with_unread_data_sends_rst(sc):
    sk, una = _est(sc)
    sc.inject(DOT | P, 5001, una, data=b"unread", opts=sc.ts(600))
    sk.close(sc.now)
    got = sc.sent()
    assert got[-1].flags == R | DOT and got[-1].seq == una
    assert sc.stack.snmp["TcpExt"]["TCPAbortOnClose"] == 1
