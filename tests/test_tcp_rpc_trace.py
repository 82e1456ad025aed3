"""The RPC reply trace over TCP (net/sunrpc/trace.py, protocols.rpc.RecordXidScanner): segment
boundaries are not record boundaries, so the tracer walks the server's stream from its SYN-ACK
and records, for every segment that carries the start of a reply record, (ip_id, xid, fate) --
in order, out of order, retransmitted, split inside a record header, dropped for want of a page.
The capture side (testbed/explain.py nfs_replies) makes the same walk over a pcap."""

import struct

from client_agent.mm.gfp import GFP_ATOMIC, Gfp
from client_agent.net.sunrpc.trace import reply_trace
from client_agent.wire import ethernet, ipv4
from protocols import rpc
from tcp_kit import A, B, DOT, MAC_A, MAC_B, Script


def reply(xid: int, body: int = 150) -> bytes:
    return rpc.frame_record(struct.pack("!II", xid, rpc.REPLY) + bytes(body))


def test_trace_finds_every_reply_start_across_segment_boundaries():
    s = Script(pport=2049)
    trace = reply_trace(s.stack, 2049)
    sk, _isn, syn = s.active_open(2049)
    una = syn.seq + 1
    stream = reply(11) + reply(12) + reply(13) + reply(14) + reply(15)
    starts = [0, 162, 324, 486, 648]
    assert [struct.unpack_from("!I", stream, p + 4)[0] for p in starts] == [11, 12, 13, 14, 15]

    def inject(lo, hi, ident):
        seg = s.seg(DOT, 5001 + lo, una, 65535, stream[lo:hi], s.ts(600 + ident))
        s.wire.a.transmit(ethernet.emit(MAC_B, MAC_A, ethernet.ETH_P_IP,
                                        ipv4.emit_header(A, B, 6, len(seg), ident=ident) + seg),
                          s.now)
        s.stack.poll(s.now)

    inject(0, 100, 1)        # reply 11's start
    inject(250, 400, 3)      # beyond a hole (reply 13's start at 324): out of order, queued
    assert [(i, x) for i, x, _f in trace.fates] == [(1, 11)]
    inject(100, 250, 2)      # fills the hole: reply 12 (at 162), then 13 from the queued segment
    assert [(i, x) for i, x, _f in trace.fates] == [(1, 11), (2, 12), (3, 13)]
    assert {f for _i, _x, f in trace.fates} == {"queued:" + sk.owner}
    inject(100, 250, 4)      # a duplicate of the hole's segment: reply 12 again, its own fate
    assert trace.fates[-1][:2] == (4, 12) and not trace.fates[-1][2].startswith("queued")
    inject(400, 492, 5)      # ends 6 bytes into reply 14's header: its xid is not here yet
    assert trace.fates[-1][:2] == (4, 12)
    s.exhaust(GFP_ATOMIC | Gfp.MEMALLOC)
    inject(492, 700, 6)      # completes reply 14's start and carries 15's, but finds no page
    assert [(i, x, f) for i, x, f in list(trace.fates)[-2:]] == [(6, 14, "NOMEM"), (6, 15, "NOMEM")]
    s.release()
    inject(492, 700, 7)      # the retransmission is queued
    assert [(i, x, f) for i, x, f in list(trace.fates)[-2:]] == [(7, 14, "queued:" + sk.owner),
                                                               (7, 15, "queued:" + sk.owner)]
    assert sk.recv(s.now) == stream[:700]
    s.finish()


def test_scanner_under_seeded_reordering_duplication_and_wrap():
    import random
    rng = random.Random(3)
    stream, xids = bytearray(), []
    for _ in range(300):
        x = rng.getrandbits(32)
        xids.append(x)
        body = struct.pack("!II", x, rpc.REPLY) + bytes(rng.randrange(0, 400))
        stream += rpc.frame_record(body, max_fragment_bytes=rng.choice([50, 1 << 20]))
    segs, p = [], 0
    while p < len(stream):
        n = rng.randrange(1, 300)
        segs.append((p, bytes(stream[p:p + n])))
        p += n
    wire = []
    for i in range(len(segs)):
        wire += [i] * (2 if rng.random() < 0.1 else 1)
    for k in range(0, len(wire) - 3, 7):
        wire[k], wire[k + 2] = wire[k + 2], wire[k]
    isn = 0xFFFFFF00                                  # the stream wraps the 32-bit sequence space
    sc = rpc.RecordXidScanner()
    sc.syn(isn - 1)
    got = []
    for i in wire:
        off, data = segs[i]
        for tag, xid, mtype in sc.segment((isn + off) & 0xFFFFFFFF, data, i):
            got.append(xid)
            off_x = stream.index(struct.pack("!I", xid))      # the xid; its 12th byte is off_x + 7
            assert segs[tag][0] <= off_x + 7 < segs[tag][0] + len(segs[tag][1])
            assert mtype == rpc.REPLY
    assert set(got) == set(xids)                     # every record found, none invented
