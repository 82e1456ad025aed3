"""Socket transports for RPC (net/sunrpc/xprtsock.c): UDP, and TCP with record marking.

Invariants owned here:
- SOCK_MEMALLOC: ``set_memalloc(True)`` marks the socket (xs_set_memalloc, swap only) and makes
  the transport a swapper (RPC buffers with __GFP_MEMALLOC); the mark is re-applied on every
  ``reconnect()`` (a new socket, xs_reconnect) -- unless ``bugs.nfs_reconnect_unmarked`` puts
  back the pre-2022 loss. ``set_memalloc(False)`` clears both.
- UDP: the socket's ``rcvbuf`` = (slots + 1) x truesize of one reply frame, enough for every
  reply the slot table can provoke plus one late duplicate. One receive task (``rpciod-rx``)
  reads datagrams and completes calls by xid; it allocates nothing.
- Retransmit policy (``UDP_TIMEOUT``): the first timeout ``timeo_s``, doubled after each up to
  ``timeo_max_s``, ``retrans`` retransmissions before a major timeout (the mount's
  timeo/retrans, as today's runs use them).
- TCP (``XsTcp``): one connection at a time, calls framed with record marking (RFC 5531 §11,
  protocols.rpc), replies reassembled from the stream and completed by xid. SOCK_MEMALLOC is set
  on every new socket *before* it connects (xs_tcp_finish_connecting), so the SYN-ACK may come
  from the reserve; the connect and every transmit of a swapper transport run under
  PF_MEMALLOC. A lost connection (RST, FIN, TCP giving up, a broken record) is re-established
  by the transport's worker task ("xprtiod") with xs_connect's backoff: the first connect at
  once, each reconnect ``reestablish_timeout`` after the previous attempt started, that timeout
  doubling from XS_TCP_INIT_REEST_TO (3 s) to XS_TCP_MAX_REEST_TO (300 s). Every call pending at
  a reconnect is sent again on the new connection (``connect_cookie`` changed:
  xprt_request_retransmit_after_disconnect). Retransmit policy (``tcp_timeout``): linear, as
  nfs_init_timeout_values makes it for TCP (timeo 60 s, +60 s per retry, retrans 2); the RPC
  client resends on a connected stream only at a major timeout (clnt.py), TCP recovers lost
  segments.
"""

from __future__ import annotations

import errno as _errno

from protocols import rpc

from ...bugs import BUGS as _BUGS
from ...mm.gfp import GFP_NOIO
from ...tasks import TIMEOUT, Sleep, WaitEvent
from ..core.skbuff import PAGE_SIZE, SKB_TRUESIZE_OVERHEAD
from ..ipv4.tcp import CLOSE as TCP_CLOSE
from .xprt import XPRT_CONNFAIL, XPRT_RESEND, XPRT_SEND, RpcTimeout, RpcXprt

# A reply to WRITE/COMMIT is one frame of one page; truesize as the stack charges it.
REPLY_TRUESIZE = PAGE_SIZE + SKB_TRUESIZE_OVERHEAD


def udp_timeout(timeo_s: float, timeo_max_s: float, retrans: int) -> RpcTimeout:
    return RpcTimeout(timeo_s, timeo_max_s, retrans, exponential=True)


class XsUdp(RpcXprt):
    """RPC over the agent stack's UDP to ``server_ip:port``."""

    proto = "udp"

    def __init__(self, stack, sched, server_ip: str, port: int, *, slots: int = 16, seed: int = 0,
                 timeout: RpcTimeout, on_tx=None) -> None:
        super().__init__(stack.alloc, sched, slots=slots, seed=seed, timeout=timeout)
        self.stack = stack
        self.server_ip = server_ip
        self.port = port
        self.on_tx = on_tx
        self.memalloc = False
        self.closed = False
        self.sk = None
        self._connect()
        self.rx_task = sched.spawn("rpciod-rx", self._rx_loop(), on_crash=self.task_crashed)

    # -- socket ------------------------------------------------------------------------------
    def _connect(self) -> None:
        sk = self.stack.udp_socket()
        sk.connect((self.server_ip, self.port))
        sk.rcvbuf = (self.slots + 1) * REPLY_TRUESIZE
        if self.memalloc and not _BUGS.nfs_reconnect_unmarked:   # bugs.py: the pre-2022 loss
            sk.sk_set_memalloc()
        self.sk = sk

    def reconnect(self) -> None:
        """xs_reconnect: a new socket; SOCK_MEMALLOC is set again if the transport had it."""
        old = self.sk
        self._connect()
        old.close()                      # frees its queue; clears its SOCK_MEMALLOC
        self.counters["rpc_reconnects"] += 1
        self.sched.wake(("rpc-rx-sock", id(self)))

    def set_memalloc(self, on: bool) -> None:
        """xs_set_memalloc / sk_clear_memalloc on the current socket."""
        self.memalloc = on
        self.swapper = on
        if self.sk is None:
            return
        if on:
            self.sk.sk_set_memalloc()
        else:
            self.sk.sk_clear_memalloc()

    def close(self) -> None:
        self.closed = True
        self.sk.close()
        if not self.rx_task.exited:
            self.sched.kill(self.rx_task)

    # -- transmit and receive ------------------------------------------------------------------
    def send_request(self, msg: bytes) -> int:
        """xs_udp_send_request: bytes sent or a negative errno (-ENOBUFS)."""
        rc = self.sk.send(msg, self.sched.now)
        if self.on_tx is not None:
            self.on_tx()
        return rc

    def _rx_loop(self):
        while not self.closed:
            sk = self.sk
            got = yield from sk.recvfrom_wait()
            if got is None:
                continue                   # socket replaced (reconnect) or closed
            data = got[0]
            self.complete(rpc.peek_xid(data), data)

    def socket_snapshot(self) -> dict | None:
        return self.sk.snapshot() if self.sk is not None else None


