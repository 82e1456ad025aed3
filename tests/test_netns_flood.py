"""testbed.flood on real packets: noise -> nas (kernel UDP sockets) in the default topology.

Every datagram sent is received (a veth + bridge loses nothing at 2000 pps), its sequence number
says which, the per-port counts agree, and the achieved rate is within 10 % of the asked rate.
The topology has a unique name and is always torn down.
"""

import json
import os
import secrets
import socket
import sys
import time

import pytest

from netns_setup import nsutil
from netns_setup.control import ControlClient, ControlError
from netns_setup.lifecycle import teardown, up
from netns_setup.process import start_process
from netns_setup.state import control_socket_path
from netns_setup.topology import default_topology
from netns_setup.nsutil import add_permanent_neighbours
from testbed.flood import parse_seq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = (9001, 9002, 9003, 9004)


@pytest.fixture(scope="module")
def topo():
    t = default_topology()
    st = up(t, f"tflood-{secrets.token_hex(2)}")
    try:
        nas = t.host("nas")
        add_permanent_neighbours(st.host_netns("noise"), st.host_iface("noise"), [(str(nas.address.ip), nas.mac)])
        yield st, t
    finally:
        names = [o["name"] for o in st.objects("netns")]
        teardown(st)
        assert not set(names) & set(nsutil.list_netns())


def nas_sockets(st, t):
    socks = []
    with nsutil.entered(st.host_netns("nas")):  # a socket belongs to the namespace it was made in
        for port in PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: hold every datagram
            s.bind((str(t.host("nas").address.ip), port))
            s.setblocking(False)
            socks.append(s)
    return socks


def drain(socks):
    got = {p: [] for p in PORTS}
    for port, s in zip(PORTS, socks):
        while True:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                break
            got[port].append((parse_seq(data), len(data)))
    return got


def flood_argv(t, *extra):
    return [sys.executable, "-m", "testbed.flood", "--dst", str(t.host("nas").address.ip),
            "--ports", ",".join(map(str, PORTS)), "--size", "64", "--seed", "5", *extra]


def test_every_datagram_sent_is_received_at_2000_pps(topo):
    st, t = topo
    socks = nas_sockets(st, t)
    try:
        proc = start_process(st, "noise", flood_argv(t, "--rate-pps", "2000", "--duration-s", "1", "--cpu", "1"),
                             role="flood-count", ready=True, cwd=REPO)
        assert proc.wait(10.0) == 0, proc.log_tail()
        summary = json.loads(proc.log_tail().splitlines()[-1])["flood_summary"]
        time.sleep(0.1)
        got = drain(socks)
    finally:
        for s in socks:
            s.close()
    sent = summary["sent"]
    assert summary["errors_total"] == 0 and summary["skipped_slots"] == 0
    assert abs(sent - 2000) <= 200
    assert abs(summary["achieved_rate_pps"] - 2000) <= 200
    seqs = sorted(seq for port in PORTS for seq, _ in got[port])
    assert seqs == list(range(sent))                          # nothing lost, nothing extra
    assert {n for port in PORTS for _, n in got[port]} == {64}
    assert {str(p): len(got[p]) for p in PORTS} == summary["sent_per_port"]
    # round-robin: datagram k went to port k mod 4
    for i, port in enumerate(PORTS):
        assert all(seq % 4 == i for seq, _ in got[port])


def test_control_start_off_set_and_shutdown(topo):
    st, t = topo
    ctl = control_socket_path(st.dir, "flood-ctl")
    socks = nas_sockets(st, t)
    proc = start_process(st, "noise", flood_argv(t, "--rate-pps", "1000", "--start-off", "--control", ctl),
                         role="flood-ctl", ready=True, cwd=REPO)
    try:
        with ControlClient(ctl) as c:
            time.sleep(0.2)
            s0 = c.call("snapshot")
            assert s0["sent"] == 0 and s0["on"] is False and s0["offered_rate_pps"] == 0.0
            assert drain(socks) == {p: [] for p in PORTS}
            c.call("set", key="rate_pps", value=3000)
            c.call("set", key="size", value=200)
            c.call("set", key="on", value=True)
            time.sleep(0.5)
            s1 = c.call("snapshot")
            assert s1["on"] is True and s1["offered_rate_pps"] == 3000 and s1["size_bytes"] == 200
            c.call("set", key="on", value=False)
            s2 = c.call("snapshot")
            assert s2["on"] is False and 1200 <= s2["sent"] <= 1800  # ~0.5 s at 3000 pps
            with pytest.raises(ControlError, match="settable: rate_pps, on, size"):
                c.call("set", key="colour", value="red")
            final = c.call("shutdown")
        assert proc.wait(5.0) == 0
        time.sleep(0.1)
        got = drain(socks)
        assert sum(len(v) for v in got.values()) == final["sent"] == s2["sent"]
        assert {n for v in got.values() for _, n in v} == {200}
    finally:
        proc.stop()
        for s in socks:
            s.close()
