"""Linux-style views of an agent snapshot: nstat, /proc/vmstat, /proc/zoneinfo, ss -m -u -a,
ss -t -i -m (``sst``: TCP sockets with skmem and tcp_info), the swap device's storage protocol
counters (iscsiadm -s, nbdinfo, mountstats), and the aoe driver's sysfs attributes and debugfs
file for every AoE swap area.

Invariant owned here: every view prints the snapshot's own values, named and laid out as the Linux
tool prints them, so a kernel engineer can read it (and a parser written for the real tool parses
it). Where the testbed has a figure Linux has no line for (rx_nobuf, the atomic floor,
SOCK_MEMALLOC on a socket), it is added in the tool's own syntax and marked as the testbed's:
nstat ``Testbed*`` counters, zoneinfo ``testbed_*`` keys, an ss ``sock_memalloc`` token.
Pure: snapshot dict in, text out.
"""

from __future__ import annotations

VIEWS = ("nstat", "vmstat", "zoneinfo", "ss", "sst", "storage", "aoe")

# nstat prints "<name padded to 32><value padded to 20><rate %6.1f>" (iproute2 misc/nstat.c).
# /proc/net/snmp's tables in its order (Ip, Icmp, Tcp, Udp), then /proc/net/netstat's TcpExt:
# nstat prefixes each counter with its table's name (TcpActiveOpens, TcpExtPFMemallocDrop).
_NSTAT_TABLES = ("Ip", "Icmp", "Tcp", "Udp", "TcpExt")
# The testbed's own NIC counters, as nstat-style names (ethtool would call them rx_nobuf & co).
_TESTBED_COUNTERS = (("TestbedRxNobuf", "rx_nobuf"), ("TestbedRxPfmemalloc", "rx_pfmemalloc"),
                     ("TestbedTxNobuf", "tx_nobuf"), ("TestbedRxPackets", "rx_packets"))


def nstat_counters(snap: dict) -> dict[str, int]:
    """Name -> value, in nstat's order (tables as /proc/net/snmp, then netstat, then the testbed's)."""
    st = snap.get("stack", {})
    out: dict[str, int] = {}
    for table in _NSTAT_TABLES:
        for k, v in (st.get("snmp", {}).get(table) or {}).items():
            out[f"{table}{k}"] = int(v)
    c = st.get("counters", {})
    for name, key in _TESTBED_COUNTERS:
        out[name] = int(c.get(key, 0))
    return out


def nstat(snap: dict, prev: dict | None = None, dt_s: float | None = None) -> str:
    """`nstat -az` (absolute values, zeros too); rate per second when a previous snapshot is given."""
    cur = nstat_counters(snap)
    old = nstat_counters(prev) if prev is not None else {}
    lines = ["#kernel"]
    for name, v in cur.items():
        rate = (v - old.get(name, v)) / dt_s if prev is not None and dt_s else 0.0
        lines.append(f"{name:<31} {v:<19} {rate:6.1f}")
    return "\n".join(lines) + "\n"


def vmstat(snap: dict) -> str:
    """/proc/vmstat: ``name value`` lines, nr_free_pages first as the kernel prints it."""
    vm = dict(snap.get("alloc", {}).get("vmstat", {}))
    z = snap.get("alloc", {}).get("zoneinfo", {})
    if "nr_free_pages" not in vm and "free" in z:
        vm["nr_free_pages"] = z["free"]
    keys = (["nr_free_pages"] if "nr_free_pages" in vm else []) + [k for k in vm if k != "nr_free_pages"]
    return "".join(f"{k} {int(vm[k])}\n" for k in keys)


