"""The RPC transport, independent of the socket under it (net/sunrpc/xprt.c, struct rpc_xprt).

Invariants owned here:
- Every call holds one slot of the slot table from send to completion; a task that finds no free
  slot waits on ``WaitEvent(slot key)`` and is counted in ``backlog`` (xprt_backlog). A freed slot
  wakes exactly one waiter (xprt_release -> rpc_wake_up_next); a waiter killed while woken hands
  the wakeup on. At most ``slots`` calls are on the wire.
- Every call also holds one page of RPC buffer (rpc_malloc: call header + reply buffer; bulk data
  is referenced, not copied) from call_allocate to release. For a swapper transport
  (RPC_TASK_SWAPPER) the allocation is __GFP_MEMALLOC, as ``rpc_malloc`` does: the slot table
  therefore pins up to ``slots`` reserve pages while replies are awaited -- one of the things
  min_free_kbytes must be sized for (see testbed/sim.py).
- Replies are matched by xid (``complete``); an unknown xid (a late duplicate, garbage) is counted
  ``rpc_bad_xid`` and dropped. Completion allocates nothing.
- ``timeout`` is the transport's retransmit policy (struct rpc_timeout): each socket transport
  gives its own default (xprtsock.py); the client (clnt.py) applies it.
- If the transport's own task (the receive task, xprtiod) crashes -- a bug of this program --
  the transport is dead (``dead`` names the task and the exception; ``xprt_task_crashed``
  counted): every call waiting on it is woken with ``XPRT_DEAD`` and fails with -EIO
  (clnt.py ``RpcXprtDead``), so does every later call and every task in the slot backlog. In
  Linux an oops in rpciod/xprtiod kills that worker and the calls it would have completed wait
  for ever (a hang, the oops in dmesg); here they fail as rpc_exit(task, -EIO) ends an rpc_task,
  so the run ends and names the bug (testbed/watchdog.py: outcome ``testbed_bug``).

The socket side -- connect, SOCK_MEMALLOC on every socket, send, the receive task -- is
xprtsock.py's; the calls and their retransmission are clnt.py's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ...mm.gfp import GFP_NOFS, Gfp
from ...tasks import Sleep, WaitEvent

# call_allocate(): -ENOMEM -> rpc_delay(task, HZ>>4).
ALLOC_RETRY_S = 0.0625 / 4
# rpc_malloc's mask (GFP_NOFS without direct reclaim; + __GFP_MEMALLOC for a swapper transport),
# computed once: enum.IntFlag operators cost a Python call each, per RPC.
RPC_GFP = GFP_NOFS & ~Gfp.DIRECT_RECLAIM
RPC_GFP_SWAPPER = RPC_GFP | Gfp.MEMALLOC
XID_KEPT = 16384   # > the pages of a whole scenario's writeback, for the drop explanations
# What a stream transport wakes a waiting call with after it reconnected: send it again
# (xprt_wake_pending_tasks after a new connection; rq_connect_cookie != connect_cookie).
XPRT_RESEND = object()
# ... and a call that was queued while the transport had no connection: send it, first time.
XPRT_SEND = object()
# xprt_wake_pending_tasks(xprt, -ECONNREFUSED/-ETIMEDOUT) after a failed connect: a hard call goes
# on waiting for the next attempt; a soft one with RPC_TASK_SOFTCONN fails (call_connect_status)
XPRT_CONNFAIL = object()
# The transport's task crashed (``RpcXprt.task_crashed``): the call fails with -EIO.
XPRT_DEAD = object()


class RpcSoftError(Exception):
    """A soft call gave up: ``reason`` is "ETIMEDOUT" (a major timeout) or "ECONNREFUSED" (the
    connect failed: refused, reset or timed out), or "EIO" (``RpcXprtDead``); the message says
    which server and call."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RpcXprtDead(RpcSoftError):
    """The call's transport is dead: its own task crashed (a bug of this program, xprt.py).
    ``reason`` "EIO"; ``xprt_error`` names the task and its exception. Raised for hard and soft
    calls alike."""

    def __init__(self, xprt, label: str) -> None:
        super().__init__("EIO", f"rpc {label} to {getattr(xprt, 'server_ip', '?')} port "
                                f"{getattr(xprt, 'port', '?')}: -EIO, transport dead ({xprt.dead})")
        self.xprt_error = xprt.dead


@dataclass
class RpcTimeout:
    """struct rpc_timeout: first timeout ``initval_s``; after each timeout the next is doubled
    (``exponential``) or grown by ``increment_s``, capped at ``maxval_s``; after ``retries``
    retransmissions a major timeout resets it to ``initval_s`` (xprt_adjust_timeout)."""
    initval_s: float
    maxval_s: float
    retries: int
    exponential: bool = True
    increment_s: float = 0.0

    def next(self, timeo_s: float) -> float:
        t = timeo_s * 2 if self.exponential else timeo_s + self.increment_s
        return min(t, self.maxval_s)


