"""testbed.views: each view parses as the real tool's output would, and shows the snapshot's values."""

import re

from testbed import views

SNAP = {
    "stack": {
        "counters": {"rx_packets": 10276, "rx_nobuf": 17, "rx_pfmemalloc": 1246, "tx_nobuf": 0, "PFMemallocDrop": 860},
        "snmp": {"Ip": {"InReceives": 10276, "InDelivers": 10270, "ReasmOKs": 3},
                 "Udp": {"InDatagrams": 6444, "InErrors": 3832, "RcvbufErrors": 2972},
                 "TcpExt": {"PFMemallocDrop": 860, "TCPBacklogDrop": 0}},
        "sockets": [
            {"local": ["0.0.0.0", 9001], "rcvbuf": 851968, "rmem_alloc": 4608, "drops": 958, "memalloc": False},
            {"local": ["0.0.0.0", 32768], "rcvbuf": 79424, "rmem_alloc": 0, "drops": 3, "memalloc": True},
        ],
    },
    "alloc": {
        "vmstat": {"pswpout": 3052, "nr_free_pages": 1004, "pgscan_kswapd": 3052, "nr_writeback": 5},
        "zoneinfo": {"free": 1004, "min": 512, "low": 640, "high": 768, "managed": 8192,
                     "min_free_kbytes": 2048, "watermark_scale_factor": 10},
        "reserve": {"atomic_floor": 192, "reserve_in_use": 7, "nr_free_lowwater": 187, "memalloc_socks": 1},
    },
    "nfs": {"server": "198.18.0.1:2049", "socket": {"local": ["0.0.0.0", 32768], "memalloc": True}},
}


def test_nstat_header_lines_and_values():
    text = views.nstat(SNAP)
    lines = text.splitlines()
    assert lines[0] == "#kernel"
    got = {}
    for line in lines[1:]:
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s+(\d+)\s+(\d+\.\d)", line)
        assert m, line
        got[m[1]] = int(m[2])
    assert got["TcpExtPFMemallocDrop"] == 860 and got["IpInReceives"] == 10276
    assert got["UdpInErrors"] == 3832 and got["UdpRcvbufErrors"] == 2972
    assert got["TestbedRxNobuf"] == 17


def test_nstat_rate_from_two_snapshots():
    later = {**SNAP, "stack": {**SNAP["stack"], "snmp": {**SNAP["stack"]["snmp"], "Ip": {"InReceives": 11276}}}}
    line = next(l for l in views.nstat(later, SNAP, 0.5).splitlines() if l.startswith("IpInReceives"))
    assert line.split() == ["IpInReceives", "11276", "2000.0"]


def test_vmstat_is_name_value_lines():
    lines = views.vmstat(SNAP).splitlines()
    assert lines[0] == "nr_free_pages 1004"
    d = {}
    for line in lines:
        assert re.fullmatch(r"[a-z_]+ \d+", line), line
        k, v = line.split()
        d[k] = int(v)
    assert d == {k: v for k, v in SNAP["alloc"]["vmstat"].items()}


def test_zoneinfo_block_keys_and_values():
    text = views.zoneinfo(SNAP)
    lines = text.splitlines()
    assert lines[0] == "Node 0, zone   Normal"
    assert re.fullmatch(r"  pages free\s+1004", lines[1])
    kv = {}
    for line in lines[2:]:
        m = re.fullmatch(r"\s+([a-z_]+)\s+(\d+)", line)
        if m:
            kv[m[1]] = int(m[2])
    assert (kv["min"], kv["low"], kv["high"], kv["managed"]) == (512, 640, 768, 8192)
    assert kv["testbed_atomic_floor"] == 192
    assert "vm.min_free_kbytes = 2048" in lines


def test_ss_rows_and_skmem():
    lines = views.ss(SNAP).splitlines()
    assert lines[0].split() == ["State", "Recv-Q", "Send-Q", "Local", "Address:Port", "Peer", "Address:Port"]
    rows = lines[1::2]
    sk = lines[2::2]
    assert len(rows) == 2 and len(sk) == 2
    r0 = rows[0].split()
    assert r0 == ["UNCONN", "4608", "0", "0.0.0.0:9001", "0.0.0.0:*"]
    assert rows[1].split() == ["ESTAB", "0", "0", "0.0.0.0:32768", "198.18.0.1:2049"]
    pat = re.compile(r"\t skmem:\(r(\d+),rb(\d+),t0,tb\d+,f0,w0,o0,bl0,d(\d+)\)( sock_memalloc)?")
    m0, m1 = pat.fullmatch(sk[0]), pat.fullmatch(sk[1])
    assert m0 and m1
    assert (int(m0[1]), int(m0[2]), int(m0[3]), m0[4]) == (4608, 851968, 958, None)
    assert (int(m1[2]), int(m1[3]), m1[4]) == (79424, 3, " sock_memalloc")


def test_tcp_views_nstat_and_ss_t_from_the_agents_snapshot():
    # a SOCK_MEMALLOC TCP socket with 3000 unacknowledged bytes and a listener, on the agent's
    # stack (tests/tcp_kit.py); the views read Stack.snapshot() only
    import sys
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from tcp_kit import DOT, P, Script
    sc = Script(pport=2049)
    sk, _isn, syn = sc.active_open(2049)
    sk.sk_set_memalloc()
    sk.nodelay = True
    assert sk.send(b"x" * 3000, sc.now) == 3000
    ln = sc.tcp.socket()
    ln.bind(("", 111))
    ln.listen(16)
    snap = {"stack": sc.stack.snapshot()}
    n = {l.split()[0]: int(l.split()[1]) for l in views.nstat(snap).splitlines()[1:]}
    # Tcp: as /proc/net/snmp names them, TcpExt: as /proc/net/netstat, nstat's prefixes
    assert n["TcpActiveOpens"] == 1 and n["TcpCurrEstab"] == 1 and n["TcpOutSegs"] >= 4
    assert n["TcpRtoMin"] == 200 and n["TcpExtTCPOrigDataSent"] >= 2 and "TcpExtPFMemallocDrop" in n
    lines = views.sst(snap).splitlines()
    assert lines[0].split() == ["State", "Recv-Q", "Send-Q", "Local", "Address:Port", "Peer", "Address:Port"]
    est = next(i for i, l in enumerate(lines) if l.startswith("ESTAB"))
    f = lines[est].split()
    assert f[1:3] == ["0", "3000"] and f[4] == "198.18.0.1:2049"
    skmem = lines[est + 1].strip()
    s = sc.stack.snapshot()["sockets"]
    tcp = next(x for x in s if x.get("state") == "ESTAB")
    w = tcp["skmem"]["w"]
    # 3000 bytes are one write-queue buffer (size_goal): one page + the skb overhead, truesize 4672
    assert w == 4096 + 576 and skmem == (f"skmem:(r0,rb{tcp['skmem']['rb']},t0,tb{tcp['skmem']['tb']},f0,"
                                       f"w{w},o0,bl0,d0) sock_memalloc")
    info = lines[est + 2].split()
    assert info[0] == "reno" and "ts" in info and "sack" in info and "wscale:7,7" in info
    assert "mss:1448" in info and any(t.startswith("cwnd:") for t in info)
    lst = next(l for l in lines if l.startswith("LISTEN"))
    assert lst.split()[1:3] == ["0", "16"] and lst.split()[3].endswith(":111")   # accept queue, backlog
    # the UDP view leaves TCP sockets to sst
    assert "ESTAB" not in views.ss(snap) and "LISTEN" not in views.ss(snap)
    sk.sk_clear_memalloc()
