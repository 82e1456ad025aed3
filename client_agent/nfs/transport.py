"""NFSv3 client transport over the agent's own UDP stack (sunrpc xprtsock, UDP, hard mount).

Invariants owned here:
- Every call holds one slot of the slot table from send to completion; a task that finds no free
  slot waits on ``WaitEvent(slot key)`` and is counted in ``backlog`` (xprt_backlog). At most
  ``slots`` calls are on the wire, so the socket's ``rcvbuf`` = slots x truesize of one reply
  (+ one for a late duplicate) is enough for every reply the table can provoke.
- Every call also holds one page of RPC buffer (rpc_malloc: call header + reply buffer; the WRITE
  data itself is the swapped page, referenced, not copied) from call_allocate to release. For a
  swapper transport that allocation is __GFP_MEMALLOC, as ``rpc_malloc`` does for RPC_IS_SWAPPER
  tasks: the slot table therefore pins up to ``slots`` reserve pages while replies are awaited --
  one of the things min_free_kbytes must be sized for (see testbed/sim.py).
- Hard mount (nfs(5)): a call is retransmitted on the same xid after ``timeo``; the timeout
  doubles up to ``timeo_max_s``; after ``retrans`` retransmissions a major timeout resets the
  timeout (xprt_adjust_timeout) and logs ``nfs: server X not responding, still trying`` once;
  the first reply after that logs ``nfs: server X OK``. A call never fails with an I/O error.
- A transmit that gets -ENOBUFS (no buffer at this context) is retried after
  ``ENOBUFS_RETRY_S`` (call_transmit_status: rpc_delay) and counted ``rpc_enobufs``: never lost.
- Replies are matched by xid; an unknown xid (a late duplicate, garbage) is counted
  ``rpc_bad_xid`` and dropped. The receive task allocates nothing.
- SOCK_MEMALLOC: ``set_memalloc(True)`` marks the socket (xs_set_memalloc, NFS swap only) and the
  mark is re-applied on every ``reconnect()`` (a new socket); ``set_memalloc(False)`` clears it.

Sans-I/O: time is the scheduler's ``now``; the socket is the agent stack's UdpSocket.
"""

from __future__ import annotations

import socket as _pysocket
import struct as _struct
from collections import deque
from typing import Callable

from nas_server.protocol import mount as mnt
from nas_server.protocol import nfs3, rpc
from nas_server.protocol.xdr import Unpacker

from ..bugs import BUGS as _BUGS
from ..mm.gfp import GFP_NOFS, Gfp
from ..net.core.skbuff import PAGE_SIZE, SKB_TRUESIZE_OVERHEAD
from ..tasks import TIMEOUT, Sleep, WaitEvent

# call_transmit_status(): -ENOBUFS -> rpc_delay(task, HZ>>2), scaled down like timeo.
ENOBUFS_RETRY_S = 0.05
# call_allocate(): -ENOMEM -> rpc_delay(task, HZ>>4).
ALLOC_RETRY_S = 0.0625 / 4
# A reply to WRITE/COMMIT is one frame of one page; truesize as the stack charges it.
REPLY_TRUESIZE = PAGE_SIZE + SKB_TRUESIZE_OVERHEAD
# rpc_malloc's mask (GFP_NOFS without direct reclaim; + __GFP_MEMALLOC for a swapper transport),
# computed once: enum.IntFlag operators cost a Python call each, per RPC.
_RPC_GFP = GFP_NOFS & ~Gfp.DIRECT_RECLAIM
_RPC_GFP_SWAPPER = _RPC_GFP | Gfp.MEMALLOC
# A successful WRITE reply as every server sends it: MSG_ACCEPTED, AUTH_NONE/empty verifier,
# SUCCESS, then nfsstat3 and the wcc pre-op attributes' presence (decode_write_reply otherwise).
_WRITE_REPLY_HEAD = _struct.Struct(">IIIIIIII")
_U32 = _struct.Struct(">I")
_WRITE_RES_OK = _struct.Struct(">II8s")       # count, committed, verifier
_WCC_ATTR_BYTES = 24
_FATTR_BYTES = nfs3._FATTR.size
_WRITE_TAIL = _struct.Struct(">QIII")         # offset count stable data-length
XID_KEPT = 16384   # > the pages of a whole scenario's writeback, for the drop explanations


