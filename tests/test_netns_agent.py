"""The client agent on real packets: kernel peers in `nas` and `noise`, the agent on the client's veth.

Each test asserts figures read from the agent's control socket and from the kernel peers.
"""

import os
import socket
import sys
import time
import uuid

import pytest

from netns_setup import lifecycle
from netns_setup.control import ControlClient
from netns_setup.process import run_in_netns, start_process
from netns_setup.state import control_socket_path
from netns_setup.topology import default_topology

CLIENT_IP, NAS_IP, NOISE_IP = "198.18.0.2", "198.18.0.1", "198.18.0.3"


@pytest.fixture(scope="module")
def bed():
    name = "ag" + uuid.uuid4().hex[:6]
    topo = default_topology()
    st = lifecycle.up(topo, name)
    procs = []
    try:
        yield st, procs
    finally:
        for p in procs:
            p.stop()
        lifecycle.down(name)


def start_agent(st, procs, *extra):
    ctl = control_socket_path(st.dir, f"agent-{len(procs)}")
    argv = [sys.executable, "-m", "client_agent.agent", "--ifname", st.host_iface("client"),
            "--addr", f"{CLIENT_IP}/24", "--control", ctl, *extra]
    p = start_process(st, "client", argv, role=f"agent{len(procs)}", ready=True,
                      env={**os.environ, "PYTHONPATH": os.getcwd()})
    procs.append(p)
    return p, ControlClient(ctl)


def stop_agent(procs, p, c):
    try:
        c.call("shutdown")
    finally:
        c.close()
        p.wait(5) if hasattr(p, "wait") else None
        p.stop()
        procs.remove(p)


def _ping(dst, count):
    """Kernel ICMP echo from this namespace (unprivileged-style datagram ICMP socket needs a sysctl;
    we are root, so a raw socket). Returns the number of replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(1.0)
    got = 0
    ident = os.getpid() & 0xFFFF
    for seq in range(count):
        payload = b"testbed-ping" + bytes([seq])
        hdr = bytearray(b"\x08\x00\x00\x00" + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")) + payload
        csum = _csum(bytes(hdr))
        hdr[2:4] = csum.to_bytes(2, "big")
        s.sendto(bytes(hdr), (dst, 0))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (data[0] & 15) * 4
            if addr[0] == dst and data[ihl] == 0 and int.from_bytes(data[ihl + 4:ihl + 6], "big") == ident \
                    and int.from_bytes(data[ihl + 6:ihl + 8], "big") == seq and data[ihl + 8:] == payload:
                got += 1
                break
    s.close()
    return got


def _csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _neigh_state(dst):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for n in ipr.get_neighbours():
            if n.get_attr("NDA_DST") == dst:
                return n["state"]
    return None


def _flush_neigh(dst):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for n in ipr.get_neighbours():
            if n.get_attr("NDA_DST") == dst:
                ipr.neigh("del", dst=dst, ifindex=n["ifindex"])
    return _neigh_state(dst)


def _static_neigh(dst, mac):
    """A permanent neighbour entry: with the agent's pool exhausted it cannot answer ARP."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = [l["index"] for l in ipr.get_links() if l.get_attr("IFLA_IFNAME") != "lo"][0]
        ipr.neigh("replace", dst=dst, lladdr=mac, ifindex=idx, state=0x80)  # NUD_PERMANENT
    return _neigh_state(dst)


def _udp_exchange(dst, port, sizes):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    out = []
    for i, n in enumerate(sizes):
        msg = bytes((i + j) & 0xFF for j in range(n))
        s.sendto(msg, (dst, port))
        data, addr = s.recvfrom(65535)
        out.append((data == msg, addr[0], len(data)))
    s.close()
    return out


