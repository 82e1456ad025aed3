"""testbed.explain: NFS replies read from a scapy-written pcap (fragments reassembled by IP id), each
given a fate from the snapshot's xid sets and, for drops, a reason from the counters around it."""

import struct

from scapy.all import IP, UDP, Ether, fragment, wrpcap

from testbed import explain

NAS, CLI, NOISE = "198.18.0.1", "198.18.0.2", "198.18.0.3"
T0 = 1_700_000_000.0


def _reply(xid, size=100, ip_id=1):
    rpc = struct.pack("!II", xid, 1) + bytes(size)
    return Ether() / IP(src=NAS, dst=CLI, id=ip_id) / UDP(sport=2049, dport=800) / rpc


def _write(path):
    pkts = []
    for i, (t, xid) in enumerate([(0.1, 11), (0.3, 12), (0.5, 13), (0.7, 13), (0.9, 14)]):
        p = _reply(xid, ip_id=100 + i)
        p.time = T0 + t
        pkts.append(p)
    big = fragment(_reply(15, size=3000, ip_id=777)[IP], fragsize=1400)
    for k, f in enumerate(big):
        e = Ether() / f
        e.time = T0 + 1.1 + k * 0.001
        pkts.append(e)
    call = Ether() / IP(src=CLI, dst=NAS) / UDP(sport=800, dport=2049) / struct.pack("!II", 16, 0)
    noise = Ether() / IP(src=NOISE, dst=CLI) / UDP(sport=2049, dport=9001) / struct.pack("!II", 17, 1)
    call.time = noise.time = T0 + 1.2
    wrpcap(path, pkts + [call, noise])


TIMELINE = [  # xid 12 arrives in 0.2-0.4 (rx_nobuf grows), 13's first copy in 0.4-0.6 (PFMEMALLOC grows)
    {"t": 0.2, "rx_nobuf": 0, "nfs_sock_drops": 0, "drop_reasons": {}},
    {"t": 0.4, "rx_nobuf": 5, "nfs_sock_drops": 0, "drop_reasons": {"NOMEM": 5}},
    {"t": 0.6, "rx_nobuf": 5, "nfs_sock_drops": 0, "drop_reasons": {"NOMEM": 5, "PFMEMALLOC": 2}},
    {"t": 0.8, "rx_nobuf": 5, "nfs_sock_drops": 0, "drop_reasons": {"NOMEM": 5, "PFMEMALLOC": 2}},
    {"t": 1.0, "rx_nobuf": 5, "nfs_sock_drops": 1, "drop_reasons": {"NOMEM": 5, "PFMEMALLOC": 2, "SOCKET_RCVBUFF": 1}},
    {"t": 1.2, "rx_nobuf": 5, "nfs_sock_drops": 1, "drop_reasons": {"NOMEM": 5, "PFMEMALLOC": 2, "SOCKET_RCVBUFF": 1}},
]


def test_replies_reassembled_and_filtered(tmp_path):
    p = str(tmp_path / "c.pcap")
    _write(p)
    r = explain.nfs_replies(p, NAS, CLI)
    assert [x["xid"] for x in r] == [11, 12, 13, 13, 14, 15]
    assert r[-1]["frags"] == 3 and r[-1]["size"] == 8 + 8 + 3000 and r[-1]["ip_id"] == 777
    assert abs(r[0]["ts"] - (T0 + 0.1)) < 1e-5