class NfsError(Exception):
    """The server answered, but not with success (RPC rejected, or an NFS status). Not a timeout."""


class NfsTransport:
    def __init__(self, stack, sched, server_ip: str, port: int = 2049, *, slots: int = 16,
                 timeo_s: float = 0.7, retrans: int = 3, timeo_max_s: float = 2.0,
                 wsize: int = 4096, log: Callable[[str], None] | None = None,
                 mount_port: int | None = None, on_tx: Callable[[], None] | None = None,
                 seed: int = 0):
        if slots < 1:
            raise ValueError(f"slots={slots}: a transport needs at least one slot")
        self.stack = stack
        self.alloc = stack.alloc
        self.sched = sched
        self.server_ip = server_ip
        self.port = port
        self.mount_port = mount_port or port
        self.slots = slots
        self.timeo_s = timeo_s
        self.retrans = retrans
        self.timeo_max_s = timeo_max_s
        self.wsize = wsize
        self.log = log or (lambda line: None)
        self.on_tx = on_tx
        self.memalloc = False
        self.swapper = False            # RPC_TASK_SWAPPER: buffers get __GFP_MEMALLOC
        self.not_responding = False
        self._free_slots = deque(range(slots))
        self._slot_key = ("rpc-slot", id(self))
        self._xid = (seed * 2654435761 + 0x1000) & 0x7FFF0000
        self.pending: dict[int, object] = {}
        self.xids_sent: deque = deque(maxlen=XID_KEPT)
        self.xids_replied: deque = deque(maxlen=XID_KEPT)
        self.backlog = 0
        self.counters = {"rpc_calls": 0, "rpc_retrans": 0, "rpc_major_timeouts": 0,
                         "rpc_replies": 0, "rpc_bad_xid": 0, "rpc_enobufs": 0,
                         "rpc_alloc_nomem": 0, "rpc_reconnects": 0, "backlog_waits": 0}
        self.proc_counts: dict[str, int] = {}
        self._write_prefix: dict[bytes, bytes] = {}
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

    # -- receive -----------------------------------------------------------------------------
    def _rx_loop(self):
        while not self.closed:
            sk = self.sk
            got = yield from sk.recvfrom_wait()
            if got is None:
                continue                   # socket replaced (reconnect) or closed
            data = got[0]
            xid = rpc.peek_xid(data)
            if xid is None or xid not in self.pending:
                self.counters["rpc_bad_xid"] += 1
                continue
            self.pending.pop(xid)
            self.counters["rpc_replies"] += 1
            self.xids_replied.append(xid)
            self.sched.wake(("rpc", id(self), xid), data)

    # -- calls -------------------------------------------------------------------------------
    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    def _send(self, msg: bytes) -> int:
        rc = self.sk.send(msg, self.sched.now)
        if self.on_tx is not None:
            self.on_tx()
        return rc

    def call(self, build: Callable[[int], bytes], label: str):
        """Generator: ``reply_bytes = yield from t.call(lambda xid: msg, "WRITE")``."""
        c = self.counters
        while not self._free_slots:
            self.backlog += 1
            c["backlog_waits"] += 1
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
        slot = self._free_slots.popleft()
        buf = None
        xid = None
        try:
            # call_allocate: the RPC buffer page.
            gfp = _RPC_GFP_SWAPPER if self.swapper else _RPC_GFP
            while True:
                buf = self.alloc.alloc(1, gfp, "rpc")
                if buf is not None:
                    break
                c["rpc_alloc_nomem"] += 1
                yield Sleep(self.sched.now + ALLOC_RETRY_S, reason=f"rpc_malloc ({label})")
            xid = self._next_xid()
            msg = build(xid)
            key = ("rpc", id(self), xid)
            self.pending[xid] = label
            c["rpc_calls"] += 1
            self.proc_counts[label] = self.proc_counts.get(label, 0) + 1
            timeo = self.timeo_s
            tries = 0
            need_send = True
            deadline = 0.0
            while True:
                if need_send:
                    rc = self._send(msg)
                    if rc < 0:
                        c["rpc_enobufs"] += 1
                        got = yield WaitEvent(key, until=self.sched.now + ENOBUFS_RETRY_S,
                                              reason=f"rpc {label} xid {xid:#x} -ENOBUFS, retry")
                        if got is TIMEOUT:
                            continue
                        reply = got
                        break
                    self.xids_sent.append(xid)
                    need_send = False
                    deadline = self.sched.now + timeo
                got = yield WaitEvent(key, until=deadline, reason=f"rpc {label} xid {xid:#x}")
                if got is not TIMEOUT:
                    reply = got
                    break
                need_send = True
                tries += 1
                if tries > self.retrans:
                    # xprt_adjust_timeout: major timeout, timeout back to its initial value.
                    c["rpc_major_timeouts"] += 1
                    tries = 0
                    timeo = self.timeo_s
                    if not self.not_responding:
                        self.not_responding = True
                        self.log(f"nfs: server {self.server_ip} not responding, still trying")
                else:
                    timeo = min(timeo * 2, self.timeo_max_s)
                c["rpc_retrans"] += 1
            if self.not_responding:
                self.not_responding = False
                self.log(f"nfs: server {self.server_ip} OK")
            return reply
        finally:
            if xid is not None:
                self.pending.pop(xid, None)
            if buf is not None:
                self.alloc.free(buf)
            self._free_slots.append(slot)
            # One slot freed: wake one waiter (xprt_release -> rpc_wake_up_next), not the whole
            # backlog -- waking all of them (up to kswapd's 64 writebacks) cost ~5 generator
            # resumptions per page written, most of them finding no slot and waiting again.
            if self.backlog:
                self.sched.wake_one(self._slot_key)

    # -- procedures --------------------------------------------------------------------------
    def mount(self, export: str):
        """MOUNT v3 MNT -> root file handle of the export."""
        path = export if export.startswith("/") else "/" + export
        args = mnt.encode_dirpath(path)
        data = yield from self.call(lambda xid: rpc.encode_call(
            xid, mnt.MOUNT_PROGRAM, mnt.MOUNT_V3, mnt.MOUNTPROC3_MNT, args), "MNT")
        hdr = rpc.decode_reply(data)
        if not hdr.ok:
            raise NfsError(f"MNT {path}: RPC {hdr.describe()}")
        res = mnt.decode_mnt_res(Unpacker(data, hdr.body_offset))
        if res.status != mnt.MNT3_OK:
            raise NfsError(f"MNT {path}: {mnt.STATUS_NAMES.get(res.status, res.status)}")
        return res.fh

    def lookup(self, dir_fh: bytes, name: str):
        """LOOKUP -> (fh, size_bytes or None)."""
        args = nfs3.DiropArgs(dir_fh, name.encode())
        data = yield from self.call(
            lambda xid: nfs3.encode_call(xid, nfs3.NFSPROC3_LOOKUP, args), "LOOKUP")
        hdr, res = nfs3.decode_reply(nfs3.NFSPROC3_LOOKUP, data)
        if res is None:
            raise NfsError(f"LOOKUP {name}: RPC {hdr.describe()}")
        if res.status != nfs3.NFS3_OK:
            raise NfsError(f"LOOKUP {name}: nfsstat3 {res.status}")
        size = res.attr.size if res.attr is not None else None
        return res.fh, size

    def write(self, fh: bytes, offset: int, data: bytes, stable: int = nfs3.FILE_SYNC):
        """WRITE -> nfs3.WriteReply (count, committed, verf)."""
        if len(data) > self.wsize:
            raise ValueError(f"write of {len(data)} bytes exceeds wsize {self.wsize}")
        # nfs3.encode_write_call's bytes: what follows the xid up to the file handle's padding
        # is the same for every WRITE on one file handle (checked against the encoder), so it
        # is encoded once and each call joins xid, prefix, offset/count/stable, data, padding.
        prefix = self._write_prefix.get(fh)
        if prefix is None:
            prefix = nfs3.encode_write_call(0, fh, 0, b"", stable)[4:-_WRITE_TAIL.size]
            self._write_prefix = {fh: prefix}
        n = len(data)
        tail = _WRITE_TAIL.pack(offset, n, stable, n)
        pad = b"\0" * (-n & 3)
        msg = yield from self.call(
            lambda xid: b"".join((_U32.pack(xid), prefix, tail, data, pad)), "WRITE")
        r = _decode_write_reply(msg)
        if not r.rpc_ok or r.status != nfs3.NFS3_OK:
            raise NfsError(f"WRITE offset {offset}: rpc_ok={r.rpc_ok} status={r.status}")
        return r

    def commit(self, fh: bytes, offset: int = 0, count: int = 0):
        """COMMIT -> nfs3.WriteReply (verf)."""
        args = nfs3.CommitArgs(fh, offset, count)
        msg = yield from self.call(
            lambda xid: nfs3.encode_call(xid, nfs3.NFSPROC3_COMMIT, args), "COMMIT")
        r = nfs3.decode_commit_reply(msg)
        if not r.rpc_ok or r.status != nfs3.NFS3_OK:
            raise NfsError(f"COMMIT: rpc_ok={r.rpc_ok} status={r.status}")
        return r

    def write_durably(self, fh: bytes, offset: int, make_data: Callable[[], bytes], stable: int,
                      counters: dict):
        """A page is durable once the NAS says so: a FILE_SYNC/DATA_SYNC reply, or an UNSTABLE
        write followed by a COMMIT with the same verifier. A changed verifier means the server
        restarted and lost the data: write it again (``make_data`` regenerates the bytes).
        Counts writes, commits, verifier_changes and resends in ``counters``."""
        while True:
            data = make_data()
            counters["writes"] += 1
            r = yield from self.write(fh, offset, data, stable)
            if r.committed != nfs3.UNSTABLE:
                return r
            counters["commits"] += 1
            cr = yield from self.commit(fh, offset, len(data))
            if cr.verf == r.verf:
                return r
            counters["verifier_changes"] += 1
            counters["resends"] += 1

    # -- observation -------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {
            "server": f"{self.server_ip}:{self.port}",
            "counters": dict(self.counters),
            "proc": dict(self.proc_counts),
            "slots": self.slots,
            "slots_in_use": self.slots - len(self._free_slots),
            "backlog": self.backlog,
            "not_responding": self.not_responding,
            "memalloc": self.sk.memalloc if self.sk is not None else False,
            "socket": self.sk.snapshot() if self.sk is not None else None,
            "xids_sent": list(self.xids_sent),
            "xids_replied": list(self.xids_replied),
        }


