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

Durability (``write_durably``, the page writeback of swap.py and mm/filemap.py) takes a WRITE or
COMMIT reply as final only where Linux's v3 client does (fs/nfs/write.c, fs/nfs/nfs3proc.c,
net/sunrpc/clnt.c rpc_decode_header); every reply is first sorted by ``classify_reply``:
- Short WRITE (RFC 1813 3.3.7 "The server may write fewer bytes than requested";
  nfs_writeback_result, counted ``shortwrite`` = NFSIOS_SHORTWRITE): with ``committed`` FILE_SYNC
  or DATA_SYNC the rest is resent at offset + count; with UNSTABLE the whole request is resent as
  FILE_SYNC ("to avoid headaches in the case of a server crash"); ``count == 0`` is no progress:
  the page's writeback ends with EIO ("NFS: Server wrote zero bytes, expected N.", logged).
- ``committed`` weaker than FILE_SYNC (nfs_write_need_commit: UNSTABLE, and DATA_SYNC too for a
  non-pNFS write) needs a COMMIT; ``committed < stable`` asked is counted ``committed_lt_stable``
  (nfs_writeback_done's "faulty NFS server" dprintk). The COMMIT's verifier must equal the last
  WRITE reply's (nfs_commit_release_pages); a different one rewrites the page (``verifier_changes``).
- NFS3ERR_JUKEBOX on WRITE or COMMIT: the same call again after NFS_JUKEBOX_RETRY_TIME (5 s,
  ``jukebox_retry_s``), without limit (nfs3_async_handle_jukebox, counted ``delay`` = NFSIOS_DELAY).
- GARBAGE_ARGS, SYSTEM_ERR, an unknown accept_stat, AUTH_BADCRED/BADVERF, a reply whose header does
  not parse or whose length is not a multiple of 4: counted ``rpcgarbage`` (cl_stats->rpcgarbage)
  and the call sent again, at most RPC_GARB_RETRY (tk_garb_retry = 2) times per task, then EIO
  (EACCES for the auth ones). AUTH_REJECTEDCRED/REJECTEDVERF: RPC_CRED_RETRY (tk_cred_retry = 2)
  more tries, then EACCES.
- Anything else is final for the page: PROG_UNAVAIL (EPFNOSUPPORT), PROG_MISMATCH and RPC_MISMATCH
  (EPROTONOSUPPORT), PROC_UNAVAIL (EOPNOTSUPP), AUTH_TOOWEAK (EACCES), an NFS result that does not
  decode (nfs3xdr's -EIO), and every other nfsstat3 (NFS3ERR_IO, NOSPC, DQUOT, ROFS, STALE, FBIG, ...,
  mapped to errno as fs/nfs_common nfs_stat_to_errno does). ``write_durably`` then *returns* a
  ``WriteError`` (never raises): the caller ends the page's writeback with it (swap:
  sio_write_complete, the page stays dirty and resident; file: nfs_mapping_set_error) and the error
  is counted by name in ``write_errors`` / ``write_error_reasons`` / ``write_error_errnos``.
Where this still differs from Linux: a retried call gets a new xid (call_encode keeps the xid);
the garbage budget is one per WRITE phase and one per COMMIT of a page (Linux: one per rpc_task,
and one COMMIT covers many pages); a changed verifier rewrites the page at once (Linux redirties
it for the next writeback pass); WRITE/COMMIT errors never go through a soft-mount timeout (hard
mount only).

