"""Socket transports for RPC (net/sunrpc/xprtsock.c): UDP today; TCP with record marking next.

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
  timeo/retrans, as today's runs use them). TCP's will be linear (xs_tcp_default_timeout).

Adding TCP: a class ``XsTcp(RpcXprt)`` with the same four methods (``send_request``,
``set_memalloc``, ``reconnect``, ``close``) that frames calls with record marking
(protocols.rpc) on a stream socket registered through ``net.ipv4``'s protocol table.
"""

from __future__ import annotations

from protocols import rpc

from ...bugs import BUGS as _BUGS
from ..core.skbuff import PAGE_SIZE, SKB_TRUESIZE_OVERHEAD
from .xprt import RpcTimeout, RpcXprt

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
        self.rx_task = sched.spawn("rpciod-rx", self._rx_loop())

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
        if on:
            self.sk.sk_set_memalloc()
        else:
            self.sk.sk_clear_memalloc()

    def close(self) -> None:
        self.closed = True
        self.sk.close()
        if self.rx_task.state not in ("done", "crashed", "killed"):
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