def zoneinfo(snap: dict) -> str:
    """/proc/zoneinfo's ``Node 0, zone   Normal`` block for the agent's one zone."""
    a = snap.get("alloc", {})
    z, vm, res = a.get("zoneinfo", {}), a.get("vmstat", {}), a.get("reserve", {})
    managed = int(z.get("managed", 0))
    lines = ["Node 0, zone   Normal",
             f"  pages free     {int(z.get('free', 0))}",
             f"        min      {int(z.get('min', 0))}",
             f"        low      {int(z.get('low', 0))}",
             f"        high     {int(z.get('high', 0))}",
             f"        spanned  {managed}",
             f"        present  {managed}",
             f"        managed  {managed}",
             "        protection: (0, 0, 0, 0)"]
    for k in ("nr_free_pages", "nr_anon_pages", "nr_file_pages", "nr_dirty", "nr_writeback"):
        if k in vm:
            lines.append(f"      {k} {int(vm[k])}")
    # The testbed's reserve (Linux keeps it implicit in min and ALLOC_HARDER/ALLOC_NO_WATERMARKS).
    for k in ("atomic_floor", "reserve_in_use", "reserve_in_use_max", "nr_free_lowwater", "memalloc_socks"):
        if k in res:
            lines.append(f"      testbed_{k} {int(res[k])}")
    # /proc/sys/vm knobs the watermarks come from (not in /proc/zoneinfo; shown as sysctl -a does).
    lines.append(f"vm.min_free_kbytes = {int(z.get('min_free_kbytes', 0))}")
    if "watermark_scale_factor" in z:
        lines.append(f"vm.watermark_scale_factor = {int(z['watermark_scale_factor'])}")
    return "\n".join(lines) + "\n"


def _addr(local) -> tuple[str, str]:
    if isinstance(local, (list, tuple)) and len(local) == 2:
        return str(local[0]), str(local[1])
    return "0.0.0.0", "*"


def _ss_table(rows: list[tuple[str, ...]], below: list[str]) -> str:
    """ss's column layout: the header row, then each socket's row and its indented line(s)."""
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    out = []
    for i, r in enumerate(rows):
        out.append(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]:<{w[4]}}".rstrip())
        if i:
            out.append(below[i - 1])
    return "\n".join(out) + "\n"


def ss(snap: dict) -> str:
    """`ss -m -u -a`: one line per UDP socket and its ``skmem:(...)`` line.

    Recv-Q = rmem_alloc (bytes charged to the socket), rb = rcvbuf, d = drops; the NFS transport's
    socket has the server as peer (xprt connects it). ``sock_memalloc`` marks SOCK_MEMALLOC sockets.
    """
    st = snap.get("stack", {})
    nfs = snap.get("nfs") or {}
    nfs_local = (nfs.get("socket") or {}).get("local")
    server = nfs.get("server", "")
    rows = [("State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port")]
    sk = []
    for s in st.get("sockets", []):
        if "skmem" in s:                    # a TCP socket: the sst view (ss -t) shows it
            continue
        ip, port = _addr(s.get("local"))
        peer = server if nfs_local is not None and list(s.get("local") or []) == list(nfs_local) and server else "0.0.0.0:*"
        state = "ESTAB" if peer != "0.0.0.0:*" else "UNCONN"
        rows.append((state, str(int(s.get("rmem_alloc", 0))), "0", f"{ip}:{port}", peer))
        sk.append(f"\t skmem:(r{int(s.get('rmem_alloc', 0))},rb{int(s.get('rcvbuf', 0))},t0,tb{int(s.get('sndbuf', 212992))},"
                  f"f0,w0,o0,bl0,d{int(s.get('drops', 0))})" + (" sock_memalloc" if s.get("memalloc") else ""))
    return _ss_table(rows, sk)


