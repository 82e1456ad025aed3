"""Retransmission timeout (RFC 6298 with Linux's TCP_RTO_MIN/MAX): Karn, exponential backoff,
Loss recovery, give-up time (tcp_retries2), segment by segment on a manual clock."""

import errno

import pytest

from client_agent.net.ipv4 import tcp as T
from tcp_kit import DOT, P, sc


def test_model_timeout_matches_linux():
    assert T.tcp_model_timeout(6, 1.0) == 127.0
    assert T.tcp_model_timeout(15, 0.2) == pytest.approx(924.6)


def test_backoff_doubles_to_rto_max_and_karn_keeps_it(sc):
    sc.now = 0.0
    sk, iss, syn = sc.active_open()          # RTT sample 0 -> srtt tiny, RTO = TCP_RTO_MIN + ...
    una = iss + 1
    assert sk.rto == pytest.approx(0.2, abs=0.001)
    assert sk.send(b"a" * 100, sc.now) == 100
    sc.expect(DOT | P, seq=una)
    times = []
    t = 0.0
    while len(times) < 11:
        t += 0.05
        sc.at(t)
        times += [o.t for o in sc.sent() if o.seq == una and len(o.data) == 100]
    gaps = [round(b - a, 3) for a, b in zip([0.0] + times, times)]
    assert gaps == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 120.0],
                                 abs=0.002)                    # doubling, capped at RTO_MAX
    ext, mib = sc.stack.snmp["TcpExt"], sc.stack.snmp["Tcp"]
    assert (ext["TCPTimeouts"], mib["RetransSegs"]) == (11, 11)
    assert sk.backoff == 11 and sk.ca_state == T.CA_LOSS and sk.snd_cwnd == 1
    # Karn: the ACK of a retransmitted segment without a timestamp echo is no RTT sample;
    # the backed-off RTO stays (RFC 6298 5.7), backoff is not reset
    sc.inject(DOT, 5001, una + 100)
    assert sk.rto == T.TCP_RTO_MAX and sk.ca_state == T.CA_OPEN
    # new data, acked normally: a valid sample ends the backoff
    sk.send(b"b" * 10, sc.now)
    sc.expect(DOT | P, seq=una + 100)
    sc.at(sc.now + 0.01)
    sc.inject(DOT, 5001, una + 110)
    assert sk.backoff == 0 and sk.rto < 0.5


def test_gives_up_after_tcp_retries2(sc):
    sk, iss, syn = sc.active_open()
    sk.send(b"x", sc.now)
    sc.sent()
    sc.at(900.0)
    assert sk.state == T.ESTABLISHED
    sc.at(930.0)
    assert sk.state == T.CLOSE and sk.recv(sc.now) == -errno.ETIMEDOUT
    ext = sc.stack.snmp["TcpExt"]
    assert ext["TCPAbortOnTimeout"] == 1 and sc.stack.snmp["Tcp"]["RetransSegs"] == 15


def test_loss_recovery_resends_the_window_in_slow_start(sc):
    sk, iss, syn = sc.active_open(win=65535, wscale=7)
    una = iss + 1
    sk.send(b"z" * (1448 * 4), sc.now)
    assert len(sc.sent()) == 4
    sc.at(sc.now + 0.21)                                       # RTO: head resent, cwnd 1
    rtx = sc.sent()
    assert [o.seq for o in rtx] == [una]
    sc.inject(DOT, 5001, una + 1448, opts=sc.ts(600, rtx[0]))  # slow start: cwnd 2
    assert [o.seq - una for o in sc.sent()] == [1448, 2896]
    ext = sc.stack.snmp["TcpExt"]
    assert ext["TCPSlowStartRetrans"] == 2 and sk.ca_state == T.CA_LOSS
    sc.inject(DOT, 5001, una + 1448 * 4, opts=sc.ts(601, rtx[0]))
    assert sk.ca_state == T.CA_OPEN and sk.packets_out == 0