Sans-I/O: time is the scheduler's ``now``; the socket is the agent stack's UdpSocket.
"""

from __future__ import annotations

import errno as _errno
import struct as _struct
from collections import deque
from typing import Callable, NamedTuple

from nas_server.protocol import mount as mnt
from nas_server.protocol import nfs3, rpc
from nas_server.protocol.xdr import Unpacker

from ..bugs import BUGS as _BUGS
from ..mm.gfp import GFP_NOFS, Gfp
from ..net.skb import PAGE_SIZE, SKB_TRUESIZE_OVERHEAD
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
# include/linux/nfs_fs.h NFS_JUKEBOX_RETRY_TIME = 5 * HZ: NFS3ERR_JUKEBOX retried after this.
NFS_JUKEBOX_RETRY_S = 5.0
# net/sunrpc/sched.c rpc_init_task: tk_garb_retry = 2, tk_cred_retry = 2.
RPC_GARB_RETRY = 2
RPC_CRED_RETRY = 2
# fs/nfs_common/common.c nfs_common_errtbl (nfs_stat_to_errno): the errno Linux makes of each
# nfsstat3; an nfsstat3 not in the table is EIO. Kernel-internal errnos (include/linux/errno.h)
# have no name in Python's errno module.
_KERNEL_ERRNO = {"EBADHANDLE": 521, "ENOTSYNC": 522, "EBADCOOKIE": 523, "ENOTSUPP": 524,
                 "ETOOSMALL": 525, "ESERVERFAULT": 526, "EBADTYPE": 527, "EJUKEBOX": 528}
NFS3_ERRNO = {
    nfs3.NFS3ERR_PERM: "EPERM", nfs3.NFS3ERR_NOENT: "ENOENT", nfs3.NFS3ERR_IO: "EIO",
    nfs3.NFS3ERR_NXIO: "ENXIO", nfs3.NFS3ERR_ACCES: "EACCES", nfs3.NFS3ERR_EXIST: "EEXIST",
    nfs3.NFS3ERR_XDEV: "EXDEV", nfs3.NFS3ERR_NODEV: "ENODEV", nfs3.NFS3ERR_NOTDIR: "ENOTDIR",
    nfs3.NFS3ERR_ISDIR: "EISDIR", nfs3.NFS3ERR_INVAL: "EINVAL", nfs3.NFS3ERR_FBIG: "EFBIG",
    nfs3.NFS3ERR_NOSPC: "ENOSPC", nfs3.NFS3ERR_ROFS: "EROFS", nfs3.NFS3ERR_MLINK: "EMLINK",
    nfs3.NFS3ERR_NAMETOOLONG: "ENAMETOOLONG", nfs3.NFS3ERR_NOTEMPTY: "ENOTEMPTY",
    nfs3.NFS3ERR_DQUOT: "EDQUOT", nfs3.NFS3ERR_STALE: "ESTALE", nfs3.NFS3ERR_REMOTE: "EREMOTE",
    nfs3.NFS3ERR_BADHANDLE: "EBADHANDLE", nfs3.NFS3ERR_NOT_SYNC: "ENOTSYNC",
    nfs3.NFS3ERR_BAD_COOKIE: "EBADCOOKIE", nfs3.NFS3ERR_NOTSUPP: "ENOTSUPP",
    nfs3.NFS3ERR_TOOSMALL: "ETOOSMALL", nfs3.NFS3ERR_SERVERFAULT: "EREMOTEIO",
    nfs3.NFS3ERR_BADTYPE: "EBADTYPE", nfs3.NFS3ERR_JUKEBOX: "EJUKEBOX",
}


def errno_number(name: str) -> int:
    """Linux's number for an errno name ("EIO" -> 5, "EJUKEBOX" -> 528)."""
    return _KERNEL_ERRNO.get(name) or getattr(_errno, name, _errno.EIO)


# Verdicts of classify_reply: what the durability loop does with a reply.
OK, GARBAGE, CRED, JUKEBOX, FATAL = "ok", "garbage", "cred", "jukebox", "fatal"


class Verdict(NamedTuple):
    """``kind`` (OK, GARBAGE, CRED, JUKEBOX, FATAL); ``reply`` (nfs3.WriteReply, OK only); ``reason``
    (the protocol's own name: NFS3ERR_NOSPC, GARBAGE_ARGS, AUTH_TOOWEAK, ...); ``errno`` (the errno
    name the task ends with if this is final, or once retries are exhausted)."""
    kind: str
    reply: object = None
    reason: str = ""
    errno: str = ""


class WriteError(NamedTuple):
    """A page's writeback ended without the NAS holding it: ``errno`` name ("EIO", "ENOSPC", ...),
    ``reason`` (protocol name), ``offset`` (bytes) and ``proc`` ("WRITE" or "COMMIT")."""
    errno: str
    reason: str
    offset: int
    proc: str

    @property
    def errno_number(self) -> int:
        return errno_number(self.errno)


def durability_counters() -> dict:
    """The counters ``write_durably`` keeps, zeroed: one dict per consumer (swap, file)."""
    return {"writes": 0, "commits": 0, "resends": 0, "verifier_changes": 0, "shortwrite": 0,
            "committed_lt_stable": 0, "delay": 0, "rpcgarbage": 0, "write_errors": 0,
            "write_error_reasons": {}, "write_error_errnos": {}}


_ACCEPT_FATAL = {rpc.PROG_UNAVAIL: "EPFNOSUPPORT", rpc.PROG_MISMATCH: "EPROTONOSUPPORT",
                 rpc.PROC_UNAVAIL: "EOPNOTSUPP"}