def _tcp_info(s: dict) -> str:
    """ss -i's tcp_info line (iproute2 tcp_show_info's tokens, those the agent has)."""
    parts = [s.get("cong", "reno")]
    if s.get("ts"):
        parts.append("ts")
    if s.get("sack"):
        parts.append("sack")
    if s.get("wscale"):
        parts.append(f"wscale:{s['wscale'][0]},{s['wscale'][1]}")
    parts.append(f"rto:{s.get('rto_ms', 0)}")
    if s.get("backoff"):
        parts.append(f"backoff:{s['backoff']}")
    if s.get("rtt_ms"):
        parts.append(f"rtt:{s['rtt_ms']:g}/{s.get('rttvar_ms', 0):g}")
    parts += [f"mss:{s.get('mss', 0)}", f"rcvmss:{s.get('rcvmss', 0)}", f"advmss:{s.get('advmss', 0)}",
              f"cwnd:{s.get('cwnd', 0)}"]
    if s.get("ssthresh") is not None:
        parts.append(f"ssthresh:{s['ssthresh']}")
    for k in ("segs_out", "segs_in", "data_segs_out", "data_segs_in"):
        if k in s:
            parts.append(f"{k}:{s[k]}")
    if s.get("unacked"):
        parts.append(f"unacked:{s['unacked']}")
    if s.get("retrans") and s["retrans"] != "0/0":
        parts.append(f"retrans:{s['retrans']}")
    if s.get("lost"):
        parts.append(f"lost:{s['lost']}")
    if s.get("sacked"):
        parts.append(f"sacked:{s['sacked']}")
    parts.append(f"rcv_space:{s.get('rcv_wnd', 0)}")
    parts.append(f"snd_wnd:{s.get('snd_wnd', 0)}")
    return " ".join(parts)


def sst(snap: dict) -> str:
    """`ss -t -i -m -a`: one line per TCP socket (state as ss names it, Recv-Q/Send-Q -- for a
    listener the accept queue and its backlog), its ``skmem:(r,rb,t,tb,f,w,o,bl,d)`` (r =
    rmem_alloc, rb = rcvbuf, tb = sndbuf, w = wmem_queued, bl = backlog, d = drops; t, f, o are 0:
    the agent has no separate transmit-in-flight, forward-alloc or option memory) with
    ``sock_memalloc`` after a SOCK_MEMALLOC socket's, and the tcp_info line."""
    rows = [("State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port")]
    extra = []
    for s in snap.get("stack", {}).get("sockets", []):
        if "skmem" not in s:
            continue
        ip, port = _addr(s.get("local"))
        peer = s.get("peer")
        pip, pport = _addr(peer) if peer else ("0.0.0.0", "*")
        rows.append((s.get("state", "?"), str(int(s.get("recv_q", 0))), str(int(s.get("send_q", 0))),
                     f"{ip}:{port}", f"{pip}:{pport}"))
        m = s["skmem"]
        sk = ("\t skmem:(" + ",".join(f"{k}{int(m.get(k, 0))}" for k in ("r", "rb", "t", "tb", "f", "w", "o", "bl", "d"))
              + ")" + (" sock_memalloc" if s.get("memalloc") else ""))
        extra.append(sk + ("\n\t " + _tcp_info(s) if s.get("state") not in ("LISTEN", "CLOSE") else ""))
    return _ss_table(rows, extra)


# iscsiadm -m session -s prints struct iscsi_stats in this order (libiscsi's iscsi_conn_get_stats)
_ISCSI_SNMP = ("txdata_octets", "rxdata_octets", "noptx_pdus", "scsicmd_pdus", "tmfcmd_pdus", "login_pdus",
               "text_pdus", "dataout_pdus", "logout_pdus", "snack_pdus", "noprx_pdus", "scsirsp_pdus",
               "tmfrsp_pdus", "textrsp_pdus", "datain_pdus", "logoutrsp_pdus", "r2t_pdus", "async_pdus",
               "rjt_pdus", "digest_err", "timeout_err")
_NBD_KEYS = ("NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_FLAG_FUA", "NBD_CMD_FLUSH", "NBD_CMD_DISC")
_RECONNECT_KEYS = ("connect_count", "reconnects", "connect_fails", "requests_requeued", "request_timeouts",
                   "protocol_errors")