# ---------------------------------------------------------------------------------------- TCP
XS_TCP_INIT_REEST_TO = 3.0      # xprtsock.c: first reconnect delay
XS_TCP_MAX_REEST_TO = 300.0     # ... doubled up to this
XS_TCP_CONN_TO = 60.0           # how long one connect attempt may take
NFS_MAX_TCP_TIMEOUT = 600.0     # fs/nfs/client.c: to_maxval cap for TCP
XS_SEND_RETRY_S = 0.05          # a send the socket could not take (-EAGAIN/-ENOBUFS) is retried


def tcp_timeout(timeo_s: float = 60.0, retrans: int = 2) -> RpcTimeout:
    """nfs_init_timeout_values for a TCP mount: linear backoff by ``timeo_s`` up to
    timeo x (retrans + 1), at most 600 s (nfs(5): timeo=600,retrans=2 are TCP's defaults)."""
    return RpcTimeout(timeo_s, min(timeo_s * (retrans + 1), NFS_MAX_TCP_TIMEOUT), retrans,
                      exponential=False, increment_s=timeo_s)


class XsTcp(RpcXprt):
    """RPC over the agent stack's TCP to ``server_ip:port`` (see the module docstring).

    ``connected`` and ``connect_cookie`` are xprt_connected / xprt->connect_cookie;
    ``counters`` add ``connect_count`` (mountstats' connect count), ``connect_fails`` and
    ``rpc_reconnects`` (connections lost and re-established)."""

    proto = "tcp"
    stream = True

    def __init__(self, stack, sched, server_ip: str, port: int, *, slots: int = 16, seed: int = 0,
                 timeout: RpcTimeout, on_tx=None, memalloc: bool = False) -> None:
        super().__init__(stack.alloc, sched, slots=slots, seed=seed, timeout=timeout)
        self.stack = stack
        self.server_ip = server_ip
        self.port = port
        self.on_tx = on_tx
        self.memalloc = memalloc
        self.swapper = memalloc
        self.closed = False
        self.sk = None
        self.connected = False
        self.connect_cookie = 0
        self.reestablish_timeout = 0.0
        self.connect_start: float | None = None
        self._rm = rpc.RecordReassembler()
        self._txbuf = bytearray()               # record bytes the socket has not taken yet
        self._queued: set = set()               # xids of calls made while not connected
        self._kick_key = ("xs-tcp", id(self))
        self.counters.update(connect_count=0, connect_fails=0, record_errors=0)
        self.task = sched.spawn(f"xprtiod-tcp/{server_ip}:{port}", self._worker(),
                                on_crash=self.task_crashed)

    # -- the connection ------------------------------------------------------------------------
    def _new_socket(self):
        """xs_create_sock + xs_tcp_finish_connecting's settings, before connect."""
        sk = self.stack.tcp_socket()
        sk.sk_allocation = int(GFP_NOIO)            # sk->sk_allocation = GFP_NOIO
        sk.sk_use_task_frag = False
        sk.nodelay = True                           # tcp_sock_set_nodelay
        if self.memalloc and not _BUGS.nfs_reconnect_unmarked:
            sk.sk_set_memalloc()                    # xs_set_memalloc, before kernel_connect
        return sk

    def _connect(self):
        """Generator: one connect attempt after xs_connect's delay; True once established."""
        sched = self.sched
        if self.sk is not None:                     # a reconnect: back off (xs_connect)
            start = (self.connect_start or 0.0) + self.reestablish_timeout
            self.reestablish_timeout = min(max(self.reestablish_timeout * 2,
                                               XS_TCP_INIT_REEST_TO), XS_TCP_MAX_REEST_TO)
            old, self.sk = self.sk, None
            old.close(sched.now)                    # xs_reset_transport: SOCK_MEMALLOC cleared
            if start > sched.now:
                yield Sleep(start, reason=f"xs_connect delay to {self.server_ip}:{self.port}",
                            reconnect=True)
            if self.closed:
                return False
        self.connect_start = sched.now
        sk = self._new_socket()
        self.sk = sk
        alloc = self.alloc
        old = alloc.memalloc_noreclaim_save() if self.swapper else None
        try:
            rc = sk.connect((self.server_ip, self.port), sched.now)
        finally:
            if old is not None:
                alloc.memalloc_noreclaim_restore(old)
        self._tx_done()
        deadline = sched.now + min(XS_TCP_CONN_TO, self.timeout.initval_s)
        while rc == 0 and not sk.established and not sk.sk_err and sk.state != TCP_CLOSE:
            got = yield WaitEvent(sk.wait_key, until=deadline,
                                  reason=f"xs_tcp connect {self.server_ip}:{self.port}")
            if got is TIMEOUT or self.closed:
                break
        if not sk.established:
            self.counters["connect_fails"] += 1
            if sk.sk_err == _errno.ECONNREFUSED:    # RST to our SYN: soft-connect calls give up
                for xid in list(self.pending):      # (a timed-out attempt is retried: a lost SYN
                    sched.wake(self.reply_key(xid), XPRT_CONNFAIL)   # must not end a soft call)
            return False
        self.connected = True
        self.connect_cookie += 1
        self.counters["connect_count"] += 1
        self._rm = rpc.RecordReassembler()
        self._txbuf.clear()
        if self.connect_cookie > 1:
            self.counters["rpc_reconnects"] += 1
        # xprt_wake_pending_tasks: every call waiting for a reply is sent (again) on this one
        queued, self._queued = self._queued, set()
        for xid in list(self.pending):
            sched.wake(self.reply_key(xid), XPRT_SEND if xid in queued else XPRT_RESEND)
        return True

    def _disconnect(self) -> None:
        """xprt_disconnect_done: the connection is gone; the worker reconnects."""
        self.connected = False
        self._txbuf.clear()                         # a partly sent record dies with it

    def _worker(self):
        """xprtiod: connect, reconnect, read replies, push what the socket could not take."""
        sched = self.sched
        while not self.closed:
            if not self.connected:
                yield from self._connect()
                continue
            sk = self.sk
            if self._txbuf:
                self._flush()
            data = sk.recv(sched.now)
            if data is None:
                until = sched.now + XS_SEND_RETRY_S if self._txbuf else None
                yield WaitEvent(sk.wait_key, until=until,
                                reason=f"xs_tcp_data_ready {self.server_ip}:{self.port}")
                continue
            if not isinstance(data, bytes) or not data:
                self._disconnect()                  # FIN (b""), or -ECONNRESET/-ETIMEDOUT
                continue
            try:
                records = self._rm.feed(data)
            except rpc.RecordError:
                self.counters["record_errors"] += 1
                sk.abort(sched.now)
                self._tx_done()
                self._disconnect()
                continue
            for r in records:
                self.complete(rpc.peek_xid(r), r)

    def reconnect(self) -> None:
        """Force a new connection (xprt_force_disconnect): RST the current one."""
        if self.sk is not None and self.connected:
            self.sk.abort(self.sched.now)
            self._tx_done()
        self._disconnect()
        self.sched.wake(self.sk.wait_key if self.sk is not None else self._kick_key)

    # xs_set_memalloc on the current socket (if any); every later one gets it before connect
    set_memalloc = XsUdp.set_memalloc

    def close(self) -> None:
        self.closed = True
        if self.sk is not None:
            self.sk.close(self.sched.now)
            self._tx_done()
        if not self.task.exited:
            self.sched.kill(self.task)

    # -- transmit ------------------------------------------------------------------------------
    def _tx_done(self) -> None:
        if self.on_tx is not None:
            self.on_tx()

    def _flush(self) -> None:
        """Hand the socket as much of the pending records as it takes (under PF_MEMALLOC for a
        swapper transport, as xprt_transmit runs for RPC_TASK_SWAPPER tasks)."""
        buf = self._txbuf
        sk = self.sk
        alloc = self.alloc
        old = alloc.memalloc_noreclaim_save() if self.swapper else None
        try:
            while buf:
                n = sk.send(memoryview(buf), self.sched.now)
                if n <= 0:
                    break
                del buf[:n]
        finally:
            if old is not None:
                alloc.memalloc_noreclaim_restore(old)
        self._tx_done()

    def send_request(self, msg: bytes) -> int:
        """xs_tcp_send_request: the record goes behind any unsent bytes on this connection
        (never interleaved); ``len(msg)``. Not connected: nothing is sent now -- the call goes
        out when the worker has connected (it wakes every pending call)."""
        if not self.connected:
            self._queued.add(rpc.peek_xid(msg))
            return len(msg)
        self._txbuf += rpc.frame_record(msg)
        self._flush()
        if self._txbuf:
            self.sched.wake(self.sk.wait_key)       # the worker keeps pushing
        return len(msg)

    def socket_snapshot(self) -> dict | None:
        if self.sk is None:
            return None
        return {**self.sk.snapshot(), "connected": self.connected,
                "connect_cookie": self.connect_cookie,
                "reestablish_timeout_s": self.reestablish_timeout,
                "unsent_record_bytes": len(self._txbuf)}
