"""The NAS server's socket layer: UDP, and TCP for every stream protocol (NFS/MOUNT/portmap with
record marking, NBD, iSCSI), around sans-I/O cores; one selector loop.

Invariant owned here: this is the only part of the server that touches sockets or the clock. Each
UDP datagram is one call. Every TCP connection, whatever its protocol, is a ``_Conn`` around a
connection core with ``initial()``, ``feed(data, now) -> bytes``, ``eof(now)``, ``closed`` /
``close_reason``, ``buffered_bytes()`` and ``idle(now)`` (``_RpcConn`` is NFS's: record marking
around ``NasCore.handle``), and goes through one path: accept, limits, reading, back-pressure,
ageing, closing. Replies go back on the same connection in order. Every connection closed by the
server is counted with its reason (``tcp_close_<reason>``) in its protocol's ``server`` counters.

No peer can hold a resource so as to deny service to the others; each limit is a named figure,
shown under ``server.limits`` in ``snapshot``:
- ``max_connections`` (256) *per protocol*: at the limit, a new connection is accepted and the
  *oldest* connection of that protocol is closed (``tcp_close_conn_limit``) with a rate-limited
  warning, as Linux's ``svc_check_conn_limits`` does ("too many open connections"). The count is
  per protocol because Linux keeps it per service: each ``svc_serv`` (nfsd, lockd, ...) has its
  own ``sv_tmpcnt`` and limit, and LIO and nbd-server are not svc services at all -- so a flood
  of NFS connections cannot close an iSCSI session, nor an NBD flood an NFS mount. Unlike Linux,
  the oldest is taken among the connections of the address holding the most, so a flood from one
  address closes its own connections first.
- ``conn_age_period_s`` (360 s, Linux's ``svc_conn_age_period``): every period, a connection that
  received nothing during the whole previous period is offered to its core's ``idle(now)``:
  NFS closes it (``tcp_close_idle``), as ``svc_age_temp_xprts`` does with ``XPT_OLD``: idle for
  between one and two periods. NBD and iSCSI close a connection idle in their handshake/login;
  an iSCSI session in full feature phase gets a NOP-In ping first and is closed only if the next
  sweep still finds it silent (as LIO's nopin timeout); an NBD session in transmission is kept
  (the protocol has no ping; no NBD server closes idle sessions): every accepted socket has TCP
  keepalive (idle one period, 4 probes a quarter period apart), so a vanished peer is reset.
- ``max_partial_bytes_total`` (64 MiB): what all connections of all protocols hold of unfinished
  input together (NFS records, NBD requests and WRITE payloads, iSCSI PDUs, login text and
  received Data-Out of open tasks; each core bounds its own per connection: ``max_record_bytes``
  closes an NFS connection, ``tcp_close_record_too_big``; NBD's ``max_payload_bytes`` and iSCSI's
  MaxRecvDataSegmentLength / ``MAX_TASK_BUFFER_BYTES`` are the targets'). Over the total, the
  connection holding the most is closed (``tcp_close_partial_bytes_total``).
- ``max_tcp_outbuf_bytes`` per connection and ``max_tcp_outbuf_total_bytes`` for all: replies
  queued (not yet sent, or held for the service time) count; a connection with replies queued
  stops being read (``tcp_read_paused``) while its own exceed the first or all exceed the second,
  until they drain (``tcp_read_resumed``); connections with nothing queued keep being read.
- The DRC's per-peer share and the store's image count are the core's (``drc``, ``limits``).
"""

from __future__ import annotations

import errno
import heapq
import os
import selectors
import socket
import sys
import time
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
TCP_KEEPALIVE_PROBES = 4  # unanswered keepalive probes, a quarter period apart, before the kernel resets
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


