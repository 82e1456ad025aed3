"""The ring NIC (PACKET_RX_RING/PACKET_TX_RING) with checksum offload, against the kernel's UDP.

One topology, one agent per NIC kind: the kernel in `nas` exchanges UDP datagrams with the agent's
echo (small ones the device offloads, fragmented ones the stack sums), a Python AF_PACKET capture
on `nas`'s veth writes what arrived to a pcap, and tshark -- with UDP checksum validation on --
must find every checksum good. The agent's device counters must show the offload was used and
report tp_drops from PACKET_STATISTICS.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from netns_setup import lifecycle
from netns_setup.control import ControlClient
from netns_setup.process import run_in_netns, start_process
from netns_setup.state import control_socket_path
from netns_setup.topology import default_topology

CLIENT_IP = "198.18.0.2"
SIZES = [1, 100, 1000, 1472, 1473, 8000]      # 1472: the largest unfragmented one at MTU 1500


@pytest.fixture(scope="module")
def bed():
    name = "rg" + uuid.uuid4().hex[:6]
    st = lifecycle.up(default_topology(), name)
    try:
        yield st
    finally:
        lifecycle.down(name)


def _exchange_and_capture(dst, port, sizes, ifname, pcap_path):
    """In `nas`: capture the veth (AF_PACKET, this namespace only) while the kernel's UDP socket
    exchanges ``sizes`` with the agent's echo; write the capture as pcap."""
    from capture_kit import veth_capture
    with veth_capture(ifname, pcap_path) as frames:
        out = _exchange(dst, port, sizes)
    return out, max(len(f) for f, _ts in frames)


def _exchange(dst, port, sizes):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    out = []
    try:
        for i, n in enumerate(sizes):
            msg = bytes((i * 7 + j) & 0xFF for j in range(n))
            s.sendto(msg, (dst, port))
            data, addr = s.recvfrom(65535)
            out.append((data == msg, addr[0], len(data)))
        time.sleep(0.2)
    finally:
        s.close()
    return out


@pytest.mark.parametrize("nic,offload", [("ring-v3", "tx,rx"), ("ring-v2", "tx,rx"), ("socket", "tx,rx"),
                                         ("ring-v2", "tx,rx,ufo")])
def test_ring_nic_with_tx_checksum_offload_against_kernel_udp(bed, nic, offload, tmp_path):
    st = bed
    ctl = control_socket_path(st.dir, f"ring-{nic}")
    p = start_process(st, "client", [sys.executable, "-m", "client_agent.agent", "--ifname", st.host_iface("client"),
                                     "--addr", f"{CLIENT_IP}/24", "--control", ctl, "--nic", nic,
                                     "--offload", offload],
                      role=f"ring-{nic}", ready=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    pcap = str(tmp_path / f"{nic}.pcap")
    try:
        with ControlClient(ctl) as c:
            c.call("udp_echo", port=7)
            res, longest = run_in_netns(st.host_netns("nas"), _exchange_and_capture, CLIENT_IP, 7, SIZES,
                                        st.host_iface("nas"), pcap)
            assert longest <= 1514              # per-MTU frames on the wire: nothing left merged
            assert [r[0] for r in res] == [True] * len(SIZES)
            assert {r[1] for r in res} == {CLIENT_IP}
            snap = c.call("snapshot")
            dev = snap["device"]
            # the four unfragmented echoes left with a partial checksum the veth completed
            assert dev["tp_drops"] == 0 and "tp_packets" in dev
            if "ufo" in offload:
                # 1473 and 8000 too: one UFO buffer each, the kernel summed and fragmented them
                assert dev["tx_csum_partial"] >= 6 and dev["tx_gso"] == 2
                assert snap["stack"]["snmp"]["Ip"]["FragCreates"] == 0
            else:
                assert dev["tx_csum_partial"] >= 4
                assert snap["stack"]["snmp"]["Ip"]["FragCreates"] > 0      # 1473 and 8000: summed by the stack
            if nic.startswith("ring"):
                assert dev["rx_packets"] >= len(SIZES) and dev["tx_sends"] >= 1
                if nic == "ring-v3":
                    assert "tp_freeze_q_cnt" in dev and dev["rx_blocks"] >= 1
            c.call("shutdown")
    finally:
        p.stop()
    assert shutil.which("tshark"), "tshark is in APT_PACKAGES"
    fields = subprocess.run(
        ["tshark", "-r", pcap, "-o", "udp.check_checksum:TRUE", "-Y", f"ip.src == {CLIENT_IP} && udp",
         "-T", "fields", "-e", "udp.length", "-e", "udp.checksum.status"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    rows = [r.split("\t") for r in fields if r.strip()]
    # every echo from the agent is on the wire, each with a checksum tshark verified (1 = Good)
    assert sorted(int(r[0]) - 8 for r in rows) == sorted(SIZES)
    assert {r[1] for r in rows} == {"1"}, rows
