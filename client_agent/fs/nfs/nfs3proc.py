"""The NFSv3 client of one server: procedures over an RPC client (fs/nfs/nfs3proc.c, nfs3xdr.c,
mount_clnt.c, write.c), hard mount.

``NfsTransport`` composes the RPC layers -- an ``XsUdp`` or ``XsTcp`` transport
(net/sunrpc/xprtsock.py: the socket, SOCK_MEMALLOC on every socket, the receive task; over TCP
also the connection and its reconnects), its slot table and buffers
(net/sunrpc/xprt.py) and an ``RpcClnt`` (net/sunrpc/clnt.py: calls, retransmission with the
transport's timeout policy) -- and adds the NFS and MOUNT procedures. Its attributes keep the
names they had when it was one class (``counters``, ``sk``, ``pending``, ``memalloc``, ...).

Durability (``write_durably``, the page writeback of mm/swapfile.py and mm/filemap.py through fs/nfs/file.py) takes a WRITE or
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
  not parse or whose length is not a multiple of 4, an accepted reply whose verifier is not
  AUTH_NONE of length 0 (nul_validate, "bad reply verifier"): counted ``rpcgarbage`` (cl_stats->rpcgarbage)
  and the call sent again, at most RPC_GARB_RETRY (tk_garb_retry = 2) times per task, then EIO
  (EACCES for the auth ones). AUTH_REJECTEDCRED/REJECTEDVERF: RPC_CRED_RETRY (tk_cred_retry = 2)
  more tries, then EACCES.
- Anything else is final for the page: PROG_UNAVAIL (EPFNOSUPPORT), PROG_MISMATCH and RPC_MISMATCH
  (EPROTONOSUPPORT), PROC_UNAVAIL (EOPNOTSUPP), AUTH_TOOWEAK (EACCES), an NFS result that does not
  decode (nfs3xdr's -EIO; a WRITE ``committed`` above FILE_SYNC too, decode_write3resok), and every other nfsstat3 (NFS3ERR_IO, NOSPC, DQUOT, ROFS, STALE, FBIG, ...,
  mapped to errno as fs/nfs_common nfs_stat_to_errno does). ``write_durably`` then *returns* a
  ``WriteError`` (never raises): the caller ends the page's writeback with it (swap:
  sio_write_complete, the page stays dirty and resident; file: nfs_mapping_set_error) and the error
  is counted by name in ``write_errors`` / ``write_error_reasons`` / ``write_error_errnos``.
- The RPC transport dead (its receive task or xprtiod crashed: a bug of this program,
  net/sunrpc/xprt.py): the call fails with -EIO and the page's writeback ends with EIO, reason
  "rpc transport dead" -- never a hang that the watchdog would take for the deadlock.
Where this still differs from Linux: a retried call gets a new xid (call_encode keeps the xid);
the garbage budget is one per WRITE phase and one per COMMIT of a page (Linux: one per rpc_task,
and one COMMIT covers many pages); a changed verifier rewrites the page at once (Linux redirties
it for the next writeback pass); WRITE/COMMIT errors never go through a soft-mount timeout (hard
mount only).

Any standard NFSv3 server over TCP (``proto="tcp"``): the MOUNT and NFS ports from the server's
portmapper (GETPORT, portmap v2 over TCP to 111) unless given, MNT on its own connection to
mountd, FSINFO's wtmax/rtmax honoured, AUTH_SYS credentials (uid 0, gid 0, "client-agent").
Over UDP the legacy nas-server layout stays: MOUNT on the NFS port, AUTH_NONE.

Sans-I/O: time is the scheduler's ``now``; the socket is the agent stack's UDP or TCP socket.
"""

from __future__ import annotations

import struct as _struct
from typing import Callable, NamedTuple

from protocols import mount as mnt
from protocols import nfs3, rpc
from protocols.xdr import Unpacker

from ...mm.page_io import WriteError, count_write_error, errno_number
from ...net.sunrpc.clnt import ENOBUFS_RETRY_S, RpcClnt, RpcSoftError, RpcXprtDead
from ...net.sunrpc.xprt import ALLOC_RETRY_S, XID_KEPT
from ...net.sunrpc.xprtsock import REPLY_TRUESIZE, XsTcp, XsUdp, tcp_timeout, udp_timeout
from ...tasks import Sleep

