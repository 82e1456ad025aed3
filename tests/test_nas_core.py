"""The sans-I/O server core over in-memory and tmpfs stores: semantics, DRC, ACL, and 100,000 malformed calls."""

import os
import random
import struct

import pytest

from nas_server.core import FH_KIND_FILE, NasCore, make_fh, parse_networks
from nas_server.drc import DuplicateRequestCache
from protocols import mount as mnt
from protocols import nfs3, rpc
from protocols.xdr import Packer, Unpacker
from nas_server.store import DirStore, MemoryStore

PEER = ("198.18.5.2", 801)
CRED = rpc.auth_sys_cred(0, 0, b"t")
IMG_BYTES = 1 << 20


def make_core(networks="198.18.0.0/15"):
    s = MemoryStore(b"verf0001")
    s.add_export("swap", parse_networks(networks))
    img = s.create_image("swap", "img", IMG_BYTES)
    return NasCore(s), s, img


def call(core, prog, vers, proc, args=b"", xid=1, peer=PEER, now=0.0, cred=CRED):
    out = core.handle(rpc.encode_call(xid, prog, vers, proc, args, cred), peer, now)
    assert len(out) == 1
    return out[0]


def mount_and_lookup(core, peer=PEER):
    r = call(core, mnt.MOUNT_PROGRAM, 3, mnt.MOUNTPROC3_MNT, mnt.encode_dirpath("/swap"), peer=peer)
    h = rpc.decode_reply(r)
    m = mnt.decode_mnt_res(Unpacker(r, h.body_offset))
    assert m.status == mnt.MNT3_OK
    r = call(core, nfs3.NFS_PROGRAM, 3, nfs3.NFSPROC3_LOOKUP, nfs3.encode_args(3, nfs3.DiropArgs(m.fh, b"img")), peer=peer)
    _, res = nfs3.decode_reply(nfs3.NFSPROC3_LOOKUP, r)
    assert res.status == nfs3.NFS3_OK and res.attr.size == IMG_BYTES
    return m.fh, res.fh


def write(core, fh, off, data, stable, xid=100, now=0.0, peer=PEER):
    out = core.handle(nfs3.encode_write_call(xid, fh, off, data, stable, CRED), peer, now)
    return nfs3.decode_write_reply(out[0])


def test_write_stability_commit_and_crash():
    core, store, img = make_core()
    _, fh = mount_and_lookup(core)
    w = write(core, fh, 0, b"U" * 4096, nfs3.UNSTABLE, xid=1)
    assert (w.status, w.committed, w.verf) == (0, nfs3.UNSTABLE, b"verf0001")
    assert img.pending_bytes == 4096 and img.data[:4] == b"\0\0\0\0" and img.syncs == 0
    w = write(core, fh, 8192, b"F" * 4096, nfs3.FILE_SYNC, xid=2)
    assert w.committed == nfs3.FILE_SYNC and img.syncs == 1 and img.data[8192:8196] == b"FFFF"
    # a stable write flushed the pending data before syncing (never older data over newer)
    assert img.pending_bytes == 0 and img.data[:4] == b"UUUU"
    write(core, fh, 4096, b"V" * 4096, nfs3.UNSTABLE, xid=3)
    store.crash(b"verf0002")  # SIGKILL + restart
    r = core.handle(nfs3.encode_call(4, nfs3.NFSPROC3_COMMIT, nfs3.CommitArgs(fh, 0, 0), CRED), PEER, 1.0)[0]
    assert nfs3.decode_commit_reply(r).verf == b"verf0002"
    r = core.handle(nfs3.encode_call(5, nfs3.NFSPROC3_READ, nfs3.ReadArgs(fh, 4096, 4096), CRED), PEER, 1.0)[0]
    assert nfs3.decode_reply(6, r)[1].data == b"\0" * 4096  # the UNSTABLE page is gone


def test_read_sees_pending_and_clips_at_end():
    core, store, img = make_core()
    _, fh = mount_and_lookup(core)
    write(core, fh, 10, b"abc", nfs3.UNSTABLE, xid=1)
    write(core, fh, 11, b"Z", nfs3.UNSTABLE, xid=2)
    r = core.handle(nfs3.encode_call(3, 6, nfs3.ReadArgs(fh, 8, 8), CRED), PEER, 0)[0]
    assert nfs3.decode_reply(6, r)[1].data == b"\0\0aZc\0\0\0"
    r = core.handle(nfs3.encode_call(4, 6, nfs3.ReadArgs(fh, IMG_BYTES - 2, 100), CRED), PEER, 0)[0]
    res = nfs3.decode_reply(6, r)[1]
    assert (res.count, res.eof) == (2, True)