class RpcXprt:
    """Slot table, xids, pending calls, RPC buffers and the transport's statistics. Subclasses
    (xprtsock.py) provide ``send_request(msg) -> rc``, ``set_memalloc(on)``, ``close()``;
    ``stream`` says whether the transport is connection-oriented (the client then resends only
    at a major timeout or after a reconnect)."""

    stream = False

    def __init__(self, alloc, sched, *, slots: int, seed: int, timeout: RpcTimeout) -> None:
        if slots < 1:
            raise ValueError(f"slots={slots}: a transport needs at least one slot")
        self.alloc = alloc
        self.sched = sched
        self.slots = slots
        self.timeout = timeout
        self.swapper = False            # RPC_TASK_SWAPPER: buffers get __GFP_MEMALLOC
        self._free_slots = deque(range(slots))
        self._slot_key = ("rpc-slot", id(self))
        self._xid = (seed * 2654435761 + 0x1000) & 0x7FFF0000
        self.pending: dict[int, object] = {}
        self.xids_sent: deque = deque(maxlen=XID_KEPT)
        self.xids_replied: deque = deque(maxlen=XID_KEPT)
        self.backlog = 0
        self.dead: str | None = None    # "task: Type: message" once the transport's task crashed
        self.counters = {"rpc_calls": 0, "rpc_retrans": 0, "rpc_major_timeouts": 0,
                         "rpc_replies": 0, "rpc_bad_xid": 0, "rpc_enobufs": 0,
                         "rpc_alloc_nomem": 0, "rpc_reconnects": 0, "backlog_waits": 0,
                         "xprt_task_crashed": 0}

    def task_crashed(self, task) -> None:
        """``on_crash`` of the transport's own task (see the module docstring): the transport is
        dead; every pending call and every backlog waiter is woken to fail with -EIO."""
        self.dead = f"{task.name}: {task.error}"
        self.counters["xprt_task_crashed"] += 1
        for xid in list(self.pending):
            self.sched.wake(self.reply_key(xid), XPRT_DEAD)
        self.sched.wake(self._slot_key)

    # -- slots (xprt_reserve / xprt_release) ---------------------------------------------------
    def reserve(self, label: str):
        """Generator: a free slot, waiting in the backlog while there is none."""
        while not self._free_slots:
            self.backlog += 1
            self.counters["backlog_waits"] += 1
            try:
                yield WaitEvent(self._slot_key, reason=f"rpc slot ({label})")
            except BaseException:
                # Killed while waiting: a release may have woken this task alone (wake_one), so
                # hand a free slot's wakeup on to the next waiter instead of losing it.
                self.backlog -= 1
                if self._free_slots and self.backlog:
                    self.sched.wake_one(self._slot_key)
                raise
            self.backlog -= 1
            if self.dead is not None:
                raise RpcXprtDead(self, label)
        return self._free_slots.popleft()

    def release(self, slot: int, xid: int | None, buf) -> None:
        if xid is not None:
            self.pending.pop(xid, None)
        if buf is not None:
            self.alloc.free(buf)
        self._free_slots.append(slot)
        # One slot freed: wake one waiter (rpc_wake_up_next), not the whole backlog -- waking
        # all of them (up to kswapd's 64 writebacks) cost ~5 generator resumptions per page
        # written, most of them finding no slot and waiting again.
        if self.backlog:
            self.sched.wake_one(self._slot_key)

    @property
    def slots_in_use(self) -> int:
        return self.slots - len(self._free_slots)

    # -- buffers (call_allocate / rpc_malloc) --------------------------------------------------
    def try_alloc_buffer(self):
        """The call's RPC buffer page if the pool grants it now, else None (call_allocate's
        first attempt; ``alloc_buffer`` retries). Not a generator: no task step for the common case."""
        return self.alloc.alloc(1, RPC_GFP_SWAPPER if self.swapper else RPC_GFP, "rpc")

    def alloc_buffer(self, label: str):
        """Generator: the call's RPC buffer page, retried after ALLOC_RETRY_S while refused."""
        gfp = RPC_GFP_SWAPPER if self.swapper else RPC_GFP
        while True:
            buf = self.alloc.alloc(1, gfp, "rpc")
            if buf is not None:
                return buf
            self.counters["rpc_alloc_nomem"] += 1
            yield Sleep(self.sched.now + ALLOC_RETRY_S, reason=f"rpc_malloc ({label})")

    # -- xids and replies ------------------------------------------------------------------------
    def next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    def reply_key(self, xid: int) -> tuple:
        return ("rpc", id(self), xid)

    def complete(self, xid: int | None, data) -> bool:
        """xprt_complete_rqst: hand ``data`` to the call waiting for ``xid``. False (counted
        ``rpc_bad_xid``) if no call waits for it."""
        if xid is None or xid not in self.pending:
            self.counters["rpc_bad_xid"] += 1
            return False
        self.pending.pop(xid)
        self.counters["rpc_replies"] += 1
        self.xids_replied.append(xid)
        self.sched.wake(("rpc", id(self), xid), data)
        return True
