"""close() and TIME_WAIT as Linux has them, segment by segment on the in-memory wire.

- tcp_time_wait: the full socket is replaced in the ehash by a timewait record holding no buffer
  (inet_twsk_hashdance) and tcp_done'd -- an orphan's buffers go back to the pool at once
  (inet_csk_destroy_sock); an owner that has not closed keeps only what it has not read. The
  record answers for the connection (tcp_timewait_state_process) for TCP_TIMEWAIT_LEN.
- tcp_rcv_state_process step 7: once RCV_SHUTDOWN is set (close(), shutdown(SHUT_RD)), new data
  in FIN_WAIT1/FIN_WAIT2 resets the connection (RFC 1122 4.2.2.13): TCPAbortOnData, a RST
  answering the segment (tcp_v4_send_reset), drop reason TCP_ABORT_ON_DATA."""

import errno
import socket

import pytest

from client_agent.net.ipv4 import tcp as T
from tcp_kit import DOT, F, P, R, S, sc

TRUESIZE = 4672          # one received frame: a page + the sk_buff overhead (ss -m: r4672)


def _ext(sc):
    return sc.stack.snmp["TcpExt"]


def _closed_after_reading(sc):
    """Established, 3 bytes received and read, close() (FIN sent): (socket, our FIN's seq)."""
    sk, iss, _ = sc.active_open()
    sc.inject(DOT | P, 5001, iss + 1, data=b"abc")
    assert sk.recv(sc.now) == b"abc"
    sk.close(sc.now)
    sc.sent()
    return sk, iss + 1


def test_orphan_in_time_wait_gives_every_page_back_and_the_record_still_answers(sc):
    # the MOUNT pattern: a request, its reply read, close() by us, the server's FIN last
    sk, iss, _ = sc.active_open()
    una = iss + 1
    sc.inject(DOT | P, 5001, una, data=b"reply", opts=sc.ts(600))
    sc.expect(DOT, ack=5006)                                        # quick ACK
    assert sk.recv(sc.now) == b"reply"
    sk.close(sc.now)
    fin = sc.expect(F | DOT, seq=una, ack=5006)
    sc.inject(DOT, 5006, una + 1, opts=sc.ts(601, fin))             # our FIN is acked
    assert sk.state == T.FIN_WAIT2 and sk.rmem_alloc == 0
    free = sc.alloc.nr_free
    sc.inject(F | DOT, 5006, una + 1, opts=sc.ts(602, fin))         # the server's FIN
    sc.expect(DOT, seq=una + 1, ack=5007)
    # tcp_time_wait + tcp_done -> inet_csk_destroy_sock: the FIN's buffer is not kept 60 s
    assert sk.state == T.CLOSE and sk not in sc.tcp.sockets and sk.rmem_alloc == 0
    assert not sk.receive_queue and not sk.ofo and not sk.write_queue and not sk.rtx_queue
    assert sc.alloc.nr_free == free == sc.alloc.nr_pages and sk.owner not in sc.alloc.owner_pages()
    assert sc.tcp.memory_allocated == 0 and sc.stack.rx_in_flight() == 0
    tw = sc.time_wait()
    assert type(tw) is T.TimewaitSock and sc.tcp.tw_count == 1 and sc.aport in sc.tcp.bound
    assert (tw.snd_nxt, tw.rcv_nxt, tw.ts_recent) == ((una + 1) & 0xFFFFFFFF, 5007, 602)
    assert _ext(sc)["TW"] == 1 and sc.tcp.snapshot()["tw"] == 1
    # our last ACK was lost: the retransmitted FIN is ACKed from the record (TCP_TW_ACK), the
    # timer restarts; ts echoes the connection's ts_recent
    sc.at(30.0)
    sc.inject(F | DOT, 5006, una + 1, opts=sc.ts(700, fin))
    ack = sc.expect(DOT, seq=una + 1, ack=5007)
    assert ack.opts.tsecr == 602 and ack.win > 0
    assert sc.alloc.nr_free == sc.alloc.nr_pages
    sc.at(89.9)
    assert sc.time_wait() is tw
    sc.at(90.1)                                   # TCP_TIMEWAIT_LEN after the reschedule
    assert sc.time_wait() is None and sc.tcp.tw_count == 0 and sc.aport not in sc.tcp.bound
    sc.inject(F | DOT, 5006, una + 1, opts=sc.ts(800, fin))
    sc.expect(R, seq=una + 1)                     # nobody there now
    assert _ext(sc)["TW"] == 1 and _ext(sc)["TWKilled"] == 0


