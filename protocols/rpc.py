"""ONC RPC v2 (RFC 5531) call and reply headers, credentials, and TCP record marking.

Invariant owned here: a decoded call or reply is either fully valid up to its procedure arguments
(``CallHeader.args_offset`` / ``Reply.body_offset``) or decoding raised an ``RpcError`` whose
``kind`` names what was wrong, so the server can turn it into the reply a real server sends
(RPC_MISMATCH, AUTH_ERROR) or a counted drop. Record marking (RFC 5531 section 11) reassembles
fragments into records no larger than the caller's ``max_record_bytes``; a longer record is an
error, never an unbounded buffer.

Sans-I/O: bytes in, bytes (or header objects) out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .xdr import Packer, Unpacker, XdrError

RPC_VERSION = 2

# msg_type
CALL = 0
REPLY = 1
# reply_stat
MSG_ACCEPTED = 0
MSG_DENIED = 1
# accept_stat
SUCCESS = 0
PROG_UNAVAIL = 1
PROG_MISMATCH = 2
PROC_UNAVAIL = 3
GARBAGE_ARGS = 4
SYSTEM_ERR = 5
ACCEPT_STAT_NAMES = {0: "SUCCESS", 1: "PROG_UNAVAIL", 2: "PROG_MISMATCH", 3: "PROC_UNAVAIL", 4: "GARBAGE_ARGS", 5: "SYSTEM_ERR"}
# reject_stat
RPC_MISMATCH = 0
AUTH_ERROR = 1
# auth_stat
AUTH_OK = 0
AUTH_BADCRED = 1
AUTH_REJECTEDCRED = 2
AUTH_BADVERF = 3
AUTH_REJECTEDVERF = 4
AUTH_TOOWEAK = 5
AUTH_INVALIDRESP = 6
AUTH_FAILED = 7
AUTH_STAT_NAMES = {0: "AUTH_OK", 1: "AUTH_BADCRED", 2: "AUTH_REJECTEDCRED", 3: "AUTH_BADVERF",
                   4: "AUTH_REJECTEDVERF", 5: "AUTH_TOOWEAK", 6: "AUTH_INVALIDRESP", 7: "AUTH_FAILED"}
# auth_flavor
AUTH_NONE = 0
AUTH_SYS = 1

MAX_AUTH_BYTES = 400  # RFC 5531: opaque_auth body is opaque<400>
AUTH_SYS_MAX_MACHINENAME = 255  # RFC 5531 appendix A: string machinename<255>
AUTH_SYS_MAX_GIDS = 16  # RFC 5531 appendix A: unsigned int gids<16>

NULL_AUTH = (AUTH_NONE, b"")


class RpcError(ValueError):
    """A message could not be decoded as RPC. ``kind`` says what, so the caller can reply or drop.

    kinds: ``short`` (no xid: drop), ``not_call`` / ``not_reply`` (wrong direction: drop),
    ``rpc_mismatch`` (rpcvers != 2: reply RPC_MISMATCH), ``bad_cred`` / ``bad_verf`` (reply
    AUTH_ERROR), ``garbage`` (header unreadable after the xid: drop).
    """

    def __init__(self, kind: str, msg: str, xid: int | None = None):
        super().__init__(msg)
        self.kind = kind
        self.xid = xid


@dataclass(frozen=True)
class AuthSys:
    stamp: int
    machinename: bytes
    uid: int
    gid: int
    gids: tuple[int, ...] = ()


def encode_auth_sys(cred: AuthSys) -> bytes:
    p = Packer()
    p.pack_uint(cred.stamp)
    p.pack_string(cred.machinename, AUTH_SYS_MAX_MACHINENAME)
    p.pack_uint(cred.uid)
    p.pack_uint(cred.gid)
    if len(cred.gids) > AUTH_SYS_MAX_GIDS:
        raise XdrError(f"AUTH_SYS carries at most {AUTH_SYS_MAX_GIDS} gids, got {len(cred.gids)}")
    p.pack_uint(len(cred.gids))
    for g in cred.gids:
        p.pack_uint(g)
    return p.get_bytes()


def decode_auth_sys(body: bytes | memoryview) -> AuthSys:
    u = Unpacker(body)
    stamp = u.unpack_uint()
    name = u.unpack_string(AUTH_SYS_MAX_MACHINENAME)
    uid = u.unpack_uint()
    gid = u.unpack_uint()
    n = u.unpack_uint()
    if n > AUTH_SYS_MAX_GIDS:
        raise XdrError(f"AUTH_SYS gids count {n} exceeds {AUTH_SYS_MAX_GIDS}")
    gids = tuple(u.unpack_uint() for _ in range(n))
    u.done()
    return AuthSys(stamp, name, uid, gid, gids)


def auth_sys_cred(uid: int = 0, gid: int = 0, machinename: bytes = b"testbed", stamp: int = 0,
                  gids: tuple[int, ...] = ()) -> tuple[int, bytes]:
    return (AUTH_SYS, encode_auth_sys(AuthSys(stamp, machinename, uid, gid, gids)))


@dataclass
class CallHeader:
    xid: int
    prog: int
    vers: int
    proc: int
    cred_flavor: int = AUTH_NONE
    cred_body: bytes = b""
    verf_flavor: int = AUTH_NONE
    verf_body: bytes = b""
    args_offset: int = 0  # where the procedure arguments start in the decoded message
    auth_sys: AuthSys | None = field(default=None, compare=False)


_CALL_FIXED = struct.Struct(">IIIIII")  # xid, CALL, rpcvers, prog, vers, proc


def encode_call(xid: int, prog: int, vers: int, proc: int, args: bytes = b"",
                cred: tuple[int, bytes] = NULL_AUTH, verf: tuple[int, bytes] = NULL_AUTH) -> bytes:
    p = Packer()
    p.pack_raw(_CALL_FIXED.pack(xid, CALL, RPC_VERSION, prog, vers, proc))
    p.pack_enum(cred[0])
    p.pack_opaque(cred[1], MAX_AUTH_BYTES)
    p.pack_enum(verf[0])
    p.pack_opaque(verf[1], MAX_AUTH_BYTES)
    p.pack_raw(args)
    return p.get_bytes()


def encode_call_header(xid: int, prog: int, vers: int, proc: int,
                       cred: tuple[int, bytes] = NULL_AUTH, verf: tuple[int, bytes] = NULL_AUTH) -> bytes:
    """The header alone (the caller appends arguments): used by pre-encoded hot paths."""
    return encode_call(xid, prog, vers, proc, b"", cred, verf)


def peek_xid(data: bytes | memoryview) -> int | None:
    return struct.unpack_from(">I", data, 0)[0] if len(data) >= 4 else None


def decode_call(data: bytes | bytearray | memoryview) -> CallHeader:
    if len(data) < 8:
        raise RpcError("short", f"RPC message of {len(data)} bytes is shorter than xid + msg_type (8)")
    u = Unpacker(data)
    xid = u.unpack_uint()
    mtype = u.unpack_int()
    if mtype != CALL:
        raise RpcError("not_call", f"xid {xid:#x}: msg_type {mtype} is not CALL (0)", xid)
    try:
        rpcvers = u.unpack_uint()
        if rpcvers != RPC_VERSION:
            raise RpcError("rpc_mismatch", f"xid {xid:#x}: rpcvers {rpcvers}, only 2 is spoken", xid)
        prog = u.unpack_uint()
        vers = u.unpack_uint()
        proc = u.unpack_uint()
    except XdrError as e:
        raise RpcError("garbage", f"xid {xid:#x}: call header truncated: {e}", xid) from None
    try:
        cf = u.unpack_enum()
        cb = u.unpack_opaque(MAX_AUTH_BYTES)
    except XdrError as e:
        raise RpcError("bad_cred", f"xid {xid:#x}: credential unreadable: {e}", xid) from None
    try:
        vf = u.unpack_enum()
        vb = u.unpack_opaque(MAX_AUTH_BYTES)
    except XdrError as e:
        raise RpcError("bad_verf", f"xid {xid:#x}: verifier unreadable: {e}", xid) from None
    hdr = CallHeader(xid, prog, vers, proc, cf, cb, vf, vb, u.pos)
    if cf == AUTH_SYS:
        try:
            hdr.auth_sys = decode_auth_sys(cb)
        except XdrError as e:
            raise RpcError("bad_cred", f"xid {xid:#x}: AUTH_SYS credential malformed: {e}", xid) from None
    return hdr


# -- replies ---------------------------------------------------------------------------------

_REPLY_OK = struct.Struct(">IIIIII")  # xid, REPLY, MSG_ACCEPTED, verf flavor, verf len 0, accept_stat


def encode_accepted(xid: int, accept_stat: int = SUCCESS, body: bytes | bytearray = b"",
                    verf: tuple[int, bytes] = NULL_AUTH) -> bytes:
    if verf == NULL_AUTH:
        return _REPLY_OK.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, accept_stat) + bytes(body)
    p = Packer()
    p.pack_uint(xid)
    p.pack_enum(REPLY)
    p.pack_enum(MSG_ACCEPTED)
    p.pack_enum(verf[0])
    p.pack_opaque(verf[1], MAX_AUTH_BYTES)
    p.pack_enum(accept_stat)
    p.pack_raw(bytes(body))
    return p.get_bytes()


def encode_prog_mismatch(xid: int, low: int, high: int) -> bytes:
    return encode_accepted(xid, PROG_MISMATCH, struct.pack(">II", low, high))


def encode_rpc_mismatch(xid: int, low: int = RPC_VERSION, high: int = RPC_VERSION) -> bytes:
    return struct.pack(">IIIIII", xid, REPLY, MSG_DENIED, RPC_MISMATCH, low, high)


def encode_auth_error(xid: int, auth_stat: int) -> bytes:
    return struct.pack(">IIIII", xid, REPLY, MSG_DENIED, AUTH_ERROR, auth_stat)


@dataclass
class Reply:
    xid: int
    reply_stat: int
    accept_stat: int | None = None  # when MSG_ACCEPTED
    reject_stat: int | None = None  # when MSG_DENIED
    mismatch: tuple[int, int] | None = None  # PROG_MISMATCH / RPC_MISMATCH (low, high)
    auth_stat: int | None = None  # AUTH_ERROR
    verf: tuple[int, bytes] = NULL_AUTH
    body_offset: int = 0  # where results start (SUCCESS only)

    @property
    def ok(self) -> bool:
        return self.reply_stat == MSG_ACCEPTED and self.accept_stat == SUCCESS

    def describe(self) -> str:
        if self.reply_stat == MSG_ACCEPTED:
            s = ACCEPT_STAT_NAMES.get(self.accept_stat, str(self.accept_stat))
            return s + (f" {self.mismatch}" if self.mismatch else "")
        if self.reject_stat == RPC_MISMATCH:
            return f"RPC_MISMATCH {self.mismatch}"
        return f"AUTH_ERROR {AUTH_STAT_NAMES.get(self.auth_stat, self.auth_stat)}"


_REPLY_FAST = struct.Struct(">IIIIII")


def decode_reply(data: bytes | bytearray | memoryview) -> Reply:
    """Decode a reply header. Raises ``RpcError`` (kinds ``short``, ``not_reply``, ``garbage``)."""
    if len(data) < 12:
        raise RpcError("short", f"RPC reply of {len(data)} bytes is shorter than 12")
    # Fast path: MSG_ACCEPTED with an AUTH_NONE/empty verifier (what every NFS server sends).
    if len(data) >= 24:
        xid, mtype, rstat, vflav, vlen, astat = _REPLY_FAST.unpack_from(data, 0)
        if mtype == REPLY and rstat == MSG_ACCEPTED and vlen == 0:
            r = Reply(xid, MSG_ACCEPTED, accept_stat=astat, verf=(vflav, b""), body_offset=24)
            if astat == PROG_MISMATCH:
                r.mismatch = struct.unpack_from(">II", data, 24) if len(data) >= 32 else None
                if r.mismatch is None:
                    raise RpcError("garbage", f"xid {xid:#x}: PROG_MISMATCH reply truncated", xid)
            return r
    u = Unpacker(data)
    xid = u.unpack_uint()
    mtype = u.unpack_int()
    if mtype != REPLY:
        raise RpcError("not_reply", f"xid {xid:#x}: msg_type {mtype} is not REPLY (1)", xid)
    try:
        rstat = u.unpack_enum()
        if rstat == MSG_ACCEPTED:
            vf = u.unpack_enum()
            vb = u.unpack_opaque(MAX_AUTH_BYTES)
            astat = u.unpack_enum()
            r = Reply(xid, rstat, accept_stat=astat, verf=(vf, vb))
            if astat == PROG_MISMATCH:
                r.mismatch = (u.unpack_uint(), u.unpack_uint())
            r.body_offset = u.pos
            return r
        if rstat == MSG_DENIED:
            rj = u.unpack_enum()
            if rj == RPC_MISMATCH:
                return Reply(xid, rstat, reject_stat=rj, mismatch=(u.unpack_uint(), u.unpack_uint()))
            if rj == AUTH_ERROR:
                return Reply(xid, rstat, reject_stat=rj, auth_stat=u.unpack_enum())
            raise RpcError("garbage", f"xid {xid:#x}: reject_stat {rj} unknown", xid)
        raise RpcError("garbage", f"xid {xid:#x}: reply_stat {rstat} unknown", xid)
    except XdrError as e:
        raise RpcError("garbage", f"xid {xid:#x}: reply truncated: {e}", xid) from None


# -- TCP record marking (RFC 5531 section 11) ---------------------------------------------------

LAST_FRAGMENT = 0x80000000
MAX_FRAGMENT_BYTES = 0x7FFFFFFF
# A WRITE call or READ reply of 1 MiB (NFS3_MAXDATA, nfsd's largest rtmax/wtmax) plus its RPC and
# NFS headers (at most 528 bytes with a 400-byte credential and a 64-byte handle) fits.
DEFAULT_MAX_RECORD_BYTES = (1 << 20) + 4096
_RM = struct.Struct(">I")


def frame_record(msg: bytes | bytearray, max_fragment_bytes: int = MAX_FRAGMENT_BYTES) -> bytes:
    """One record, split into fragments of at most ``max_fragment_bytes``."""
    n = len(msg)
    if n <= max_fragment_bytes:
        return _RM.pack(LAST_FRAGMENT | n) + bytes(msg)
    out = bytearray()
    for start in range(0, n, max_fragment_bytes):
        chunk = msg[start : start + max_fragment_bytes]
        last = LAST_FRAGMENT if start + max_fragment_bytes >= n else 0
        out += _RM.pack(last | len(chunk))
        out += chunk
    return bytes(out)


class RecordError(ValueError):
    """The byte stream broke record marking (a record over the limit): the connection must close."""


class RecordReassembler:
    """Feed stream bytes in, get whole records out. Bounded by ``max_record_bytes``.

    After a ``RecordError`` the stream position is lost; the connection must be closed.
    """

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        self.max_record_bytes = max_record_bytes
        self._buf = bytearray()
        self._record = bytearray()
        self.records = 0
        self.fragments = 0

    def buffered_bytes(self) -> int:
        return len(self._buf) + len(self._record)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            hdr = _RM.unpack_from(buf, pos)[0]
            n = hdr & MAX_FRAGMENT_BYTES
            if len(self._record) + n > self.max_record_bytes:
                raise RecordError(
                    f"record of at least {len(self._record) + n} bytes exceeds the limit of "
                    f"{self.max_record_bytes}; closing the connection"
                )
            if len(buf) - pos - 4 < n:
                break
            self.fragments += 1
            frag = buf[pos + 4 : pos + 4 + n]
            pos += 4 + n
            if hdr & LAST_FRAGMENT:
                if self._record:
                    self._record += frag
                    out.append(bytes(self._record))
                    self._record.clear()
                else:
                    out.append(bytes(frag))
                self.records += 1
            else:
                self._record += frag
        if pos:
            del buf[:pos]
        return out