__all__ = ["ALLOC_RETRY_S", "ENOBUFS_RETRY_S", "REPLY_TRUESIZE", "XID_KEPT", "NfsError",
           "NfsTransport", "Verdict", "WriteError", "classify_reply", "durability_counters",
           "errno_number"]

# A successful WRITE reply as every server sends it: MSG_ACCEPTED, AUTH_NONE/empty verifier,
# SUCCESS, then nfsstat3 and the wcc pre-op attributes' presence (decode_write_reply otherwise).
_WRITE_REPLY_HEAD = _struct.Struct(">IIIIIIII")
_U32 = _struct.Struct(">I")
_WRITE_RES_OK = _struct.Struct(">II8s")       # count, committed, verifier
_WCC_ATTR_BYTES = 24
_FATTR_BYTES = nfs3._FATTR.size
_WRITE_TAIL = _struct.Struct(">QIII")         # offset count stable data-length
# include/linux/nfs_fs.h NFS_JUKEBOX_RETRY_TIME = 5 * HZ: NFS3ERR_JUKEBOX retried after this.
NFS_JUKEBOX_RETRY_S = 5.0
# net/sunrpc/sched.c rpc_init_task: tk_garb_retry = 2, tk_cred_retry = 2.
RPC_GARB_RETRY = 2
RPC_CRED_RETRY = 2
# fs/nfs_common/common.c nfs_common_errtbl (nfs_stat_to_errno): the errno Linux makes of each
# nfsstat3; an nfsstat3 not in the table is EIO (numbers: mm/page_io.py errno_number).
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


