"""MOUNT version 3 (RFC 1813 appendix I) and portmap version 2 (RFC 1833) codecs, both directions.

Invariant owned here: decoders bound every string (dirpath <= MNTPATHLEN, names <= MNTNAMLEN,
handles <= FHSIZE3) and raise ``XdrError`` on anything malformed; encoders emit exactly what the
decoders accept. Sans-I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import rpc
from .xdr import Packer, Unpacker

MOUNT_PROGRAM = 100005
MOUNT_V3 = 3
MNTPATHLEN = 1024  # RFC 1813: string dirpath<MNTPATHLEN>
MNTNAMLEN = 255
FHSIZE3 = 64

MOUNTPROC3_NULL = 0
MOUNTPROC3_MNT = 1
MOUNTPROC3_DUMP = 2
MOUNTPROC3_UMNT = 3
MOUNTPROC3_UMNTALL = 4
MOUNTPROC3_EXPORT = 5
PROC_NAMES = {0: "NULL", 1: "MNT", 2: "DUMP", 3: "UMNT", 4: "UMNTALL", 5: "EXPORT"}

MNT3_OK = 0
MNT3ERR_PERM = 1
MNT3ERR_NOENT = 2
MNT3ERR_IO = 5
MNT3ERR_ACCES = 13
MNT3ERR_NOTDIR = 20
MNT3ERR_INVAL = 22
MNT3ERR_NAMETOOLONG = 63
MNT3ERR_NOTSUPP = 10004
MNT3ERR_SERVERFAULT = 10006
STATUS_NAMES = {v: k for k, v in globals().items() if k.startswith("MNT3")}


def encode_dirpath(path: bytes | str) -> bytes:
    p = Packer()
    p.pack_string(path, MNTPATHLEN)
    return p.get_bytes()


def decode_dirpath(u: Unpacker) -> bytes:
    return u.unpack_string(MNTPATHLEN)


@dataclass
class MntRes:
    status: int
    fh: bytes = b""
    auth_flavors: list[int] = field(default_factory=lambda: [rpc.AUTH_SYS])


def encode_mnt_res(r: MntRes) -> bytes:
    p = Packer()
    p.pack_enum(r.status)
    if r.status == MNT3_OK:
        p.pack_opaque(r.fh, FHSIZE3)
        p.pack_uint(len(r.auth_flavors))
        for f in r.auth_flavors:
            p.pack_int(f)
    return p.get_bytes()


def decode_mnt_res(u: Unpacker) -> MntRes:
    st = u.unpack_enum()
    if st != MNT3_OK:
        return MntRes(st, b"", [])
    fh = u.unpack_opaque(FHSIZE3)
    n = u.unpack_uint()
    if n > 64:
        from .xdr import XdrError
        raise XdrError(f"MNT reply lists {n} auth flavors; at most 64 accepted")
    return MntRes(st, fh, [u.unpack_int() for _ in range(n)])


def encode_exports(exports: list[tuple[bytes, list[bytes]]]) -> bytes:
    """EXPORT result: list of (dirpath, [group names])."""
    p = Packer()
    for d, groups in exports:
        p.pack_bool(True)
        p.pack_string(d, MNTPATHLEN)
        for g in groups:
            p.pack_bool(True)
            p.pack_string(g, MNTNAMLEN)
        p.pack_bool(False)
    p.pack_bool(False)
    return p.get_bytes()


def decode_exports(u: Unpacker) -> list[tuple[bytes, list[bytes]]]:
    out = []
    while u.unpack_bool():
        d = u.unpack_string(MNTPATHLEN)
        groups = []
        while u.unpack_bool():
            groups.append(u.unpack_string(MNTNAMLEN))
        out.append((d, groups))
    return out


# -- portmap v2 (RFC 1833 section 3) --------------------------------------------------------------

PMAP_PROGRAM = 100000
PMAP_V2 = 2
PMAP_PORT = 111
PMAPPROC_NULL = 0
PMAPPROC_SET = 1
PMAPPROC_UNSET = 2
PMAPPROC_GETPORT = 3
PMAPPROC_DUMP = 4
PMAP_PROC_NAMES = {0: "NULL", 1: "SET", 2: "UNSET", 3: "GETPORT", 4: "DUMP", 5: "CALLIT"}
IPPROTO_TCP = 6
IPPROTO_UDP = 17


@dataclass(frozen=True)
class Mapping:
    prog: int
    vers: int
    prot: int
    port: int


def encode_mapping(m: Mapping) -> bytes:
    p = Packer()
    for v in (m.prog, m.vers, m.prot, m.port):
        p.pack_uint(v)
    return p.get_bytes()


def decode_mapping(u: Unpacker) -> Mapping:
    return Mapping(u.unpack_uint(), u.unpack_uint(), u.unpack_uint(), u.unpack_uint())


def encode_pmap_list(maps: list[Mapping]) -> bytes:
    p = Packer()
    for m in maps:
        p.pack_bool(True)
        p.buf += encode_mapping(m)
    p.pack_bool(False)
    return p.get_bytes()


def decode_pmap_list(u: Unpacker) -> list[Mapping]:
    out = []
    while u.unpack_bool():
        out.append(decode_mapping(u))
    return out