def test_orphan_reaching_time_wait_through_closing_frees_the_fin_it_queued(sc):
    sk, iss, _ = sc.active_open()
    una = iss + 1
    sk.close(sc.now)
    sc.expect(F | DOT, seq=una, ack=5001)
    sc.inject(F | DOT, 5001, una)                                   # FINs cross: CLOSING
    sc.expect(DOT, ack=5002)
    assert sk.state == T.CLOSING and sk.rmem_alloc == TRUESIZE and sk.wmem_queued > 0
    assert sc.alloc.nr_free == sc.alloc.nr_pages - 2    # the peer's FIN and our unacked FIN
    sc.inject(DOT, 5002, una + 1)                                   # our FIN acked: TIME_WAIT
    assert sk not in sc.tcp.sockets and sc.alloc.nr_free == sc.alloc.nr_pages
    assert type(sc.time_wait()) is T.TimewaitSock and sc.tcp.memory_allocated == 0


def test_owner_not_closed_keeps_what_it_has_not_read_until_close(sc):
    # shutdown(SHUT_WR), the peer's data and FIN arrive: TIME_WAIT, but the data is the owner's
    sk, iss, _ = sc.active_open()
    una = iss + 1
    assert sk.shutdown(socket.SHUT_WR, sc.now) == 0
    sc.expect(F | DOT, seq=una)
    sc.inject(DOT, 5001, una + 1)
    assert sk.state == T.FIN_WAIT2
    sc.inject(DOT | P, 5001, una + 1, data=b"late reply")
    sc.inject(F | DOT, 5011, una + 1)
    sc.expect(DOT, ack=5001 + 10)                                   # quick ACK of the data
    sc.expect(DOT, ack=5012)
    assert sk.state == T.CLOSE and sk in sc.tcp.sockets and type(sc.time_wait()) is T.TimewaitSock
    assert sk.rmem_alloc == 2 * TRUESIZE and sc.alloc.nr_free == sc.alloc.nr_pages - 2
    assert sk.recv(sc.now) == b"late reply" and sk.recv(sc.now) == b""
    assert sk.rmem_alloc == 0 and sc.alloc.nr_free == sc.alloc.nr_pages
    sk.close(sc.now)                                                # CLOSE: no RST
    sc.expect_nothing()
    assert sk not in sc.tcp.sockets and _ext(sc)["TCPAbortOnClose"] == 0


def test_unread_data_of_a_closed_connection_is_freed_by_close_without_rst(sc):
    sk, iss, _ = sc.active_open()
    una = iss + 1
    sk.shutdown(socket.SHUT_WR, sc.now)
    sc.expect(F | DOT, seq=una)
    sc.inject(DOT | P, 5001, una + 1, data=b"never read")
    sc.inject(F | DOT, 5011, una + 1)
    sc.sent()
    assert sk.state == T.CLOSE and sk.rmem_alloc == 2 * TRUESIZE
    sk.close(sc.now)                      # tcp_close: state CLOSE -> adjudge_to_death, no RST
    sc.expect_nothing()
    assert sk not in sc.tcp.sockets and sc.alloc.nr_free == sc.alloc.nr_pages
    assert _ext(sc)["TCPAbortOnClose"] == 0 and sc.stack.snmp["Tcp"]["OutRsts"] == 0