# The reason a page's writeback ends with when its RPC transport is dead (its task crashed).
XPRT_DEAD_REASON = "rpc transport dead"

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
    h = r.rpc_reply
    if h.reply_stat == rpc.MSG_ACCEPTED and (h.verf[0] != rpc.AUTH_NONE or h.verf[1]):
        # rpcauth_checkverf -> nul_validate (our calls are AUTH_NONE): a reply verifier that is
        # not AUTH_NONE of length 0 is -EIO -> rpc_decode_header out_verifier -> out_garbage.
        return Verdict(GARBAGE, None, "bad reply verifier", "EIO")
    if r.rpc_ok and r.status == nfs3.NFS3_OK and not 0 <= r.committed <= nfs3.FILE_SYNC:
        # decode_write3resok: committed > NFS_FILE_SYNC -> "NFS: bad stable_how value" -> -EIO.
        return Verdict(FATAL, None, "undecodable result", "EIO")
    if not r.rpc_ok:
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
    """The NFS client of ``server_ip``: NFS and MOUNT procedures over one RPC client."""

    def __init__(self, stack, sched, server_ip: str, port: int | None = 2049, *, slots: int = 16,
                 timeo_s: float = 0.7, retrans: int = 3, timeo_max_s: float = 2.0,
                 wsize: int = 4096, log: Callable[[str], None] | None = None,
                 mount_port: int | None = None, on_tx: Callable[[], None] | None = None,
                 seed: int = 0, jukebox_retry_s: float = NFS_JUKEBOX_RETRY_S,
                 proto: str = "udp", auth: str | None = None):
        if slots < 1:
            raise ValueError(f"slots={slots}: a transport needs at least one slot")
        if proto not in ("udp", "tcp"):
            raise ValueError(f"proto must be udp or tcp, got {proto!r}")
        auth = auth or ("sys" if proto == "tcp" else "none")
        if auth not in ("none", "sys"):
            raise ValueError(f"auth must be none or sys, got {auth!r}")
        self.stack = stack
        self.alloc = stack.alloc
        self.sched = sched
        self.server_ip = server_ip
        self.proto = proto
        # UDP keeps nas-server's one-port layout (MOUNT on the NFS port, 2049) unless told;
        # TCP asks the server's portmapper (GETPORT) for every port it was not given
        self.port = port if port is not None or proto == "tcp" else 2049
        self.mount_port = mount_port or (self.port if proto == "udp" else None)
        self.mount_xids: list[int] = []     # every MNT call's xid (testbed.explain labels its reply)
        self.slots = slots
        self.timeo_s = timeo_s
        self.retrans = retrans
        self.timeo_max_s = timeo_max_s
        self.wsize = wsize
        self.rsize = wsize
        self.fsinfo = None                       # (rtmax, wtmax) once FSINFO answered
        self.jukebox_retry_s = jukebox_retry_s
        self.log = log or (lambda line: None)
        self.cred = rpc.auth_sys_cred(machinename=b"client-agent") if auth == "sys" \
            else rpc.NULL_AUTH
        self._write_prefix: dict[bytes, bytes] = {}
        self._seed = seed
        self._on_tx = on_tx
        self._memalloc = False
        self.xprt = None
        self.clnt = None
        if proto == "udp":
            self._attach(XsUdp(stack, sched, server_ip, self.port, slots=slots, seed=seed,
                               timeout=udp_timeout(timeo_s, timeo_max_s, retrans), on_tx=on_tx))
        elif self.port is not None:
            self._attach(self._tcp_xprt(self.port, slots, memalloc=False))

    def _attach(self, xprt) -> None:
        self.xprt = xprt
        self.clnt = RpcClnt(xprt, prog_name="nfs", log=self.log)
        self.call = self.clnt.call

    def _tcp_xprt(self, port: int, slots: int, *, memalloc: bool, seed_off: int = 0):
        return XsTcp(self.stack, self.sched, self.server_ip, port, slots=slots,
                     seed=self._seed + seed_off, timeout=tcp_timeout(self.timeo_s, self.retrans),
                     on_tx=self._on_tx, memalloc=memalloc)

    def _oneshot(self, port: int, build: Callable[[int], bytes], label: str, seed_off: int,
                 hint: str):
        """Generator: one SOFT call (RPC_TASK_SOFT | RPC_TASK_SOFTCONN, as rpcbind's client and
        mount.nfs make theirs) on its own short-lived TCP client (rpcbind's, mountd's): a
        refused connect or a major timeout is an NfsError naming server, port and ``hint``."""
        xprt = self._tcp_xprt(port, 1, memalloc=False, seed_off=seed_off)
        clnt = RpcClnt(xprt, prog_name=label.split()[0].lower(), log=self.log)
        try:
            return (yield from clnt.call(build, label, soft=True))
        except RpcSoftError as e:
            raise NfsError(f"{label} to {self.server_ip}:{port} failed: {e.reason} ({e}); {hint}") from None
        finally:
            xprt.close()

    def getport(self, prog: int, vers: int):
        """Generator: rpcb_getport -- portmap v2 GETPORT over TCP to port 111 -> the port
        (NfsError if the program is not registered for TCP)."""
        args = mnt.encode_mapping(mnt.Mapping(prog, vers, mnt.IPPROTO_TCP, 0))
        data = yield from self._oneshot(
            mnt.PMAP_PORT, lambda xid: rpc.encode_call(xid, mnt.PMAP_PROGRAM, mnt.PMAP_V2,
                                                       mnt.PMAPPROC_GETPORT, args, self.cred),
            "PMAP GETPORT", 101,
            "no portmapper there? start rpcbind on the server, or give the port (mount_port / port)")
        hdr = rpc.decode_reply(data)
        if not hdr.ok:
            raise NfsError(f"GETPORT {prog}/{vers}/tcp: RPC {hdr.describe()}")
        port = Unpacker(data, hdr.body_offset).unpack_uint()
        if not 0 < port < 65536:
            raise NfsError(f"GETPORT {prog}/{vers}/tcp: program not registered on "
                           f"{self.server_ip} (port {port}); give the port instead")
        return port

    # -- the transport under it (names kept from when this was one class) ----------------------
    sk = property(lambda self: self.xprt.sk if self.xprt else None)
    memalloc = property(lambda self: self.xprt.memalloc if self.xprt else self._memalloc)
    swapper = property(lambda self: self.xprt.swapper if self.xprt else self._memalloc)
    closed = property(lambda self: self.xprt.closed if self.xprt else False)
    pending = property(lambda self: self.xprt.pending if self.xprt else {})
    counters = property(lambda self: self.xprt.counters if self.xprt else {})
    backlog = property(lambda self: self.xprt.backlog if self.xprt else 0)
    rx_task = property(lambda self: getattr(self.xprt, "rx_task", None) or self.xprt.task)
    not_responding = property(lambda self: self.clnt.not_responding if self.clnt else False)
    proc_counts = property(lambda self: self.clnt.proc_counts if self.clnt else {})

    def set_memalloc(self, on: bool) -> None:
        """xs_set_memalloc / sk_clear_memalloc (swap_activate's rpc_clnt_swap_activate); a
        TCP transport not connected yet marks its socket before it connects."""
        self._memalloc = on
        if self.xprt is not None:
            self.xprt.set_memalloc(on)

    def reconnect(self) -> None:
        self.xprt.reconnect()

    def close(self) -> None:
        if self.xprt is not None:
            self.xprt.close()

    # -- procedures --------------------------------------------------------------------------
    def mount(self, export: str):
        """MOUNT v3 MNT -> root file handle of the export. Over TCP (nfs_mount, as mount.nfs
        does it): the MOUNT and NFS ports from portmap unless given, MNT on its own connection
        to mountd, the NFS connection, then FSINFO (wtmax/rtmax bound wsize/rsize)."""
        path = export if export.startswith("/") else "/" + export
        args = mnt.encode_dirpath(path)

        def build(xid: int) -> bytes:
            self.mount_xids.append(xid)
            return rpc.encode_call(xid, mnt.MOUNT_PROGRAM, mnt.MOUNT_V3, mnt.MOUNTPROC3_MNT, args, self.cred)
        if self.proto == "udp":
            data = yield from self.call(build, "MNT")
        else:
            if self.mount_port is None:
                self.mount_port = yield from self.getport(mnt.MOUNT_PROGRAM, mnt.MOUNT_V3)
            data = yield from self._oneshot(self.mount_port, build,
                                            "MNT", 102, "is mountd running and registered on that port?")
        fh = self._mnt_result(path, data)
        if self.proto == "tcp":
            if self.xprt is None:
                if self.port is None:
                    self.port = yield from self.getport(nfs3.NFS_PROGRAM, nfs3.NFS_V3)
                self._attach(self._tcp_xprt(self.port, self.slots, memalloc=self._memalloc))
            yield from self.fsinfo_call(fh)
        return fh

    def fsinfo_call(self, fh: bytes):
        """FSINFO: the server's rtmax/wtmax bound rsize/wsize (nfs_server_set_fsinfo). The agent
        moves whole pages, so a server whose limit is below a page cannot be used."""
        res = yield from self._proc(nfs3.NFSPROC3_FSINFO, nfs3.FhArgs(fh), "FSINFO")
        rtmax, _rtpref, _rtmult, wtmax = res.fsinfo[:4]
        self.fsinfo = (rtmax, wtmax)
        if wtmax and wtmax < self.wsize:
            self.wsize = wtmax
        if rtmax and rtmax < self.rsize:
            self.rsize = rtmax
        if self.wsize < 4096 or self.rsize < 4096:
            raise NfsError(f"FSINFO: server {self.server_ip} allows rtmax={rtmax} wtmax={wtmax}; "
                           f"the agent reads and writes whole 4096-byte pages")
        return res

    def _mnt_result(self, path: str, data) -> bytes:
        hdr = rpc.decode_reply(data)
        if not hdr.ok:
            raise NfsError(f"MNT {path}: RPC {hdr.describe()}")
        res = mnt.decode_mnt_res(Unpacker(data, hdr.body_offset))
        if res.status != mnt.MNT3_OK:
            raise NfsError(f"MNT {path}: {mnt.STATUS_NAMES.get(res.status, res.status)}")
        return res.fh

    def _proc(self, proc: int, args, what: str):
        """Generator: one NFS call whose result must be NFS3_OK -> nfs3.Res; NfsError otherwise
        (``what`` names the call in the error: "LOOKUP swap.img")."""
        label = nfs3.PROC_NAMES[proc]
        data = yield from self.call(lambda xid: nfs3.encode_call(xid, proc, args, self.cred), label)
        hdr, res = nfs3.decode_reply(proc, data)
        if res is None:
            raise NfsError(f"{what}: RPC {hdr.describe()}")
        if res.status != nfs3.NFS3_OK:
            raise NfsError(f"{what}: {nfs3.STATUS_NAMES.get(res.status, f'nfsstat3 {res.status}')}")
        return res

    def lookup(self, dir_fh: bytes, name: str):
        """LOOKUP -> (fh, size_bytes or None)."""
        res = yield from self._proc(nfs3.NFSPROC3_LOOKUP, nfs3.DiropArgs(dir_fh, name.encode()),
                                    f"LOOKUP {name}")
        return res.fh, (res.attr.size if res.attr is not None else None)

    def read(self, fh: bytes, offset: int, count: int):
        """READ -> the bytes (fewer than ``count`` only at end of file). Raises NfsError on
        anything but NFS3_OK."""
        res = yield from self._proc(nfs3.NFSPROC3_READ, nfs3.ReadArgs(fh, offset, count),
                                    f"READ offset {offset}")
        return bytes(res.data)

    def write(self, fh: bytes, offset: int, data: bytes, stable: int = nfs3.FILE_SYNC):
        """WRITE -> nfs3.WriteReply (count, committed, verf). Raises NfsError on anything but
        NFS3_OK (one call, no retry: ``write_durably`` is the loop that retries)."""
        msg = yield from self._write_call(fh, offset, data, stable)
        v = classify_reply(msg, _decode_write_reply)
        if v.kind != OK:
            raise NfsError(f"WRITE offset {offset}: {v.reason}")
        return v.reply

    def _write_call(self, fh: bytes, offset: int, data: bytes, stable: int):
        """Generator (the RPC call's own: one frame less on each resumption): one WRITE call;
        returns the reply's bytes, undecoded."""
        if len(data) > self.wsize:
            raise ValueError(f"write of {len(data)} bytes exceeds wsize {self.wsize}")
        # nfs3.encode_write_call's bytes: what follows the xid up to the file handle's padding
        # is the same for every WRITE on one file handle (checked against the encoder), so it is
        # encoded once and each call joins xid, prefix, offset/count/stable, data, padding.
        prefix = self._write_prefix.get(fh)
        if prefix is None:
            prefix = nfs3.encode_write_call(0, fh, 0, b"", stable, self.cred)[4:-_WRITE_TAIL.size]
            self._write_prefix = {fh: prefix}
        n = len(data)
        tail = _WRITE_TAIL.pack(offset, n, stable, n)
        pad = b"\0" * (-n & 3)
        return self.call(lambda xid: b"".join((_U32.pack(xid), prefix, tail, data, pad)), "WRITE")

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
            lambda xid: nfs3.encode_call(xid, nfs3.NFSPROC3_COMMIT, args, self.cred), "COMMIT")
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
            try:
                v = yield from send()
            except RpcXprtDead as e:                    # the transport's task crashed: -EIO
                self.log(f"nfs: {proc} at offset {offset}: {e}")
                return self._write_error(counters, WriteError("EIO", XPRT_DEAD_REASON, offset, proc))
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

    _write_error = staticmethod(count_write_error)

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
        if self.xprt is None:
            return {"server": f"{self.server_ip}:{self.port}", "proto": self.proto,
                    "counters": {}, "proc": {}, "slots": self.slots, "slots_in_use": 0,
                    "backlog": 0, "not_responding": False, "memalloc": self._memalloc,
                    "socket": None, "xids_sent": [], "xids_replied": [], "mount_xids": list(self.mount_xids)}
        return {
            "server": f"{self.server_ip}:{self.port}",
            "proto": self.proto, "mount_port": self.mount_port, "fsinfo": self.fsinfo,
            "counters": dict(self.xprt.counters),
            "proc": dict(self.clnt.proc_counts),
            "slots": self.slots,
            "slots_in_use": self.xprt.slots_in_use,
            "backlog": self.xprt.backlog,
            "not_responding": self.clnt.not_responding,
            "xprt_dead": self.xprt.dead,
            "memalloc": self.sk.memalloc if self.sk is not None else False,
            "socket": self.xprt.socket_snapshot(),
            "xids_sent": list(self.xprt.xids_sent),
            "xids_replied": list(self.xprt.xids_replied),
            "mount_xids": list(self.mount_xids),
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