def test_write_past_end_is_nospc_and_changes_nothing():
    core, store, img = make_core()
    _, fh = mount_and_lookup(core)
    w = write(core, fh, IMG_BYTES - 10, b"x" * 11, nfs3.FILE_SYNC)
    assert w.status == nfs3.NFS3ERR_NOSPC and img.data.count(0) == IMG_BYTES and img.syncs == 0
    assert core.nfs_status["NFS3ERR_NOSPC"] == 1


def test_drc_retransmission_executes_once():
    core, store, img = make_core()
    _, fh = mount_and_lookup(core)
    msg = nfs3.encode_write_call(77, fh, 0, b"a" * 4096, nfs3.FILE_SYNC, CRED)
    r1 = core.handle(msg, PEER, 1.0)
    r2 = core.handle(msg, PEER, 1.5)
    assert r1 == r2 and img.syncs == 1 and core.counters["drc_hits"] == 1
    assert core.counters["write_bytes_FILE_SYNC"] == 4096
    core.handle(msg, ("198.18.5.3", 801), 2.0)  # another client, same xid: executed
    assert img.syncs == 2 and core.counters["drc_hits"] == 1
    core.handle(msg, PEER, 200.0)  # older than max_age_s: executed again
    assert img.syncs == 3 and core.drc.evictions_age >= 1


def test_drc_inprogress_and_bounds():
    d = DuplicateRequestCache(max_entries=3, max_age_s=10)
    assert d.lookup(("a",), 0)[0] == "miss"
    assert d.lookup(("a",), 0.1) == ("inprogress", None) and d.inprogress_drops == 1
    d.finish(("a",), b"R", 0.2)
    assert d.lookup(("a",), 0.3) == ("hit", b"R")
    for k in "bcd":
        d.lookup((k,), 1)
    assert len(d) == 3 and d.evictions_size == 1 and d.lookup(("a",), 2)[0] == "miss"


def test_acl_mount_and_nfs_refused_for_other_networks():
    core, store, img = make_core("198.18.5.0/24")
    root, fh = mount_and_lookup(core)
    outsider = ("198.19.9.9", 700)
    r = call(core, mnt.MOUNT_PROGRAM, 3, mnt.MOUNTPROC3_MNT, mnt.encode_dirpath("/swap"), peer=outsider)
    assert mnt.decode_mnt_res(Unpacker(r, 24)).status == mnt.MNT3ERR_ACCES
    w = write(core, fh, 0, b"x", nfs3.FILE_SYNC, peer=outsider)
    assert w.status == nfs3.NFS3ERR_ACCES and img.syncs == 0
    r = call(core, mnt.MOUNT_PROGRAM, 3, mnt.MOUNTPROC3_MNT, mnt.encode_dirpath("/nope"))
    assert mnt.decode_mnt_res(Unpacker(r, 24)).status == mnt.MNT3ERR_NOENT


def test_rpc_level_errors():
    core, *_ = make_core()
    assert rpc.decode_reply(call(core, 100099, 1, 0)).accept_stat == rpc.PROG_UNAVAIL
    r = rpc.decode_reply(call(core, nfs3.NFS_PROGRAM, 4, 0))
    assert (r.accept_stat, r.mismatch) == (rpc.PROG_MISMATCH, (3, 3))
    assert rpc.decode_reply(call(core, nfs3.NFS_PROGRAM, 3, 22)).accept_stat == rpc.PROC_UNAVAIL
    assert rpc.decode_reply(call(core, nfs3.NFS_PROGRAM, 3, 1, b"\0\0")).accept_stat == rpc.GARBAGE_ARGS
    bad_vers = bytearray(rpc.encode_call(9, nfs3.NFS_PROGRAM, 3, 0))
    bad_vers[8:12] = struct.pack(">I", 3)
    r = rpc.decode_reply(core.handle(bytes(bad_vers), PEER, 0)[0])
    assert (r.reject_stat, r.mismatch) == (rpc.RPC_MISMATCH, (2, 2))
    r = rpc.decode_reply(call(core, nfs3.NFS_PROGRAM, 3, 0, cred=(6, b"gss")))
    assert (r.reject_stat, r.auth_stat) == (rpc.AUTH_ERROR, rpc.AUTH_BADCRED)
    assert core.handle(b"\0\0\0\1\0\0", PEER, 0) == [] and core.counters["drop_short"] == 1
    assert core.handle(rpc.encode_accepted(5), PEER, 0) == [] and core.counters["drop_not_call"] == 1


