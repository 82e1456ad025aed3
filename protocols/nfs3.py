"""NFS version 3 (RFC 1813) argument and result codecs, both directions.

Invariant owned here: every ``decode_*`` either returns a fully bounds-checked value (file handles
at most ``NFS3_FHSIZE`` bytes, names at most ``NFS3_MAXNAMLEN``, WRITE data length equal to its
``count``) or raises ``XdrError`` -- which the server turns into GARBAGE_ARGS. ``encode_*`` and
``decode_*`` of the same type round-trip exactly.

Hot path for the client agent (one call per page): ``encode_write_call`` builds a WRITE call with
one ``struct.pack`` for everything but the handle and data; ``decode_write_reply`` and
``decode_commit_reply`` read only the fields the agent needs without building attribute objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import rpc
from .xdr import Packer, Unpacker, XdrError, pad_len

NFS_PROGRAM = 100003
NFS_V3 = 3
NFS3_FHSIZE = 64  # RFC 1813: opaque data<NFS3_FHSIZE>
NFS3_COOKIEVERFSIZE = 8
NFS3_CREATEVERFSIZE = 8
NFS3_WRITEVERFSIZE = 8
NFS3_MAXNAMLEN = 255  # longest name component accepted (PATHCONF name_max says the same)
NFS3_MAXDATA = 1 << 20  # largest READ/WRITE payload accepted in a call (FSINFO rtmax/wtmax <= this)

# procedures
NFSPROC3_NULL = 0
NFSPROC3_GETATTR = 1
NFSPROC3_SETATTR = 2
NFSPROC3_LOOKUP = 3
NFSPROC3_ACCESS = 4
NFSPROC3_READLINK = 5
NFSPROC3_READ = 6
NFSPROC3_WRITE = 7
NFSPROC3_CREATE = 8
NFSPROC3_MKDIR = 9
NFSPROC3_SYMLINK = 10
NFSPROC3_MKNOD = 11
NFSPROC3_REMOVE = 12
NFSPROC3_RMDIR = 13
NFSPROC3_RENAME = 14
NFSPROC3_LINK = 15
NFSPROC3_READDIR = 16
NFSPROC3_READDIRPLUS = 17
NFSPROC3_FSSTAT = 18
NFSPROC3_FSINFO = 19
NFSPROC3_PATHCONF = 20
NFSPROC3_COMMIT = 21
PROC_NAMES = {
    0: "NULL", 1: "GETATTR", 2: "SETATTR", 3: "LOOKUP", 4: "ACCESS", 5: "READLINK", 6: "READ",
    7: "WRITE", 8: "CREATE", 9: "MKDIR", 10: "SYMLINK", 11: "MKNOD", 12: "REMOVE", 13: "RMDIR",
    14: "RENAME", 15: "LINK", 16: "READDIR", 17: "READDIRPLUS", 18: "FSSTAT", 19: "FSINFO",
    20: "PATHCONF", 21: "COMMIT",
}

# nfsstat3
NFS3_OK = 0
NFS3ERR_PERM = 1
NFS3ERR_NOENT = 2
NFS3ERR_IO = 5
NFS3ERR_NXIO = 6
NFS3ERR_ACCES = 13
NFS3ERR_EXIST = 17
NFS3ERR_XDEV = 18
NFS3ERR_NODEV = 19
NFS3ERR_NOTDIR = 20
NFS3ERR_ISDIR = 21
NFS3ERR_INVAL = 22
NFS3ERR_FBIG = 27
NFS3ERR_NOSPC = 28
NFS3ERR_ROFS = 30
NFS3ERR_MLINK = 31
NFS3ERR_NAMETOOLONG = 63
NFS3ERR_NOTEMPTY = 66
NFS3ERR_DQUOT = 69
NFS3ERR_STALE = 70
NFS3ERR_REMOTE = 71
NFS3ERR_BADHANDLE = 10001
NFS3ERR_NOT_SYNC = 10002
NFS3ERR_BAD_COOKIE = 10003
NFS3ERR_NOTSUPP = 10004
NFS3ERR_TOOSMALL = 10005
NFS3ERR_SERVERFAULT = 10006
NFS3ERR_BADTYPE = 10007
NFS3ERR_JUKEBOX = 10008
STATUS_NAMES = {v: k for k, v in globals().items() if k.startswith("NFS3ERR_") or k == "NFS3_OK"}

# ftype3
NF3REG = 1
NF3DIR = 2
# stable_how
UNSTABLE = 0
DATA_SYNC = 1
FILE_SYNC = 2
STABLE_NAMES = {0: "UNSTABLE", 1: "DATA_SYNC", 2: "FILE_SYNC"}
# createmode3
UNCHECKED = 0
GUARDED = 1
EXCLUSIVE = 2
# time_how
DONT_CHANGE = 0
SET_TO_SERVER_TIME = 1
SET_TO_CLIENT_TIME = 2
# ACCESS bits
ACCESS3_READ = 0x01
ACCESS3_LOOKUP = 0x02
ACCESS3_MODIFY = 0x04
ACCESS3_EXTEND = 0x08
ACCESS3_DELETE = 0x10
ACCESS3_EXECUTE = 0x20
# FSINFO properties
FSF3_LINK = 0x1
FSF3_SYMLINK = 0x2
FSF3_HOMOGENEOUS = 0x8
FSF3_CANSETTIME = 0x10


# -- basic types ------------------------------------------------------------------------------

@dataclass
class Fattr3:
    type: int = NF3REG
    mode: int = 0o644
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    size: int = 0
    used: int = 0
    rdev: tuple[int, int] = (0, 0)
    fsid: int = 0
    fileid: int = 0
    atime: tuple[int, int] = (0, 0)
    mtime: tuple[int, int] = (0, 0)
    ctime: tuple[int, int] = (0, 0)


_FATTR = struct.Struct(">IIIIIQQIIQQIIIIII")  # 84 bytes


def pack_fattr3(p: Packer, a: Fattr3) -> None:
    p.buf += _FATTR.pack(a.type, a.mode, a.nlink, a.uid, a.gid, a.size, a.used, a.rdev[0], a.rdev[1],
                         a.fsid, a.fileid, a.atime[0], a.atime[1], a.mtime[0], a.mtime[1], a.ctime[0], a.ctime[1])


def unpack_fattr3(u: Unpacker) -> Fattr3:
    u._need(_FATTR.size, "fattr3")
    v = _FATTR.unpack_from(u.view, u.pos)
    u.pos += _FATTR.size
    return Fattr3(v[0], v[1], v[2], v[3], v[4], v[5], v[6], (v[7], v[8]), v[9], v[10], (v[11], v[12]),
                  (v[13], v[14]), (v[15], v[16]))


def pack_post_op_attr(p: Packer, a: Fattr3 | None) -> None:
    if a is None:
        p.pack_bool(False)
    else:
        p.pack_bool(True)
        pack_fattr3(p, a)


def unpack_post_op_attr(u: Unpacker) -> Fattr3 | None:
    return unpack_fattr3(u) if u.unpack_bool() else None


@dataclass
class WccAttr:
    size: int
    mtime: tuple[int, int]
    ctime: tuple[int, int]


@dataclass
class WccData:
    before: WccAttr | None = None
    after: Fattr3 | None = None


def pack_wcc_data(p: Packer, w: WccData | None) -> None:
    if w is None or w.before is None:
        p.pack_bool(False)
    else:
        b = w.before
        p.pack_bool(True)
        p.buf += struct.pack(">QIIII", b.size, b.mtime[0], b.mtime[1], b.ctime[0], b.ctime[1])
    pack_post_op_attr(p, w.after if w else None)


def unpack_wcc_data(u: Unpacker) -> WccData:
    before = None
    if u.unpack_bool():
        size = u.unpack_uhyper()
        before = WccAttr(size, (u.unpack_uint(), u.unpack_uint()), (u.unpack_uint(), u.unpack_uint()))
    return WccData(before, unpack_post_op_attr(u))


def pack_fh(p: Packer, fh: bytes) -> None:
    p.pack_opaque(fh, NFS3_FHSIZE)


def unpack_fh(u: Unpacker) -> bytes:
    return u.unpack_opaque(NFS3_FHSIZE)


def pack_name(p: Packer, name: bytes | str) -> None:
    p.pack_string(name, NFS3_MAXNAMLEN)


def unpack_name(u: Unpacker) -> bytes:
    # A longer name is still valid XDR (filename3 is an unbounded string); the server answers
    # NFS3ERR_NAMETOOLONG. Bound it at 4 KiB so a huge length is GARBAGE_ARGS, not an allocation.
    return u.unpack_string(4096)


@dataclass
class Sattr3:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: int | tuple[int, int] = DONT_CHANGE  # DONT_CHANGE, SET_TO_SERVER_TIME, or (sec, nsec)
    mtime: int | tuple[int, int] = DONT_CHANGE


def pack_sattr3(p: Packer, s: Sattr3) -> None:
    for v in (s.mode, s.uid, s.gid):
        p.pack_optional(v, p.pack_uint)
    p.pack_optional(s.size, p.pack_uhyper)
    for t in (s.atime, s.mtime):
        if isinstance(t, tuple):
            p.pack_enum(SET_TO_CLIENT_TIME)
            p.pack_uint(t[0])
            p.pack_uint(t[1])
        else:
            p.pack_enum(t)


def unpack_sattr3(u: Unpacker) -> Sattr3:
    s = Sattr3()
    s.mode = u.unpack_optional(u.unpack_uint)
    s.uid = u.unpack_optional(u.unpack_uint)
    s.gid = u.unpack_optional(u.unpack_uint)
    s.size = u.unpack_optional(u.unpack_uhyper)
    times = []
    for _ in range(2):
        how = u.unpack_enum()
        if how == SET_TO_CLIENT_TIME:
            times.append((u.unpack_uint(), u.unpack_uint()))
        elif how in (DONT_CHANGE, SET_TO_SERVER_TIME):
            times.append(how)
        else:
            raise XdrError(f"time_how {how} is not 0, 1 or 2")
    s.atime, s.mtime = times
    return s


# -- arguments (call bodies) ----------------------------------------------------------------------

@dataclass
class FhArgs:  # GETATTR, FSSTAT, FSINFO, PATHCONF
    fh: bytes


@dataclass
class SetattrArgs:
    fh: bytes
    attrs: Sattr3
    guard_ctime: tuple[int, int] | None = None


@dataclass
class DiropArgs:  # LOOKUP
    dir: bytes
    name: bytes


@dataclass
class AccessArgs:
    fh: bytes
    access: int


@dataclass
class ReadArgs:
    fh: bytes
    offset: int
    count: int


@dataclass
class WriteArgs:
    fh: bytes
    offset: int
    count: int
    stable: int
    data: bytes | memoryview


@dataclass
class CreateArgs:
    dir: bytes
    name: bytes
    mode: int = UNCHECKED
    attrs: Sattr3 = field(default_factory=Sattr3)
    verf: bytes = b""  # EXCLUSIVE only


@dataclass
class CommitArgs:
    fh: bytes
    offset: int
    count: int


@dataclass
class ReaddirArgs:
    dir: bytes
    cookie: int
    cookieverf: bytes
    count: int


@dataclass
class ReaddirplusArgs:
    dir: bytes
    cookie: int
    cookieverf: bytes
    dircount: int
    maxcount: int


def encode_args(proc: int, a) -> bytes:
    p = Packer()
    if proc == NFSPROC3_NULL:
        pass
    elif proc in (NFSPROC3_GETATTR, NFSPROC3_FSSTAT, NFSPROC3_FSINFO, NFSPROC3_PATHCONF):
        pack_fh(p, a.fh)
    elif proc == NFSPROC3_SETATTR:
        pack_fh(p, a.fh)
        pack_sattr3(p, a.attrs)
        p.pack_bool(a.guard_ctime is not None)
        if a.guard_ctime is not None:
            p.pack_uint(a.guard_ctime[0])
            p.pack_uint(a.guard_ctime[1])
    elif proc == NFSPROC3_LOOKUP:
        pack_fh(p, a.dir)
        pack_name(p, a.name)
    elif proc == NFSPROC3_ACCESS:
        pack_fh(p, a.fh)
        p.pack_uint(a.access)
    elif proc == NFSPROC3_READ:
        pack_fh(p, a.fh)
        p.pack_uhyper(a.offset)
        p.pack_uint(a.count)
    elif proc == NFSPROC3_WRITE:
        pack_fh(p, a.fh)
        p.pack_uhyper(a.offset)
        p.pack_uint(a.count)
        p.pack_enum(a.stable)
        p.pack_opaque(a.data)
    elif proc == NFSPROC3_CREATE:
        pack_fh(p, a.dir)
        pack_name(p, a.name)
        p.pack_enum(a.mode)
        if a.mode == EXCLUSIVE:
            p.pack_fopaque(NFS3_CREATEVERFSIZE, a.verf)
        else:
            pack_sattr3(p, a.attrs)
    elif proc == NFSPROC3_COMMIT:
        pack_fh(p, a.fh)
        p.pack_uhyper(a.offset)
        p.pack_uint(a.count)
    elif proc == NFSPROC3_READDIR:
        pack_fh(p, a.dir)
        p.pack_uhyper(a.cookie)
        p.pack_fopaque(NFS3_COOKIEVERFSIZE, a.cookieverf)
        p.pack_uint(a.count)
    elif proc == NFSPROC3_READDIRPLUS:
        pack_fh(p, a.dir)
        p.pack_uhyper(a.cookie)
        p.pack_fopaque(NFS3_COOKIEVERFSIZE, a.cookieverf)
        p.pack_uint(a.dircount)
        p.pack_uint(a.maxcount)
    else:
        raise ValueError(f"no argument encoder for NFSv3 procedure {proc}")
    return p.get_bytes()


def decode_args(proc: int, u: Unpacker):
    """Decode the arguments of ``proc``; raises XdrError (-> GARBAGE_ARGS) or KeyError (unknown proc)."""
    if proc == NFSPROC3_NULL:
        return None
    if proc in (NFSPROC3_GETATTR, NFSPROC3_FSSTAT, NFSPROC3_FSINFO, NFSPROC3_PATHCONF):
        return FhArgs(unpack_fh(u))
    if proc == NFSPROC3_SETATTR:
        fh = unpack_fh(u)
        attrs = unpack_sattr3(u)
        guard = (u.unpack_uint(), u.unpack_uint()) if u.unpack_bool() else None
        return SetattrArgs(fh, attrs, guard)
    if proc == NFSPROC3_LOOKUP:
        return DiropArgs(unpack_fh(u), unpack_name(u))
    if proc == NFSPROC3_ACCESS:
        return AccessArgs(unpack_fh(u), u.unpack_uint())
    if proc == NFSPROC3_READ:
        return ReadArgs(unpack_fh(u), u.unpack_uhyper(), u.unpack_uint())
    if proc == NFSPROC3_WRITE:
        fh = unpack_fh(u)
        offset = u.unpack_uhyper()
        count = u.unpack_uint()
        stable = u.unpack_enum()
        if stable not in (UNSTABLE, DATA_SYNC, FILE_SYNC):
            raise XdrError(f"stable_how {stable} is not UNSTABLE, DATA_SYNC or FILE_SYNC")
        data = u.unpack_opaque_view(NFS3_MAXDATA)
        if len(data) != count:
            # RFC 1813 says count is the amount of data; Linux nfsd rejects a mismatch as garbage.
            raise XdrError(f"WRITE count {count} differs from its data length {len(data)}")
        return WriteArgs(fh, offset, count, stable, data)
    if proc == NFSPROC3_CREATE:
        d = unpack_fh(u)
        name = unpack_name(u)
        mode = u.unpack_enum()
        if mode == EXCLUSIVE:
            return CreateArgs(d, name, mode, Sattr3(), u.unpack_fopaque(NFS3_CREATEVERFSIZE))
        if mode in (UNCHECKED, GUARDED):
            return CreateArgs(d, name, mode, unpack_sattr3(u))
        raise XdrError(f"createmode3 {mode} is not UNCHECKED, GUARDED or EXCLUSIVE")
    if proc == NFSPROC3_COMMIT:
        return CommitArgs(unpack_fh(u), u.unpack_uhyper(), u.unpack_uint())
    if proc == NFSPROC3_READDIR:
        return ReaddirArgs(unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(NFS3_COOKIEVERFSIZE), u.unpack_uint())
    if proc == NFSPROC3_READDIRPLUS:
        return ReaddirplusArgs(unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(NFS3_COOKIEVERFSIZE),
                               u.unpack_uint(), u.unpack_uint())
    raise KeyError(proc)


# -- results (reply bodies) ------------------------------------------------------------------------

@dataclass
class Res:
    """One result type for every procedure: ``status`` plus the fields that procedure carries."""
    status: int = NFS3_OK
    attr: Fattr3 | None = None  # GETATTR attributes / post_op_attr obj_attributes
    wcc: WccData | None = None  # SETATTR, WRITE, CREATE (dir), COMMIT
    fh: bytes | None = None  # LOOKUP object / CREATE post_op_fh3
    dir_attr: Fattr3 | None = None  # LOOKUP dir_attributes
    access: int = 0
    count: int = 0  # READ / WRITE
    eof: bool = False
    data: bytes | memoryview = b""
    committed: int = FILE_SYNC
    verf: bytes = b"\0" * 8  # WRITE / COMMIT writeverf3, READDIRPLUS cookieverf
    fsstat: tuple = ()  # tbytes, fbytes, abytes, tfiles, ffiles, afiles, invarsec
    fsinfo: tuple = ()  # rtmax, rtpref, rtmult, wtmax, wtpref, wtmult, dtpref, maxfilesize, (sec,nsec), properties
    pathconf: tuple = ()  # linkmax, name_max, no_trunc, chown_restricted, case_insensitive, case_preserving
    # READDIRPLUS: (fileid, name, cookie, attr|None, fh|None); READDIR: (fileid, name, cookie)
    entries: list = field(default_factory=list)


def pack_entry3(p: Packer, e: tuple) -> None:
    """One ``entry3`` of a READDIR dirlist3, with its "value follows" TRUE word (RFC 1813 §3.3.16)."""
    p.pack_bool(True)
    p.pack_uhyper(e[0])
    pack_name(p, e[1])
    p.pack_uhyper(e[2])


def pack_entryplus3(p: Packer, e: tuple) -> None:
    """One ``entryplus3`` of a READDIRPLUS dirlistplus3, "value follows" word included (§3.3.17)."""
    pack_entry3(p, e)
    pack_post_op_attr(p, e[3])
    p.pack_optional(e[4], lambda f: pack_fh(p, f))


def entry_xdr_bytes(proc: int, e: tuple) -> int:
    """Bytes ``e`` adds to a READDIR (``entry3``) or READDIRPLUS (``entryplus3``) reply, as encoded."""
    p = Packer()
    (pack_entryplus3 if proc == NFSPROC3_READDIRPLUS else pack_entry3)(p, e)
    return len(p.buf)


def encode_res(proc: int, r: Res) -> bytes:
    p = Packer()
    if proc == NFSPROC3_NULL:
        return b""
    p.pack_enum(r.status)
    ok = r.status == NFS3_OK
    if proc == NFSPROC3_GETATTR:
        if ok:
            pack_fattr3(p, r.attr)
    elif proc == NFSPROC3_SETATTR:
        pack_wcc_data(p, r.wcc)
    elif proc == NFSPROC3_LOOKUP:
        if ok:
            pack_fh(p, r.fh)
            pack_post_op_attr(p, r.attr)
        pack_post_op_attr(p, r.dir_attr)
    elif proc == NFSPROC3_ACCESS:
        pack_post_op_attr(p, r.attr)
        if ok:
            p.pack_uint(r.access)
    elif proc == NFSPROC3_READ:
        pack_post_op_attr(p, r.attr)
        if ok:
            p.pack_uint(r.count)
            p.pack_bool(r.eof)
            p.pack_opaque(r.data)
    elif proc == NFSPROC3_WRITE:
        pack_wcc_data(p, r.wcc)
        if ok:
            p.pack_uint(r.count)
            p.pack_enum(r.committed)
            p.pack_fopaque(8, r.verf)
    elif proc == NFSPROC3_CREATE:
        if ok:
            p.pack_optional(r.fh, lambda fh: pack_fh(p, fh))
            pack_post_op_attr(p, r.attr)
        pack_wcc_data(p, r.wcc)
    elif proc == NFSPROC3_FSSTAT:
        pack_post_op_attr(p, r.attr)
        if ok:
            p.buf += struct.pack(">QQQQQQI", *r.fsstat)
    elif proc == NFSPROC3_FSINFO:
        pack_post_op_attr(p, r.attr)
        if ok:
            f = r.fsinfo
            p.buf += struct.pack(">IIIIIIIQIII", f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8][0], f[8][1], f[9])
    elif proc == NFSPROC3_PATHCONF:
        pack_post_op_attr(p, r.attr)
        if ok:
            f = r.pathconf
            p.buf += struct.pack(">IIIIII", f[0], f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5]))
    elif proc == NFSPROC3_COMMIT:
        pack_wcc_data(p, r.wcc)
        if ok:
            p.pack_fopaque(8, r.verf)
    elif proc in (NFSPROC3_READDIR, NFSPROC3_READDIRPLUS):
        pack_post_op_attr(p, r.attr)
        if ok:
            p.pack_fopaque(8, r.verf)
            pack = pack_entryplus3 if proc == NFSPROC3_READDIRPLUS else pack_entry3
            for e in r.entries:
                pack(p, e)
            p.pack_bool(False)
            p.pack_bool(r.eof)
    else:
        raise ValueError(f"no result encoder for NFSv3 procedure {proc}")
    return p.get_bytes()


def decode_res(proc: int, u: Unpacker) -> Res:
    if proc == NFSPROC3_NULL:
        return Res()
    r = Res(status=u.unpack_enum())
    ok = r.status == NFS3_OK
    if proc == NFSPROC3_GETATTR:
        if ok:
            r.attr = unpack_fattr3(u)
    elif proc == NFSPROC3_SETATTR:
        r.wcc = unpack_wcc_data(u)
    elif proc == NFSPROC3_LOOKUP:
        if ok:
            r.fh = unpack_fh(u)
            r.attr = unpack_post_op_attr(u)
        r.dir_attr = unpack_post_op_attr(u)
    elif proc == NFSPROC3_ACCESS:
        r.attr = unpack_post_op_attr(u)
        if ok:
            r.access = u.unpack_uint()
    elif proc == NFSPROC3_READ:
        r.attr = unpack_post_op_attr(u)
        if ok:
            r.count = u.unpack_uint()
            r.eof = u.unpack_bool()
            r.data = u.unpack_opaque(NFS3_MAXDATA)
    elif proc == NFSPROC3_WRITE:
        r.wcc = unpack_wcc_data(u)
        if ok:
            r.count = u.unpack_uint()
            r.committed = u.unpack_enum()
            r.verf = u.unpack_fopaque(8)
    elif proc == NFSPROC3_CREATE:
        if ok:
            r.fh = u.unpack_optional(lambda: unpack_fh(u))
            r.attr = unpack_post_op_attr(u)
        r.wcc = unpack_wcc_data(u)
    elif proc == NFSPROC3_FSSTAT:
        r.attr = unpack_post_op_attr(u)
        if ok:
            r.fsstat = (u.unpack_uhyper(), u.unpack_uhyper(), u.unpack_uhyper(), u.unpack_uhyper(),
                        u.unpack_uhyper(), u.unpack_uhyper(), u.unpack_uint())
    elif proc == NFSPROC3_FSINFO:
        r.attr = unpack_post_op_attr(u)
        if ok:
            v = [u.unpack_uint() for _ in range(7)]
            r.fsinfo = (*v, u.unpack_uhyper(), (u.unpack_uint(), u.unpack_uint()), u.unpack_uint())
    elif proc == NFSPROC3_PATHCONF:
        r.attr = unpack_post_op_attr(u)
        if ok:
            r.pathconf = (u.unpack_uint(), u.unpack_uint(), u.unpack_bool(), u.unpack_bool(),
                          u.unpack_bool(), u.unpack_bool())
    elif proc == NFSPROC3_COMMIT:
        r.wcc = unpack_wcc_data(u)
        if ok:
            r.verf = u.unpack_fopaque(8)
    elif proc in (NFSPROC3_READDIR, NFSPROC3_READDIRPLUS):
        r.attr = unpack_post_op_attr(u)
        if ok:
            r.verf = u.unpack_fopaque(8)
            while u.unpack_bool():
                fileid = u.unpack_uhyper()
                name = unpack_name(u)
                cookie = u.unpack_uhyper()
                if proc == NFSPROC3_READDIR:
                    r.entries.append((fileid, name, cookie))
                    continue
                attr = unpack_post_op_attr(u)
                fh = u.unpack_optional(lambda: unpack_fh(u))
                r.entries.append((fileid, name, cookie, attr, fh))
            r.eof = u.unpack_bool()
    else:
        raise ValueError(f"no result decoder for NFSv3 procedure {proc}")
    return r


# -- hot path for the client agent -----------------------------------------------------------------

_WRITE_HDR = struct.Struct(">IIIIII")  # xid CALL rpcvers prog vers proc
_WRITE_TAIL = struct.Struct(">QIII")  # offset count stable data-length


def encode_write_call(xid: int, fh: bytes, offset: int, data: bytes | bytearray | memoryview,
                      stable: int = UNSTABLE, cred: tuple[int, bytes] = rpc.NULL_AUTH) -> bytes:
    """A complete WRITE call message (no record mark), built with a handful of packs and one join."""
    n = len(data)
    if len(fh) > NFS3_FHSIZE:
        raise XdrError(f"file handle of {len(fh)} bytes exceeds NFS3_FHSIZE {NFS3_FHSIZE}")
    cf, cb = cred
    parts = [
        _WRITE_HDR.pack(xid, rpc.CALL, rpc.RPC_VERSION, NFS_PROGRAM, NFS_V3, NFSPROC3_WRITE),
        struct.pack(">II", cf, len(cb)), cb, b"\0" * pad_len(len(cb)),
        b"\0\0\0\0\0\0\0\0",  # verifier AUTH_NONE, length 0
        struct.pack(">I", len(fh)), fh, b"\0" * pad_len(len(fh)),
        _WRITE_TAIL.pack(offset, n, stable, n), data, b"\0" * pad_len(n),
    ]
    return b"".join(parts)


@dataclass
class WriteReply:
    xid: int
    rpc_ok: bool  # MSG_ACCEPTED + SUCCESS
    status: int  # nfsstat3 (or -1 when not rpc_ok)
    count: int = 0
    committed: int = UNSTABLE
    verf: bytes = b""
    rpc_reply: rpc.Reply | None = None


def _skip_wcc(u: Unpacker) -> None:
    if u.unpack_bool():
        u._need(24, "wcc_attr")
        u.pos += 24
    if u.unpack_bool():
        u._need(_FATTR.size, "fattr3")
        u.pos += _FATTR.size


def _wcc_reply(msg: bytes | memoryview):
    """The shared head of WRITE and COMMIT replies: RPC header, status, wcc_data skipped. Returns
    ``(None, unpacker positioned after it, rpc header)`` for NFS3_OK, else ``(WriteReply, None, None)``."""
    hdr = rpc.decode_reply(msg)
    if not hdr.ok:
        return WriteReply(hdr.xid, False, -1, rpc_reply=hdr), None, None
    u = Unpacker(msg, hdr.body_offset)
    status = u.unpack_enum()
    _skip_wcc(u)
    if status != NFS3_OK:
        return WriteReply(hdr.xid, True, status, rpc_reply=hdr), None, None
    return None, u, hdr


def decode_write_reply(msg: bytes | memoryview) -> WriteReply:
    """xid, status, count, committed and verifier of a WRITE reply, skipping attributes."""
    failed, u, hdr = _wcc_reply(msg)
    if failed is not None:
        return failed
    count = u.unpack_uint()
    committed = u.unpack_enum()
    return WriteReply(hdr.xid, True, NFS3_OK, count, committed, u.unpack_fopaque(8), hdr)


def decode_commit_reply(msg: bytes | memoryview) -> WriteReply:
    """xid, status and verifier of a COMMIT reply (``committed`` reported as FILE_SYNC)."""
    failed, u, hdr = _wcc_reply(msg)
    if failed is not None:
        return failed
    return WriteReply(hdr.xid, True, NFS3_OK, 0, FILE_SYNC, u.unpack_fopaque(8), hdr)


def encode_call(xid: int, proc: int, args=None, cred: tuple[int, bytes] = rpc.NULL_AUTH) -> bytes:
    """Any NFSv3 call: RPC header plus encoded arguments."""
    return rpc.encode_call(xid, NFS_PROGRAM, NFS_V3, proc, encode_args(proc, args), cred)


def decode_reply(proc: int, msg: bytes | memoryview) -> tuple[rpc.Reply, Res | None]:
    """RPC header plus decoded result (None unless the RPC was accepted with SUCCESS)."""
    hdr = rpc.decode_reply(msg)
    if not hdr.ok:
        return hdr, None
    return hdr, decode_res(proc, Unpacker(msg, hdr.body_offset))