def classify_reply(msg, decode: Callable) -> Verdict:
    """Sort one WRITE or COMMIT reply as rpc_decode_header, nfs3xdr and nfs3proc do (see the
    module docstring). ``decode`` is ``_decode_write_reply`` or ``nfs3.decode_commit_reply``.
    Never raises on any bytes."""
    if len(msg) & 3:                                   # rq_rcv_buf.len & 3 -> out_unparsable
        return Verdict(GARBAGE, None, "unparsable reply", "EIO")
    try:
        r = decode(msg)
    except rpc.RpcError as e:                          # header: out_unparsable -> garbage
        return Verdict(GARBAGE, None, f"unparsable reply ({e.kind})", "EIO")
    except (ValueError, _struct.error):                # the NFS result: nfs3xdr returns -EIO
        return Verdict(FATAL, None, "undecodable result", "EIO")
    if not r.rpc_ok:
        h = r.rpc_reply
        if h.reply_stat == rpc.MSG_ACCEPTED:
            a = h.accept_stat
            name = rpc.ACCEPT_STAT_NAMES.get(a, f"accept_stat {a}")
            if a in _ACCEPT_FATAL:
                return Verdict(FATAL, None, name, _ACCEPT_FATAL[a])
            if a in (rpc.GARBAGE_ARGS, rpc.SYSTEM_ERR):
                return Verdict(GARBAGE, None, name, "EIO")
            return Verdict(GARBAGE, None, f"unparsable reply ({name})", "EIO")
        if h.reject_stat == rpc.RPC_MISMATCH:
            return Verdict(FATAL, None, "RPC_MISMATCH", "EPROTONOSUPPORT")
        st = h.auth_stat
        name = rpc.AUTH_STAT_NAMES.get(st, f"auth_stat {st}")
        if st in (rpc.AUTH_REJECTEDCRED, rpc.AUTH_REJECTEDVERF):
            return Verdict(CRED, None, name, "EACCES")
        if st in (rpc.AUTH_BADCRED, rpc.AUTH_BADVERF):
            return Verdict(GARBAGE, None, name, "EACCES")
        if st == rpc.AUTH_TOOWEAK:
            return Verdict(FATAL, None, name, "EACCES")
        return Verdict(GARBAGE, None, f"unparsable reply ({name})", "EIO")
    if r.status == nfs3.NFS3_OK:
        return Verdict(OK, r)
    name = nfs3.STATUS_NAMES.get(r.status, f"nfsstat3 {r.status}")
    if r.status == nfs3.NFS3ERR_JUKEBOX:
        return Verdict(JUKEBOX, None, name, "EJUKEBOX")
    return Verdict(FATAL, None, name, NFS3_ERRNO.get(r.status, "EIO"))


class NfsError(Exception):
    """The server answered, but not with success (RPC rejected, or an NFS status). Not a timeout."""


