"""Zero window: the sender's persist timer and window probes (RFC 9293 3.8.6.1, Linux
tcp_probe_timer), and the receiver's side (TCPZeroWindowDrop, window updates after a read)."""

import pytest

from client_agent.net.ipv4 import tcp as T
from tcp_kit import DOT, sc


def test_probes_back_off_and_the_window_reopens(sc):
    sk, iss, syn = sc.active_open(win=2896, wscale=0)
    una = iss + 1
    sk.nodelay = True
    assert sk.send(b"w" * 3000, sc.now) == 3000
    assert [len(o.data) for o in sc.sent()] == [1448, 1448]      # the window allows 2896
    sc.at(0.01)
    sc.inject(DOT, 5001, una + 2896, 0, opts=sc.ts(601))          # all acked, window 0
    assert sk.packets_out == 0 and sk.t_xmit_kind == 2            # persist timer armed
    probes = []
    t = 0.01
    while len(probes) < 5:
        t += 0.05
        sc.at(t)
        probes += [o for o in sc.sent()]
    assert all(o.seq == una + 2895 and not o.data and o.flags == DOT for o in probes)
    gaps = [b.t - a.t for a, b in zip(probes, probes[1:])]
    assert gaps == pytest.approx([0.4, 0.8, 1.6, 3.2], rel=0.03)   # RTO backed off each probe
    ext = sc.stack.snmp["TcpExt"]
    assert ext["TCPWinProbe"] == 5 and sk.probes_out == 5
    # the receiver answers a probe with its (still zero) window, then opens it
    sc.inject(DOT, 5001, una + 2896, 0, opts=sc.ts(602))
    sc.inject(DOT, 5001, una + 2896, 1500, opts=sc.ts(603))       # window update
    sent = sc.sent()
    assert [len(o.data) for o in sent] == [104] and sk.probes_out == 0 and sk.backoff == 0
    assert sk.state == T.ESTABLISHED and sc.stack.snmp["Tcp"]["RetransSegs"] == 0


def test_small_window_gets_a_split_segment_from_the_probe(sc):
    sk, iss, syn = sc.active_open(win=0, wscale=0)
    una = iss + 1
    sk.nodelay = True
    sk.send(b"v" * 1000, sc.now)
    sc.expect_nothing()
    sc.at(0.21)
    sc.expect(DOT, seq=una - 1)                                   # a zero-window probe
    sc.inject(DOT, 5001, una, 300, opts=sc.ts(601))               # 300 bytes of room
    sc.at(sc.now + 1.0)
    o = [x for x in sc.sent() if x.data]
    assert o and len(o[0].data) == 300                            # tcp_write_wakeup split it


def test_receiver_advertises_zero_and_drops_beyond_it(sc):
    sk, iss, syn = sc.active_open(wscale=0, rcvbuf=16384)
    una = iss + 1
    seq = 5001
    sent = 0
    while True:
        sc.inject(DOT, seq, una, data=b"r" * 1000, opts=sc.ts(600))
        sent += 1
        seq += 1000
        sc.at(sc.now + 0.3)
        acks = sc.sent()
        if acks and acks[-1].win == 0:
            break
        assert sent < 40
    assert sk.rcv_wnd == 0 and acks[-1].ack == seq
    ext = sc.stack.snmp["TcpExt"]
    assert ext["TCPToZeroWindowAdv"] >= 1
    # a segment into the closed window: dropped, ACKed with window 0
    sc.inject(DOT, seq, una, data=b"x" * 100, opts=sc.ts(601))
    a = sc.expect(DOT, ack=seq)
    assert a.win == 0 and ext["TCPZeroWindowDrop"] == 1
    assert sc.stack.drop_reasons["TCP_ZEROWINDOW"] == 1
    # the owner reads: a window update goes out without being asked
    assert len(sk.recv(sc.now)) == sent * 1000
    upd = sc.expect(DOT, ack=seq)
    assert upd.win > 0 and ext["TCPFromZeroWindowAdv"] == 1
