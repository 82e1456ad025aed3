"""Drop explanations: what became, inside the agent, of every NFS reply the client's NIC received.

Input: the client's pcap (every frame the wire delivered to the agent's interface), the agent's
final snapshot (``nfs.xids_sent`` / ``nfs.xids_replied``: the last 16384 of each) and the runner's
timeline (counters every 0.2 s). Output: one row per NAS reply (UDP from port 2049 to the client,
IP fragments reassembled by id) with its fate:

- a TCP retransmission of a reply already received is ``retrans`` (the agent's stack drops that
  copy as TCP_OLD_DATA, as tcp_data_queue does: no loss); any other frame the agent's per-frame
  record says it dropped is ``dropped`` with that exact reason, whatever became of its xid later
  (a retransmitted copy may have been delivered);
- ``delivered``: the xid is in ``xids_replied`` (the transport matched it to a call); a second
  reply for an xid already answered is ``retrans`` over TCP when its segment resends stream bytes
  already seen (a TCP retransmission: the same bytes at the same sequence numbers), else
  ``duplicate`` (a new reply record: the server answering an RPC retransmission);
- ``dropped``: the xid was sent but never answered; the reason and layer are INFERRED from which
  drop counter moved in the sampling interval around the frame's arrival, in this order of
  evidence: the NFS socket's own ``drops`` (SOCKET_RCVBUFF at the socket), ``rx_nobuf``
  (NOMEM at the NIC: no page for the frame), PFMEMALLOC (a reserve buffer dropped at the demux:
  the socket is not SOCK_MEMALLOC), any other reason; ``unattributed`` when none moved;
- ``unknown``: the xid is older than the agent's 16384-xid window, or the frame arrived after the
  final snapshot.

Over TCP the MNT reply (MOUNT on the NFS port, as nas-server serves it) comes on mountd's own
short-lived connection, whose xids are in no NFS-transport set: a reply on a client port other
than the NFS transport's is the MOUNT client's, ``delivered`` at layer ``MOUNT client`` (exact from
``nfs_frame_fates``' ``queued:<socket>``; inferred from the mount having succeeded without it).

Exact attribution: the agent records, for every frame from the NFS server's port, where its
buffer ended (``snapshot()["nfs_frame_fates"]``: ``[ip_id, xid, fate]``, fate a drop reason or
``queued:<socket>``; client_agent/net/sunrpc/trace.py ``RpcReplyTrace``). A drop found there is ``exact``;
one missing from it (ring overflow, older agents) falls back to ``inferred``. Pure apart from
reading the pcap.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections import Counter

from protocols.rpc import RecordXidScanner

NFS_PORT = 2049
WINDOW = 16384  # client_agent/net/sunrpc/xprt.py XID_KEPT

# What exact attribution would need from the agent (client_agent/agent.py + net/sunrpc/trace.py; not ours):
AGENT_FATE_RING = (
    "snapshot()['nfs']['reply_fates']: a bounded ring (last 4096) of [agent_time_s, ip_id, xid, fate] "
    "for every frame from the NFS server's port, recorded where its skb ends -- kfree_skb(reason) gives "
    "fate=reason (NOMEM when the NIC had no buffer: ip_id/xid read from the AF_PACKET frame before the "
    "drop), consume_skb at the transport gives fate='delivered' -- plus snapshot()['time_s'] against the "
    "pcap clock (agent_time_s = CLOCK_MONOTONIC, the pcap = CLOCK_REALTIME: a pair of both in the snapshot)")

LAYER = {"NOMEM": "NIC (rx_nobuf)", "PFMEMALLOC": "socket demux", "SOCKET_RCVBUFF": "socket (rcvbuf)",
         "FRAG_REASM_TIMEOUT": "IP reassembly", "FRAG_MEM_LIMIT": "IP reassembly", "NO_SOCKET": "UDP demux"}


def _pcap_frames(path: str):
    with open(path, "rb") as f:
        gh = f.read(24)
        if len(gh) < 24:
            return
        magic = gh[:4]
        endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        rec = struct.Struct(endian + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _ = rec.unpack(h)
            fr = f.read(incl)
            if len(fr) < incl:
                return
            yield sec + frac / (1e9 if nano else 1e6), fr


def nfs_replies(pcap_path: str, nas_ip: str, client_ip: str, port: int = NFS_PORT) -> list[dict]:
    """Every ONC RPC reply from nas_ip:port to client_ip: ``{ts, xid, ip_id, frags, size}``, in
    arrival order of the datagram's last fragment. Fragments are reassembled by (src, dst, id).
    Over TCP: one per segment that carries a reply record's start (``_tcp_replies``)."""
    nas, cli = bytes(map(int, nas_ip.split("."))), bytes(map(int, client_ip.split(".")))
    pending: dict[int, dict] = {}
    flows: dict[int, RecordXidScanner] = {}
    out = []
    for ts, fr in _pcap_frames(pcap_path):
        if len(fr) < 34 or fr[12:14] != b"\x08\x00":
            continue
        ip = fr[14:]
        ihl = (ip[0] & 15) * 4
        if ip[12:16] != nas or ip[16:20] != cli:
            continue
        if ip[9] == 6:
            out += _tcp_replies(ts, ip, ihl, port, flows)
            continue
        if ip[9] != 17:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        ip_id, fo = struct.unpack_from("!HH", ip, 4)
        off, mf = (fo & 0x1FFF) * 8, bool(fo & 0x2000)
        data = ip[ihl:total]
        if off == 0 and not mf:
            dgram, nfr = data, 1
        else:
            q = pending.setdefault(ip_id, {"parts": {}, "end": None})
            q["parts"][off] = data
            if not mf:
                q["end"] = off + len(data)
            if q["end"] is None:
                continue
            buf, pos = b"", 0
            for o in sorted(q["parts"]):
                if o != pos:
                    break
                buf += q["parts"][o]
                pos = o + len(q["parts"][o])
            if pos != q["end"]:
                continue
            dgram, nfr = buf, len(q["parts"])
            del pending[ip_id]
        if len(dgram) < 16 or struct.unpack_from("!H", dgram, 0)[0] != port:
            continue
        xid, mtype = struct.unpack_from("!II", dgram, 8)
        if mtype == 1:
            out.append({"ts": ts, "xid": xid, "ip_id": ip_id, "frags": nfr, "size": len(dgram)})
    return out