def test_fates_and_inferred_reasons(tmp_path):
    p = str(tmp_path / "c.pcap")
    _write(p)
    snap = {"nfs": {"xids_sent": [11, 12, 13, 14, 15], "xids_replied": [11, 15],
                    "socket": {"memalloc": False}}}
    ex = explain.explain(explain.nfs_replies(p, NAS, CLI), snap, TIMELINE, t0_wall=T0, final_t=2.0)
    fate = [(r["xid"], r["fate"], r["reason"]) for r in ex["rows"]]
    assert fate == [(11, "delivered", "-"), (12, "dropped", "NOMEM"), (13, "dropped", "PFMEMALLOC"),
                    (13, "dropped", "SOCKET_RCVBUFF"),  # 0.7: nothing moved in 0.6-0.8; 0.8-1.0 has the socket's
                    (14, "dropped", "SOCKET_RCVBUFF"), (15, "delivered", "-")]
    assert ex["rows"][1]["layer"] == "NIC (rx_nobuf)" and ex["rows"][1]["confidence"] == "inferred"
    assert ex["fates"] == {"delivered": 2, "dropped": 4}
    assert ex["drops_by_reason"]["NOMEM @ NIC (rx_nobuf)"] == 1
    # a SOCK_MEMALLOC socket receives pfmemalloc buffers: PFMEMALLOC growth does not explain its drops
    snap["nfs"]["socket"]["memalloc"] = True
    ex = explain.explain(explain.nfs_replies(p, NAS, CLI), snap, TIMELINE, t0_wall=T0, final_t=2.0)
    assert ex["rows"][2]["reason"] != "PFMEMALLOC"
    txt = explain.text_table("x", ex)
    assert txt.startswith("== x: 6 NFS replies on the client's wire: 2 delivered, 4 dropped")


def test_duplicate_unknown_and_after_final(tmp_path):
    p = str(tmp_path / "c.pcap")
    _write(p)
    snap = {"nfs": {"xids_sent": [12, 13, 14, 15], "xids_replied": [12, 13, 14, 15]}}
    ex = explain.explain(explain.nfs_replies(p, NAS, CLI), snap, TIMELINE, t0_wall=T0, final_t=1.0)
    assert [r["fate"] for r in ex["rows"]] == ["unknown", "delivered", "delivered", "duplicate", "delivered", "unknown"]


def test_exact_fates_from_the_agent_override_inference(tmp_path):
    p = str(tmp_path / "c.pcap")
    _write(p)
    # ip ids 101 (xid 12) and 103 (xid 13's second copy) were recorded by the agent; 102 was not.
    snap = {"nfs": {"xids_sent": [11, 12, 13, 14, 15], "xids_replied": [11, 15], "socket": {"memalloc": True}},
            "nfs_frame_fates": [[100, 11, "queued:sk:udp:198.18.0.2:800"], [101, 12, "PFMEMALLOC"],
                                [103, 13, "NOMEM"]]}
    ex = explain.explain(explain.nfs_replies(p, NAS, CLI), snap, TIMELINE, t0_wall=T0, final_t=2.0)
    rows = {(r["ip_id"], r["xid"]): r for r in ex["rows"]}
    assert (rows[(101, 12)]["reason"], rows[(101, 12)]["confidence"]) == ("PFMEMALLOC", "exact")
    assert rows[(101, 12)]["layer"] == "socket demux"
    assert (rows[(103, 13)]["reason"], rows[(103, 13)]["layer"]) == ("NOMEM", "NIC (rx_nobuf)")
    assert rows[(102, 13)]["confidence"] == "inferred"          # not in the agent's record
    assert rows[(100, 11)]["fate"] == "delivered"
    assert "per-frame fate record" in ex["method"]


def test_stack_records_the_fate_of_every_frame_from_the_nfs_port():
    """The agent side of the exact explanations: NOMEM (no buffer at all), PFMEMALLOC at the demux,
    and queued on the socket -- each recorded once with the frame's IP id and RPC xid."""
    from client_agent.mm.gfp import GFP_ATOMIC, Gfp
    from client_agent.net.sunrpc.trace import reply_trace
    from tests.test_stack_kit import IP_A, IP_B, Kit

    kit = Kit()
    w, sa, sb = kit.pair(nr_pages=256)
    trace = reply_trace(sb, 2049)
    nfs = sb.udp_socket()
    nfs.bind((IP_B, 800))
    other = sb.udp_socket()
    other.bind((IP_B, 801))
    tx = sa.udp_socket()
    tx.bind((IP_A, 2049))
    sb.neigh.add_permanent(sa.ip, sa.mac)
    sa.neigh.add_permanent(sb.ip, sb.mac)

    def send(xid, port):
        assert tx.sendto(struct.pack("!II", xid, 1) + bytes(40), (IP_B, port), 0.0) > 0
        sb.poll(0.0, 64)

    send(1, 800)                                    # plenty of memory: queued on the socket
    kit.exhaust(sb.alloc, GFP_ATOMIC | Gfp.MEMALLOC)
    send(2, 800)                                    # no page at all: NOMEM before any header is read
    kit.release()
    kit.exhaust(sb.alloc)                           # down to the atomic floor
    nfs.sk_set_memalloc()
    send(3, 801)                                    # reserve buffer for a non-memalloc socket
    fates = [(xid, fate) for _ip_id, xid, fate in trace.fates]
    assert fates == [(1, "queued:sk:udp:198.18.0.2:800"), (2, "NOMEM"), (3, "PFMEMALLOC")]
    assert len({ip_id for ip_id, _x, _f in trace.fates}) == 3
    nfs.sk_clear_memalloc()
    kit.finish()


