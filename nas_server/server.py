"""The NAS server's socket layer: UDP and TCP (record marking) around ``NasCore``, one selector loop.

Invariant owned here: this is the only part of the server that touches sockets or the clock. Each
UDP datagram is one call; each TCP record is one call, and replies go back on the same connection
in order. Every connection closed by the server is counted with its reason (``tcp_close_<reason>``).

No peer can hold a resource so as to deny service to the others; each limit is a named figure,
shown under ``server.limits`` in ``snapshot``:
- ``max_connections`` (256): at the limit, a new connection is accepted and the *oldest* one is
  closed (``tcp_close_conn_limit``) with a rate-limited warning, as Linux's
  ``svc_check_conn_limits`` does ("too many open connections"). Unlike Linux, the oldest is taken
  among the connections of the address holding the most, so a flood from one address closes its
  own connections first.
- ``conn_age_period_s`` (360 s, Linux's ``svc_conn_age_period``): every period, connections that
  received nothing during the whole previous period are closed (``tcp_close_idle``), as
  ``svc_age_temp_xprts`` does with ``XPT_OLD``: idle for between one and two periods.
- ``max_record_bytes``: a record (or the part received of it) longer than a WRITE of wtmax plus
  headers closes the connection (``tcp_close_record_too_big``); ``max_partial_bytes_total``
  bounds what all connections hold of unfinished records together -- over it, the connection
  holding the most is closed (``tcp_close_partial_bytes_total``).
- ``max_tcp_outbuf_bytes`` per connection and ``max_tcp_outbuf_total_bytes`` for all: a
  connection whose replies are not read stops being read (``tcp_read_paused``) until they drain.
- The DRC's per-peer share and the store's image count are the core's (``drc``, ``limits``).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import time
import heapq
from collections import Counter, deque

from .core import TCP_MAX_IO_BYTES, NasCore
from protocols import rpc

UDP_RCVBUF_BYTES = 4 << 20  # absorbs a burst of ~128 32 KiB WRITE datagrams while we fsync
UDP_MAX_DATAGRAM_BYTES = 65535
UDP_BATCH = 64  # datagrams handled per readiness before the loop looks at other sockets
MAX_RECORD_BYTES = TCP_MAX_IO_BYTES + 4096  # a WRITE of wtmax plus RPC/NFS headers
MAX_TCP_OUTBUF_BYTES = 8 << 20  # stop reading a connection whose peer does not read its replies
MAX_TCP_OUTBUF_TOTAL_BYTES = 64 << 20  # all connections' queued replies together
MAX_PARTIAL_BYTES_TOTAL = 64 << 20  # all connections' unfinished records together
DEFAULT_MAX_CONNECTIONS = 256
CONN_AGE_PERIOD_S = 6 * 60  # Linux's svc_conn_age_period: idle connections go after 1..2 periods
CONN_LIMIT_WARN_INTERVAL_S = 5.0  # at most one "too many open connections" line per interval
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # <asm-generic/socket.h>; Python lacks the name


class RateLimitedLog:
    """stderr lines, at most ``per_s`` a second; the number suppressed is reported, not lost."""

    def __init__(self, per_s: int = 50, stream=None):
        self.per_s = per_s
        self.stream = stream or sys.stderr
        self._window = 0
        self._count = 0
        self.suppressed = 0

    def __call__(self, text: str) -> None:
        w = int(time.monotonic())
        if w != self._window:
            if self.suppressed and self._count > self.per_s:
                print(f"nas-server: ({self._count - self.per_s} log lines suppressed)", file=self.stream, flush=True)
            self._window, self._count = w, 0
        self._count += 1
        if self._count <= self.per_s:
            print(f"nas-server: {text}", file=self.stream, flush=True)
        else:
            self.suppressed += 1


class _Conn:
    __slots__ = ("sock", "peer", "rm", "out", "reading", "old")

    def __init__(self, sock: socket.socket, peer: tuple):
        self.sock = sock
        self.peer = peer
        self.rm = rpc.RecordReassembler(MAX_RECORD_BYTES)
        self.out = bytearray()
        self.reading = True
        self.old = False  # Linux's XPT_OLD: set by each age sweep, cleared by data received


class _StreamConn:
    """A TCP connection of a block protocol (NBD, iSCSI) around a sans-I/O connection core with
    ``initial()``, ``feed(data, now) -> bytes``, ``eof(now)`` and ``closed``."""
    __slots__ = ("sock", "peer", "core", "proto", "out", "queued", "reading", "queued_bytes")

    def __init__(self, sock: socket.socket, peer: tuple, core, proto: str):
        self.sock, self.peer, self.core, self.proto = sock, peer, core, proto
        self.out = bytearray()
        self.queued: deque = deque()   # (due, bytes): replies held for the service time
        self.queued_bytes = 0
        self.reading = True


class NasServer:
    def __init__(self, core: NasCore, bind: str = "0.0.0.0", port: int = 2049, pmap_port: int | None = 111,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, log=None, write_latency_s: float = 0.0,
                 conn_age_period_s: float = CONN_AGE_PERIOD_S):
        self.core = core
        # The appliance's service time for a UDP NFS call (its disk, its queue): the reply leaves
        # this long after the call was handled, without holding up other calls (a timer heap, not
        # a sleep), so the client's slot table -- not this process -- bounds the rate. Makes a
        # run's writeback rate a stated parameter instead of whatever fdatasync costs on the host.
        self.write_latency_s = write_latency_s
        self._delayed: list = []   # (due, seq, sock, reply, peer)
        self._seq = 0
        self.log = log or (lambda s: None)
        self.sel = selectors.DefaultSelector()
        self.stats: Counter = Counter()
        self.max_connections = max_connections
        self.conn_age_period_s = conn_age_period_s
        self.max_partial_bytes_total = MAX_PARTIAL_BYTES_TOTAL
        self.max_tcp_outbuf_total_bytes = MAX_TCP_OUTBUF_TOTAL_BYTES
        self.conns: dict[socket.socket, _Conn] = {}  # in accept order: the first is the oldest
        self.conns_by_addr: Counter = Counter()
        self.partial_bytes = 0  # sum of every connection's unfinished record bytes
        self.outbuf_bytes = 0  # sum of every connection's queued reply bytes
        self._next_age = time.monotonic() + conn_age_period_s
        self._conn_warn_t = float("-inf")
        self.udp: list[socket.socket] = []
        self.listeners: list[socket.socket] = []
        self._buf = bytearray(UDP_MAX_DATAGRAM_BYTES)
        self.running = True
        self.aoe = None            # an AoePort when --aoe-interface is given: same loop, same store
        ports = [port] + ([pmap_port] if pmap_port else [])
        for p in ports:
            self._open(bind, p)
        self.port = self.udp[0].getsockname()[1]
        self.core.nfs_port = self.core.mount_port = self.port
        self.streams: dict[socket.socket, _StreamConn] = {}
        self.stream_ports: dict[str, int] = {}
        self.stream_stats: dict[str, Counter] = {}
        self._stream_due: list = []  # (due, seq, conn)

    # -- block protocols over TCP (NBD, iSCSI) ------------------------------------------------
    def add_stream_listener(self, proto: str, bind: str, port: int, connect) -> int:
        """Listen on TCP ``port`` for ``proto``; ``connect(peer, local)`` makes a connection core.
        Replies leave ``write_latency_s`` after the request that caused them (the same stated
        service time as UDP NFS), in order, without holding up other connections."""
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((bind, port))
        t.listen(128)
        t.setblocking(False)
        self.listeners.append(t)
        self.stream_stats[proto] = Counter()
        self.sel.register(t, selectors.EVENT_READ, lambda m, s=t: self._on_stream_accept(s, proto, connect))
        self.stream_ports[proto] = t.getsockname()[1]
        return self.stream_ports[proto]

    def _on_stream_accept(self, lsock: socket.socket, proto: str, connect) -> None:
        st = self.stream_stats[proto]
        while True:
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                st["accept_errors"] += 1
                self.log(f"{proto} accept failed: {e}")
                return
            if len(self.conns) + len(self.streams) >= self.max_connections:
                st["close_too_many_connections"] += 1
                self.log(f"{proto} {peer[0]}:{peer[1]} refused: {len(self.streams)} connections open")
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _StreamConn(sock, peer, connect(peer, sock.getsockname()), proto)
            self.streams[sock] = c
            st["accepted"] += 1
            c.out += c.core.initial()
            self.sel.register(sock, selectors.EVENT_READ, lambda m, c=c: self._on_stream(c, m))
            self._stream_flush(c)

    def _stream_close(self, c: _StreamConn, reason: str) -> None:
        self.stream_stats[c.proto]["tcp_close_" + reason] += 1
        self.streams.pop(c.sock, None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _on_stream(self, c: _StreamConn, mask: int) -> None:
        if c.sock not in self.streams:
            return
        if mask & selectors.EVENT_READ and c.reading and not c.core.closed:
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                c.core.eof(time.monotonic())
                self._stream_close(c, "reset" if e.errno == errno.ECONNRESET else "recv_error")
                return
            if data is not None:
                now = time.monotonic()
                if not data:
                    c.core.eof(now)
                    self._stream_close(c, "peer_closed")
                    return
                reply = c.core.feed(data, now)
                if reply:
                    if self.write_latency_s > 0:
                        due = max(now + self.write_latency_s, c.queued[-1][0] if c.queued else 0.0)
                        c.queued.append((due, reply))
                        c.queued_bytes += len(reply)
                        self._seq += 1
                        heapq.heappush(self._stream_due, (due, self._seq, c))
                    else:
                        c.out += reply
        self._stream_flush(c)

    def _stream_flush(self, c: _StreamConn) -> None:
        if c.out:
            try:
                n = c.sock.send(c.out)
                del c.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self._stream_close(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "send_error")
                return
        if c.core.closed and not c.out and not c.queued:
            self._stream_close(c, "by_protocol_" + (getattr(c.core, "close_reason", "") or "closed"))
            return
        c.reading = len(c.out) + c.queued_bytes < MAX_TCP_OUTBUF_BYTES
        ev = (selectors.EVENT_READ if c.reading and not c.core.closed else 0) | (selectors.EVENT_WRITE if c.out else 0)
        self.sel.modify(c.sock, ev or selectors.EVENT_READ, lambda m, c=c: self._on_stream(c, m))

    def _open(self, bind: str, port: int) -> None:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            u.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF_BYTES)
        except PermissionError:  # not CAP_NET_ADMIN: take what rmem_max allows
            u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF_BYTES)
        u.bind((bind, port))
        port = u.getsockname()[1]  # port 0: the kernel chose; TCP uses the same number
        u.setblocking(False)
        self.udp.append(u)
        self.sel.register(u, selectors.EVENT_READ, lambda m, s=u: self._on_udp(s))
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((bind, port))
        t.listen(128)
        t.setblocking(False)
        self.listeners.append(t)
        self.sel.register(t, selectors.EVENT_READ, lambda m, s=t: self._on_accept(s))

    # -- UDP ---------------------------------------------------------------------------------
    def _on_udp(self, s: socket.socket) -> None:
        buf = self._buf
        for _ in range(UDP_BATCH):
            try:
                n, peer = s.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.stats["udp_recv_errors"] += 1
                self.log(f"UDP receive error: {e}")
                return
            self.stats["udp_datagrams_in"] += 1
            msg = bytes(buf[:n])
            t0 = time.perf_counter()
            replies = self.core.handle(msg, peer, time.monotonic(), "udp")
            self.core.observe_latency(self.core.last_label, time.perf_counter() - t0)
            if self.write_latency_s > 0 and replies:
                due = time.monotonic() + self.write_latency_s
                for r in replies:
                    self._seq += 1
                    heapq.heappush(self._delayed, (due, self._seq, s, r, peer))
                self.stats["udp_replies_delayed"] += len(replies)
                continue
            for r in replies:
                try:
                    s.sendto(r, peer)
                    self.stats["udp_datagrams_out"] += 1
                except OSError as e:
                    self.stats["udp_send_errors"] += 1
                    self.log(f"{peer[0]}:{peer[1]} UDP reply of {len(r)} bytes not sent: {e}")

    # -- TCP ---------------------------------------------------------------------------------
    def _on_accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.stats["tcp_accept_errors"] += 1
                self.log(f"accept failed: {e}")
                return
            if len(self.conns) >= self.max_connections:
                if not self.conns:  # max_connections 0: TCP is off
                    self.stats["tcp_close_too_many_connections"] += 1
                    sock.close()
                    continue
                self._close_oldest(peer)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(sock, peer)
            self.conns[sock] = c
            self.conns_by_addr[peer[0]] += 1
            self.stats["tcp_accepted"] += 1
            self.sel.register(sock, selectors.EVENT_READ, lambda m, c=c: self._on_conn(c, m))

    def _close_oldest(self, newcomer: tuple) -> None:
        """svc_check_conn_limits: make room by closing the oldest connection of the busiest address."""
        addr, held = self.conns_by_addr.most_common(1)[0]
        victim = next(c for c in self.conns.values() if c.peer[0] == addr)
        now = time.monotonic()
        if now - self._conn_warn_t >= CONN_LIMIT_WARN_INTERVAL_S:
            self._conn_warn_t = now
            self.log(f"too many open connections ({len(self.conns)}, max_connections {self.max_connections}): "
                     f"{newcomer[0]}:{newcomer[1]} accepted, closing the oldest of {addr}'s {held} "
                     f"({victim.peer[0]}:{victim.peer[1]}); raise --max-connections if this is expected")
        else:
            self.stats["tcp_conn_limit_warnings_suppressed"] += 1
        self._close(victim, "conn_limit")

    def age_temp_xprts(self) -> int:
        """One sweep of Linux's ``svc_age_temp_xprts``: close the connections that received nothing
        since the previous sweep, mark the others old. Returns how many were closed."""
        closed = 0
        for c in list(self.conns.values()):
            if c.old:
                self._close(c, "idle")
                closed += 1
            else:
                c.old = True
        return closed

    def _close(self, c: _Conn, reason: str) -> None:
        self.stats["tcp_close_" + reason] += 1
        if self.conns.pop(c.sock, None) is not None:
            self.conns_by_addr[c.peer[0]] -= 1
            if self.conns_by_addr[c.peer[0]] <= 0:
                del self.conns_by_addr[c.peer[0]]
            self.partial_bytes -= c.rm.buffered_bytes()
            self.outbuf_bytes -= len(c.out)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _update_events(self, c: _Conn) -> None:
        ev = (selectors.EVENT_READ if c.reading else 0) | (selectors.EVENT_WRITE if c.out else 0)
        if ev == 0:
            ev = selectors.EVENT_WRITE  # cannot happen (not reading implies output queued); stay safe
        self.sel.modify(c.sock, ev, lambda m, c=c: self._on_conn(c, m))

    def _on_conn(self, c: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                self._close(c, "reset" if e.errno == errno.ECONNRESET else "recv_error")
                return
            if data is not None:
                if not data:
                    self._close(c, "peer_closed")
                    return
                c.old = False
                held = c.rm.buffered_bytes()
                try:
                    records = c.rm.feed(data)
                except rpc.RecordError as e:
                    self.log(f"{c.peer[0]}:{c.peer[1]} {e}")
                    self._close(c, "record_too_big")
                    return
                self.partial_bytes += c.rm.buffered_bytes() - held
                out_before = len(c.out)
                for rec in records:
                    self.stats["tcp_records_in"] += 1
                    t0 = time.perf_counter()
                    replies = self.core.handle(rec, c.peer, time.monotonic(), "tcp")
                    self.core.observe_latency(self.core.last_label, time.perf_counter() - t0)
                    for r in replies:
                        c.out += rpc.frame_record(r)
                        self.stats["tcp_records_out"] += 1
                self.outbuf_bytes += len(c.out) - out_before
                if self.partial_bytes > self.max_partial_bytes_total:
                    hog = max(self.conns.values(), key=lambda x: x.rm.buffered_bytes())
                    self.log(f"{hog.peer[0]}:{hog.peer[1]} closed: unfinished records of all connections "
                             f"{self.partial_bytes} bytes > max_partial_bytes_total {self.max_partial_bytes_total}; "
                             f"it held {hog.rm.buffered_bytes()}")
                    self._close(hog, "partial_bytes_total")
                    if hog is c:
                        return
        if c.out:
            try:
                n = c.sock.send(c.out)
                del c.out[:n]
                self.outbuf_bytes -= n
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self._close(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "send_error")
                return
        was = c.reading
        c.reading = not c.out or (len(c.out) < MAX_TCP_OUTBUF_BYTES and self.outbuf_bytes < self.max_tcp_outbuf_total_bytes)
        if was != c.reading:
            self.stats["tcp_read_paused" if not c.reading else "tcp_read_resumed"] += 1
        self._update_events(c)

    # -- loop --------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        snap = self.core.snapshot()
        snap["server"] = dict(self.stats, tcp_connections=len(self.conns), port=self.port,
                              tcp_peers=len(self.conns_by_addr), partial_bytes=self.partial_bytes,
                              outbuf_bytes=self.outbuf_bytes, limits=self.limits())
        if self.aoe is not None:
            snap["aoe"] = self.aoe.snapshot()
        for proto, st in self.stream_stats.items():
            snap.setdefault(proto, {})["server"] = dict(
                st, port=self.stream_ports[proto], tcp_connections=sum(1 for c in self.streams.values() if c.proto == proto))
        return snap

    def limits(self) -> dict:
        """Every per-connection and per-peer bound of the socket layer (see the module docstring)."""
        return {"max_connections": self.max_connections, "conn_age_period_s": self.conn_age_period_s,
                "conn_limit_warn_interval_s": CONN_LIMIT_WARN_INTERVAL_S, "max_record_bytes": MAX_RECORD_BYTES,
                "max_partial_bytes_total": self.max_partial_bytes_total,
                "max_tcp_outbuf_bytes": MAX_TCP_OUTBUF_BYTES,
                "max_tcp_outbuf_total_bytes": self.max_tcp_outbuf_total_bytes}

    def _send_due(self) -> float:
        """Send the delayed replies that are due; return the select timeout until the next one."""
        q = self._delayed
        now = time.monotonic()
        while q and q[0][0] <= now:
            _due, _seq, s, r, peer = heapq.heappop(q)
            try:
                s.sendto(r, peer)
                self.stats["udp_datagrams_out"] += 1
            except OSError as e:
                self.stats["udp_send_errors"] += 1
                self.log(f"{peer[0]}:{peer[1]} UDP reply of {len(r)} bytes not sent: {e}")
        sq = self._stream_due
        while sq and sq[0][0] <= now:
            _due, _seq, c = heapq.heappop(sq)
            while c.queued and c.queued[0][0] <= now:
                _d, reply = c.queued.popleft()
                c.queued_bytes -= len(reply)
                c.out += reply
            if c.sock in self.streams:
                self._stream_flush(c)
        dues = [h[0][0] for h in (q, sq) if h]
        return min(0.5, max(0.0, min(dues) - now)) if dues else 0.5

    def run(self, should_stop=lambda: False) -> None:
        while self.running and not should_stop():
            now = time.monotonic()
            if now >= self._next_age:
                self.age_temp_xprts()
                self._next_age = now + self.conn_age_period_s
            timeout = min(self._send_due(), max(0.0, self._next_age - now))
            if self.aoe is not None:
                timeout = min(timeout, max(0.0, self.aoe.send_due()))
            for key, mask in self.sel.select(timeout=timeout):
                key.data(mask)

    def close(self) -> None:
        if self.aoe is not None:
            self.aoe.close()
        for c in list(self.conns.values()):
            self._close(c, "server_shutdown")
        for sc in list(self.streams.values()):
            self._stream_close(sc, "server_shutdown")
        for s in self.udp + self.listeners:
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.sel.close()


def new_verifier() -> bytes:
    """A write verifier unique to this process start (RFC 1813: changes when the server restarts)."""
    return os.urandom(8)