def _tcp_replies(ts: float, ip, ihl: int, port: int, flows: dict) -> list[dict]:
    """The replies whose record starts this TCP segment completes (one dict each, as for UDP;
    ``frags`` 1, ``size`` the segment's payload). Record boundaries come from walking each
    connection's stream from its SYN-ACK (protocols.rpc.RecordXidScanner), the same walk the
    agent's tracer makes, so the (ip_id, xid) pairs match its fate records."""
    total = struct.unpack_from("!H", ip, 2)[0]
    t = ip[ihl:total]
    if len(t) < 20 or struct.unpack_from("!H", t, 0)[0] != port:
        return []
    cport, seq = struct.unpack_from("!HI", t, 2)
    doff, flags = (t[12] >> 4) * 4, t[13]
    if doff < 20 or doff > len(t):
        return []
    sc = flows.get(cport)
    if flags & 0x02:                                # SYN-ACK: the stream starts
        if sc is None or sc.isn != (seq + 1) & 0xFFFFFFFF:
            sc = flows[cport] = RecordXidScanner()
            sc.syn(seq)
        return []
    if sc is None:
        return []
    payload = t[doff:]
    tag = (ts, struct.unpack_from("!H", ip, 4)[0], len(payload))
    rel, rcv0 = (seq - sc.isn) & 0xFFFFFFFF, sc.rcv
    got = sc.segment(seq, payload, tag)
    # a segment (partly) below the stream's parsed point resends bytes already on the wire: the
    # replies whose 12th byte it holds again are TCP retransmissions (same bytes, same sequence
    # numbers), not new RPC records (RecordXidScanner._known)
    resent = ({x for s, x, _m in sc.starts if rel <= s + 11 < min(rel + len(payload), rcv0)}
              if got and rel < rcv0 else ())
    return [{"ts": t0, "xid": xid, "ip_id": ip_id, "frags": 1, "size": n, "flow": cport,
             "tcp_retransmit": xid in resent}
            for (t0, ip_id, n), xid, mtype in got if mtype == 1]


_ZERO = {"t": float("-inf"), "rx_nobuf": 0, "nfs_sock_drops": 0, "drop_reasons": {}}


def _growth(a: dict, b: dict) -> dict[str, int]:
    g = {}
    d = (b.get("nfs_sock_drops") or 0) - (a.get("nfs_sock_drops") or 0)
    if d > 0:
        g["nfs_socket"] = d
    ra, rb = a.get("drop_reasons") or {}, b.get("drop_reasons") or {}
    for k, v in rb.items():
        if v - ra.get(k, 0) > 0:
            g[k] = v - ra.get(k, 0)
    d = (b.get("rx_nobuf") or 0) - (a.get("rx_nobuf") or 0)
    if d > 0:
        g["NOMEM"] = max(g.get("NOMEM", 0), d)
    return g