def _decode_write_reply(msg) -> nfs3.WriteReply:
    """nfs3.decode_write_reply, with the common successful reply read by two unpacks (same
    WriteReply, same rpc.Reply in it); any other reply goes to nfs3.decode_write_reply."""
    if len(msg) >= 32:
        xid, mtype, rstat, vflav, vlen, astat, status, pre = _WRITE_REPLY_HEAD.unpack_from(msg, 0)
        if (mtype == rpc.REPLY and rstat == rpc.MSG_ACCEPTED and vlen == 0
                and astat == rpc.SUCCESS and status == nfs3.NFS3_OK and pre <= 1):
            pos = 32 + _WCC_ATTR_BYTES if pre else 32
            if len(msg) >= pos + 4:
                post = _U32.unpack_from(msg, pos)[0]
                if post <= 1:
                    pos += 4 + _FATTR_BYTES if post else 4
                    if len(msg) >= pos + _WRITE_RES_OK.size:
                        count, committed, verf = _WRITE_RES_OK.unpack_from(msg, pos)
                        return nfs3.WriteReply(xid, True, status, count, committed, verf,
                                               rpc.Reply(xid, rpc.MSG_ACCEPTED, accept_stat=astat,
                                                         verf=(vflav, b""), body_offset=24))
    return nfs3.decode_write_reply(msg)
