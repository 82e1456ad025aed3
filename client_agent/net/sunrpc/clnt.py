"""The RPC client: calls over one transport, with the transport's timeout policy
(net/sunrpc/clnt.c, struct rpc_clnt).

Invariants owned here:
- A call: reserve a slot (xprt backlog), allocate the RPC buffer, take an xid, encode, transmit;
  it completes with the reply's bytes. Hard mount (nfs(5)): a call is retransmitted on the same
  xid after the transport's timeout; after ``timeout.retries`` retransmissions a major timeout
  resets the timeout (xprt_adjust_timeout) and logs ``<prog>: server X not responding, still
  trying`` once; the first reply after that logs ``<prog>: server X OK``. A call never fails with
  an I/O error -- unless the transport is dead (its task crashed, a bug: xprt.py): then it raises
  ``RpcXprtDead`` (-EIO, as rpc_exit(task, -EIO)), before sending or when woken.
- On a stream transport (TCP, ``xprt.stream``) a minor timeout sends nothing -- TCP recovers
  lost segments; the call is sent again at a major timeout, or at once when the transport
  reconnected (it wakes the call with ``XPRT_RESEND``: the request's connection is gone).
- A soft call (``call(..., soft=True)``: RPC_TASK_SOFT | RPC_TASK_SOFTCONN, as rpcbind's client
  makes its calls) fails instead: ``RpcSoftError`` at its first major timeout (-ETIMEDOUT), or at
  once when a connect attempt is refused (RST to the SYN: -ECONNREFUSED, call_connect_status); a
  connect attempt that timed out (a lost SYN) is retried until the major timeout.
- A transmit that gets -ENOBUFS (no buffer at this context) is retried after
  ``ENOBUFS_RETRY_S`` (call_transmit_status: rpc_delay) and counted ``rpc_enobufs``: never lost.
- ``proc_counts`` counts calls by procedure label (nfsstat -c's per-procedure table).

Program-specific knowledge (what a reply means) is the caller's: fs/nfs for NFS and MOUNT.
"""

from __future__ import annotations

from typing import Callable

from ...tasks import TIMEOUT, WaitEvent
from .xprt import XPRT_CONNFAIL, XPRT_DEAD, XPRT_RESEND, XPRT_SEND, RpcSoftError, RpcXprtDead

__all__ = ["ENOBUFS_RETRY_S", "RpcClnt", "RpcSoftError", "RpcXprtDead"]

# call_transmit_status(): -ENOBUFS -> rpc_delay(task, HZ>>2), scaled down like timeo.
ENOBUFS_RETRY_S = 0.05


class RpcClnt:
    def __init__(self, xprt, *, prog_name: str = "rpc", log: Callable[[str], None] | None = None):
        self.xprt = xprt
        self.prog_name = prog_name
        self.log = log or (lambda line: None)
        self.not_responding = False
        self.proc_counts: dict[str, int] = {}

    def call(self, build: Callable[[int], bytes], label: str, *, soft: bool = False):
        """Generator: ``reply_bytes = yield from clnt.call(lambda xid: msg, "WRITE")``.
        ``soft``: raise RpcSoftError at a major timeout or a failed connect (see above)."""
        xprt = self.xprt
        c = xprt.counters
        if xprt.dead is not None:
            raise RpcXprtDead(xprt, label)
        if xprt._free_slots:
            slot = xprt._free_slots.popleft()          # xprt_reserve's fast path
        else:
            slot = yield from xprt.reserve(label)
        buf = None
        xid = None
        sched = xprt.sched
        try:
            buf = xprt.try_alloc_buffer()              # call_allocate, without a generator
            if buf is None:                            # when the pool grants the page at once
                buf = yield from xprt.alloc_buffer(label)
            if xprt.dead is not None:                  # died while the buffer was awaited
                raise RpcXprtDead(xprt, label)
            xid = xprt.next_xid()
            msg = build(xid)
            key = ("rpc", id(xprt), xid)
            xprt.pending[xid] = label
            c["rpc_calls"] += 1
            self.proc_counts[label] = self.proc_counts.get(label, 0) + 1
            to = xprt.timeout
            stream = xprt.stream
            timeo = to.initval_s
            tries = 0
            need_send = True
            deadline = 0.0
            while True:
                if need_send:
                    rc = xprt.send_request(msg)
                    if rc < 0:
                        c["rpc_enobufs"] += 1
                        got = yield WaitEvent(key, until=sched.now + ENOBUFS_RETRY_S,
                                              reason=f"rpc {label} xid {xid:#x} -ENOBUFS, retry")
                        if got is XPRT_DEAD or xprt.dead is not None:
                            raise RpcXprtDead(xprt, label)
                        if got is TIMEOUT or got is XPRT_RESEND or got is XPRT_SEND or got is XPRT_CONNFAIL:
                            continue
                        reply = got
                        break
                    xprt.xids_sent.append(xid)
                    need_send = False
                    deadline = sched.now + timeo
                got = yield WaitEvent(key, until=deadline, reason=f"rpc {label} xid {xid:#x}")
                if got is XPRT_DEAD or xprt.dead is not None:
                    raise RpcXprtDead(xprt, label)
                if got is XPRT_CONNFAIL:
                    if soft:
                        c["rpc_soft_errors"] = c.get("rpc_soft_errors", 0) + 1
                        raise RpcSoftError("ECONNREFUSED", f"{self.prog_name} {label}: connection to "
                                           f"{xprt.server_ip} port {xprt.port} refused")
                    continue                           # a hard call waits for the next attempt
                if got is XPRT_RESEND or got is XPRT_SEND:
                    need_send = True                   # (re)connected: on the new connection
                    if got is XPRT_RESEND:
                        c["rpc_retrans"] += 1
                    continue
                if got is not TIMEOUT:
                    reply = got
                    break
                need_send = True
                tries += 1
                if stream and tries <= to.retries:
                    need_send = False                  # minor timeout: TCP is retransmitting
                    timeo = to.next(timeo)
                    deadline = sched.now + timeo
                    continue
                if tries > to.retries:
                    # xprt_adjust_timeout: major timeout, timeout back to its initial value.
                    c["rpc_major_timeouts"] += 1
                    if soft:
                        c["rpc_soft_errors"] = c.get("rpc_soft_errors", 0) + 1
                        raise RpcSoftError("ETIMEDOUT", f"{self.prog_name} {label}: no reply from "
                                           f"{xprt.server_ip} port {xprt.port} within the major timeout")
                    tries = 0
                    timeo = to.initval_s
                    if not self.not_responding:
                        self.not_responding = True
                        self.log(f"{self.prog_name}: server {xprt.server_ip} not responding, "
                                 f"still trying")
                else:
                    timeo = to.next(timeo)
                c["rpc_retrans"] += 1
            if self.not_responding:
                self.not_responding = False
                self.log(f"{self.prog_name}: server {xprt.server_ip} OK")
            return reply
        finally:
            xprt.release(slot, xid, buf)