def test_handles_validated():
    core, store, img = make_core()
    root, fh = mount_and_lookup(core)

    def getattr_status(h):
        r = call(core, nfs3.NFS_PROGRAM, 3, 1, nfs3.encode_args(1, nfs3.FhArgs(h)))
        return nfs3.decode_reply(1, r)[1].status

    assert getattr_status(b"short") == nfs3.NFS3ERR_BADHANDLE
    assert getattr_status(b"\xaa" * 20) == nfs3.NFS3ERR_BADHANDLE
    assert getattr_status(make_fh(FH_KIND_FILE, 12345, img.fileid)) == nfs3.NFS3ERR_STALE
    assert getattr_status(fh[:-1] + b"\x7f") == nfs3.NFS3ERR_STALE
    assert getattr_status(fh) == nfs3.NFS3_OK
    for name, st in ((b"..", nfs3.NFS3_OK), (b"../etc", nfs3.NFS3ERR_NOENT), (b"x" * 300, nfs3.NFS3ERR_NAMETOOLONG)):
        p = Packer()
        nfs3.pack_fh(p, root)
        p.pack_string(name)  # unbounded: the codec refuses to emit a name over NFS3_MAXNAMLEN
        r = call(core, nfs3.NFS_PROGRAM, 3, 3, p.get_bytes())
        res = nfs3.decode_reply(3, r)[1]
        assert res.status == st, name
        if st == 0:
            assert res.fh == root  # '..' of an export is the export itself


def test_portmap_getport_and_dump():
    core, *_ = make_core()
    core.nfs_port = core.mount_port = 2049
    r = call(core, mnt.PMAP_PROGRAM, 2, mnt.PMAPPROC_GETPORT, mnt.encode_mapping(mnt.Mapping(100005, 3, 17, 0)))
    assert Unpacker(r, 24).unpack_uint() == 2049
    r = call(core, mnt.PMAP_PROGRAM, 2, mnt.PMAPPROC_GETPORT, mnt.encode_mapping(mnt.Mapping(100021, 4, 17, 0)))
    assert Unpacker(r, 24).unpack_uint() == 0
    r = call(core, mnt.PMAP_PROGRAM, 2, mnt.PMAPPROC_DUMP)
    assert len(mnt.decode_pmap_list(Unpacker(r, 24))) == 6


def test_dirstore_on_tmpfs(tmp_path_factory):
    d = f"/dev/shm/nas-core-test-{os.getpid()}"
    try:
        s = DirStore(d, b"12345678")
        with pytest.raises(ValueError, match="safe single path component"):
            s.add_export("../etc")
        s.add_export("swap")
        os.symlink("/etc/passwd", os.path.join(d, "swap", "passwd"))  # must not become an image
        img = s.create_image("swap", "img", 65536)
        s.close()
        s = DirStore(d, b"abcdefgh")
        exp = s.add_export("swap")
        assert list(exp.images) == ["img"]
        img = exp.images["img"]
        img.write(0, b"durable", True, 0.0)
        img.write(100, b"pending", False, 0.0)
        assert os.pread(img.fd, 7, 100) == b"\0" * 7 and img.read(100, 7) == b"pending"
        img.commit()
        assert os.pread(img.fd, 7, 100) == b"pending" and img.syncs == 2
        s.close()
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


# -- 100,000 seeded malformed calls ------------------------------------------------------------

