"""One peer must not lock the others out of nas-server over any TCP protocol it speaks (issue 12
kind E for NBD and iSCSI as for NFS), on real sockets.

A ``NasServer`` with NFS, NBD and iSCSI listeners runs in this process on the loopback of a namespace
made here (its loop in a thread); peers are the project's reference clients and raw sockets bound
to 127.0.0.x addresses. Every namespace, socket and thread is removed, also when a test fails.
"""

import contextlib
import os
import select
import socket
import threading
import time

import pytest
from pyroute2 import IPRoute

from nas_server.blockrefclient import IscsiRefClient, NbdRefClient
from nas_server.core import NasCore
from nas_server.iscsi_target import IscsiTarget
from nas_server.nbd_target import NbdTarget
from nas_server.server import NasServer
from nas_server.store import MemoryStore
from netns_setup import nsutil
from protocols import nbd
from tests.test_netns_nas_limits import _null_over

pytestmark = pytest.mark.netns
IQN = "iqn.2025-01.org.nsdeadlock.nas:swap.img"


class Served:
    def __init__(self, ns, server, nbd_target, iscsi_target):
        self.ns, self.server, self.nbd, self.iscsi = ns, server, nbd_target, iscsi_target
        self.socks: list[socket.socket] = []

    def connect(self, proto: str, src: str = "127.0.0.1") -> socket.socket:
        port = self.server.port if proto == "nfs" else self.server.stream_ports[proto]
        with nsutil.entered(self.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((src, 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
        self.socks.append(s)
        return s

    def nbd_client(self) -> NbdRefClient:
        with nsutil.entered(self.ns):
            return NbdRefClient("127.0.0.1", self.server.stream_ports["nbd"], b"swap/img")

    def iscsi_client(self) -> IscsiRefClient:
        with nsutil.entered(self.ns):
            return IscsiRefClient("127.0.0.1", self.server.stream_ports["iscsi"], IQN)

    def stats(self, proto: str) -> dict:
        return self.server.stats if proto == "nfs" else self.server.services[proto].stats

    def wait(self, until, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


def _loopback_and_store() -> MemoryStore:
    """In the namespace entered: loopback up, a store with one 1 MiB image swap/img."""
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    store = MemoryStore()
    store.add_export("swap")
    store.create_image("swap", "img", 1 << 20)
    return store


@contextlib.contextmanager
def served(**kw):
    ns = f"nass{os.getpid() % 100000}"
    nsutil.create_netns(ns)
    server = thread = None
    stop = threading.Event()
    try:
        with nsutil.entered(ns):
            store = _loopback_and_store()
            server = NasServer(NasCore(store), "127.0.0.1", 0, None, **kw)
            nt, it = NbdTarget(store), IscsiTarget(store)
            server.add_stream_listener("nbd", "127.0.0.1", 0, lambda peer, local: nt.connect(peer))
            server.add_stream_listener("iscsi", "127.0.0.1", 0, it.connect)
        s = Served(ns, server, nt, it)
        thread = threading.Thread(target=server.run, args=(stop.is_set,), daemon=True)
        thread.start()
        yield s
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        if server is not None:
            for sock in s.socks:
                sock.close()
            server.close()
        nsutil.remove_netns(ns)
    assert ns not in nsutil.list_netns()


def _closed_by_server(s, wait_s: float = 2.0) -> bool:
    r, _, _ = select.select([s], [], [], wait_s)
    if not r:
        return False
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
            r, _, _ = select.select([s], [], [], wait_s)
            if not r:
                return False
    except (ConnectionResetError, TimeoutError):
        return True


def _nbd_to_transmission(s) -> None:
    """Fixed-newstyle handshake by hand: greeting, client flags, NBD_OPT_EXPORT_NAME swap/img."""
    got = b""
    while len(got) < 18:
        got += s.recv(18 - len(got))
    nbd.decode_greeting(got)
    s.sendall((nbd.NBD_FLAG_C_FIXED_NEWSTYLE | nbd.NBD_FLAG_C_NO_ZEROES).to_bytes(4, "big")
              + nbd.encode_option(nbd.NBD_OPT_EXPORT_NAME, b"swap/img"))
    got = b""
    while len(got) < 10:  # size and transmission flags, no zeroes
        got += s.recv(10 - len(got))


def _nbd_and_iscsi_served(srv: Served) -> None:
    n = srv.nbd_client()
    n.write(8192, b"N" * 4096, fua=True)
    assert n.read(8192, 4096) == b"N" * 4096
    n.close()
    i = srv.iscsi_client()
    assert i.capacity() == ((1 << 20) // 512, 512)
    assert i.read(16, 8) == b"N" * 4096  # the NBD write, through the same store
    i.logout()


def test_256_half_open_nfs_connections_do_not_lock_out_nbd_or_iscsi():
    """Issue 12 kind E's input, then the other protocols from another address: before, the stream
    listeners refused every connection once NFS held max_connections."""
    with served() as srv:
        flood = []
        for _ in range(256):
            s = srv.connect("nfs", "127.0.0.2")
            s.sendall(b"\x80\x00")  # half a record-marking header
            flood.append(s)
        assert srv.wait(lambda: srv.server.stats["tcp_accepted"] == 256 and srv.server.partial_bytes == 512)
        _nbd_and_iscsi_served(srv)
        nbd_st, iscsi_st = srv.stats("nbd"), srv.stats("iscsi")
        assert (nbd_st["tcp_accepted"], iscsi_st["tcp_accepted"]) == (1, 1)
        assert "tcp_close_too_many_connections" not in nbd_st and "tcp_close_conn_limit" not in iscsi_st
        assert len(srv.server.conns) == 256 and "tcp_close_conn_limit" not in srv.server.stats  # per protocol
        assert srv.wait(lambda: srv.server.partial_bytes == 512)  # only the flood's half headers are held


def test_256_nbd_connections_with_half_a_request_header_lock_out_neither_nfs_nor_nbd():
    with served() as srv:
        flood = []
        for _ in range(256):
            s = srv.connect("nbd", "127.0.0.2")
            _nbd_to_transmission(s)
            s.sendall(nbd.encode_request(nbd.NBD_CMD_READ, 1, 0, 4096)[:14])  # half a request header
            flood.append(s)
        nbd_st = srv.stats("nbd")
        assert srv.wait(lambda: nbd_st["tcp_accepted"] == 256 and srv.server.partial_bytes == 256 * 14)
        nfs = srv.connect("nfs")
        assert _null_over(nfs).ok
        _nbd_and_iscsi_served(srv)  # the 257th NBD connection closes the flooding address's oldest
        assert nbd_st["tcp_close_conn_limit"] == 1 and len(srv.server.services["nbd"].conns) == 255  # the client left
        assert _closed_by_server(flood[0]) and not _closed_by_server(flood[1], 0.2)
        assert srv.server.partial_bytes == 255 * 14
        snap = srv.server.snapshot()
        assert snap["nbd"]["server"]["tcp_peers"] == 1 and snap["nbd"]["server"]["partial_bytes"] == 255 * 14


def test_idle_sweep_closes_idle_handshakes_and_unanswered_iscsi_sessions_keeps_nbd_transmission():
    """Sweeps every 0.3 s: an idle NFS connection and an NBD connection idle in its handshake go
    after one whole idle period; a logged-in iSCSI session that does not answer the NOP-In ping
    goes one sweep later; an NBD session in transmission is kept (TCP keepalive covers it)."""
    with served(conn_age_period_s=0.3) as srv:
        nfs = srv.connect("nfs")
        hs = srv.connect("nbd")  # greeting sent, never answered
        n = srv.nbd_client()
        i = srv.iscsi_client()   # logged in, then silent: it reads nothing, so it answers no ping
        keep = n.d.sock
        assert srv.wait(lambda: srv.server.stats["tcp_close_idle"] == 1 and srv.stats("nbd")["tcp_close_idle"] == 1)
        assert srv.wait(lambda: srv.stats("iscsi")["tcp_close_idle"] == 1)
        assert _closed_by_server(nfs) and _closed_by_server(hs)
        c = srv.iscsi.counters
        assert c["nopin_pings"] == 1 and c["close_idle_nopin_unanswered"] == 1 and srv.stats("iscsi")["tcp_idle_probes"] == 1
        assert srv.nbd.counters["close_handshake_idle"] == 1
        sweeps = srv.server.stats["tcp_age_sweeps"]
        assert srv.wait(lambda: srv.server.stats["tcp_age_sweeps"] >= sweeps + 3)
        assert len(srv.server.services["nbd"].conns) == 1 and not _closed_by_server(keep, 0.2)
        assert keep.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0  # the client's own socket
        (sc,) = srv.server.services["nbd"].conns.values()
        assert sc.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert n.read(0, 4096) == bytes(4096)  # the kept session still serves
        n.close()
        i.d.sock.close()


def test_a_connection_that_never_reads_its_replies_does_not_stall_the_others():
    """An NBD client queues 64 READs of 1 MiB and reads nothing: its replies fill the kernel's
    buffers, then max_tcp_outbuf_bytes, and the server stops reading it (tcp_read_paused: four more
    requests stay unread) without closing it; other NBD, iSCSI and NFS clients are served meanwhile.
    Once it reads, every reply arrives and the paused requests are served."""
    with served() as srv:
        hog = srv.connect("nbd", "127.0.0.2")
        _nbd_to_transmission(hog)
        hog.sendall(b"".join(nbd.encode_request(nbd.NBD_CMD_READ, h, 0, 1 << 20) for h in range(64)))
        st, c = srv.stats("nbd"), srv.nbd.counters
        assert srv.wait(lambda: st["tcp_read_paused"] == 1 and c["NBD_CMD_READ"] == 64)
        assert srv.server.outbuf_bytes >= srv.server.max_tcp_outbuf_bytes
        hog.sendall(b"".join(nbd.encode_request(nbd.NBD_CMD_READ, h, 0, 1 << 20) for h in range(64, 68)))
        _nbd_and_iscsi_served(srv)
        assert _null_over(srv.connect("nfs")).ok
        assert c["NBD_CMD_READ"] == 64 + 1  # the other NBD client's one READ; the hog's four wait
        assert srv.server.snapshot()["nbd"]["server"]["tcp_connections"] == 1 and "tcp_close_reset" not in st
        got = 0  # now the hog reads: everything arrives, reading resumes, the four are served
        while got < 68 * ((1 << 20) + 16):
            d = hog.recv(1 << 20)
            assert d
            got += len(d)
        assert got == 68 * ((1 << 20) + 16) and c["NBD_CMD_READ"] == 69
        assert srv.wait(lambda: st["tcp_read_resumed"] >= 1 and srv.server.outbuf_bytes == 0)


def test_nbd_replies_are_held_for_the_service_time_on_the_servers_clock():
    """--write-latency-ms for NBD, on an injected clock: the socket layer holds each reply until
    ``write_latency_s`` after its request, in order, and sends it at that instant -- not before."""
    ns = f"nast{os.getpid() % 100000}"
    nsutil.create_netns(ns)
    now = [100.0]
    server = cl = None
    try:
        with nsutil.entered(ns):
            store = _loopback_and_store()
            server = NasServer(NasCore(store), "127.0.0.1", 0, None, write_latency_s=0.05, clock=lambda: now[0])
            nt = NbdTarget(store)
            port = server.add_stream_listener("nbd", "127.0.0.1", 0, lambda peer, local: nt.connect(peer))
            cl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            cl.settimeout(5)
            cl.connect(("127.0.0.1", port))

        def pump(until):
            for _ in range(200):
                if until():
                    return True
                for key, mask in server.sel.select(timeout=0.01):
                    key.data(mask)
            return until()

        def arrived() -> bytes:
            got = b""
            while select.select([cl], [], [], 0.05)[0]:
                d = cl.recv(65536)
                if not d:
                    break
                got += d
            return got

        st = server.services["nbd"].stats
        assert pump(lambda: st["tcp_accepted"] == 1)
        assert len(arrived()) == 18  # the greeting is not a reply to a request: sent at once
        cl.sendall((nbd.NBD_FLAG_C_FIXED_NEWSTYLE | nbd.NBD_FLAG_C_NO_ZEROES).to_bytes(4, "big")
                   + nbd.encode_option(nbd.NBD_OPT_EXPORT_NAME, b"swap/img"))
        assert pump(lambda: nt.counters["transmission_entered"] == 1)
        assert arrived() == b"" and server.outbuf_bytes == 10
        now[0] = 100.0499
        assert server._send_due() > 0 and arrived() == b""
        now[0] = 100.05
        server._send_due()
        assert len(arrived()) == 10
        now[0] = 101.0  # a WRITE, then a FLUSH 10 ms later: replies due at 101.05 and 101.06
        cl.sendall(nbd.encode_request(nbd.NBD_CMD_WRITE, 7, 0, 4096) + b"w" * 4096)
        assert pump(lambda: nt.counters["NBD_CMD_WRITE"] == 1)
        now[0] = 101.01
        cl.sendall(nbd.encode_request(nbd.NBD_CMD_FLUSH, 8))
        assert pump(lambda: nt.counters["NBD_CMD_FLUSH"] == 1)
        assert arrived() == b"" and st["tcp_replies_delayed"] == 3
        now[0] = 101.0499
        server._send_due()
        assert arrived() == b""
        now[0] = 101.055
        server._send_due()
        assert arrived() == nbd.encode_simple_reply(0, 7)
        now[0] = 101.06
        server._send_due()
        assert arrived() == nbd.encode_simple_reply(0, 8) and server.outbuf_bytes == 0
    finally:
        if cl is not None:
            cl.close()
        if server is not None:
            server.close()
        nsutil.remove_netns(ns)
