"""The NAS side of the in-memory wire over TCP: RPC records served from a ``client_agent`` Stack's
TCP (the agent's own TCP, reused), so TCP scenarios replay exactly from their seed.

``StackRpcServer(stack, ports)`` listens on each port (NFS 2049 and portmap 111: NasCore answers
every program on every port, as nas-server does), accepts every connection, reassembles records
(protocols.rpc.RecordReassembler, bounded: a record over the limit closes the connection) and
hands them out from ``pump(now)`` as ``(record, peer, conn)``; ``reply(conn, data, now)`` frames
a reply and queues it on that connection (bytes the socket cannot take yet are pushed on later
pumps). ``restart(now)`` is a NAS process dying: every connection reset, no listener until
``listen()`` -- a SYN meanwhile gets a RST, as from a host whose server is down.

Sans-I/O like the stack: the caller polls the stack, then pumps, and arms its timer at
``stack.next_deadline()``.
"""

from __future__ import annotations

import socket as _pysocket

from protocols import rpc


class _Conn:
    __slots__ = ("sk", "peer", "rm", "tx")

    def __init__(self, sk) -> None:
        self.sk = sk
        self.peer = sk.getpeername()
        self.rm = rpc.RecordReassembler()
        self.tx = bytearray()


class StackRpcServer:
    def __init__(self, stack, ports=(2049, 111), backlog: int = 64) -> None:
        self.stack = stack
        self.ports = tuple(ports)
        self.backlog = backlog
        self.listeners: list = []
        self.conns: list[_Conn] = []
        self.counters = {"accepted": 0, "records": 0, "replies": 0, "record_errors": 0,
                         "closed_by_peer": 0, "reset_at_restart": 0}
        self.listen()

    def listen(self) -> None:
        for port in self.ports:
            ln = self.stack.tcp_socket()
            ln.bind(("0.0.0.0", port))
            ln.listen(self.backlog)
            self.listeners.append(ln)

    def restart(self, now: float) -> None:
        """The server process died: listeners closed, every connection reset (RST)."""
        for c in self.conns:
            c.sk.abort(now)
            self.counters["reset_at_restart"] += 1
        self.conns = []
        for ln in self.listeners:
            ln.close(now)
        self.listeners = []

    def pump(self, now: float) -> list:
        """Accept, read, push pending replies; the complete records received, in order."""
        for ln in self.listeners:
            while (sk := ln.accept()) is not None:
                self.conns.append(_Conn(sk))
                self.counters["accepted"] += 1
        out = []
        keep = []
        for c in self.conns:
            if c.tx:
                self._flush(c, now)
            alive = True
            while True:
                data = c.sk.recv(now)
                if data is None:
                    break
                if not isinstance(data, bytes) or not data:
                    alive = False                       # FIN or error: close our side too
                    self.counters["closed_by_peer"] += 1
                    c.sk.close(now)
                    break
                try:
                    recs = c.rm.feed(data)
                except rpc.RecordError:
                    self.counters["record_errors"] += 1
                    c.sk.abort(now)
                    alive = False
                    break
                for r in recs:
                    self.counters["records"] += 1
                    out.append((r, c.peer, c))
            if alive:
                keep.append(c)
        self.conns = keep
        return out

    def reply(self, conn: _Conn, data: bytes, now: float) -> None:
        if conn not in self.conns:
            return                                      # the connection is gone: reply lost
        conn.tx += rpc.frame_record(data)
        self.counters["replies"] += 1
        self._flush(conn, now)

    @staticmethod
    def _flush(c: _Conn, now: float) -> None:
        while c.tx:
            n = c.sk.send(memoryview(c.tx), now)
            if n <= 0:
                return
            del c.tx[:n]

    def snapshot(self) -> dict:
        return {**self.counters, "connections": [
            {"peer": f"{_pysocket.inet_ntoa(_pysocket.inet_aton(c.peer[0]))}:{c.peer[1]}",
             "unsent": len(c.tx)} for c in self.conns]}