def storage(snap: dict) -> str:
    """The swap device's protocol counters as its tools print them: iSCSI as ``iscsiadm -m session
    -s`` (``iSCSI SNMP:`` block of struct iscsi_stats), NBD as nbdinfo's export line plus the
    command counts; NFS as mountstats' xprt counters. Reconnect figures under ``testbed:``."""
    sw = snap.get("swap") or {}
    dev = sw.get("backend") or ""
    if "iscsi_stats" in sw or "scsicmd_pdus" in sw:
        out = [f"Stats for session [target: {dev}]", "iSCSI SNMP:"]
        out += [f"\t{k}: {int(sw.get(k) or 0)}" for k in _ISCSI_SNMP]
    elif "NBD_CMD_WRITE" in sw:
        out = [f"export: {dev}", f"\texport-size: {sw.get('size_bytes')}",
               f"\tnegotiated-via: {sw.get('via')}", f"\ttransmission-flags: {sw.get('transmission_flags')}"]
        out += [f"\t{k}: {int(sw.get(k) or 0)}" for k in _NBD_KEYS]
        out += [f"\t{k}: {v}" for k, v in sorted(sw.items()) if k.startswith("NBD_E")]
    else:
        nfs = (snap.get("nfs") or {}).get("counters") or {}
        return "\n".join([f"device: {dev}", "\txprt: " + " ".join(f"{k}={v}" for k, v in sorted(nfs.items()))]) + "\n"
    out += ["testbed:"] + [f"\t{k}: {sw.get(k, 0)}" for k in _RECONNECT_KEYS]
    return "\n".join(out) + "\n"


# sysfs attributes of /sys/block/etherd!eX.Y/ (drivers/block/aoe/aoeblk.c aoedisk_attrs), in order
_AOE_SYSFS = ("state", "mac", "netif", "firmware-version", "payload")
# what the driver reports outside sysfs/debugfs, as the testbed's own lines: /dev/etherd/err's
# "retransmit"/"unexpected rsp" messages counted, the frames rexmit_timer gave up on (lost),
# the core's drops by reason, and skb_pfmemalloc_protocol's refusals of 0x88A2 frames
_AOE_TESTBED = ("retransmit", "unexpected_rsp")


def aoe_devices(snap: dict) -> list[dict]:
    """The AoE swap areas of a snapshot (their driver view: AoeDev.snapshot + aoenet counters)."""
    return [d for d in snap.get("swap_devices") or () if "firmware-version" in d and "device" in d]


def aoe(snap: dict) -> str:
    """Per AoE device: ``/sys/block/etherd!eX.Y/<attr>: value`` lines, then the debugfs file
    ``/sys/kernel/debug/aoe/eX.Y`` as aoe_debugfs_show prints it (rttavg/rttdev in µs, kicked,
    maxbcnt, then per target ``<mac>:<nout>:<maxout>:<nframes>`` and its tab-indented ssthresh,
    taint, r, w and interface) -- the pointer and refcount lines (nskbpool, ref, falloc, ffree)
    have no counterpart here and are left out -- then ``testbed_*`` lines. Empty without AoE."""
    out = []
    drop = (snap.get("stack") or {}).get("counters", {}).get("rx_pfmemalloc_proto_drop", 0)
    for d in aoe_devices(snap):
        name = d["device"]
        out += [f"/sys/block/etherd!{name}/{a}: {d.get(a)}" for a in _AOE_SYSFS]
        out.append(f"/sys/kernel/debug/aoe/{name}:")
        out += [f"rttavg: {d.get('rttavg')} rttdev: {d.get('rttdev')}", f"kicked: {d.get('kicked')}",
                f"maxbcnt: {d.get('maxbcnt')}"]
        t = d.get("target")
        if t:
            out += [f"{t['addr']}:{t['nout']}:{t['maxout']}:{t['nframes']}", f"\tssthresh:{t['ssthresh']}",
                    f"\ttaint:{t['taint']}", f"\tr:{t['r']}", f"\tw:{t['w']}", f"\t{d.get('netif')}"]
        c = d.get("counters") or {}
        out += [f"testbed_{k} {int(c.get(k, 0))}" for k in _AOE_TESTBED]
        out.append(f"testbed_lost {int((t or {}).get('lost', 0))}")
        out += [f"testbed_drop_{k} {int(v)}" for k, v in sorted((d.get("drops") or {}).items())]
        out.append(f"testbed_rx_pfmemalloc_proto_drop {int(drop)}")
    return "".join(line + "\n" for line in out)


def render(view: str, snap: dict, prev: dict | None = None, dt_s: float | None = None) -> str:
    if view == "nstat":
        return nstat(snap, prev, dt_s)
    return {"vmstat": vmstat, "zoneinfo": zoneinfo, "ss": ss, "sst": sst, "storage": storage, "aoe": aoe}[view](snap)