def _fuzz_calls(rng: random.Random, root: bytes, fh: bytes, n: int, img_bytes: int = IMG_BYTES):
    """Yield (category, message). None of them is a valid call that could change an image."""
    stale = make_fh(FH_KIND_FILE, 0xDEADBEEF, 0xA5A5A5A5A5A5A5A5)
    cats = ["trunc", "hugelen", "prog", "vers", "proc", "badfh", "stalefh", "offset", "flip", "garbage",
            "rpcvers", "cred"]
    for i in range(n):
        xid = 0x10000 + i
        cat = cats[i % len(cats)]
        if cat == "trunc":
            full = nfs3.encode_write_call(xid, fh, rng.randrange(0, img_bytes), b"t" * rng.randrange(1, 300), 2, CRED)
            hdr_len = 40 + len(CRED[1])  # fixed header + cred + verf
            yield cat, full[: rng.randrange(hdr_len, len(full))]  # cut inside the arguments
        elif cat == "hugelen":
            m = bytearray(nfs3.encode_write_call(xid, fh, 0, b"h" * 64, 2, CRED))
            m[-68:-64] = struct.pack(">I", rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1 << 24, 65]))
            yield cat, bytes(m)
        elif cat == "prog":
            yield cat, rpc.encode_call(xid, rng.choice([1, 100004, 100021, 0xFFFFFFFF]), 3, 0)
        elif cat == "vers":
            yield cat, rpc.encode_call(xid, nfs3.NFS_PROGRAM, rng.choice([0, 2, 4, 0xFFFFFFFF]), 0)
        elif cat == "proc":
            yield cat, rpc.encode_call(xid, rng.choice([nfs3.NFS_PROGRAM, mnt.MOUNT_PROGRAM]), 3, rng.randrange(22, 1 << 32))
        elif cat == "badfh":
            h = rng.randbytes(rng.choice([0, 1, 19, 21, 32, 64]))
            yield cat, nfs3.encode_write_call(xid, h, 0, b"b" * 16, 2, CRED)
        elif cat == "stalefh":
            yield cat, nfs3.encode_write_call(xid, stale, rng.randrange(0, img_bytes), b"s" * 16, 2, CRED)
        elif cat == "offset":
            off = rng.choice([img_bytes - 1, img_bytes, 1 << 40, (1 << 64) - 1])
            yield cat, nfs3.encode_write_call(xid, fh, off, b"o" * 16, 2, CRED)
        elif cat == "flip":
            m = bytearray(nfs3.encode_write_call(xid, stale, 0, b"f" * 32, 2, CRED))
            for _ in range(rng.randrange(1, 3)):
                m[rng.randrange(8, len(m))] ^= rng.randrange(1, 256)
            yield cat, bytes(m)
        elif cat == "garbage":
            yield cat, rng.randbytes(rng.randrange(0, 200))
        elif cat == "rpcvers":
            m = bytearray(rpc.encode_call(xid, nfs3.NFS_PROGRAM, 3, 7))
            m[8:12] = struct.pack(">I", rng.choice([0, 1, 3, 0xFFFFFFFF]))
            yield cat, bytes(m)
        else:  # cred
            yield cat, rpc.encode_call(xid, nfs3.NFS_PROGRAM, 3, 7, b"", (rng.choice([2, 3, 6, 390003]), b"x" * 8))


EXPECT = {  # category -> what a real server answers
    "trunc": {"GARBAGE_ARGS"},
    "hugelen": {"GARBAGE_ARGS"},
    "prog": {"PROG_UNAVAIL"},
    "vers": {"PROG_MISMATCH"},
    "proc": {"PROC_UNAVAIL"},
    "badfh": {"NFS3ERR_BADHANDLE", "GARBAGE_ARGS"},  # > NFS3_FHSIZE is not even valid XDR
    "stalefh": {"NFS3ERR_STALE"},
    "offset": {"NFS3ERR_NOSPC", "NFS3ERR_INVAL"},
    "rpcvers": {"RPC_MISMATCH"},
    "cred": {"AUTH_BADCRED"},
}


def _classify(reply: bytes) -> str:
    r = rpc.decode_reply(reply)
    if r.reply_stat == rpc.MSG_DENIED:
        return "RPC_MISMATCH" if r.reject_stat == rpc.RPC_MISMATCH else rpc.AUTH_STAT_NAMES[r.auth_stat]
    if r.accept_stat != rpc.SUCCESS:
        return rpc.ACCEPT_STAT_NAMES[r.accept_stat]
    st = Unpacker(reply, r.body_offset).unpack_uint()
    return nfs3.STATUS_NAMES.get(st, str(st)) if st else "OK"


def test_100k_malformed_calls_never_crash_or_change_an_image():
    core, store, img = make_core()
    root, fh = mount_and_lookup(core)
    rng = random.Random(4)
    seen: dict[str, dict[str, int]] = {}
    drops = 0
    for cat, msg in _fuzz_calls(rng, root, fh, 100_000):
        out = core.handle(msg, PEER, 0.0)
        if not out:
            drops += 1
            seen.setdefault(cat, {}).setdefault("dropped", 0)
            seen[cat]["dropped"] += 1
            continue
        assert len(out) == 1
        assert rpc.peek_xid(out[0]) == rpc.peek_xid(msg)
        kind = _classify(out[0])
        seen.setdefault(cat, {}).setdefault(kind, 0)
        seen[cat][kind] += 1
    for cat, allowed in EXPECT.items():
        assert set(seen[cat]) <= allowed, (cat, seen[cat])
    assert all(sum(seen[c].values()) >= 100_000 // 12 for c in seen)  # categories are round-robin
    assert "OK" not in seen["flip"] and "OK" not in seen["garbage"], (seen["flip"], seen["garbage"])
    assert core.counters["internal_errors"] == 0
    drop_counted = sum(v for k, v in core.counters.items() if k.startswith("drop_"))
    assert drop_counted == drops and drops > 0
    assert img.data.count(0) == IMG_BYTES and img.pending_bytes == 0 and img.syncs == 0
