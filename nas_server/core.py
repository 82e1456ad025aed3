"""The NAS server core: one RPC call in, zero or more reply messages out. Sans-I/O.

``NasCore.handle(msg, peer, now, transport)`` answers NFSv3 (100003 v3), MOUNT v3 (100005 v3) and
portmap v2 (100000 v2) calls over a ``Store``. The same call serves a UDP datagram or a TCP record
(the driver strips and adds the record mark).

Invariants owned here:
- Every input yields either the reply a real server sends (SUCCESS with an nfsstat3, or
  PROG_UNAVAIL / PROG_MISMATCH / PROC_UNAVAIL / GARBAGE_ARGS / SYSTEM_ERR, RPC_MISMATCH /
  AUTH_ERROR) or a drop whose reason is counted in ``counters['drop_<reason>']``. No input raises.
- A file handle is opaque to clients and validated on every call: wrong shape -> NFS3ERR_BADHANDLE,
  unknown export or file -> NFS3ERR_STALE, export not open to the client's network -> NFS3ERR_ACCES.
- Non-idempotent calls go through the duplicate request cache: a retransmission is answered from
  the cache and never executed twice. A call that raises inside the server (SYSTEM_ERR) leaves no
  entry behind (nfsd's RC_NOCACHE on its error path): its retransmission is executed again.

Choices (documented where a real server could differ):
- A WRITE that would end past an image's end fails whole with NFS3ERR_NOSPC, as a write past the
  end of a block device does (images are fixed-size, like the devices they stand for).
- SETATTR never changes an image's size: a larger size answers NFS3ERR_NOSPC, a smaller one is
  accepted and ignored (as O_TRUNC is on a block device; libnfs's nfs-cp truncates to 0 after CREATE).
  CREATE UNCHECKED of an existing image treats its size attribute the same way.
- A new name answers CREATE with NFS3ERR_NOSPC unless the core was given ``new_image_bytes`` > 0,
  and also once the store holds ``max_images`` images (each is an open file: one client must not
  exhaust the server's descriptors); ``counters['create_refused_max_images']`` counts those.
- NFS calls on an export the client's network may not mount answer NFS3ERR_ACCES; MNT answers
  MNT3ERR_ACCES. Credentials other than AUTH_NONE / AUTH_SYS answer AUTH_ERROR(AUTH_BADCRED);
  a non-null verifier answers AUTH_ERROR(AUTH_BADVERF).
- Directory-changing procedures (MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK) and READLINK
  answer NFS3ERR_NOTSUPP with empty attributes: an export's set of images is fixed by its
  administrator. A call to a program or version this server does not serve (e.g. the NFSACL probe,
  100227 v3) is counted by program and version in ``unavailable``, never as a procedure.

Replays outside the duplicate request cache (RFC 1813; the DRC is keyed on the client's port, as
nfsd's is, so a reconnect from a new port misses it). What each non-idempotent procedure answers
when executed a second time, and what Linux nfsd (fs/nfsd/nfs3proc.c, vfs.c) does:
- CREATE EXCLUSIVE: the verifier is stored with the image (RFC 1813 §3.3.8); the same verifier
  answers NFS3_OK with the same file handle, another one NFS3ERR_EXIST. Linux: the same, with the
  verifier in the inode's atime/mtime (``nfsd_create_setattr``), which a later WRITE or SETATTR
  overwrites; here too the first WRITE or SETATTR of times ends the replay window.
- CREATE GUARDED: NFS3ERR_EXIST (§3.3.8: "fails the request if a duplicate exists"). Linux: same.
- CREATE UNCHECKED: NFS3_OK with the same handle; the size attribute is handled as by SETATTR.
  Linux: same (``nfsd3_create_file`` applies the attributes again).
- SETATTR with a guard: the first call changed ctime, so the replay's ``obj_ctime`` no longer
  matches and it answers NFS3ERR_NOT_SYNC with the attributes unchanged (§3.3.2). Linux: same
  (``nfsd_setattr`` compares ``guardtime`` with ``inode_get_ctime``). Without a guard: re-applied.
- WRITE: re-executed with the same data at the same offset (idempotent on a fixed-size image);
  the reply carries the current write verifier. Linux: same.
- COMMIT: not cached (nfsd's RC_NOCACHE); after a restart it answers NFS3_OK with the new write
  verifier, which tells the client its UNSTABLE data is lost and must be resent (§3.3.21).
- MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK: NFS3ERR_NOTSUPP every time (nothing is
  changed, so a replay cannot differ). Linux executes them and a replay of REMOVE/RMDIR answers
  NOENT, of MKDIR/SYMLINK/LINK/RENAME EXIST or NOENT -- the RFC's known non-idempotency.

Reply sizes a client bounds are computed from the bytes that will be encoded: READDIR ``count``
and READDIRPLUS ``maxcount`` bound the resok (every XDR word included, the "value follows" words
too), and the entries returned are the longest prefix that fits; NFS3ERR_TOOSMALL if none does
(RFC 1813 §3.3.16/§3.3.17; Linux ``nfsd3_proc_readdir``/``svcxdr_encode_entry3plus``). READDIRPLUS
``dircount`` bounds the entries' directory part (entry3 bytes) after the first entry; Linux
ignores dircount. READ answers at most ``rtmax`` (FSINFO) bytes, so its reply fits a UDP datagram
(UDP) or the client's record limit (TCP).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, deque
from typing import Callable

from .drc import DuplicateRequestCache, call_checksum
from protocols import mount as mnt
from protocols import nfs3, rpc
from protocols.xdr import Packer, Unpacker, XdrError
from .store import Export, Image, Store, StoreError

FH_MAGIC = b"TBN3"
FH_VERSION = 1
FH_KIND_DIR = 1
FH_KIND_FILE = 2
_FH = struct.Struct(">4sBBHIQ")  # magic, version, kind, reserved, fsid, fileid: 20 bytes
FH_LEN = _FH.size

UDP_MAX_IO_BYTES = 32768  # rtmax/wtmax over UDP: a reply must fit a 64 KiB datagram (Linux uses 32 KiB)
TCP_MAX_IO_BYTES = 1 << 20  # rtmax/wtmax over TCP: nfsd's default maximum payload
LATENCY_SAMPLES = 4096  # per-procedure reservoir for percentiles: recent behaviour, bounded memory
DEFAULT_MAX_IMAGES = 1024  # images (open files) in the store before CREATE of a new name answers NOSPC
UNAVAILABLE_KEYS_MAX = 32  # distinct "PROG vVERS" keys counted in ``unavailable``; the rest are "other"

# NFSv3 procedures answered NFS3ERR_NOTSUPP: their failure body is this many FALSE booleans
# (post_op_attr / pre_op_attr / wcc_data parts), from RFC 1813's *3resfail definitions.
_NOTSUPP_FAIL_BOOLS = {
    nfs3.NFSPROC3_READLINK: 1, nfs3.NFSPROC3_MKDIR: 2, nfs3.NFSPROC3_SYMLINK: 2, nfs3.NFSPROC3_MKNOD: 2,
    nfs3.NFSPROC3_REMOVE: 2, nfs3.NFSPROC3_RMDIR: 2, nfs3.NFSPROC3_RENAME: 4, nfs3.NFSPROC3_LINK: 3,
}
# Cached in the DRC (nfsd's RC_REPLBUFF/RC_REPLSTAT procedures).
_NFS_DRC_PROCS = frozenset({nfs3.NFSPROC3_SETATTR, nfs3.NFSPROC3_WRITE, nfs3.NFSPROC3_CREATE}) | frozenset(
    p for p in _NOTSUPP_FAIL_BOOLS if p != nfs3.NFSPROC3_READLINK)


class _Status(Exception):
    def __init__(self, status: int, msg: str = ""):
        super().__init__(msg)
        self.status = status


def make_fh(kind: int, fsid: int, fileid: int) -> bytes:
    return _FH.pack(FH_MAGIC, FH_VERSION, kind, 0, fsid, fileid)


def _nfstime(t: float) -> tuple[int, int]:
    s = int(t)
    return (s & 0xFFFFFFFF, int((t - s) * 1e9) % 1_000_000_000)


def parse_networks(spec: str) -> list:
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError as e:
                raise ValueError(f"export network {part!r} is not an address or CIDR network ({e})") from None
    return out


class NasCore:
    def __init__(self, store: Store, *, nfs_port: int = 2049, mount_port: int | None = None,
                 drc: DuplicateRequestCache | None = None, new_image_bytes: int = 0,
                 max_images: int = DEFAULT_MAX_IMAGES, log: Callable[[str], None] | None = None):
        self.store = store
        self.nfs_port = nfs_port
        self.mount_port = mount_port if mount_port is not None else nfs_port
        self.drc = drc if drc is not None else DuplicateRequestCache()
        self.new_image_bytes = new_image_bytes
        self.max_images = max_images
        self.log = log
        self.counters: Counter = Counter()
        self.proc_calls: Counter = Counter()
        self.proc_bytes_in: Counter = Counter()
        self.proc_bytes_out: Counter = Counter()
        self.proc_errors: Counter = Counter()
        self.nfs_status: Counter = Counter()
        self.latency_s: dict[str, deque] = {}
        self.unavailable: Counter = Counter()  # "PROG vVERS" / "PROG vVERS proc N" -> calls refused
        self.mounts: dict[tuple[str, bytes], float] = {}  # (client ip, dirpath) -> time (DUMP)
        self.last_label: str | None = None
        self._drc_key: tuple | None = None  # the call's in-progress DRC entry, while it executes

    # -- public ---------------------------------------------------------------------------------
    def handle(self, msg: bytes | bytearray | memoryview, peer: tuple, now: float,
               transport: str = "udp") -> list[bytes]:
        """Answer one RPC message from ``peer`` ((host, port)) at time ``now`` (seconds)."""
        self.counters["rpc_msgs"] += 1
        self.last_label = None  # set once the call names a procedure this server serves
        self._drc_key = None
        try:
            return self._handle(msg, peer, now, transport)
        except Exception as e:  # a bug must not take the server down; SYSTEM_ERR says so
            self.counters["internal_errors"] += 1
            if self._drc_key is not None:
                # nfsd_dispatch's error path: nfsd_cache_update(rqstp, RC_NOCACHE, NULL) frees the
                # entry, so the retransmission is executed again instead of being dropped as
                # "in progress" until the entry ages out (max_age_s).
                self.drc.finish(self._drc_key, None, now)
            xid = rpc.peek_xid(msg)
            self._log(f"{peer[0]}:{peer[1]} xid={xid} internal error {type(e).__name__}: {e}")
            if xid is None:
                return []
            self.counters["rpc_system_err"] += 1
            return [rpc.encode_accepted(xid, rpc.SYSTEM_ERR)]

    def observe_latency(self, label: str | None, seconds: float) -> None:
        """Record ``seconds`` for procedure ``label``; None (no served procedure: a drop, an RPC
        error, an unavailable program or procedure) is not a procedure and is not recorded."""
        if label is None:
            return
        d = self.latency_s.get(label)
        if d is None:
            d = self.latency_s[label] = deque(maxlen=LATENCY_SAMPLES)
        d.append(seconds)

    def snapshot(self) -> dict:
        procs = {}
        for label in sorted(set(self.proc_calls) | set(self.latency_s)):
            entry = {"calls": self.proc_calls[label], "bytes_in": self.proc_bytes_in[label],
                     "bytes_out": self.proc_bytes_out[label], "errors": self.proc_errors[label]}
            lat = sorted(self.latency_s.get(label, ()))
            if lat:
                for q in (50, 90, 99):
                    entry[f"latency_p{q}_us"] = round(lat[min(len(lat) - 1, len(lat) * q // 100)] * 1e6, 1)
                entry["latency_max_us"] = round(lat[-1] * 1e6, 1)
            procs[label] = entry
        return {
            "counters": dict(self.counters),
            "procedures": procs,
            "nfs_status": dict(self.nfs_status),
            "unavailable": dict(self.unavailable),
            "limits": {"max_images": self.max_images, "images": self.store.image_count(),
                       "unavailable_keys_max": UNAVAILABLE_KEYS_MAX},
            "drc": self.drc.snapshot(),
            "write_verifier": self.store.verifier.hex(),
            "pending_unstable_bytes": self.store.pending_bytes(),
            "exports": {
                e.name: {"networks": [str(n) for n in e.networks],
                         "images": {i.name: i.size_bytes for i in e.images.values()}}
                for e in self.store.exports.values()
            },
            "mounts": [f"{ip}:{path.decode(errors='replace')}" for ip, path in self.mounts],
        }

    # -- dispatch -------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def _unavailable(self, key: str) -> None:
        if key not in self.unavailable and len(self.unavailable) >= UNAVAILABLE_KEYS_MAX:
            key = "other"
        self.unavailable[key] += 1

    def _drop(self, reason: str, peer: tuple, detail: str) -> list[bytes]:
        self.counters["drop_" + reason] += 1
        self._log(f"{peer[0]}:{peer[1]} drop {reason}: {detail}")
        return []

    def _handle(self, msg, peer, now, transport) -> list[bytes]:
        try:
            call = rpc.decode_call(msg)
        except rpc.RpcError as e:
            if e.kind == "rpc_mismatch":
                self.counters["rpc_rpc_mismatch"] += 1
                return [rpc.encode_rpc_mismatch(e.xid)]
            if e.kind == "bad_cred":
                self.counters["rpc_auth_badcred"] += 1
                return [rpc.encode_auth_error(e.xid, rpc.AUTH_BADCRED)]
            if e.kind == "bad_verf":
                self.counters["rpc_auth_badverf"] += 1
                return [rpc.encode_auth_error(e.xid, rpc.AUTH_BADVERF)]
            return self._drop(e.kind, peer, str(e))
        xid = call.xid
        if call.cred_flavor not in (rpc.AUTH_NONE, rpc.AUTH_SYS):
            self.counters["rpc_auth_badcred"] += 1
            self._log(f"{peer[0]}:{peer[1]} xid={xid:#x} credential flavor {call.cred_flavor} refused (AUTH_BADCRED)")
            return [rpc.encode_auth_error(xid, rpc.AUTH_BADCRED)]
        if call.verf_flavor != rpc.AUTH_NONE or call.verf_body:
            self.counters["rpc_auth_badverf"] += 1
            return [rpc.encode_auth_error(xid, rpc.AUTH_BADVERF)]

        if call.prog == nfs3.NFS_PROGRAM:
            vers, names, prefix = nfs3.NFS_V3, nfs3.PROC_NAMES, "NFS3_"
        elif call.prog == mnt.MOUNT_PROGRAM:
            vers, names, prefix = mnt.MOUNT_V3, mnt.PROC_NAMES, "MOUNT3_"
        elif call.prog == mnt.PMAP_PROGRAM:
            vers, names, prefix = mnt.PMAP_V2, {0: "NULL", 1: "SET", 2: "UNSET", 3: "GETPORT", 4: "DUMP"}, "PMAP2_"
        else:
            self.counters["rpc_prog_unavail"] += 1
            self._unavailable(f"{call.prog} v{call.vers}")
            self._log(f"{peer[0]}:{peer[1]} xid={xid:#x} program {call.prog} unavailable (PROG_UNAVAIL)")
            return [rpc.encode_accepted(xid, rpc.PROG_UNAVAIL)]
        if call.vers != vers:
            self.counters["rpc_prog_mismatch"] += 1
            self._unavailable(f"{call.prog} v{call.vers}")
            self._log(f"{peer[0]}:{peer[1]} xid={xid:#x} program {call.prog} version {call.vers} (PROG_MISMATCH, speak {vers})")
            return [rpc.encode_prog_mismatch(xid, vers, vers)]
        name = names.get(call.proc)
        if name is None:
            self.counters["rpc_proc_unavail"] += 1
            self._unavailable(f"{call.prog} v{call.vers} proc {call.proc}")
            self._log(f"{peer[0]}:{peer[1]} xid={xid:#x} {prefix}proc {call.proc} (PROC_UNAVAIL)")
            return [rpc.encode_accepted(xid, rpc.PROC_UNAVAIL)]
        label = prefix + name
        self.last_label = label
        self.proc_calls[label] += 1
        self.proc_bytes_in[label] += len(msg)

        drc_key = None
        if call.prog == nfs3.NFS_PROGRAM and call.proc in _NFS_DRC_PROCS:
            drc_key = (xid, peer[0], peer[1], call.prog, call.vers, call.proc, call_checksum(msg))
            state, cached = self.drc.lookup(drc_key, now)
            if state == "miss":
                self._drc_key = drc_key  # in progress: forgotten again if the call raises
            if state == "hit":
                self.counters["drc_hits"] += 1
                self._log(f"{peer[0]}:{peer[1]} xid={xid:#x} {label} retransmission answered from the DRC")
                return [cached]
            if state == "inprogress":
                return self._drop("drc_inprogress", peer, f"xid={xid:#x} {label} still executing")

        u = Unpacker(msg, call.args_offset)
        try:
            if call.prog == nfs3.NFS_PROGRAM:
                body = self._nfs(call, u, peer, now, transport, label)
            elif call.prog == mnt.MOUNT_PROGRAM:
                body = self._mount(call, u, peer, now)
            else:
                body = self._pmap(call, u)
        except XdrError as e:
            self.counters["rpc_garbage_args"] += 1
            self.proc_errors[label] += 1
            self._log(f"{peer[0]}:{peer[1]} xid={xid:#x} {label} GARBAGE_ARGS: {e}")
            reply = rpc.encode_accepted(xid, rpc.GARBAGE_ARGS)
        else:
            reply = rpc.encode_accepted(xid, rpc.SUCCESS, body)
        if drc_key is not None:
            self.drc.finish(drc_key, reply, now)
        self.proc_bytes_out[label] += len(reply)
        return [reply]

    # -- portmap --------------------------------------------------------------------------------
    def _mappings(self) -> list[mnt.Mapping]:
        m = []
        for prot in (mnt.IPPROTO_TCP, mnt.IPPROTO_UDP):
            m.append(mnt.Mapping(mnt.PMAP_PROGRAM, mnt.PMAP_V2, prot, mnt.PMAP_PORT))
            m.append(mnt.Mapping(nfs3.NFS_PROGRAM, nfs3.NFS_V3, prot, self.nfs_port))
            m.append(mnt.Mapping(mnt.MOUNT_PROGRAM, mnt.MOUNT_V3, prot, self.mount_port))
        return m

    def _pmap(self, call: rpc.CallHeader, u: Unpacker) -> bytes:
        p = Packer()
        if call.proc == mnt.PMAPPROC_NULL:
            return b""
        if call.proc in (mnt.PMAPPROC_SET, mnt.PMAPPROC_UNSET):
            mnt.decode_mapping(u)
            p.pack_bool(False)  # registrations are fixed: this portmapper lists only this server
        elif call.proc == mnt.PMAPPROC_GETPORT:
            q = mnt.decode_mapping(u)
            port = 0
            for m in self._mappings():
                if (m.prog, m.vers, m.prot) == (q.prog, q.vers, q.prot):
                    port = m.port
            p.pack_uint(port)
        elif call.proc == mnt.PMAPPROC_DUMP:
            return mnt.encode_pmap_list(self._mappings())
        return p.get_bytes()

    # -- MOUNT ----------------------------------------------------------------------------------
    def _allowed(self, exp: Export, host: str) -> bool:
        if not exp.networks:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in n for n in exp.networks)

    def _export_for_path(self, path: bytes) -> Export | None:
        p = path.decode("utf-8", errors="replace").strip("/")
        return self.store.exports.get(p)

    def _mount(self, call: rpc.CallHeader, u: Unpacker, peer: tuple, now: float) -> bytes:
        proc = call.proc
        if proc == mnt.MOUNTPROC3_NULL:
            return b""
        if proc == mnt.MOUNTPROC3_MNT:
            path = mnt.decode_dirpath(u)
            exp = self._export_for_path(path)
            if exp is None:
                st = mnt.MNT3ERR_NOENT
                self._log(f"{peer[0]}:{peer[1]} xid={call.xid:#x} MNT {path!r}: no such export (exports: "
                          f"{', '.join('/' + n for n in self.store.exports)})")
            elif not self._allowed(exp, peer[0]):
                st = mnt.MNT3ERR_ACCES
                self._log(f"{peer[0]}:{peer[1]} xid={call.xid:#x} MNT /{exp.name}: client not in "
                          f"{', '.join(map(str, exp.networks))} (MNT3ERR_ACCES)")
            else:
                st = mnt.MNT3_OK
                # one entry per client and export, whatever the spelling of the path (/swap,
                # //swap, swap/): rpc.mountd's get_rootfh realpath()s the dirpath before
                # mountlist_add, so one client cannot grow the list (and DUMP's reply) at will.
                self.mounts[(peer[0], b"/" + exp.name.encode())] = now
            self.counters[f"mnt_{mnt.STATUS_NAMES.get(st, st)}"] += 1
            fh = make_fh(FH_KIND_DIR, exp.fsid, exp.dir_fileid) if st == mnt.MNT3_OK else b""
            return mnt.encode_mnt_res(mnt.MntRes(st, fh, [rpc.AUTH_SYS, rpc.AUTH_NONE]))
        if proc == mnt.MOUNTPROC3_UMNT:
            exp = self._export_for_path(mnt.decode_dirpath(u))
            if exp is not None:
                self.mounts.pop((peer[0], b"/" + exp.name.encode()), None)
            return b""
        if proc == mnt.MOUNTPROC3_UMNTALL:
            for k in [k for k in self.mounts if k[0] == peer[0]]:
                del self.mounts[k]
            return b""
        if proc == mnt.MOUNTPROC3_DUMP:
            p = Packer()
            for (ip, path) in self.mounts:
                p.pack_bool(True)
                p.pack_string(ip.encode(), mnt.MNTNAMLEN)
                p.pack_string(path, mnt.MNTPATHLEN)
            p.pack_bool(False)
            return p.get_bytes()
        # EXPORT
        return mnt.encode_exports([
            (b"/" + e.name.encode(), [str(n).encode() for n in e.networks] or [b"*"])
            for e in self.store.exports.values()
        ])

    # -- NFSv3 ----------------------------------------------------------------------------------
    def _resolve(self, fh: bytes, peer: tuple) -> tuple[Export, Image | None]:
        """(export, image) for a file handle, (export, None) for an export's directory."""
        if len(fh) != FH_LEN:
            raise _Status(nfs3.NFS3ERR_BADHANDLE, f"file handle of {len(fh)} bytes (ours are {FH_LEN})")
        magic, ver, kind, _r, fsid, fileid = _FH.unpack(fh)
        if magic != FH_MAGIC or ver != FH_VERSION or kind not in (FH_KIND_DIR, FH_KIND_FILE):
            raise _Status(nfs3.NFS3ERR_BADHANDLE, f"file handle {fh.hex()} is not one of ours")
        exp = self.store.by_fsid.get(fsid)
        if exp is None:
            raise _Status(nfs3.NFS3ERR_STALE, f"file handle names fsid {fsid:#x}, no such export")
        if not self._allowed(exp, peer[0]):
            raise _Status(nfs3.NFS3ERR_ACCES, f"export /{exp.name} is not open to {peer[0]}")
        if kind == FH_KIND_DIR:
            if fileid != exp.dir_fileid:
                raise _Status(nfs3.NFS3ERR_STALE, f"directory fileid {fileid} is not export /{exp.name}")
            return exp, None
        img = exp.by_fileid.get(fileid)
        if img is None:
            raise _Status(nfs3.NFS3ERR_STALE, f"fileid {fileid} is not an image of /{exp.name}")
        return exp, img

    def _attr(self, exp: Export, img: Image | None) -> nfs3.Fattr3:
        if img is None:
            t = _nfstime(exp.mtime_s)
            return nfs3.Fattr3(nfs3.NF3DIR, 0o755, 2, 0, 0, 4096, 4096, (0, 0), exp.fsid, exp.dir_fileid, t, t, t)
        mt = _nfstime(img.mtime_s)
        return nfs3.Fattr3(nfs3.NF3REG, img.mode, 1, 0, 0, img.size_bytes, img.size_bytes, (0, 0), exp.fsid,
                           img.fileid, mt, mt, _nfstime(img.ctime_s))

    def _wcc(self, exp: Export, img: Image | None, before: nfs3.Fattr3 | None) -> nfs3.WccData:
        b = nfs3.WccAttr(before.size, before.mtime, before.ctime) if before is not None else None
        return nfs3.WccData(b, self._attr(exp, img))

    def _nfs(self, call: rpc.CallHeader, u: Unpacker, peer: tuple, now: float, transport: str, label: str) -> bytes:
        proc = call.proc
        if proc == nfs3.NFSPROC3_NULL:
            return b""
        if proc in _NOTSUPP_FAIL_BOOLS:
            self.nfs_status["NFS3ERR_NOTSUPP"] += 1
            self.proc_errors[label] += 1
            return struct.pack(">I", nfs3.NFS3ERR_NOTSUPP) + b"\0\0\0\0" * _NOTSUPP_FAIL_BOOLS[proc]
        args = nfs3.decode_args(proc, u)
        res = nfs3.Res()
        try:
            self._nfs_exec(proc, args, res, peer, now, transport)
        except (_Status, StoreError) as e:
            res.status = e.status if isinstance(e, _Status) else getattr(nfs3, e.status)
            self._log(f"{peer[0]}:{peer[1]} xid={call.xid:#x} {label} "
                      f"{nfs3.STATUS_NAMES.get(res.status, res.status)}: {e}")
        except OSError as e:
            res.status = nfs3.NFS3ERR_IO
            self._log(f"{peer[0]}:{peer[1]} xid={call.xid:#x} {label} NFS3ERR_IO: {e}")
        if res.status != nfs3.NFS3_OK:
            self.proc_errors[label] += 1
        self.nfs_status[nfs3.STATUS_NAMES.get(res.status, str(res.status))] += 1
        return nfs3.encode_res(proc, res)

    def _nfs_exec(self, proc: int, a, r: nfs3.Res, peer: tuple, now: float, transport: str) -> None:
        fh = a.dir if hasattr(a, "dir") else a.fh
        try:
            exp, img = self._resolve(fh, peer)
        except _Status:
            raise
        attr = self._attr(exp, img)
        if proc == nfs3.NFSPROC3_GETATTR:
            r.attr = attr
        elif proc == nfs3.NFSPROC3_SETATTR:
            r.wcc = nfs3.WccData(nfs3.WccAttr(attr.size, attr.mtime, attr.ctime), attr)
            if a.guard_ctime is not None and a.guard_ctime != attr.ctime:
                raise _Status(nfs3.NFS3ERR_NOT_SYNC, f"guard ctime {a.guard_ctime} != {attr.ctime}")
            s = a.attrs
            if img is None:
                if s.size is not None:
                    raise _Status(nfs3.NFS3ERR_ISDIR, "cannot set the size of a directory")
                return
            if s.size is not None and s.size > img.size_bytes:
                raise _Status(nfs3.NFS3ERR_NOSPC, f"images never grow: size {s.size} > {img.size_bytes}")
            # A smaller size (libnfs's O_TRUNC sends size 0) is ignored, as O_TRUNC is on a block
            # device: the image keeps its size and contents, and the post-op attributes say so.
            if s.mode is not None:
                img.mode = s.mode & 0o7777
            if s.mtime != nfs3.DONT_CHANGE or s.atime != nfs3.DONT_CHANGE:
                img.forget_create_verf()  # Linux: the client's times replace the verifier's words
            if isinstance(s.mtime, tuple):
                img.mtime_s = s.mtime[0] + s.mtime[1] / 1e9
            elif s.mtime == nfs3.SET_TO_SERVER_TIME:
                img.mtime_s = now
            img.ctime_s = now
            r.wcc = self._wcc(exp, img, attr)
        elif proc == nfs3.NFSPROC3_LOOKUP:
            r.dir_attr = attr
            if img is not None:
                raise _Status(nfs3.NFS3ERR_NOTDIR, "LOOKUP in a file")
            name = a.name
            if len(name) > nfs3.NFS3_MAXNAMLEN:
                raise _Status(nfs3.NFS3ERR_NAMETOOLONG, f"name of {len(name)} bytes")
            if name in (b".", b".."):  # an export is its own root: '..' does not leave it
                r.fh, r.attr = fh, attr
                return
            target = exp.images.get(name.decode("utf-8", errors="replace"))
            if target is None:
                raise _Status(nfs3.NFS3ERR_NOENT, f"no image {name!r} in /{exp.name}")
            r.fh = make_fh(FH_KIND_FILE, exp.fsid, target.fileid)
            r.attr = self._attr(exp, target)
        elif proc == nfs3.NFSPROC3_ACCESS:
            r.attr = attr
            if img is None:
                allowed = nfs3.ACCESS3_READ | nfs3.ACCESS3_LOOKUP | nfs3.ACCESS3_EXECUTE
            else:
                allowed = nfs3.ACCESS3_READ | nfs3.ACCESS3_MODIFY | nfs3.ACCESS3_EXTEND
            r.access = a.access & allowed
        elif proc == nfs3.NFSPROC3_READ:
            r.attr = attr
            if img is None:
                raise _Status(nfs3.NFS3ERR_ISDIR, "READ of a directory")
            count = min(a.count, UDP_MAX_IO_BYTES if transport == "udp" else TCP_MAX_IO_BYTES)
            data = img.read(a.offset, count) if a.offset < img.size_bytes else b""
            r.count, r.data = len(data), data
            r.eof = a.offset + len(data) >= img.size_bytes
        elif proc == nfs3.NFSPROC3_WRITE:
            r.wcc = nfs3.WccData(nfs3.WccAttr(attr.size, attr.mtime, attr.ctime), attr)
            if img is None:
                raise _Status(nfs3.NFS3ERR_ISDIR, "WRITE to a directory")
            if a.offset + a.count > 0xFFFFFFFFFFFFFFFF:
                raise _Status(nfs3.NFS3ERR_INVAL, f"offset {a.offset} + count {a.count} overflows 64 bits")
            img.write(a.offset, a.data, a.stable != nfs3.UNSTABLE, now)
            self.counters["write_bytes_" + nfs3.STABLE_NAMES[a.stable]] += a.count
            r.count = a.count
            r.committed = a.stable
            r.verf = self.store.verifier
            r.wcc = self._wcc(exp, img, attr)
        elif proc == nfs3.NFSPROC3_COMMIT:
            r.wcc = nfs3.WccData(nfs3.WccAttr(attr.size, attr.mtime, attr.ctime), attr)
            if img is None:
                raise _Status(nfs3.NFS3ERR_ISDIR, "COMMIT of a directory")
            self.counters["commit_bytes"] += img.pending_bytes
            img.commit()  # the whole image: allowed (a COMMIT may cover more than asked)
            r.verf = self.store.verifier
        elif proc == nfs3.NFSPROC3_CREATE:
            r.wcc = nfs3.WccData(nfs3.WccAttr(attr.size, attr.mtime, attr.ctime), attr)
            if img is not None:
                raise _Status(nfs3.NFS3ERR_NOTDIR, "CREATE in a file")
            name = a.name
            if len(name) > nfs3.NFS3_MAXNAMLEN:
                raise _Status(nfs3.NFS3ERR_NAMETOOLONG, f"name of {len(name)} bytes")
            sname = name.decode("utf-8", errors="replace")
            target = exp.images.get(sname)
            if target is not None:
                if a.mode == nfs3.GUARDED:
                    raise _Status(nfs3.NFS3ERR_EXIST, f"image {sname!r} exists (GUARDED)")
                if a.mode == nfs3.EXCLUSIVE:
                    if not target.create_verf_matches(a.verf):
                        raise _Status(nfs3.NFS3ERR_EXIST, f"image {sname!r} exists and was not made by "
                                                          f"an EXCLUSIVE CREATE with verifier {a.verf.hex()}")
                    self.counters["create_exclusive_replayed"] += 1
                else:
                    self._check_create_size(a.attrs.size, target.size_bytes)
            else:
                if self.new_image_bytes <= 0:
                    raise _Status(nfs3.NFS3ERR_NOSPC, f"no image {sname!r}; this server creates no new images")
                if a.mode != nfs3.EXCLUSIVE:
                    self._check_create_size(a.attrs.size, self.new_image_bytes)
                if self.store.image_count() >= self.max_images:
                    self.counters["create_refused_max_images"] += 1
                    raise _Status(nfs3.NFS3ERR_NOSPC, f"the store holds {self.store.image_count()} images "
                                                      f"(max_images {self.max_images})")
                try:
                    target = self.store.create_image(exp.name, sname, self.new_image_bytes, now)
                except ValueError as e:
                    raise _Status(nfs3.NFS3ERR_INVAL, str(e)) from None
                if a.mode == nfs3.EXCLUSIVE:
                    target.set_create_verf(a.verf)
            r.fh = make_fh(FH_KIND_FILE, exp.fsid, target.fileid)
            r.attr = self._attr(exp, target)
        elif proc == nfs3.NFSPROC3_FSSTAT:
            r.attr = attr
            r.fsstat = (*self.store.fsstat(exp), 0)  # invarsec 0: the figures may change at any time
        elif proc == nfs3.NFSPROC3_FSINFO:
            r.attr = attr
            io = UDP_MAX_IO_BYTES if transport == "udp" else TCP_MAX_IO_BYTES
            r.fsinfo = (io, io, 4096, io, io, 4096, 4096, 0x7FFFFFFFFFFFFFFF, (0, 1),
                        nfs3.FSF3_HOMOGENEOUS | nfs3.FSF3_CANSETTIME)
        elif proc == nfs3.NFSPROC3_PATHCONF:
            r.attr = attr
            r.pathconf = (1, nfs3.NFS3_MAXNAMLEN, True, True, False, True)
        elif proc in (nfs3.NFSPROC3_READDIR, nfs3.NFSPROC3_READDIRPLUS):
            self._readdir(proc, exp, img, a, r, attr)
        else:  # pragma: no cover - the tables above cover every procedure 0..21
            raise _Status(nfs3.NFS3ERR_NOTSUPP, f"procedure {proc}")

    @staticmethod
    def _check_create_size(size: int | None, image_bytes: int) -> None:
        """CREATE's size attribute, as SETATTR treats it: larger than the image NOSPC, else ignored."""
        if size is not None and size > image_bytes:
            raise _Status(nfs3.NFS3ERR_NOSPC, f"images never grow: size {size} > {image_bytes}")

    def _readdir(self, proc: int, exp: Export, img: Image | None, a, r: nfs3.Res, attr: nfs3.Fattr3) -> None:
        """READDIR (RFC 1813 §3.3.16) and READDIRPLUS (§3.3.17) of an export's directory.

        The resok (everything after the status word) is at most ``count`` (READDIR) or ``maxcount``
        (READDIRPLUS) bytes as encoded, and holds the longest run of entries from ``cookie`` that
        fits; NFS3ERR_TOOSMALL when not even one entry (or, with none left, the empty list) fits.
        READDIRPLUS's ``dircount`` bounds the entries' entry3 part, the first entry excepted, so a
        small dircount never turns into TOOSMALL (Linux nfsd ignores dircount altogether).
        Cookies are entry indexes + 1; the cookie verifier changes when the set of images does.
        """
        r.attr = attr
        if img is not None:
            raise _Status(nfs3.NFS3ERR_NOTDIR, f"{nfs3.PROC_NAMES[proc]} of a file")
        cookieverf = struct.pack(">Q", len(exp.images))
        if a.cookie != 0 and a.cookieverf != cookieverf:
            raise _Status(nfs3.NFS3ERR_BAD_COOKIE, "the directory changed since the cookie was issued")
        plus = proc == nfs3.NFSPROC3_READDIRPLUS
        limit = a.maxcount if plus else a.count
        r.verf = cookieverf
        r.eof = True
        size = len(nfs3.encode_res(proc, nfs3.Res(attr=attr, verf=cookieverf))) - 4  # resok, no entries
        if size > limit:
            r.eof = False
            raise _Status(nfs3.NFS3ERR_TOOSMALL, f"count {limit} < {size} bytes of a reply with no entry")
        dfh = make_fh(FH_KIND_DIR, exp.fsid, exp.dir_fileid)
        names = [(exp.dir_fileid, b".", None), (exp.dir_fileid, b"..", None)]
        names += [(i.fileid, i.name.encode(), i) for i in exp.images.values()]
        dirbytes = 0
        for idx in range(a.cookie, len(names)):
            fileid, name, eimg = names[idx]
            e = (fileid, name, idx + 1)
            dcost = nfs3.entry_xdr_bytes(nfs3.NFSPROC3_READDIR, e)
            if plus:
                efh = dfh if eimg is None else make_fh(FH_KIND_FILE, exp.fsid, eimg.fileid)
                e = (*e, attr if eimg is None else self._attr(exp, eimg), efh)
            cost = nfs3.entry_xdr_bytes(proc, e)
            if size + cost > limit or (plus and r.entries and dirbytes + dcost > a.dircount):
                r.eof = False
                break
            size += cost
            dirbytes += dcost
            r.entries.append(e)
        if not r.entries and not r.eof:
            raise _Status(nfs3.NFS3ERR_TOOSMALL, f"count {limit} holds no entry ({size + cost} bytes needed)")