def infer_drop(t: float, timeline: list[dict], memalloc_sock: bool) -> tuple[str, str, str]:
    """(reason, layer, evidence) of a drop at runner time ``t``, from the counters around it."""
    ts = [s["t"] for s in timeline]
    i = bisect_left(ts, t)  # first sample at or after t: the one that counted the drop
    for lo, hi, strength in ((i, i, "interval"), (i, i + 1, "next interval too")):
        a = timeline[lo - 1] if lo - 1 >= 0 else _ZERO
        b = timeline[min(hi, len(timeline) - 1)] if timeline else _ZERO
        g = _growth(a, b)
        span = f"t {max(a['t'], 0):.1f}-{b['t']:.1f} s" if timeline else "no samples"
        if "nfs_socket" in g:
            return "SOCKET_RCVBUFF", LAYER["SOCKET_RCVBUFF"], f"NFS socket drops +{g['nfs_socket']} ({span}, {strength})"
        if "NOMEM" in g:
            return "NOMEM", LAYER["NOMEM"], f"rx_nobuf +{g['NOMEM']} ({span}, {strength})"
        if "PFMEMALLOC" in g and not memalloc_sock:
            return "PFMEMALLOC", LAYER["PFMEMALLOC"], f"PFMemallocDrop +{g['PFMEMALLOC']}, NFS socket not SOCK_MEMALLOC ({span}, {strength})"
        other = {k: v for k, v in g.items() if k not in ("PFMEMALLOC", "SOCKET_RCVBUFF")}
        if other:
            k = max(other, key=other.get)
            return k, LAYER.get(k, "stack"), f"{k} +{other[k]} ({span}, {strength})"
    return "unattributed", "?", "no drop counter that could hold an NFS reply moved around its arrival"


def explain(replies: list[dict], final_snap: dict, timeline: list[dict], *, t0_wall: float,
            final_t: float | None = None) -> dict:
    """Rows (one per reply) and a summary. ``t0_wall``: runner t=0 on the pcap clock."""
    nfs = final_snap.get("nfs") or final_snap.get("file_nfs") or {}
    sent, replied = set(nfs.get("xids_sent", [])), set(nfs.get("xids_replied", []))
    memalloc_sock = bool((nfs.get("socket") or {}).get("memalloc") or nfs.get("memalloc"))
    answered: set[int] = set()
    mount_xids = set(nfs.get("mount_xids") or ())
    # Exact fates, when the agent recorded them: (ip_id, xid) -> drop reason or "queued:<socket>".
    exact = {(f[0], f[1]): f[2] for f in final_snap.get("nfs_frame_fates") or ()}
    # Over TCP the MNT call goes on its own short-lived connection to mountd (nfs3proc.py _oneshot),
    # on the NFS port when the server serves MOUNT there (nas-server): its xid is in no NFS-window
    # set, its reply arrives on a client port other than the NFS transport's.
    mount_here = str(nfs.get("mount_port")) == str(nfs.get("server", "")).rpartition(":")[2]
    nfs_flows = {r.get("flow") for r in replies if r["xid"] in sent or r["xid"] in replied}
    nfs_flows.add(((nfs.get("socket") or {}).get("local") or (None, None))[1])
    rows = []
    for r in replies:
        t = r["ts"] - t0_wall
        row = {"t_s": round(t, 4), "xid": r["xid"], "ip_id": r["ip_id"], "frags": r["frags"], "size": r["size"]}
        if final_t is not None and t > final_t:
            row.update(fate="unknown", reason="after the final snapshot", layer="-", confidence="-")
        elif r.get("tcp_retransmit") and r["xid"] in answered:
            # the receiving stack drops such a copy itself (tcp_data_queue: TCP_OLD_DATA): no loss
            fx = exact.get((r["ip_id"], r["xid"]))
            row.update(fate="retrans", reason="TCP retransmission of a reply already received", layer="TCP",
                       confidence="exact", evidence=f"the same stream bytes again (client port {r['flow']})"
                       + (f"; the stack dropped this copy: {fx}" if fx and not fx.startswith("queued:") else ""))
        elif (r["ip_id"], r["xid"]) in exact and not exact[(r["ip_id"], r["xid"])].startswith("queued:"):
            reason = exact[(r["ip_id"], r["xid"])]
            row.update(fate="dropped", reason=reason, layer=LAYER.get(reason, "stack"), confidence="exact",
                       evidence="the agent's per-frame fate record (nfs_frame_fates)")
        elif r["xid"] in replied and r["xid"] in mount_xids and r["xid"] not in answered:
            # over UDP the MNT call goes on the NFS socket: its xid is in the NFS xid sets
            answered.add(r["xid"])
            row.update(fate="delivered", reason="MNT reply", layer="MOUNT client", confidence="exact",
                       evidence="the MNT call's xid (mount_xids), replied on the NFS transport's socket")
        elif r["xid"] in replied:
            if r["xid"] in answered:
                row.update(fate="duplicate", reason="reply to a retransmission, xid already answered", layer="transport",
                           confidence="exact")
            else:
                answered.add(r["xid"])
                row.update(fate="delivered", reason="-", layer="transport", confidence="exact")
        elif r["xid"] in sent:
            reason, layer, ev = infer_drop(t, timeline, memalloc_sock)
            row.update(fate="dropped", reason=reason, layer=layer, confidence="inferred", evidence=ev)
        elif mount_here and r.get("flow") is not None and r["flow"] not in nfs_flows:
            fate = exact.get((r["ip_id"], r["xid"]))        # queued:<socket>, or not recorded
            row.update(fate="delivered", reason="MNT reply", layer="MOUNT client",
                       confidence="exact" if fate else "inferred",
                       evidence=(f"on mountd's own connection (client port {r['flow']}), not the NFS transport's; "
                                 + (f"{fate} (nfs_frame_fates)" if fate else "the mount succeeded")))
        else:
            row.update(fate="unknown", reason=f"xid outside the agent's last-{WINDOW} window", layer="-", confidence="-")
        rows.append(row)
    fates = Counter(r["fate"] for r in rows)
    drops = Counter(f"{r['reason']} @ {r['layer']}" for r in rows if r["fate"] == "dropped")
    return {"replies_on_wire": len(rows), "fates": dict(fates), "drops_by_reason": dict(drops),
            "nfs_socket_memalloc": memalloc_sock,
            "mount_replies_delivered": sum(1 for r in rows if r["layer"] == "MOUNT client" and r["fate"] == "delivered"),
            "method": ("xid sets and the agent's per-frame fate record (exact drop reasons)" if exact else
                       "xid sets from the final snapshot; drop reasons inferred from the counters in the "
                       "0.2 s sampling interval of each frame"),
            "exact_attribution_needs": AGENT_FATE_RING, "rows": rows}