class _RpcConn:
    """NFS/MOUNT/portmap over TCP as a connection core: RFC 5531 record marking around
    ``NasCore.handle``, one call per record, replies framed in order."""

    def __init__(self, server: "NasServer", peer: tuple):
        self.server, self.peer = server, peer
        self.rm = rpc.RecordReassembler(MAX_RECORD_BYTES)
        self.closed = False
        self.close_reason = ""

    def initial(self) -> bytes:
        return b""

    def buffered_bytes(self) -> int:
        return self.rm.buffered_bytes()

    def feed(self, data: bytes, now: float) -> bytes:
        srv = self.server
        try:
            records = self.rm.feed(data)
        except rpc.RecordError as e:
            srv.log(f"{self.peer[0]}:{self.peer[1]} {e}")
            self.closed, self.close_reason = True, "record_too_big"
            return b""
        out = bytearray()
        for rec in records:
            srv.stats["tcp_records_in"] += 1
            t0 = time.perf_counter()
            replies = srv.core.handle(rec, self.peer, now, "tcp")
            srv.core.observe_latency(srv.core.last_label, time.perf_counter() - t0)
            for r in replies:
                out += rpc.frame_record(r)
                srv.stats["tcp_records_out"] += 1
        return bytes(out)

    def eof(self, now: float) -> None:
        self.closed, self.close_reason = True, "peer_closed"

    def idle(self, now: float) -> None:
        """svc_age_temp_xprts: a connection idle for a whole period is closed (clients reconnect)."""
        return None


class _Service:
    """One TCP protocol's listener and its connections (Linux: one ``svc_serv``'s temporary
    transports, ``sv_tempsocks`` in accept order, counted apart from every other service's)."""

    def __init__(self, proto: str, connect, stats: Counter, delayed: bool):
        self.proto = proto
        self.connect = connect          # (peer, local) -> connection core
        self.stats = stats
        self.delayed = delayed          # replies held for write_latency_s (NFS, NBD, iSCSI: the disk)
        self.conns: dict[socket.socket, _Conn] = {}  # in accept order: the first is the oldest
        self.conns_by_addr: Counter = Counter()
        self.port = 0


class _Conn:
    """One TCP connection of any protocol around its sans-I/O connection core."""
    __slots__ = ("sock", "peer", "svc", "core", "out", "queued", "queued_bytes", "held", "reading", "old", "open",
                 "events")

    def __init__(self, sock: socket.socket, peer: tuple, svc: _Service, core):
        self.sock, self.peer, self.svc, self.core = sock, peer, svc, core
        self.out = bytearray()
        self.queued: deque = deque()   # (due, bytes): replies held for the service time
        self.queued_bytes = 0
        self.held = 0                  # core.buffered_bytes() as last counted in the server's total
        self.reading = True
        self.old = False               # Linux's XPT_OLD: set by each age sweep, cleared by data received
        self.open = True
        self.events = 0                # what the selector watches; 0: not registered

    def pending(self) -> int:
        """Reply bytes not yet handed to the kernel: queued for the service time or unsent."""
        return len(self.out) + self.queued_bytes


