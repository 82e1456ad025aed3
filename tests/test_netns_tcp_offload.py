"""The agent's TCP with a NIC's offloads (issue 18) against the Linux kernel's TCP on real packets.

The agent (a forked child in the client namespace, wall clock) runs on the ring NIC with
``tx,rx,gro,tso``: every TCP segment leaves with a partial checksum the kernel completes
(NEEDS_CSUM, csum_offset 16), bursts of full-MSS buffers leave as one TSO buffer
(GSO_TCPV4, gso_size = MSS) that the kernel segments before the veth, and what the kernel merged
on the way in arrives as GRO'd frames charged one buffer per segment. It sends 400 kB to a kernel
server in `nas` and reads its answer; a capture on `nas`'s veth must show every frame from the
agent at most MTU + 14 bytes, and tshark -- with TCP checksum validation on -- must find every
checksum good and no malformed segment.
"""

import hashlib
import select
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from netns_setup.process import run_in_netns

from test_netns_tcp import CLIENT_IP, DOWN, NAS_IP, SIZE, UP, bed  # noqa: F401 (the fixture)


def kernel_server(ifname: str, pcap_path: str) -> dict:
    """In `nas`: capture the veth (this namespace only) while a kernel TCP server takes the
    agent's bytes and answers with their hash and DOWN; write the capture as pcap."""
    from capture_kit import veth_capture
    with veth_capture(ifname, pcap_path) as frames:
        got = _serve()
    longest = max((len(f) for f, _ts in frames
                   if f[12:14] == b"\x08\x00" and f[26:30] == socket.inet_aton(CLIENT_IP)), default=0)
    return {"ok": got == UP, "got": len(got), "longest_from_agent": longest, "frames": len(frames),
            "capture_drops": frames.drops}


def _serve() -> bytes:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((NAS_IP, 5001))
    srv.listen(1)
    srv.settimeout(60)
    try:
        conn, _peer = srv.accept()
        conn.settimeout(60)
        got = bytearray()
        while True:
            b = conn.recv(65536)
            if not b:
                break
            got += b
        conn.sendall(hashlib.sha256(got).digest() + DOWN)
        conn.close()
        time.sleep(0.3)
    finally:
        srv.close()
    return bytes(got)


def agent_client(ifname: str, version: int = 3, offloads: str = "tx,rx,gro,tso") -> dict:
    """In `client`: the agent's stack on the ring NIC with ``offloads``, wall clock."""
    from client_agent.mm.page_alloc import PageAllocator
    from client_agent.net import Stack
    from client_agent.phy.caps import parse_offloads
    from client_agent.phy.ring import RingDevice

    dev = RingDevice(ifname, version=version, offloads=parse_offloads(offloads))
    alloc = PageAllocator(16384)
    stack = Stack(alloc, dev, dev.mac, CLIENT_IP, 24, seed=3)
    now = time.monotonic
    sk = stack.tcp.socket()
    assert sk.connect((NAS_IP, 5001), now()) == 0
    sent = 0
    got = bytearray()
    deadline = now() + 60
    while now() < deadline:
        t = now()
        stack.poll(t)
        if sk.state in (1, 8) and sent < len(UP):
            n = sk.send(UP[sent:sent + 65536], t)
            sent += max(n, 0)
            if sent == len(UP):
                sk.shutdown_wr(t)
        r = sk.recv(t)
        if isinstance(r, bytes) and r:
            got += r
        elif r == b"":
            break
        dev.flush_tx()
        d = stack.next_deadline()
        wait = 0.01 if d is None else min(max(d - now(), 0.0), 0.01)
        select.select([dev], [], [], wait)
    sk.close(now())
    for _ in range(20):
        stack.poll(now())
        dev.flush_tx()
        time.sleep(0.005)
    snap = stack.snapshot()
    counters = dict(dev.counters)
    dev.close()
    return {"ok": bytes(got) == hashlib.sha256(UP).digest() + DOWN, "len": len(got),
            "tcp": snap["snmp"]["Tcp"], "dev": counters, "drops": {k: v for k, v in snap["drop_reasons"].items() if v}}


@pytest.mark.parametrize("version,offloads", [(3, "tx,rx,gro,tso"), (2, "tx,rx")])
def test_agent_tcp_with_checksum_offload_tso_and_gro_against_the_kernel(bed, tmp_path, version, offloads):
    st = bed
    pcap = str(tmp_path / "tcp-offload.pcap")
    with ThreadPoolExecutor(2) as ex:
        k = ex.submit(run_in_netns, st.host_netns("nas"), kernel_server, st.host_iface("nas"), pcap,
                      timeout_s=90)
        time.sleep(0.3)                                  # the kernel listens first
        a = ex.submit(run_in_netns, st.host_netns("client"), agent_client, st.host_iface("client"),
                      version, offloads, timeout_s=90)
        ares, kres = a.result(), k.result()
    assert kres["ok"] and kres["got"] == SIZE, kres
    assert ares["ok"] and ares["len"] == 32 + SIZE, ares
    dev = ares["dev"]
    # TSO buffers went out, every TCP frame with a partial checksum the kernel completed
    # every TCP frame left with a partial checksum the kernel completed (ARP aside); with tso,
    # bursts left as TSO buffers and OutSegs counts wire segments (tcp_skb_pcount), more than
    # the frames handed to the device
    assert dev["tx_packets"] - dev["tx_csum_partial"] <= 2, dev
    if "tso" in offloads:
        assert dev["tx_gso"] > 0 and ares["tcp"]["OutSegs"] > dev["tx_packets"], (ares["tcp"], dev)
    else:
        assert dev["tx_gso"] == 0 and ares["tcp"]["OutSegs"] <= dev["tx_packets"], (ares["tcp"], dev)
    # nothing was lost on this clean path: a TSO buffer the kernel did not send would show here
    # as retransmissions (TCP repairs it one buffer at a time, so the bytes alone prove nothing)
    assert ares["tcp"]["RetransSegs"] == 0, ares["tcp"]
    assert ares["tcp"]["InCsumErrors"] == 0 and dev.get("rx_ring_truncated", 0) == 0
    # the wire: the kernel cut every TSO buffer to frames of at most MTU + 14 bytes
    assert 0 < kres["longest_from_agent"] <= 1514, kres
    assert shutil.which("tshark"), "tshark is in APT_PACKAGES"

    def tshark(*args):
        return subprocess.run(["tshark", "-r", pcap, "-o", "tcp.check_checksum:TRUE", *args],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [r.split("\t") for r in tshark("-Y", f"ip.src == {CLIENT_IP} && tcp", "-T", "fields",
                                          "-e", "frame.len", "-e", "tcp.checksum.status").splitlines() if r]
    assert kres["capture_drops"] == 0, kres          # the capture itself saw every frame
    assert len(rows) > SIZE // 1448
    assert {r[1] for r in rows} == {"1"}, rows[:5]                 # 1 = Good, every one
    assert max(int(r[0]) for r in rows) <= 1514
    assert tshark("-Y", "_ws.malformed").strip() == ""