def test_aoe_responses_by_tag_with_their_fates(tmp_path):
    """AoE responses (R flag) from the target's MAC to the client's on the pcap, matched by tag to
    the agent's per-response record; requests, other MACs and other EtherTypes are not rows."""
    from scapy.all import Raw
    tgt, cli = "02:00:c6:12:00:01", "02:00:c6:12:00:02"

    def aoe(tag, flags=0x18, src=tgt, dst=cli, cmd=0):
        return Ether(src=src, dst=dst, type=0x88A2) / Raw(bytes([flags, 0, 0, 1, 0, cmd]) + struct.pack("!I", tag) + bytes(40))

    frames = [aoe(1), aoe(2), aoe(3, cmd=1), aoe(4), aoe(5, flags=0x10),             # 5: a request
              aoe(6, src="02:00:c6:12:00:09"), Ether(src=tgt, dst=cli, type=0x0800) / Raw(bytes(46))]
    for i, f in enumerate(frames):
        f.time = 100.0 + i / 10
    path = str(tmp_path / "aoe.pcap")
    wrpcap(path, frames)
    rsp = explain.aoe_responses(path, tgt, cli)
    assert [r["tag"] for r in rsp] == [1, 2, 3, 4] and rsp[2]["cmd"] == "config"
    snap = {"aoe_rsp_fates": [[1, "aoenet_rcv"], [2, "PFMEMALLOC"], [3, "aoenet_rcv"]]}
    ex = explain.explain_aoe(rsp, snap, t0_wall=100.0)
    assert ex["fates"] == {"delivered": 2, "dropped": 1, "unknown": 1}
    assert ex["drops_by_reason"] == {"PFMEMALLOC @ protocol filter (skb_pfmemalloc_protocol)": 1}
    assert ex["dropped_tags"] == [2] and ex["rows"][1]["t_s"] == 0.1
    assert explain.summary_line(ex).startswith("4 AoE responses on the client's wire: 2 to aoenet_rcv, 1 dropped")
    assert "0x00000002" in explain.aoe_text_table("x", ex)


def test_demo_aoe_table_of_its_own_counts_responses_by_tag():
    """`testbed demo --aoe`: the AoE pair in its own titled table; "replies dropped" is AoE
    responses dropped / on the wire (explain_aoe)."""
    from testbed import demo
    base = {"time_to_stall_s": 0.2, "time_to_recover_s": None, "reserve_low_pages": 191, "rpc_retrans": 0,
            "counters": {"PFMemallocDrop": 24360, "rx_nobuf": 0}}
    entries = [{**base, "name": "memalloc", "expect": "recovered", "outcome": "recovered", "pages_written": 5,
                "pages_verified": 5},
               {**base, "name": "aoe-linux", "expect": "deadlock", "outcome": "deadlock", "storage": "aoe",
                "pages_written": 0, "pages_verified": 0,
                "explanations": {"responses_on_wire": 164, "fates": {"delivered": 148, "dropped": 16}}}]
    text = demo.format_table(entries)
    nfs_part, aoe_part = text.split("\n\n" + demo.AOE_TABLE_TITLE + "\n")
    assert "memalloc" in nfs_part and "aoe-linux" not in nfs_part
    assert aoe_part.splitlines()[2].split()[:3] == ["aoe-linux", "deadlock", "deadlock"]
    assert aoe_part.splitlines()[2].endswith("16/164")
    assert len(demo._tables(entries[:1])["tables"]) == 2          # no AoE table without AoE entries
    assert demo._tables(entries)["tables"][2] == {"title": demo.AOE_TABLE_TITLE, "scenarios": ["aoe-linux"],
                                                  "beyond_linux": []}


