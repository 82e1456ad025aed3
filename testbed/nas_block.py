"""The NAS side of the in-memory wire for block protocols: nas-server's sans-I/O NBD and iSCSI
target cores (nas_server/nbd_target.py, iscsi_target.py) served over a ``client_agent`` Stack's
own TCP, so NBD and iSCSI scenarios replay exactly from their seed, as NFS over TCP does
(testbed/nas_tcp.py).

``StackBlockServer(stack, target, port, service_s=, threads=)`` listens on ``port``, gives each
accepted connection ``target.connect(peer)`` (its greeting sent at once), feeds it what arrives
and sends what it answers. The service time: the replies of one feed leave after
``service_s`` x (requests in that feed) / ``threads``, behind the previous replies of the same
connection (in order, as nas-server's ``--write-latency-ms`` delays each connection's replies);
requests are counted from the target's own counters (``REQUEST_COUNTERS``). ``restart(now)``
is the NAS process dying: every connection reset, replies in service lost, no listener until
``listen()``.

Sans-I/O like the stack: the caller polls the stack, then ``pump(now)``, and arms its timer at
``min(stack.next_deadline(), server.next_due())``.
"""

from __future__ import annotations

import heapq

from nas_server.iscsi_target import DEFAULT_IQN_PREFIX, iqn_for

from .nas_tcp import StackRpcServer

NBD_PORT = 10809                    # IANA nbd; nas-server --nbd-port's default
ISCSI_PORT = 3260                   # IANA iscsi-target; nas-server --iscsi-port's default

# What counts as one request for the service time: NBD commands, SCSI commands.
REQUEST_COUNTERS = {"nbd": ("NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_FLUSH",
                            "NBD_CMD_WRITE_ZEROES", "NBD_CMD_TRIM"),
                    "iscsi": ("scsicmd_pdus",)}


def block_device_spec(storage: str, server: str, export: str, image: str, *, queue_depth: int = 16,
                      port: int | None = None, name: str | None = None) -> dict:
    """The agent's device spec (client_agent/host.py STORAGE_KINDS) for ``export/image`` of
    nas-server over ``storage`` (nbd: export name ``EXPORT/IMAGE``; iscsi: the target
    ``<prefix>:<export>.<image>``, LUN 0). ``name`` overrides the export name / IQN (a
    third-party target)."""
    if storage == "nbd":
        return {"kind": "nbd", "server": server, "port": port or NBD_PORT,
                "export": f"{export}/{image}" if name is None else name, "queue_depth": queue_depth}
    if storage == "iscsi":
        return {"kind": "iscsi", "server": server, "port": port or ISCSI_PORT,
                "target": iqn_for(DEFAULT_IQN_PREFIX, export, image) if name is None else name,
                "lun": 0, "queue_depth": queue_depth}
    raise ValueError(f"storage must be nbd or iscsi, got {storage!r}")


class _Conn:
    __slots__ = ("sk", "core", "tx", "busy_until")

    def __init__(self, sk, core) -> None:
        self.sk, self.core = sk, core
        self.tx = bytearray()
        self.busy_until = 0.0


class StackBlockServer:
    def __init__(self, stack, target, port: int, proto: str, *, service_s: float = 0.0,
                 threads: int = 1, backlog: int = 64) -> None:
        if proto not in REQUEST_COUNTERS:
            raise ValueError(f"proto must be nbd or iscsi, got {proto!r}")
        self.stack, self.target, self.port, self.proto = stack, target, port, proto
        self.service_s, self.threads, self.backlog = service_s, max(1, threads), backlog
        self.listener = None
        self.conns: list[_Conn] = []
        self.due: list = []                 # (time, seq, conn, epoch, bytes)
        self.seq = 0
        self.epoch = 0
        self.counters = {"accepted": 0, "feeds": 0, "requests": 0, "closed_by_peer": 0,
                         "closed_by_target": 0, "reset_at_restart": 0, "replies_lost": 0}
        self.listen()

    def listen(self) -> None:
        ln = self.stack.tcp_socket()
        ln.bind(("0.0.0.0", self.port))
        ln.listen(self.backlog)
        self.listener = ln

    def restart(self, now: float) -> None:
        """The server process died: the listener closed, every connection reset (RST)."""
        for c in self.conns:
            c.sk.abort(now)
            self.counters["reset_at_restart"] += 1
        self.conns = []
        self.counters["replies_lost"] += len(self.due)
        self.due = []
        self.epoch += 1
        if self.listener is not None:
            self.listener.close(now)
            self.listener = None

    def _requests(self) -> int:
        c = self.target.counters
        return sum(c.get(k, 0) for k in REQUEST_COUNTERS[self.proto])

    def next_due(self) -> float | None:
        return self.due[0][0] if self.due else None

    def pump(self, now: float) -> None:
        """Accept, read and feed, release replies whose service time is over, push bytes."""
        ln = self.listener
        if ln is not None:
            while (sk := ln.accept()) is not None:
                peer = sk.getpeername()
                c = _Conn(sk, self.target.connect(peer, now=now))
                c.tx += c.core.initial()
                self.conns.append(c)
                self.counters["accepted"] += 1
        while self.due and self.due[0][0] <= now:
            _t, _s, c, epoch, data = heapq.heappop(self.due)
            if epoch == self.epoch and c in self.conns:
                c.tx += data
        keep = []
        for c in self.conns:
            alive = True
            while alive:
                data = c.sk.recv(now)
                if data is None:
                    break
                if not isinstance(data, bytes) or not data:
                    c.core.eof(now)
                    self.counters["closed_by_peer"] += 1
                    c.sk.close(now)
                    alive = False
                    break
                before = self._requests()
                out = c.core.feed(data, now)
                n = self._requests() - before
                self.counters["feeds"] += 1
                self.counters["requests"] += n
                if out:
                    if self.service_s > 0 and n:
                        at = max(now, c.busy_until) + self.service_s * n / self.threads
                        c.busy_until = at
                        self.seq += 1
                        heapq.heappush(self.due, (at, self.seq, c, self.epoch, out))
                    elif c.busy_until > now:   # behind replies still in service: keep order
                        self.seq += 1
                        heapq.heappush(self.due, (c.busy_until, self.seq, c, self.epoch, out))
                    else:
                        c.tx += out
            if alive:
                self._flush(c, now)
                if c.core.closed and not c.tx and not any(d[2] is c for d in self.due):
                    self.counters["closed_by_target"] += 1
                    c.sk.close(now)
                    alive = False
            if alive:
                keep.append(c)
        self.conns = keep

    _flush = staticmethod(StackRpcServer._flush)     # push c.tx as far as the socket takes

    def snapshot(self) -> dict:
        return {**self.counters, "connections": len(self.conns), "in_service": len(self.due),
                "target": {k: v for k, v in sorted(self.target.counters.items())}}