def _udp_send(dst, ports, per_port, size=64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for i in range(per_port):
        for port in ports:
            s.sendto(i.to_bytes(4, "big") + b"n" * (size - 4), (dst, port))
            sent += 1
        if i % 50 == 49:
            time.sleep(0.002)  # pace: the test is about memory, not about the agent's CPU
    s.close()
    return sent


def test_kernel_pings_agent_and_rearps(bed):
    st, procs = bed
    p, c = start_agent(st, procs)
    try:
        ns = st.host_netns("nas")
        assert run_in_netns(ns, _ping, CLIENT_IP, 3) == 3
        snap = c.call("snapshot")
        assert snap["stack"]["snmp"]["Icmp"]["InEchos"] >= 3
        assert snap["stack"]["snmp"]["Icmp"]["OutEchoReps"] >= 3
        # The kernel forgets the agent; a new ping must re-resolve it by ARP.
        assert run_in_netns(ns, _flush_neigh, CLIENT_IP) is None
        arp_before = c.call("snapshot")["stack"]["snmp"]["ArpCache"]
        assert run_in_netns(ns, _ping, CLIENT_IP, 1) == 1
        arp_after = c.call("snapshot")["stack"]["snmp"]["ArpCache"]
        assert sum(arp_after.values()) > sum(arp_before.values())
        assert c.call("snapshot")["valid"] is True
    finally:
        stop_agent(procs, p, c)


def test_udp_small_and_fragmented_with_kernel_socket(bed):
    st, procs = bed
    # without ufo, so the stack's own fragmentation (ip_do_fragment's path) is what answers;
    # tests/test_netns_ring.py has the kernel fragment them (ufo)
    p, c = start_agent(st, procs, "--offload", "tx,rx")
    try:
        c.call("udp_echo", port=7)
        res = run_in_netns(st.host_netns("nas"), _udp_exchange, CLIENT_IP, 7, [1, 100, 1472, 1473, 8000, 30000])
        assert [r[0] for r in res] == [True] * 6
        assert {r[1] for r in res} == {CLIENT_IP}
        snap = c.call("snapshot")
        ip = snap["stack"]["snmp"]["Ip"]
        assert ip["ReasmOKs"] >= 3          # 1473, 8000 and 30000 bytes arrive in fragments
        assert ip["FragCreates"] > 0        # and the echoes leave fragmented
        assert snap["services"]["udp:7"]["echoed"] == 6
    finally:
        stop_agent(procs, p, c)


def test_exhausted_pool_drops_flood_as_nomem_and_memalloc_socket_still_fed(bed):
    st, procs = bed
    p, c = start_agent(st, procs, "--pool-pages", "2048", "--neigh", f"{NAS_IP}=02:00:c6:12:00:01",
                       "--neigh", f"{NOISE_IP}=02:00:c6:12:00:03")
    try:
        c.call("udp_sink", port=9001, reader="fast")
        c.call("udp_echo", port=2049)
        for host in ("noise", "nas"):
            assert run_in_netns(st.host_netns(host), _static_neigh, CLIENT_IP, "02:00:c6:12:00:02") == 0x80
        # Phase 1: no memalloc socket; the hog takes every page down to 0 (from the reserve).
        held = c.call("hog", pages=2048, gfp="memalloc")
        assert held["nr_free"] == 0
        sent = run_in_netns(st.host_netns("noise"), _udp_send, CLIENT_IP, [9001], 300)
        time.sleep(0.3)
        s1 = c.call("snapshot")
        counters = s1["stack"]["counters"]
        assert counters["rx_nobuf"] >= sent
        assert s1["stack"]["drop_reasons"]["NOMEM"] >= sent
        assert s1["services"]["udp:9001"]["read"] == 0
        # Phase 2: the NFS-like socket is SOCK_MEMALLOC; give back a small reserve of pages.
        c.call("hog_free")
        c.call("hog", pages=2048 - 16, gfp="memalloc")   # leaves 16 free: all below the atomic floor (34)
        snap = c.call("snapshot")
        assert snap["alloc"]["zoneinfo"]["free"] == 16 < snap["alloc"]["reserve"]["atomic_floor"]
        c.call("memalloc", port=2049, on=True)
        base = c.call("snapshot")["stack"]["counters"]
        noise_sent = run_in_netns(st.host_netns("noise"), _udp_send, CLIENT_IP, [9001], 200)
        echoes = run_in_netns(st.host_netns("nas"), _udp_exchange, CLIENT_IP, 2049, [200] * 10)
        assert all(ok for ok, _a, _n in echoes)
        time.sleep(0.2)
        s2 = c.call("snapshot")
        c2 = s2["stack"]["counters"]
        assert c2["PFMemallocDrop"] - base["PFMemallocDrop"] == noise_sent
        assert c2["rx_pfmemalloc"] - base["rx_pfmemalloc"] >= noise_sent + 10
        assert s2["services"]["udp:9001"]["read"] == 0
        assert s2["services"]["udp:2049"]["echoed"] == 10
        # Per flow: sent = delivered + drops + tp_drops (the flood's port only).
        fate_9001_total = s2["services"]["udp:9001"]["read"] + (c2["PFMemallocDrop"] - base["PFMemallocDrop"])
        assert fate_9001_total + s2["device"]["tp_drops"] == noise_sent
        # Swapoff: after sk_clear_memalloc, reserve-backed frames for that socket are refused too.
        c.call("memalloc", port=2049, on=False)
        assert c.call("snapshot")["alloc"]["reserve"]["memalloc_socks"] == 0
        c.call("hog_free")
    finally:
        stop_agent(procs, p, c)