def _tcp_pcap(path, segs, cport=700):
    """NAS:2049 -> CLI:cport, a SYN-ACK (ISN 1000) then ``segs``: (t, seq offset, payload)."""
    from scapy.all import TCP
    syn = Ether() / IP(src=NAS, dst=CLI) / TCP(sport=2049, dport=cport, flags="SA", seq=1000)
    syn.time = T0
    pkts = [syn]
    for i, (t, off, data) in enumerate(segs):
        p = Ether() / IP(src=NAS, dst=CLI, id=200 + i) / TCP(sport=2049, dport=cport, flags="A", seq=1001 + off) / data
        p.time = T0 + t
        pkts.append(p)
    wrpcap(path, pkts)


def _record(xid, body=40):
    return struct.pack("!III", 0x80000000 | (8 + body), xid, 1) + bytes(body)


def test_tcp_retransmission_of_a_reply_is_not_a_duplicate_reply(tmp_path):
    """Over TCP a segment resending stream bytes already seen (same sequence numbers) is a TCP
    retransmission; a new record for an answered xid (further on in the stream) is a duplicate reply."""
    a, b = _record(21), _record(22)
    p = str(tmp_path / "t.pcap")
    _tcp_pcap(p, [(0.1, 0, a + b), (0.3, 0, a + b), (0.5, len(a + b), _record(22))])
    r = explain.nfs_replies(p, NAS, CLI)
    assert [(x["xid"], x["tcp_retransmit"], x["flow"]) for x in r] == [
        (21, False, 700), (22, False, 700), (21, True, 700), (22, True, 700), (22, False, 700)]
    ex = explain.explain(r, {"nfs": {"xids_sent": [21, 22], "xids_replied": [21, 22]}}, [], t0_wall=T0)
    assert [(x["xid"], x["fate"]) for x in ex["rows"]] == [
        (21, "delivered"), (22, "delivered"), (21, "retrans"), (22, "retrans"), (22, "duplicate")]
    assert ex["rows"][2]["reason"] == "TCP retransmission of a reply already received"
    assert ex["rows"][2]["layer"] == "TCP"
    # the agent's stack drops the resent copy (TCP_OLD_DATA): still a TCP retransmission, not a loss
    snap = {"nfs": {"xids_sent": [21, 22], "xids_replied": [21, 22]},
            "nfs_frame_fates": [[200, 21, "queued:sk:tcp:198.18.0.2:700"], [201, 21, "TCP_OLD_DATA"]]}
    ex2 = explain.explain(r, snap, [], t0_wall=T0)
    assert [x["fate"] for x in ex2["rows"]] == ["delivered", "delivered", "retrans", "retrans", "duplicate"]
    assert ex2["rows"][2]["evidence"].endswith("the stack dropped this copy: TCP_OLD_DATA")
    assert explain.summary_line(ex) == ("5 NFS replies on the client's wire: 2 delivered, 1 duplicate, "
                                        "2 TCP retransmissions of replies already received")


