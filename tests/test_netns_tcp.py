"""The agent's TCP against the Linux kernel's TCP on real packets (AF_PACKET on the client's veth,
kernel sockets in the nas namespace), with seeded loss and reordering on the agent's side in
both directions; tshark's TCP analysis of the agent's pcap must find no malformed segment and no
"ACKed unseen segment".

The agent's stack runs in a forked child inside the client namespace (the client has no kernel
address there, so the kernel never answers our segments), driven by the wall clock.
"""

import hashlib
import os
import select
import shutil
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from netns_setup import lifecycle
from netns_setup.process import run_in_netns
from netns_setup.topology import default_topology

CLIENT_IP, NAS_IP = "198.18.0.2", "198.18.0.1"
SIZE = 400_000
UP = hashlib.sha256(b"agent->kernel").digest() * (SIZE // 32)
DOWN = hashlib.sha256(b"kernel->agent").digest() * (SIZE // 32)


@pytest.fixture(scope="module")
def bed():
    name = "tc" + uuid.uuid4().hex[:6]
    st = lifecycle.up(default_topology(), name)
    try:
        yield st
    finally:
        lifecycle.down(name)


def _read_all(conn) -> bytes:
    out = bytearray()
    while True:
        b = conn.recv(65536)
        if not b:
            return bytes(out)
        out += b


def kernel_side(role: str) -> dict:
    """In the nas namespace. ``server``: take the agent's bytes, answer with their hash and
    DOWN. ``client``: connect to the agent's listener, send UP, read the answer."""
    if role == "server":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((NAS_IP, 5001))
        srv.listen(1)
        srv.settimeout(60)
        conn, peer = srv.accept()
        conn.settimeout(60)
        got = _read_all(conn)
        conn.sendall(hashlib.sha256(got).digest() + DOWN)
        conn.close()
        return {"got": len(got), "ok": got == UP, "peer": peer}
    deadline = time.monotonic() + 60
    while True:
        c = socket.socket()
        c.settimeout(60)
        try:
            c.connect((CLIENT_IP, 2049))
            break
        except OSError:
            c.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    c.sendall(UP)
    c.shutdown(socket.SHUT_WR)
    reply = _read_all(c)
    c.close()
    return {"reply_ok": reply == hashlib.sha256(UP).digest() + DOWN, "len": len(reply)}


def agent_side(ifname: str, pcap: str, role: str) -> dict:
    """In the client namespace: the agent's stack on AF_PACKET, wall clock, seeded faults."""
    from client_agent.mm.page_alloc import PageAllocator
    from client_agent.net import Stack
    from client_agent.phy.afpacket import AfPacketDevice
    from client_agent.phy.fault import FaultInjector, RxFaultInjector
    from client_agent.phy.pcap import PcapTap

    raw = AfPacketDevice(ifname)
    dev = PcapTap(FaultInjector(RxFaultInjector(raw, 11, loss=0.03, reorder=0.02), 12,
                                loss=0.03, reorder=0.02), pcap)
    alloc = PageAllocator(16384)
    stack = Stack(alloc, dev, raw.mac, CLIENT_IP, 24, seed=3)
    now = time.monotonic
    if role == "client":
        sk = stack.tcp.socket()
        assert sk.connect((NAS_IP, 5001), now()) == 0
    else:
        ln = stack.tcp.socket()
        ln.bind(("", 2049))
        ln.listen(4)
        sk = None
    sent = 0
    got = bytearray()
    closed = False
    deadline = now() + 90
    while now() < deadline:
        t = now()
        stack.poll(t)
        if sk is None:
            sk = ln.accept()
        if sk is not None and sk.state in (1, 8):
            if role == "client" and sent < len(UP):
                n = sk.send(UP[sent:sent + 65536], t)
                sent += max(n, 0)
                if sent == len(UP):
                    sk.shutdown_wr(t)
        if sk is not None:
            r = sk.recv(t)
            if isinstance(r, bytes) and r:
                got += r
            elif r == b"" and role == "client":
                break
            elif r == b"" and role == "server" and not closed:
                h = hashlib.sha256(bytes(got)).digest() + DOWN
                pos = 0
                while pos < len(h) and now() < deadline:
                    n = sk.send(h[pos:pos + 65536], now())
                    pos += max(n, 0)
                    stack.poll(now())
                    select.select([raw], [], [], 0.002)
                sk.close(now())
                closed = True
            if closed and sk.state in (7, 6):
                break
        d = stack.next_deadline()
        wait = 0.01 if d is None else min(max(d - now(), 0.0), 0.01)
        select.select([raw], [], [], wait)
    snap = stack.snapshot()
    dev.close()
    raw.close()
    res = {"tcp": snap["snmp"]["Tcp"], "ext": {k: v for k, v in snap["snmp"]["TcpExt"].items()
                                               if v},
           "drops": snap["drop_reasons"], "faults": dev.inner.counters}
    if role == "client":
        res["ok"] = bytes(got) == hashlib.sha256(UP).digest() + DOWN
        res["len"] = len(got)
    else:
        res["len"] = len(got)
        res["ok"] = bytes(got) == UP
    return res


def _tshark(pcap: str, flt: str) -> str:
    p = subprocess.run(["tshark", "-r", pcap, "-Y", flt], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.mark.parametrize("agent_role", ["client", "server"])
def test_agent_tcp_with_the_kernel(bed, agent_role, tmp_path):
    st = bed
    pcap = str(tmp_path / f"agent-{agent_role}.pcap")
    kernel_role = "server" if agent_role == "client" else "client"
    with ThreadPoolExecutor(2) as ex:
        k = ex.submit(run_in_netns, st.host_netns("nas"), kernel_side, kernel_role,
                      timeout_s=120)
        if agent_role == "client":
            time.sleep(0.3)                              # the kernel listens first
        a = ex.submit(run_in_netns, st.host_netns("client"), agent_side,
                      st.host_iface("client"), pcap, agent_role, timeout_s=120)
        ares, kres = a.result(), k.result()
    assert ares["ok"] and ares["len"] in (SIZE, 32 + SIZE), ares
    if agent_role == "client":
        assert kres["ok"] and kres["got"] == SIZE, kres
    else:
        assert kres["reply_ok"], kres
    assert ares["faults"]["lost"] > 0                    # the agent had losses to repair
    assert ares["tcp"]["RetransSegs"] > 0 and ares["tcp"]["InCsumErrors"] == 0
    assert ares["tcp"]["ActiveOpens" if agent_role == "client" else "PassiveOpens"] == 1
    if shutil.which("tshark"):
        assert _tshark(pcap, "_ws.malformed") == ""
        assert _tshark(pcap, "tcp.analysis.ack_lost_segment") == ""
        assert _tshark(pcap, "tcp.flags.syn == 1 && tcp.option_kind == 8")   # TS negotiated
    os.unlink(pcap)
