"""The send path as Linux builds it (issue 18): tcp_sendmsg_locked appends to the tail write-queue
buffer while it is below size_goal (tcp_send_mss with GSO: whole MSS up to gso_max_size, bounded
by half the peer's largest window), its bytes in pages charged to the socket; tcp_write_xmit sends
a buffer as ``pcount`` segments -- cut at MSS here as software GSO does (tcp_gso_segment), or
handed to a TSO device as one GSO buffer -- and splits it first where cwnd's quota or the window
ends (tso_fragment). Exact figures on the in-memory wire at MTU 1500 (MSS 1448 with timestamps)."""

import pytest

from client_agent.net.core.skbuff import SKB_TRUESIZE_OVERHEAD as OVH
from client_agent.wire import tcp as wtcp
from tcp_kit import DOT, P, Script
from test_tcp_offload import OffloadScript

MSS = 1448
PG = 4096
RECORD = (b"\x80\x00\x10\x78", bytes(range(120)), bytes(range(256)) * 16)   # mark, RPC, page
REC_LEN = sum(map(len, RECORD))                                              # 4220


def _sock_pages(s, sk) -> int:
    return s.alloc.owner_pages().get(sk.owner, 0)


def _fill_cwnd(s, sk):
    """10 * MSS written at once: one buffer (size_goal 22 MSS: half of the 65535 window), sent
    as 5 + 5 segments (tcp_cwnd_test: at most half of cwnd per buffer); cwnd is then full."""
    assert sk._size_goal() == 22 * MSS
    assert sk.send(b"f" * (10 * MSS), s.now) == 10 * MSS
    segs = s.sent()
    assert [len(o.data) for o in segs] == [MSS] * 10
    assert [b.pcount for b in sk.rtx_queue] == [5, 5] and sk.packets_out == 10
    # 4 pages for 14480 bytes; the split left the first page with the first buffer (its last
    # byte, 4095, is in it) and gave the other 3 to the second
    assert [len(b.pages) for b in sk.rtx_queue] == [1, 3]
    assert sk.wmem_queued == 4 * PG + 2 * OVH
    return segs


@pytest.mark.parametrize("offloads", ["", "tx,tso"])
def test_a_record_in_three_sends_is_one_buffer_and_ceil_len_over_mss_segments(offloads):
    s = OffloadScript(offloads)
    sk, iss, _ = s.active_open(win=65535)
    segs = _fill_cwnd(s, sk)
    s.dev.gso_frames.clear()
    base = (iss + 1 + 10 * MSS) & 0xFFFFFFFF
    # record mark, RPC header, page: three send() calls, all into one write-queue buffer
    for part in RECORD:
        assert sk.send(part, s.now) == len(part)
    s.expect_nothing()                                   # cwnd full
    (rec,) = sk.write_queue
    assert bytes(rec.data) == b"".join(RECORD) and rec.seq == base
    assert len(rec.pages) == 2                           # 4220 bytes in 2 pages, 2 allocations
    assert sk.wmem_queued == 6 * PG + 3 * OVH
    assert _sock_pages(s, sk) == 6
    sk.check_accounting()
    # the ACK for all 10: cwnd 20, the record goes out as ceil(4220 / 1448) = 3 segments
    s.inject(DOT, 5001, base, 65535, opts=s.ts(600, segs[-1]))
    out = s.sent()
    assert [len(o.data) for o in out] == [MSS, MSS, REC_LEN - 2 * MSS]
    assert [o.seq for o in out] == [base, base + MSS, base + 2 * MSS]
    assert [bool(o.flags & P) for o in out] == [False, False, True]     # PSH on the last only
    assert b"".join(o.data for o in out) == b"".join(RECORD)
    if offloads:
        assert s.dev.gso_frames == [(14 + 20 + 32 + REC_LEN, MSS)]     # one GSO buffer
    else:
        assert s.dev.gso_frames == []
    assert list(sk.rtx_queue) == [rec] and rec.pcount == 3 and sk.packets_out == 3
    assert sk.wmem_queued == 2 * PG + OVH and _sock_pages(s, sk) == 2
    # an ACK inside the buffer (2 segments): tcp_tso_acked trims it; no page held only acked
    # bytes yet (the first page's last byte is 4095)
    s.inject(DOT, 5001, base + 2 * MSS, 65535, opts=s.ts(601, out[1]))
    assert rec.pcount == 1 and sk.packets_out == 1 and rec.seq == base + 2 * MSS
    assert sk.wmem_queued == 2 * PG + OVH and _sock_pages(s, sk) == 2
    sk.check_accounting()
    # the rest: nothing queued, nothing charged, every page back in the pool
    s.inject(DOT, 5001, base + REC_LEN, 65535, opts=s.ts(602, out[2]))
    assert not sk.rtx_queue and sk.packets_out == 0
    assert sk.wmem_queued == 0 and _sock_pages(s, sk) == 0
    s.finish()


def test_a_write_of_size_goal_and_more_makes_one_buffer_per_size_goal():
    s = Script()
    sk, iss, _ = s.active_open(win=65535)
    goal = sk._size_goal()
    assert goal == 22 * MSS                              # 31856: half the window, whole MSS
    sk.snd_cwnd = 0                                      # hold transmission: queue only
    n = 2 * goal + 100
    assert sk.send(b"z" * n, s.now) == n
    assert [len(b.data) for b in sk.write_queue] == [goal, goal, 100]
    pages = [len(b.pages) for b in sk.write_queue]
    assert pages == [-(-goal // PG), -(-goal // PG), 1]
    assert sk.wmem_queued == sum(pages) * PG + 3 * OVH
    sk.check_accounting()
    sk.snd_cwnd = 10
    sk._push(s.now)
    out = s.sent()
    assert [len(o.data) for o in out] == [MSS] * 10
    s.finish()


def test_sack_of_a_multi_segment_buffer_cuts_it_and_resends_one_segment():
    s = Script()
    sk, iss, _ = s.active_open(win=65535)
    assert sk.send(b"s" * (5 * MSS), s.now) == 5 * MSS
    segs = s.sent()
    assert len(segs) == 5 and [b.pcount for b in sk.rtx_queue] == [5]
    one = (iss + 1) & 0xFFFFFFFF
    # segments 3-5 SACKed: the buffer is cut into single segments (tcp_fragment, no page
    # allocated), 3 SACKed, 1 and 2 lost (RFC 6675 IsLost), the first one resent
    free0 = s.alloc.nr_free
    sack = wtcp.opt_established((600, segs[-1].opts.tsval), [(one + 2 * MSS, one + 5 * MSS)])
    s.inject(DOT, 5001, one, 65535, opts=sack)
    assert [b.pcount for b in sk.rtx_queue] == [1] * 5 and sk.packets_out == 5
    assert [b.sacked for b in sk.rtx_queue] == [False, False, True, True, True]
    assert sk.sacked_out == 3 and sk.lost_out == 2
    re = s.sent()
    assert re and re[0].seq == one and len(re[0].data) == MSS
    assert [len(b.pages) for b in sk.rtx_queue] == [0, 0, 1, 0, 1]   # 7240 bytes, 2 pages
    assert s.alloc.nr_free == free0                      # the cut allocated nothing
    sk.check_accounting()
    s.inject(DOT, 5001, one + 5 * MSS, 65535, opts=s.ts(601, re[-1]))
    assert not sk.rtx_queue and sk.wmem_queued == 0
    s.finish()