class NasServer:
    def __init__(self, core: NasCore, bind: str = "0.0.0.0", port: int = 2049, pmap_port: int | None = 111,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, log=None, write_latency_s: float = 0.0,
                 conn_age_period_s: float = CONN_AGE_PERIOD_S, clock=time.monotonic):
        self.core = core
        self.clock = clock  # seconds, monotonic; the only clock of the socket layer (tests inject one)
        # The appliance's service time for an NFS call (UDP or TCP) and an NBD/iSCSI request (its disk, its
        # queue): the reply leaves this long after the call was handled, without holding up other
        # calls (a timer heap, not a sleep), so the client's slot table -- not this process --
        # bounds the rate. Makes a run's writeback rate a stated parameter instead of whatever
        # fdatasync costs on the host.
        self.write_latency_s = write_latency_s
        self._delayed: list = []   # (due, seq, sock, reply, peer): UDP
        self._stream_due: list = []  # (due, seq, conn): TCP connections with replies held
        self._seq = 0
        self.log = log or (lambda s: None)
        self.sel = selectors.DefaultSelector()
        self.stats: Counter = Counter()
        self.max_connections = max_connections
        self.conn_age_period_s = conn_age_period_s
        self.max_partial_bytes_total = MAX_PARTIAL_BYTES_TOTAL
        self.max_tcp_outbuf_bytes = MAX_TCP_OUTBUF_BYTES
        self.max_tcp_outbuf_total_bytes = MAX_TCP_OUTBUF_TOTAL_BYTES
        self.partial_bytes = 0  # every connection's unfinished input, all protocols
        self.outbuf_bytes = 0  # every connection's queued reply bytes, all protocols
        self._next_age = self.clock() + conn_age_period_s
        self._conn_warn_t = float("-inf")
        self.udp: list[socket.socket] = []
        self.listeners: list[socket.socket] = []
        self.services: dict[str, _Service] = {}
        self._buf = bytearray(UDP_MAX_DATAGRAM_BYTES)
        self.running = True
        self.aoe = None            # an AoePort when --aoe-interface is given: same loop, same store
        self.nfs = self.services["nfs"] = _Service("nfs", lambda peer, local: _RpcConn(self, peer), self.stats, True)
        ports = [port] + ([pmap_port] if pmap_port else [])
        for p in ports:
            self._open(bind, p)
        self.port = self.nfs.port = self.udp[0].getsockname()[1]
        self.core.nfs_port = self.core.mount_port = self.port
        self.stream_ports: dict[str, int] = {}

    @property
    def conns(self) -> dict:
        """NFS's TCP connections (accept order)."""
        return self.nfs.conns

    @property
    def conns_by_addr(self) -> Counter:
        return self.nfs.conns_by_addr

    def all_conns(self) -> list[_Conn]:
        return [c for svc in self.services.values() for c in svc.conns.values()]

    # -- block protocols over TCP (NBD, iSCSI) ------------------------------------------------
    def add_stream_listener(self, proto: str, bind: str, port: int, connect) -> int:
        """Listen on TCP ``port`` for ``proto``; ``connect(peer, local)`` makes a connection core.
        Replies leave ``write_latency_s`` after the request that caused them (the same stated
        service time as UDP NFS), in order, without holding up other connections. The connections
        go through the same limits as NFS's (module docstring), counted under ``proto``."""
        svc = self.services[proto] = _Service(proto, connect, Counter(), True)
        svc.port = self.stream_ports[proto] = self._listen(bind, port, svc)
        return svc.port

    def _listen(self, bind: str, port: int, svc: _Service) -> int:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((bind, port))
        t.listen(128)
        t.setblocking(False)
        self.listeners.append(t)
        self.sel.register(t, selectors.EVENT_READ, lambda m, s=t: self._on_accept(s, svc))
        return t.getsockname()[1]

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
        self._listen(bind, port, self.nfs)

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
            replies = self.core.handle(msg, peer, self.clock(), "udp")
            self.core.observe_latency(self.core.last_label, time.perf_counter() - t0)
            if self.write_latency_s > 0 and replies:
                due = self.clock() + self.write_latency_s
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

    # -- TCP, every protocol -------------------------------------------------------------------
    def _on_accept(self, lsock: socket.socket, svc: _Service) -> None:
        while True:
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                svc.stats["tcp_accept_errors"] += 1
                self.log(f"{svc.proto} accept failed: {e}")
                return
            if len(svc.conns) >= self.max_connections:
                if not svc.conns:  # max_connections 0: TCP is off
                    svc.stats["tcp_close_too_many_connections"] += 1
                    sock.close()
                    continue
                self._close_oldest(svc, peer)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._set_keepalive(sock)
            c = _Conn(sock, peer, svc, svc.connect(peer, sock.getsockname()))
            svc.conns[sock] = c
            svc.conns_by_addr[peer[0]] += 1
            svc.stats["tcp_accepted"] += 1
            greeting = c.core.initial()
            if greeting:
                self._queue_reply(c, greeting, self.clock(), delay=False)
            self._flush(c)

    def _set_keepalive(self, sock: socket.socket) -> None:
        """TCP keepalive after one idle period, TCP_KEEPALIVE_PROBES probes a quarter period apart."""
        period = max(1, int(self.conn_age_period_s))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, min(period, 32767))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, min(max(1, period // 4), 32767))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPALIVE_PROBES)

    def _close_oldest(self, svc: _Service, newcomer: tuple) -> None:
        """svc_check_conn_limits: make room by closing the oldest connection of the busiest address."""
        addr, held = svc.conns_by_addr.most_common(1)[0]
        victim = next(c for c in svc.conns.values() if c.peer[0] == addr)
        now = self.clock()
        if now - self._conn_warn_t >= CONN_LIMIT_WARN_INTERVAL_S:
            self._conn_warn_t = now
            self.log(f"too many open connections ({svc.proto}: {len(svc.conns)}, max_connections "
                     f"{self.max_connections}): {newcomer[0]}:{newcomer[1]} accepted, closing the oldest of "
                     f"{addr}'s {held} ({victim.peer[0]}:{victim.peer[1]}); raise --max-connections if this is expected")
        else:
            svc.stats["tcp_conn_limit_warnings_suppressed"] += 1
        self._close(victim, "conn_limit")

    def age_temp_xprts(self, now: float | None = None) -> int:
        """One sweep of Linux's ``svc_age_temp_xprts`` over every protocol's connections: a
        connection that received nothing since the previous sweep is offered to its core's
        ``idle(now)`` (None: close it, ``tcp_close_idle``; bytes: a probe to send, the connection
        stays marked); the others are marked old. Returns how many were closed."""
        now = self.clock() if now is None else now
        self.stats["tcp_age_sweeps"] += 1
        closed = 0
        for c in self.all_conns():
            if not c.old:
                c.old = True
                continue
            probe = c.core.idle(now)
            if probe is None:
                self._close(c, "idle")
                closed += 1
            elif probe:
                c.svc.stats["tcp_idle_probes"] += 1
                self._queue_reply(c, probe, now, delay=False)
                self._flush(c)
        return closed

    def _close(self, c: _Conn, reason: str) -> None:
        if not c.open:
            return
        c.open = False
        svc = c.svc
        svc.stats["tcp_close_" + reason] += 1
        svc.conns.pop(c.sock, None)
        svc.conns_by_addr[c.peer[0]] -= 1
        if svc.conns_by_addr[c.peer[0]] <= 0:
            del svc.conns_by_addr[c.peer[0]]
        self.partial_bytes -= c.held
        self.outbuf_bytes -= c.pending()
        c.held = 0
        if c.events:
            c.events = 0
            self.sel.unregister(c.sock)
        c.sock.close()

    def _queue_reply(self, c: _Conn, reply: bytes, now: float, delay: bool) -> None:
        """Reply bytes onto the connection: held for ``write_latency_s`` (after the last held one,
        so replies stay in order) or straight to the send buffer."""
        self.outbuf_bytes += len(reply)
        if delay and self.write_latency_s > 0:
            due = max(now + self.write_latency_s, c.queued[-1][0] if c.queued else 0.0)
            c.queued.append((due, reply))
            c.queued_bytes += len(reply)
            self._seq += 1
            heapq.heappush(self._stream_due, (due, self._seq, c))
            c.svc.stats["tcp_replies_delayed"] += 1
        elif c.queued:  # behind replies still held: keep the order
            c.queued.append((c.queued[-1][0], reply))
            c.queued_bytes += len(reply)
        else:
            c.out += reply

    def _on_conn(self, c: _Conn, mask: int) -> None:
        if not c.open:
            return
        if mask & selectors.EVENT_READ and c.reading and not c.core.closed:
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                c.core.eof(self.clock())
                self._close(c, "reset" if e.errno in (errno.ECONNRESET, errno.ETIMEDOUT) else "recv_error")
                return
            if data is not None:
                now = self.clock()
                if not data:
                    c.core.eof(now)
                    self._close(c, "peer_closed")
                    return
                c.old = False
                reply = c.core.feed(data, now)
                held = c.core.buffered_bytes()
                self.partial_bytes += held - c.held
                c.held = held
                if reply:
                    self._queue_reply(c, reply, now, delay=c.svc.delayed)
                if self.partial_bytes > self.max_partial_bytes_total:
                    hog = max(self.all_conns(), key=lambda x: x.held)
                    self.log(f"{hog.svc.proto} {hog.peer[0]}:{hog.peer[1]} closed: unfinished input of all connections "
                             f"{self.partial_bytes} bytes > max_partial_bytes_total {self.max_partial_bytes_total}; "
                             f"it held {hog.held}")
                    self._close(hog, "partial_bytes_total")
                    if hog is c:
                        return
        self._flush(c)

    def _flush(self, c: _Conn) -> None:
        """Send what the kernel takes; close once the core is done and everything is out; read
        only while this connection's and all connections' queued replies are under their limits."""
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
        if c.core.closed and not c.out and not c.queued:
            self._close(c, c.core.close_reason or "closed")
            return
        was = c.reading
        pending = c.pending()
        c.reading = not pending or (pending < self.max_tcp_outbuf_bytes
                                    and self.outbuf_bytes < self.max_tcp_outbuf_total_bytes)
        if was != c.reading:
            c.svc.stats["tcp_read_paused" if not c.reading else "tcp_read_resumed"] += 1
        ev = (selectors.EVENT_READ if c.reading and not c.core.closed else 0) | (selectors.EVENT_WRITE if c.out else 0)
        if ev == c.events:
            return
        if ev == 0:  # paused with every reply held for the service time: the timer heap wakes it
            self.sel.unregister(c.sock)
        elif c.events == 0:
            self.sel.register(c.sock, ev, lambda m, c=c: self._on_conn(c, m))
        else:
            self.sel.modify(c.sock, ev, lambda m, c=c: self._on_conn(c, m))
        c.events = ev

    # -- loop --------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        snap = self.core.snapshot()
        snap["server"] = dict(self.stats, tcp_connections=len(self.nfs.conns), port=self.port,
                              tcp_peers=len(self.nfs.conns_by_addr), partial_bytes=self.partial_bytes,
                              outbuf_bytes=self.outbuf_bytes, limits=self.limits())
        if self.aoe is not None:
            snap["aoe"] = self.aoe.snapshot()
        for proto, svc in self.services.items():
            if svc is not self.nfs:
                conns = svc.conns.values()
                snap.setdefault(proto, {})["server"] = dict(
                    svc.stats, port=svc.port, tcp_connections=len(svc.conns), tcp_peers=len(svc.conns_by_addr),
                    partial_bytes=sum(c.held for c in conns), outbuf_bytes=sum(c.pending() for c in conns))
        return snap

    def limits(self) -> dict:
        """Every per-connection and per-peer bound of the socket layer (see the module docstring)."""
        return {"max_connections": self.max_connections, "max_connections_scope": "per_protocol",
                "conn_age_period_s": self.conn_age_period_s,
                "conn_limit_warn_interval_s": CONN_LIMIT_WARN_INTERVAL_S, "max_record_bytes": MAX_RECORD_BYTES,
                "max_partial_bytes_total": self.max_partial_bytes_total,
                "max_tcp_outbuf_bytes": self.max_tcp_outbuf_bytes,
                "max_tcp_outbuf_total_bytes": self.max_tcp_outbuf_total_bytes,
                "tcp_keepalive_probes": TCP_KEEPALIVE_PROBES}

    def _send_due(self, now: float | None = None) -> float:
        """Send the delayed replies that are due; return the select timeout until the next one."""
        q = self._delayed
        now = self.clock() if now is None else now
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
            if not c.open:
                continue
            while c.queued and c.queued[0][0] <= now:
                _d, reply = c.queued.popleft()
                c.queued_bytes -= len(reply)
                c.out += reply
            self._flush(c)
        dues = [h[0][0] for h in (q, sq) if h]
        return min(0.5, max(0.0, min(dues) - now)) if dues else 0.5

    def run(self, should_stop=lambda: False) -> None:
        while self.running and not should_stop():
            now = self.clock()
            if now >= self._next_age:
                self.age_temp_xprts(now)
                self._next_age = now + self.conn_age_period_s
            timeout = min(self._send_due(), max(0.0, self._next_age - now))
            if self.aoe is not None:
                timeout = min(timeout, max(0.0, self.aoe.send_due()))
            for key, mask in self.sel.select(timeout=timeout):
                key.data(mask)

    def close(self) -> None:
        if self.aoe is not None:
            self.aoe.close()
        for c in self.all_conns():
            self._close(c, "server_shutdown")
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