def summary_line(ex: dict) -> str:
    if "responses_on_wire" in ex:
        return aoe_summary_line(ex)
    f = ex["fates"]
    mnt = ex.get("mount_replies_delivered", 0)
    parts = [f"{ex['replies_on_wire']} NFS replies on the client's wire: {f.get('delivered', 0)} delivered"
             + (f" ({mnt} MOUNT)" if mnt else "")]
    if f.get("duplicate"):
        parts.append(f"{f['duplicate']} duplicate")
    if f.get("retrans"):
        parts.append(f"{f['retrans']} TCP retransmission{'s' if f['retrans'] > 1 else ''} of replies already received")
    if f.get("dropped"):
        parts.append(f"{f['dropped']} dropped (" + ", ".join(f"{v} {k}" for k, v in
                                                              sorted(ex["drops_by_reason"].items(), key=lambda kv: -kv[1])) + ")")
    if f.get("unknown"):
        parts.append(f"{f['unknown']} unknown")
    return ", ".join(parts)


def text_table(name: str, ex: dict, max_rows: int = 200) -> str:
    """The summary, then every reply that was not simply delivered (first ``max_rows``)."""
    shown = [r for r in ex["rows"] if r["fate"] != "delivered"]
    # the reason and layer columns as wide as their longest entry: a reason is never cut
    rw = max([16] + [len(r["reason"]) for r in shown[:max_rows]])
    lw = max([16] + [len(r["layer"]) for r in shown[:max_rows]])
    out = [f"== {name}: {summary_line(ex)}",
           f"{'t (s)':>8}  {'xid':>10}  {'ip id':>5}  {'frags':>5}  {'fate':<9}  {'reason':<{rw}}  {'layer':<{lw}}  {'confidence':<10}  evidence"]
    for r in shown[:max_rows]:
        out.append(f"{r['t_s']:8.3f}  {r['xid']:#010x}  {r['ip_id']:5d}  {r['frags']:5d}  {r['fate']:<9}  {r['reason']:<{rw}}  "
                   f"{r['layer']:<{lw}}  {r['confidence']:<10}  {r.get('evidence', '')}")
    if len(shown) > max_rows:
        out.append(f"... {len(shown) - max_rows} more in explanations.json")
    if not shown:
        out.append("(every reply was delivered)")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ AoE responses by tag (docs/aoe.md)