class NfsTransport:
    def __init__(self, stack, sched, server_ip: str, port: int = 2049, *, slots: int = 16,
                 timeo_s: float = 0.7, retrans: int = 3, timeo_max_s: float = 2.0,
                 wsize: int = 4096, log: Callable[[str], None] | None = None,
                 mount_port: int | None = None, on_tx: Callable[[], None] | None = None,
                 seed: int = 0, jukebox_retry_s: float = NFS_JUKEBOX_RETRY_S):
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
        self.jukebox_retry_s = jukebox_retry_s
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
        """WRITE -> nfs3.WriteReply (count, committed, verf). Raises NfsError on anything but
        NFS3_OK (one call, no retry: ``write_durably`` is the loop that retries)."""
        msg = yield from self._write_call(fh, offset, data, stable)
        v = classify_reply(msg, _decode_write_reply)
        if v.kind != OK:
            raise NfsError(f"WRITE offset {offset}: {v.reason}")
        return v.reply

    def _write_call(self, fh: bytes, offset: int, data: bytes, stable: int):
        """Generator: one WRITE call; returns the reply's bytes, undecoded."""
        if len(data) > self.wsize:
            raise ValueError(f"write of {len(data)} bytes exceeds wsize {self.wsize}")
        # nfs3.encode_write_call's bytes: what follows the xid up to the file handle's padding
        # is the same for every WRITE on one file handle (checked against the encoder), so it is
        # encoded once and each call joins xid, prefix, offset/count/stable, data, padding.
        prefix = self._write_prefix.get(fh)
        if prefix is None:
            prefix = nfs3.encode_write_call(0, fh, 0, b"", stable)[4:-_WRITE_TAIL.size]
            self._write_prefix = {fh: prefix}
        n = len(data)
        tail = _WRITE_TAIL.pack(offset, n, stable, n)
        pad = b"\0" * (-n & 3)
        msg = yield from self.call(
            lambda xid: b"".join((_U32.pack(xid), prefix, tail, data, pad)), "WRITE")
        return msg

    def commit(self, fh: bytes, offset: int = 0, count: int = 0):
        """COMMIT -> nfs3.WriteReply (verf). Raises NfsError on anything but NFS3_OK."""
        msg = yield from self._commit_call(fh, offset, count)
        v = classify_reply(msg, nfs3.decode_commit_reply)
        if v.kind != OK:
            raise NfsError(f"COMMIT: {v.reason}")
        return v.reply

    def _commit_call(self, fh: bytes, offset: int, count: int):
        args = nfs3.CommitArgs(fh, offset, count)
        msg = yield from self.call(
            lambda xid: nfs3.encode_call(xid, nfs3.NFSPROC3_COMMIT, args), "COMMIT")
        return msg

    def write_verdict(self, fh: bytes, offset: int, data: bytes, stable: int):
        """Generator: one WRITE, its reply sorted by ``classify_reply`` -> Verdict."""
        msg = yield from self._write_call(fh, offset, data, stable)
        return classify_reply(msg, _decode_write_reply)

    def commit_verdict(self, fh: bytes, offset: int, count: int):
        """Generator: one COMMIT, its reply sorted by ``classify_reply`` -> Verdict."""
        msg = yield from self._commit_call(fh, offset, count)
        return classify_reply(msg, nfs3.decode_commit_reply)

    def _until_final(self, send: Callable, proc: str, offset: int, counters: dict):
        """Generator: ``send()`` (a verdict generator) again while the verdict says retry, as the
        rpc_task would: JUKEBOX after ``jukebox_retry_s`` without limit, garbage and stale
        credentials within their budgets. Returns the OK verdict's reply, or a WriteError."""
        garb, cred = RPC_GARB_RETRY, RPC_CRED_RETRY
        while True:
            v = yield from send()
            if v.kind == OK:
                return v.reply
            if v.kind == JUKEBOX:
                counters["delay"] += 1                  # NFSIOS_DELAY
                yield Sleep(self.sched.now + self.jukebox_retry_s,
                            reason=f"nfs {proc} offset {offset}: NFS3ERR_JUKEBOX, retry")
                continue
            if v.kind == GARBAGE:
                counters["rpcgarbage"] += 1
                if garb:
                    garb -= 1
                    continue
            elif v.kind == CRED and cred:
                cred -= 1
                continue
            return self._write_error(counters, WriteError(v.errno, v.reason, offset, proc))

    def _write_error(self, counters: dict, err: WriteError) -> WriteError:
        counters["write_errors"] += 1
        for key, name in (("write_error_reasons", err.reason), ("write_error_errnos", err.errno)):
            d = counters[key]
            d[name] = d.get(name, 0) + 1
        return err

    def write_durably(self, fh: bytes, offset: int, make_data: Callable[[], bytes], stable: int,
                      counters: dict):
        """Generator: write one page (``make_data()`` bytes at ``offset``) until the NAS holds it
        durably, handling every non-final reply as Linux does (module docstring). Returns None
        once durable: the last WRITE reply said FILE_SYNC, or a COMMIT returned that reply's
        verifier. Returns a ``WriteError`` when the page's writeback ends with an error; never
        raises for anything the server sends. ``counters``: a ``durability_counters()`` dict."""
        while True:
            data = make_data()
            total = len(data)
            pos = 0                     # bytes the server has written (nfs_writeback_result)
            how = stable
            last = None
            while pos < total:
                chunk = data[pos:] if pos else data
                counters["writes"] += 1
                got = yield from self._until_final(
                    lambda: self.write_verdict(fh, offset + pos, chunk, how), "WRITE",
                    offset + pos, counters)
                if isinstance(got, WriteError):
                    return got
                r = got
                if r.committed < how:
                    counters["committed_lt_stable"] += 1
                if r.count < len(chunk):
                    counters["shortwrite"] += 1
                    if r.count == 0:
                        self.log(f"NFS: Server wrote zero bytes, expected {len(chunk)}.")
                        return self._write_error(
                            counters, WriteError("EIO", "zero-byte write", offset + pos, "WRITE"))
                    if r.committed != nfs3.UNSTABLE:
                        pos += r.count          # resend from where the server left off
                    else:
                        how = nfs3.FILE_SYNC    # resend the whole request stable
                    continue
                pos = total
                last = r
            if last.committed == nfs3.FILE_SYNC:
                return None
            counters["commits"] += 1
            got = yield from self._until_final(
                lambda: self.commit_verdict(fh, offset, total), "COMMIT", offset, counters)
            if isinstance(got, WriteError):
                return got
            if got.verf == last.verf:
                return None
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