def test_the_mnt_reply_on_mountds_own_connection_is_the_mount_clients(tmp_path):
    """Over TCP the MNT call has its own connection to the NFS port (nas-server serves MOUNT there):
    its reply, on another client port, is the MOUNT client's -- not an xid outside the NFS window."""
    from scapy.all import TCP
    pkts = []
    for t, cport, data in ((0.0, 701, None), (0.1, 701, _record(0x500)), (0.2, 700, None), (0.3, 700, _record(31)),
                           (0.4, 702, None), (0.5, 702, _record(0x999))):
        p = Ether() / IP(src=NAS, dst=CLI, id=int(t * 10)) / (
            TCP(sport=2049, dport=cport, flags="SA", seq=1000) if data is None else
            TCP(sport=2049, dport=cport, flags="A", seq=1001) / data)
        p.time = T0 + t
        pkts.append(p)
    path = str(tmp_path / "m.pcap")
    wrpcap(path, pkts)
    nfs = {"server": "198.18.0.1:2049", "mount_port": 2049, "xids_sent": [31], "xids_replied": [31],
           "socket": {"local": ["198.18.0.2", 700]}}
    snap = {"nfs": nfs, "nfs_frame_fates": [[1, 0x500, "queued:sk:tcp:198.18.0.2:701"]]}
    ex = explain.explain(explain.nfs_replies(path, NAS, CLI), snap, [], t0_wall=T0)
    rows = {r["xid"]: r for r in ex["rows"]}
    assert (rows[0x500]["fate"], rows[0x500]["layer"], rows[0x500]["confidence"]) == ("delivered", "MOUNT client", "exact")
    assert "client port 701" in rows[0x500]["evidence"]
    assert (rows[0x999]["layer"], rows[0x999]["confidence"]) == ("MOUNT client", "inferred")   # not in the record
    assert rows[31]["layer"] == "transport"
    assert explain.summary_line(ex) == "3 NFS replies on the client's wire: 3 delivered (2 MOUNT)"
    # a server whose mountd has a port of its own: a reply from the NFS port on another connection is unknown
    ex = explain.explain(explain.nfs_replies(path, NAS, CLI), {**snap, "nfs": {**nfs, "mount_port": 20048}}, [], t0_wall=T0)
    assert ex["fates"] == {"delivered": 1, "unknown": 2}


def test_a_dropped_reply_then_its_tcp_retransmission_delivered(tmp_path):
    """The agent dropped the first copy (NOMEM, its per-frame record), TCP resent the bytes and the
    transport got them: the first row is the drop, the resent one the delivery -- not "already received"."""
    a = _record(41)
    p = str(tmp_path / "d.pcap")
    _tcp_pcap(p, [(0.1, 0, a), (0.4, 0, a)])               # ip ids 200, 201
    snap = {"nfs": {"xids_sent": [41], "xids_replied": [41]},
            "nfs_frame_fates": [[200, 41, "NOMEM"], [201, 41, "queued:sk:tcp:198.18.0.2:700"]]}
    ex = explain.explain(explain.nfs_replies(p, NAS, CLI), snap, [], t0_wall=T0)
    assert [(r["fate"], r["reason"], r["confidence"]) for r in ex["rows"]] == [
        ("dropped", "NOMEM", "exact"), ("delivered", "-", "exact")]


def test_the_mnt_reply_over_udp_is_the_mount_clients(tmp_path):
    """Over UDP the MNT call goes on the NFS socket, so its xid is in the NFS xid sets: the
    snapshot's mount_xids label its reply as the MOUNT client's, as over TCP."""
    pkts = []
    for i, (t, xid) in enumerate(((0.1, 0x600), (0.2, 31))):
        p = _reply(xid, ip_id=300 + i)
        p.time = T0 + t
        pkts.append(p)
    path = str(tmp_path / "u.pcap")
    wrpcap(path, pkts)
    snap = {"nfs": {"server": "198.18.0.1:2049", "mount_port": 2049, "xids_sent": [0x600, 31],
                    "xids_replied": [0x600, 31], "mount_xids": [0x600], "socket": {"memalloc": True}}}
    ex = explain.explain(explain.nfs_replies(path, NAS, CLI), snap, [], t0_wall=T0)
    rows = {r["xid"]: r for r in ex["rows"]}
    assert (rows[0x600]["fate"], rows[0x600]["reason"], rows[0x600]["layer"]) == ("delivered", "MNT reply", "MOUNT client")
    assert rows[31]["layer"] == "transport"
    assert explain.summary_line(ex) == "2 NFS replies on the client's wire: 2 delivered (1 MOUNT)"


def test_text_table_never_cuts_a_reason():
    why = "TCP retransmission of a reply already received"
    ex = {"replies_on_wire": 1, "fates": {"retrans": 1}, "drops_by_reason": {},
          "rows": [{"t_s": 0.5, "xid": 7, "ip_id": 1, "frags": 1, "fate": "retrans", "reason": why,
                    "layer": "TCP", "confidence": "exact", "evidence": "the same stream bytes again"}]}
    head, row = explain.text_table("x", ex).splitlines()[1:3]
    assert f"  {why}  " in row and row.index(why) == head.index("reason")
    assert row.index("TCP  ") - row.index(why) == head.index("layer") - head.index("reason")
