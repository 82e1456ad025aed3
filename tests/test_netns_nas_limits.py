"""One peer must not lock the others out of nas-server (issue 12 kind E), on real sockets.

nas-server runs in a namespace pair (198.18.79.0/24; the client namespace holds .2 and .3) as in
test_netns_nas.py; the socket layer's sweeps and totals are driven in-process on the loopback of a
namespace made here. Every namespace and process is removed, also when a test fails.
"""

import os
import select
import socket
import time

import pytest
from pyroute2 import IPRoute

from nas_server.core import NasCore
from nas_server.netpair import NetPair
from protocols import nfs3, rpc
from nas_server.server import NasServer
from nas_server.store import MemoryStore
from netns_setup import nsutil
from tests.test_netns_nas import running_nas

NULL_CALL = rpc.encode_call(0x5151, nfs3.NFS_PROGRAM, 3, nfs3.NFSPROC3_NULL, b"")


@pytest.fixture(scope="module")
def nas():
    with running_nas("nasl", 79, client_ips=("198.18.79.3",)) as n:
        yield n


def _connect(nas, src_ip):
    with nsutil.entered(nas.net.client_ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src_ip, 0))
        s.settimeout(10)
        s.connect((nas.net.server_ip, 2049))
    return s


def _wait_server(nas, key, value, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = nas.snapshot()["server"].get(key, 0)
        if got == value or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def _null_over(s) -> rpc.Reply:
    s.sendall(rpc.frame_record(NULL_CALL))
    rm = rpc.RecordReassembler()
    while True:
        data = s.recv(4096)
        assert data, "the server closed the connection"
        recs = rm.feed(data)
        if recs:
            return rpc.decode_reply(recs[0])


def _closed_by_server(s) -> bool:
    r, _, _ = select.select([s], [], [], 2.0)
    if not r:
        return False
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_256_half_headers_from_one_address_do_not_lock_out_another_client(nas):
    """Issue 12's input: 256 connections from one address, each sending half a record mark (2 of
    4 bytes) and stalling. Today every further connection is refused; Linux closes the oldest."""
    attacker = []
    try:
        for _ in range(256):
            s = _connect(nas, nas.net.client_ip)
            s.sendall(b"\x80\x00")  # half a record-marking header, then nothing
            attacker.append(s)
        assert _wait_server(nas, "tcp_accepted", 256) == 256
        held = _wait_server(nas, "partial_bytes", 512, timeout_s=10)  # every half header has arrived
        victim = _connect(nas, "198.18.79.3")
        reply = _null_over(victim)
        assert (reply.xid, reply.ok) == (0x5151, True)
        assert held == 512
        snap = nas.snapshot()["server"]
        assert (snap["tcp_close_conn_limit"], snap["tcp_connections"], snap["tcp_peers"]) == (1, 256, 2)
        assert snap["partial_bytes"] == 510 and snap["limits"]["max_connections"] == 256
        assert _closed_by_server(attacker[0]) and not _closed_by_server(attacker[1])
        # Ten more from the flooding address: each closes that address's oldest, never the victim's.
        for _ in range(10):
            s = _connect(nas, nas.net.client_ip)
            s.sendall(b"\x80\x00")
            attacker.append(s)
        assert _wait_server(nas, "tcp_accepted", 267) == 267
        reply = _null_over(victim)
        assert reply.ok
        snap = nas.snapshot()["server"]
        assert (snap["tcp_close_conn_limit"], snap["tcp_connections"]) == (11, 256)
        assert [_closed_by_server(s) for s in attacker[:12]] == [True] * 11 + [False]
        assert snap.get("tcp_close_too_many_connections", 0) == 0
        warned = open(nas.log).read().count("too many open connections")
        assert warned >= 1 and warned + snap.get("tcp_conn_limit_warnings_suppressed", 0) == 11
        victim.close()
    finally:
        for s in attacker:
            s.close()


def test_nfsacl_probe_is_not_a_procedure_in_snapshot(nas):
    """A Linux client's NFSACL probe: NULL to 100227 v3 over UDP answers PROG_UNAVAIL, and
    ``snapshot`` counts it under ``unavailable`` instead of listing a procedure named '-'."""
    before = nas.snapshot()["unavailable"].get("100227 v3", 0)
    with nsutil.entered(nas.net.client_ns):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.settimeout(10)
        u.sendto(rpc.encode_call(0xAC10, 100227, 3, 0, b""), (nas.net.server_ip, 2049))
        reply = u.recv(512)
    finally:
        u.close()
    assert reply == rpc.encode_accepted(0xAC10, rpc.PROG_UNAVAIL)
    snap = nas.snapshot()
    assert snap["unavailable"]["100227 v3"] == before + 1
    assert "-" not in snap["procedures"]


@pytest.fixture
def local_server():
    """A NasServer in this process, its sockets in a fresh namespace's loopback."""
    ns = f"nasla{os.getpid() % 100000}"
    nsutil.create_netns(ns)
    server = None
    try:
        with nsutil.entered(ns):
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            store = MemoryStore()
            store.add_export("swap")
            server = NasServer(NasCore(store), "127.0.0.1", 0, None, max_connections=4, conn_age_period_s=3600)

        def connect(src="127.0.0.1"):
            with nsutil.entered(ns):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((src, 0))
                s.settimeout(10)
                s.connect(("127.0.0.1", server.port))
            return s

        yield server, connect
    finally:
        if server is not None:
            server.close()
        nsutil.remove_netns(ns)


def _pump(server, until, rounds=200):
    for _ in range(rounds):
        if until():
            return True
        for key, mask in server.sel.select(timeout=0.02):
            key.data(mask)
    return until()


def test_idle_connections_are_closed_after_one_whole_period_without_input(local_server):
    """svc_age_temp_xprts: a sweep marks every connection old; data received clears the mark; the
    next sweep closes those still marked (idle for between one and two periods)."""
    server, connect = local_server
    a, b, c = connect(), connect(), connect()
    b.sendall(b"\x80\x00")  # a stalled half header does not count as activity forever
    assert _pump(server, lambda: server.stats["tcp_accepted"] == 3 and server.partial_bytes == 2)
    assert server.age_temp_xprts() == 0  # first sweep: all three marked
    a.sendall(rpc.frame_record(NULL_CALL))
    assert _pump(server, lambda: server.stats["tcp_records_out"] == 1)
    assert server.age_temp_xprts() == 2  # b and c received nothing for a whole period
    assert server.stats["tcp_close_idle"] == 2 and len(server.conns) == 1 and server.partial_bytes == 0
    assert _closed_by_server(b) and _closed_by_server(c) and not _closed_by_server(a)
    assert server.age_temp_xprts() == 1 and server.stats["tcp_close_idle"] == 3  # now a was idle too
    for s in (a, b, c):
        s.close()


def test_over_the_limit_the_busiest_addresss_oldest_goes(local_server):
    server, connect = local_server
    other = connect("127.0.0.3")
    flood = [connect("127.0.0.2") for _ in range(3)]
    assert _pump(server, lambda: server.stats["tcp_accepted"] == 4)
    newcomer = connect("127.0.0.4")  # fifth connection, max_connections 4
    assert _pump(server, lambda: server.stats["tcp_accepted"] == 5)
    assert server.stats["tcp_close_conn_limit"] == 1 and len(server.conns) == 4
    assert _closed_by_server(flood[0]) and not _closed_by_server(other)
    assert dict(server.conns_by_addr) == {"127.0.0.3": 1, "127.0.0.2": 2, "127.0.0.4": 1}
    for s in [other, newcomer, *flood]:
        s.close()


def test_unfinished_records_of_all_connections_are_bounded_together(local_server):
    server, connect = local_server
    server.max_partial_bytes_total = 10000
    small, big = connect("127.0.0.2"), connect("127.0.0.3")
    small.sendall(b"\x80\x00\x10\x00" + b"s" * 100)  # a 4096-byte record, 100 bytes of it sent
    assert _pump(server, lambda: server.partial_bytes == 104)
    big.sendall(b"\x80\x00\x40\x00" + b"b" * 9900)  # a 16384-byte record, 9900 sent: total > 10000
    assert _pump(server, lambda: server.stats["tcp_close_partial_bytes_total"] == 1)
    assert _closed_by_server(big) and not _closed_by_server(small)
    assert server.partial_bytes == 104 and server.limits()["max_partial_bytes_total"] == 10000
    small.close()
    big.close()