@pytest.mark.parametrize("wait2", [False, True], ids=["fin_wait1", "fin_wait2"])
def test_data_after_close_is_answered_with_rst(sc, wait2):
    sk, una = _closed_after_reading(sc)
    ack = una
    if wait2:
        ack = una + 1
        sc.inject(DOT, 5004, ack)
        assert sk.state == T.FIN_WAIT2
    else:
        assert sk.state == T.FIN_WAIT1
    sc.inject(DOT | P, 5004, ack, data=b"more")                    # new data after close()
    sc.expect(R, seq=ack)                                           # tcp_v4_send_reset
    sc.expect_nothing()
    assert _ext(sc)["TCPAbortOnData"] == 1
    assert sc.stack.drop_reasons["TCP_ABORT_ON_DATA"] == 1
    assert sk.state == T.CLOSE and sk not in sc.tcp.sockets and sc.time_wait() is None
    assert sc.alloc.nr_free == sc.alloc.nr_pages and sc.tcp.memory_allocated == 0
    assert sc.stack.snmp["Tcp"]["OutRsts"] == 1


def test_after_close_an_out_of_order_fin_resets_but_old_data_is_only_acked(sc):
    sk, una = _closed_after_reading(sc)
    sc.inject(DOT | P, 5001, una, data=b"abc")                     # a retransmission: old
    sc.expect(DOT, ack=5004)
    assert sk.state == T.FIN_WAIT1 and _ext(sc)["TCPAbortOnData"] == 0
    sc.inject(F | DOT, 5100, una)                                   # FIN beyond rcv_nxt
    sc.expect(R, seq=una)
    assert _ext(sc)["TCPAbortOnData"] == 1 and sk not in sc.tcp.sockets


def test_shutdown_rd_then_wr_resets_on_new_data_and_the_owner_sees_econnreset(sc):
    sk, iss, _ = sc.active_open()
    una = iss + 1
    assert sk.shutdown(7, sc.now) == -errno.EINVAL
    assert sk.shutdown(socket.SHUT_RDWR, sc.now) == 0
    sc.expect(F | DOT, seq=una)
    assert sk.recv(sc.now) == b""                                   # RCV_SHUTDOWN
    sc.inject(DOT | P, 5001, una + 1, data=b"x")
    sc.expect(R, seq=una + 1)
    assert sk.state == T.CLOSE and sk.recv(sc.now) == -errno.ECONNRESET
    assert _ext(sc)["TCPAbortOnData"] == 1
    assert sk.shutdown(socket.SHUT_WR, sc.now) == -errno.ENOTCONN
    sk.close(sc.now)


def test_shutdown_rd_alone_still_queues_data_while_established(sc):
    sk, iss, _ = sc.active_open()
    una = iss + 1
    assert sk.shutdown(socket.SHUT_RD, sc.now) == 0
    sc.expect_nothing()                                             # no FIN
    sc.inject(DOT | P, 5001, una, data=b"kept")                    # ESTABLISHED: queued
    assert sk.state == T.ESTABLISHED and sk.recv(sc.now) == b"kept"
    assert _ext(sc)["TCPAbortOnData"] == 0
    sk.close(sc.now)


def test_a_new_syn_reopens_a_time_wait_pair_above_the_old_sequence_space(sc):
    # the agent's listener: its child closes first and sits in TIME_WAIT; the same peer port
    # connects again with a higher ISN -> the listener takes it, ISN tw_snd_nxt + 65537
    child, iss = sc.passive_open()
    child.close(sc.now)
    fin = sc.expect(F | DOT, seq=iss + 1, ack=1001)
    sc.inject(F | DOT, 1001, iss + 2, opts=sc.ts(102, fin))
    sc.expect(DOT, ack=1002)
    tw = sc.time_wait()
    assert tw is not None and child not in sc.tcp.sockets
    sc.inject(S, 90_000, 0, opts=T.opt_syn(1460, 7, True, (200, 0)))
    sa = sc.expect(S | DOT, ack=90_001)
    assert sa.seq == (iss + 2 + 65535 + 2) & 0xFFFFFFFF and sc.tcp.tcp_tw_isn == 0
    assert sc.time_wait() is None and sc.tcp.tw_count == 0