ETH_P_AOE = 0x88A2
AOE_LAYER = {"PFMEMALLOC": "protocol filter (skb_pfmemalloc_protocol)",
             "UNHANDLED_PROTO": "protocol filter (skb_pfmemalloc_protocol)",
             "NOMEM": "NIC (rx_nobuf)", "AOE_DROP": "aoenet_rcv (driver)"}
AOE_CMD = {0: "ATA", 1: "config"}


def aoe_responses(pcap_path: str, target_mac: str, client_mac: str) -> list[dict]:
    """Every AoE response (EtherType 0x88A2, R flag) from ``target_mac`` to ``client_mac`` in a
    classic pcap: ``{ts, tag, cmd, error, size}`` in arrival order (AoE r11 §2: ver/flags, error,
    major, minor, command, tag)."""
    src, dst = bytes.fromhex(target_mac.replace(":", "")), bytes.fromhex(client_mac.replace(":", ""))
    out = []
    for ts, fr in _pcap_frames(pcap_path):
        if len(fr) < 24 or fr[12:14] != b"\x88\xa2" or fr[6:12] != src or fr[0:6] != dst or not fr[14] & 0x08:
            continue
        out.append({"ts": ts, "tag": struct.unpack_from("!I", fr, 20)[0], "cmd": AOE_CMD.get(fr[19], str(fr[19])),
                    "error": fr[15] if fr[14] & 0x04 else 0, "size": len(fr)})
    return out


def explain_aoe(responses: list[dict], final_snap: dict, *, t0_wall: float) -> dict:
    """One row per AoE response on the client's wire with its fate, exact, from the agent's
    per-response record by tag (``snapshot()["aoe_rsp_fates"]``: ``[tag, fate]``, fate
    ``aoenet_rcv`` -- handed to the driver -- or the drop reason: PFMEMALLOC at the protocol
    filter, NOMEM at the NIC, AOE_DROP in the driver). A tag the record no longer holds (its
    ring keeps the last 32768) is ``unknown``."""
    fates: dict[int, list[str]] = {}
    for tag, fate in final_snap.get("aoe_rsp_fates") or ():
        fates.setdefault(int(tag), []).append(fate)
    rows = []
    for r in responses:
        row = {"t_s": round(r["ts"] - t0_wall, 4), "tag": r["tag"], "cmd": r["cmd"], "size": r["size"]}
        got = fates.get(r["tag"])
        if not got:
            row.update(fate="unknown", reason="not in the agent's response record (ring or after the snapshot)",
                       layer="-")
        else:
            f = got.pop(0)
            if f == "aoenet_rcv":
                row.update(fate="delivered", reason="-", layer="aoenet_rcv")
            else:
                row.update(fate="dropped", reason=f, layer=AOE_LAYER.get(f, "stack"))
        rows.append(row)
    drops = Counter(f"{r['reason']} @ {r['layer']}" for r in rows if r["fate"] == "dropped")
    return {"responses_on_wire": len(rows), "fates": dict(Counter(r["fate"] for r in rows)),
            "drops_by_reason": dict(drops),
            "dropped_tags": [r["tag"] for r in rows if r["fate"] == "dropped"][:4096],
            "method": "AoE tags on the client's pcap matched to the agent's per-response fate record (exact)",
            "rows": rows}


def aoe_summary_line(ex: dict) -> str:
    f = ex["fates"]
    return (f"{ex['responses_on_wire']} AoE responses on the client's wire: {f.get('delivered', 0)} to aoenet_rcv"
            + (f", {f['dropped']} dropped (" + ", ".join(
                f"{v} {k}" for k, v in sorted(ex["drops_by_reason"].items(), key=lambda kv: -kv[1])) + ")"
               if f.get("dropped") else "") + (f", {f['unknown']} unknown" if f.get("unknown") else ""))


def aoe_text_table(name: str, ex: dict, max_rows: int = 200) -> str:
    head = f"== {name}: {aoe_summary_line(ex)}"
    out = [head, f"{'t (s)':>8}  {'tag':>10}  {'cmd':<6}  {'fate':<9}  {'reason':<12}  layer"]
    shown = [r for r in ex["rows"] if r["fate"] != "delivered"]
    for r in shown[:max_rows]:
        out.append(f"{r['t_s']:8.3f}  {r['tag']:#010x}  {r['cmd']:<6}  {r['fate']:<9}  {r['reason'][:12]:<12}  {r['layer']}")
    if len(shown) > max_rows:
        out.append(f"... {len(shown) - max_rows} more in aoe_explanations.json")
    if not shown:
        out.append("(every AoE response reached aoenet_rcv)")
    return "\n".join(out) + "\n"
