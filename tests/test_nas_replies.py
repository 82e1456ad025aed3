"""nas-server replies the client bounds (issue 12 kind B), non-idempotent procedures replayed outside
the DRC (kind D), the DRC's per-peer share (kind E), unavailable programs and FSSTAT. Sans-I/O core
over in-memory and tmpfs stores; every figure below is worked out by hand from RFC 1813's XDR."""

import os
import struct

import pytest

from nas_server.core import FH_KIND_DIR, TCP_MAX_IO_BYTES, UDP_MAX_IO_BYTES, NasCore, make_fh
from nas_server.drc import DuplicateRequestCache
from protocols import nfs3, rpc
from protocols.xdr import Packer, Unpacker
from nas_server.server import MAX_RECORD_BYTES
from nas_server.store import DirStore, MemoryStore

CRED = rpc.auth_sys_cred(0, 0, b"t")
PEER = ("198.18.5.2", 800)
NAMES12 = ["ab", "abc", "abcd", "abcde", "x1", "y22", "z333", "w4444", "q5", "r66", "s777", "t8888"]
NAMES40 = [f"f{i}" for i in range(10)] + [f"g{i:02d}" for i in range(10)] + [f"h{i:03d}" for i in range(10)] \
    + [f"k{i:04d}" for i in range(10)]  # names of 2..5 bytes

# RFC 1813 sizes, by hand: post_op_attr = 4 + fattr3 84; the resok's fixed part is dir_attributes,
# cookieverf (8), the final "value follows" FALSE (4) and eof (4).
RESOK_FIXED = 88 + 8 + 4 + 4


def _name_xdr(name: bytes) -> int:
    return 4 + (len(name) + 3) // 4 * 4


def entry3_bytes(name: bytes) -> int:  # value follows, fileid, name, cookie
    return 4 + 8 + _name_xdr(name) + 8


def entryplus3_bytes(name: bytes) -> int:  # entry3 + post_op_attr + post_op_fh3 (TRUE, 20-byte handle)
    return entry3_bytes(name) + 88 + 4 + 4 + 20


def make_dir(names, store=None):
    s = store or MemoryStore()
    exp = s.add_export("swap")
    for n in names:
        s.create_image("swap", n, 4096)
    return NasCore(s), s, make_fh(FH_KIND_DIR, exp.fsid, exp.dir_fileid)


def nfs_call(core, proc, args: bytes, xid=1, peer=PEER, now=0.0):
    out = core.handle(rpc.encode_call(xid, nfs3.NFS_PROGRAM, 3, proc, args, CRED), peer, now)
    assert len(out) == 1
    return out[0]


def readdir(core, proc, root, limit, cookie=0, verf=b"\0" * 8, dircount=None):
    if proc == nfs3.NFSPROC3_READDIRPLUS:
        args = nfs3.encode_args(proc, nfs3.ReaddirplusArgs(root, cookie, verf, limit if dircount is None else dircount, limit))
    else:
        args = nfs3.encode_args(proc, nfs3.ReaddirArgs(root, cookie, verf, limit))
    r = nfs_call(core, proc, args)
    h = rpc.decode_reply(r)
    body = r[h.body_offset:]
    res = nfs3.decode_res(proc, Unpacker(body))
    return res, len(body) - 4  # the resok: everything after the status word


# -- kind B: replies bounded by the client ---------------------------------------------------------

def test_readdirplus_issue_example_971_never_overruns():
    """Issue 12's input: 12 small files, cookie 0, dircount = maxcount = 971 (today: a 972-byte resok)."""
    core, _, root = make_dir(NAMES12)
    res, n = readdir(core, nfs3.NFSPROC3_READDIRPLUS, root, 971)
    # ".", "..", "ab", "abc", "abcd" take 104 + 5 * 144 = 824; "abcde" (148) would make 972
    assert (res.status, n, len(res.entries), res.eof) == (nfs3.NFS3_OK, 824, 5, False)
    res, n = readdir(core, nfs3.NFSPROC3_READDIRPLUS, root, 972)
    assert (res.status, n, len(res.entries)) == (nfs3.NFS3_OK, 972, 6)


def _oracle(names, limit, cost):
    """How many entries fit (the longest prefix) and the resok length, from the hand-made sizes."""
    size, k = RESOK_FIXED, 0
    for nm in names:
        if size + cost(nm) > limit:
            break
        size += cost(nm)
        k += 1
    return k, size


@pytest.mark.parametrize("nfiles", [12, 40])
@pytest.mark.parametrize("proc", [nfs3.NFSPROC3_READDIRPLUS, nfs3.NFSPROC3_READDIR])
def test_readdir_every_bound_0_to_2599_longest_prefix_that_fits(proc, nfiles):
    names = NAMES12 if nfiles == 12 else NAMES40
    core, _, root = make_dir(names)
    listed = [b".", b".."] + [n.encode() for n in names]
    cost = entryplus3_bytes if proc == nfs3.NFSPROC3_READDIRPLUS else entry3_bytes
    toosmall = 0
    for limit in range(2600):
        res, n = readdir(core, proc, root, limit)
        k, size = _oracle(listed, limit, cost)
        if k == 0:
            assert res.status == nfs3.NFS3ERR_TOOSMALL, limit
            assert res.attr is not None and res.attr.type == nfs3.NF3DIR  # resfail keeps dir_attributes
            toosmall += 1
            continue
        assert res.status == nfs3.NFS3_OK, limit
        assert n <= limit and n == size, (limit, n, size)
        assert [e[1] for e in res.entries] == listed[:k], limit
        assert res.eof == (k == len(listed)), limit
    first = cost(b".")
    assert toosmall == RESOK_FIXED + first  # limits 0 .. fixed+first-1


@pytest.mark.parametrize("limit", [300, 971, 1500])
def test_readdirplus_cookies_walk_the_whole_directory_once(limit):
    core, store, root = make_dir(NAMES40)
    seen, cookie, verf, calls = [], 0, b"\0" * 8, 0
    while True:
        res, n = readdir(core, nfs3.NFSPROC3_READDIRPLUS, root, limit, cookie, verf)
        assert res.status == nfs3.NFS3_OK and n <= limit
        seen += [e[1] for e in res.entries]
        calls += 1
        if res.eof:
            break
        cookie, verf = res.entries[-1][2], res.verf
    listed = [b".", b".."] + [n.encode() for n in NAMES40]
    assert seen == listed
    expected_calls, rest = 0, listed
    while rest:  # every reply the longest prefix of what is left
        rest = rest[_oracle(rest, limit, entryplus3_bytes)[0]:]
        expected_calls += 1
    assert calls == expected_calls


def test_readdirplus_dircount_bounds_the_entry3_part_but_never_makes_toosmall():
    core, _, root = make_dir(NAMES12)
    res, _ = readdir(core, nfs3.NFSPROC3_READDIRPLUS, root, 65536, dircount=0)
    assert (res.status, [e[1] for e in res.entries]) == (nfs3.NFS3_OK, [b"."])
    # entry3 parts: ".", "..", "ab", "abc" 32 bytes each; dircount 96 holds three of them
    res, _ = readdir(core, nfs3.NFSPROC3_READDIRPLUS, root, 65536, dircount=96)
    assert [e[1] for e in res.entries] == [b".", b"..", b"ab"] and not res.eof
    res, _ = readdir(core, nfs3.NFSPROC3_READDIRPLUS, root, 65536, dircount=65536)
    assert len(res.entries) == 14 and res.eof


def test_readdir_past_the_end_is_eof_and_a_too_small_empty_reply_is_toosmall():
    core, store, root = make_dir(NAMES12)
    verf = struct.pack(">Q", 12)
    res, n = readdir(core, nfs3.NFSPROC3_READDIR, root, RESOK_FIXED, cookie=14, verf=verf)
    assert (res.status, res.entries, res.eof, n) == (nfs3.NFS3_OK, [], True, RESOK_FIXED)
    res, _ = readdir(core, nfs3.NFSPROC3_READDIR, root, RESOK_FIXED - 1, cookie=14, verf=verf)
    assert res.status == nfs3.NFS3ERR_TOOSMALL


@pytest.mark.parametrize("transport,rtmax", [("udp", UDP_MAX_IO_BYTES), ("tcp", TCP_MAX_IO_BYTES)])
def test_read_never_exceeds_rtmax_and_its_reply_fits_the_transport(transport, rtmax):
    s = MemoryStore()
    exp = s.add_export("swap")
    img = s.create_image("swap", "img", 2 << 20)
    core = NasCore(s)
    fh = make_fh(2, exp.fsid, img.fileid)
    r = core.handle(nfs3.encode_call(1, nfs3.NFSPROC3_FSINFO, nfs3.FhArgs(fh), CRED), PEER, 0, transport)[0]
    assert nfs3.decode_reply(nfs3.NFSPROC3_FSINFO, r)[1].fsinfo[0] == rtmax
    for count in (rtmax - 1, rtmax, rtmax + 1, 0xFFFFFFFF):
        r = core.handle(nfs3.encode_call(2, nfs3.NFSPROC3_READ, nfs3.ReadArgs(fh, 0, count), CRED), PEER, 0, transport)[0]
        res = nfs3.decode_reply(nfs3.NFSPROC3_READ, r)[1]
        assert res.count == len(res.data) == min(count, rtmax)
        # RPC reply header 24 + status 4 + post_op_attr 88 + count 4 + eof 4 + length 4 + padded data
        assert len(r) == 128 + (min(count, rtmax) + 3) // 4 * 4
        if transport == "udp":
            assert len(r) <= 65507  # the largest IPv4 UDP payload
        else:  # the default record limit (used by the reference client and the tests) takes it
            assert rpc.RecordReassembler().feed(rpc.frame_record(r)) == [r]


def test_largest_write_call_fits_the_servers_record_limit():
    """A WRITE of wtmax with a 64-byte handle and a 400-byte AUTH_SYS credential, as encoded."""
    cred = rpc.auth_sys_cred(0, 0, b"m" * 255, gids=tuple(range(16)))
    msg = nfs3.encode_write_call(1, b"h" * 64, 0, b"\0" * TCP_MAX_IO_BYTES, nfs3.UNSTABLE, cred)
    assert len(cred[1]) == 4 + 4 + 256 + 4 + 4 + 4 + 64  # stamp, name, uid, gid, gids<16>
    assert len(msg) == TCP_MAX_IO_BYTES + 24 + 8 + len(cred[1]) + 8 + 68 + 20
    assert len(msg) <= MAX_RECORD_BYTES and len(msg) <= rpc.DEFAULT_MAX_RECORD_BYTES


# -- kind D: non-idempotent procedures replayed after the DRC lost them ------------------------------

def new_core(store=None, **kw):
    s = store or MemoryStore(b"verf0001")
    if "swap" not in s.exports:
        s.add_export("swap")
    core = NasCore(s, new_image_bytes=1 << 20, **kw)
    exp = s.exports["swap"]
    return core, s, make_fh(FH_KIND_DIR, exp.fsid, exp.dir_fileid)


def create(core, root, name, mode, verf=b"", attrs=None, xid=90, port=800, now=0.0):
    args = nfs3.CreateArgs(root, name, mode, attrs or nfs3.Sattr3(), verf)
    r = core.handle(nfs3.encode_call(xid, nfs3.NFSPROC3_CREATE, args, CRED), ("198.18.5.2", port), now)[0]
    return nfs3.decode_reply(nfs3.NFSPROC3_CREATE, r)[1]


def test_exclusive_create_replayed_from_a_new_port_answers_ok_with_the_same_handle():
    """Issue 12's input: EXCLUSIVE CREATE new1 verf0001 (xid 90, port 800), then the same from port 801."""
    core, _, root = new_core()
    first = create(core, root, b"new1", nfs3.EXCLUSIVE, b"verf0001", xid=90, port=800)
    assert first.status == nfs3.NFS3_OK
    again = create(core, root, b"new1", nfs3.EXCLUSIVE, b"verf0001", xid=90, port=801)
    assert (again.status, again.fh) == (nfs3.NFS3_OK, first.fh)
    assert core.drc.hits == 0 and core.counters["create_exclusive_replayed"] == 1  # not the DRC's doing
    other = create(core, root, b"new1", nfs3.EXCLUSIVE, b"verf0002", xid=91, port=802)
    assert (other.status, other.fh) == (nfs3.NFS3ERR_EXIST, None)


def test_exclusive_create_verifier_ends_with_the_first_write_or_time_change():
    core, store, root = new_core()
    first = create(core, root, b"new1", nfs3.EXCLUSIVE, b"verf0001")
    core.handle(nfs3.encode_write_call(5, first.fh, 0, b"x" * 512, nfs3.FILE_SYNC, CRED), PEER, 1.0)
    assert create(core, root, b"new1", nfs3.EXCLUSIVE, b"verf0001", port=801).status == nfs3.NFS3ERR_EXIST
    # an image the administrator made (no verifier) is never taken for a replay
    store.create_image("swap", "img", 4096)
    assert create(core, root, b"img", nfs3.EXCLUSIVE, b"\0" * 8, port=802).status == nfs3.NFS3ERR_EXIST


def test_exclusive_create_verifier_survives_a_restart_on_disk(tmp_path):
    core, store, root = new_core(DirStore(str(tmp_path), b"verf0001"))
    first = create(core, root, b"new1", nfs3.EXCLUSIVE, b"\x12\x34\x56\x78\x01\x02\x03\x04")
    assert first.status == nfs3.NFS3_OK
    st = os.stat(tmp_path / "swap" / "new1")
    assert (int(st.st_atime), int(st.st_mtime)) == (0x12345678, 0x01020304)  # Linux's place for it
    store.close()
    core2, store2, root2 = new_core(DirStore(str(tmp_path), b"verf0002"))  # SIGKILL and restart
    try:
        again = create(core2, root2, b"new1", nfs3.EXCLUSIVE, b"\x12\x34\x56\x78\x01\x02\x03\x04", port=801)
        assert (again.status, again.fh) == (nfs3.NFS3_OK, first.fh)
        assert create(core2, root2, b"new1", nfs3.EXCLUSIVE, b"verf0003", port=802).status == nfs3.NFS3ERR_EXIST
    finally:
        store2.close()


def test_guarded_create_replayed_answers_exist():
    core, _, root = new_core()
    assert create(core, root, b"g1", nfs3.GUARDED, port=800).status == nfs3.NFS3_OK
    assert create(core, root, b"g1", nfs3.GUARDED, port=801).status == nfs3.NFS3ERR_EXIST


def test_unchecked_create_with_size_0_replayed_answers_ok_with_the_same_handle():
    core, _, root = new_core()
    first = create(core, root, b"u1", nfs3.UNCHECKED, attrs=nfs3.Sattr3(mode=0o644, size=0), port=800)
    again = create(core, root, b"u1", nfs3.UNCHECKED, attrs=nfs3.Sattr3(mode=0o644, size=0), port=801)
    assert (first.status, again.status, again.fh) == (nfs3.NFS3_OK, nfs3.NFS3_OK, first.fh)
    assert again.attr.size == 1 << 20  # ignored, as SETATTR's smaller size is: images never shrink
    big = create(core, root, b"u1", nfs3.UNCHECKED, attrs=nfs3.Sattr3(size=2 << 20), port=802)
    assert big.status == nfs3.NFS3ERR_NOSPC


def _getattr(core, fh, now=0.0):
    r = core.handle(nfs3.encode_call(7, nfs3.NFSPROC3_GETATTR, nfs3.FhArgs(fh), CRED), PEER, now)[0]
    return nfs3.decode_reply(nfs3.NFSPROC3_GETATTR, r)[1].attr


def test_guarded_setattr_replayed_answers_not_sync_and_changes_nothing():
    core, _, root = new_core()
    fh = create(core, root, b"s1", nfs3.GUARDED).fh
    c0 = _getattr(core, fh).ctime
    msg = nfs3.encode_call(40, nfs3.NFSPROC3_SETATTR, nfs3.SetattrArgs(fh, nfs3.Sattr3(mode=0o600), c0), CRED)
    r1 = nfs3.decode_reply(2, core.handle(msg, ("198.18.5.2", 800), 5.0)[0])[1]
    assert r1.status == nfs3.NFS3_OK and r1.wcc.after.mode == 0o600 and r1.wcc.after.ctime == (5, 0)
    r2 = nfs3.decode_reply(2, core.handle(msg, ("198.18.5.2", 801), 6.0)[0])[1]
    assert r2.status == nfs3.NFS3ERR_NOT_SYNC and r2.wcc.after.ctime == (5, 0)
    assert _getattr(core, fh).ctime == (5, 0) and _getattr(core, fh).mode == 0o600
    unguarded = nfs3.encode_call(41, 2, nfs3.SetattrArgs(fh, nfs3.Sattr3(mode=0o640)), CRED)
    for port in (802, 803):
        assert nfs3.decode_reply(2, core.handle(unguarded, ("198.18.5.2", port), 7.0)[0])[1].status == nfs3.NFS3_OK
    assert _getattr(core, fh).mode == 0o640


# RFC 1813 resfail bodies of the namespace procedures: status + FALSE per post_op_attr/pre_op_attr
NAMESPACE_FAIL_BYTES = {nfs3.NFSPROC3_MKDIR: 12, nfs3.NFSPROC3_SYMLINK: 12, nfs3.NFSPROC3_MKNOD: 12,
                        nfs3.NFSPROC3_REMOVE: 12, nfs3.NFSPROC3_RMDIR: 12, nfs3.NFSPROC3_RENAME: 20,
                        nfs3.NFSPROC3_LINK: 16}


@pytest.mark.parametrize("proc", sorted(NAMESPACE_FAIL_BYTES))
def test_namespace_procedures_replayed_answer_notsupp_and_change_nothing(proc):
    core, store, root = new_core()
    store.create_image("swap", "img", 4096)
    p = Packer()
    nfs3.pack_fh(p, root)
    nfs3.pack_name(p, b"img")
    msg = rpc.encode_call(60, nfs3.NFS_PROGRAM, 3, proc, p.get_bytes(), CRED)
    bodies = []
    for port in (800, 801):
        r = core.handle(msg, ("198.18.5.2", port), 0.0)[0]
        bodies.append(r[rpc.decode_reply(r).body_offset:])
    assert bodies[0] == bodies[1] == struct.pack(">I", nfs3.NFS3ERR_NOTSUPP) + b"\0" * (NAMESPACE_FAIL_BYTES[proc] - 4)
    assert list(store.exports["swap"].images) == ["img"]


def test_commit_and_write_replayed_after_a_restart_carry_the_new_verifier():
    core, store, root = new_core()
    store.create_image("swap", "img", 1 << 20)
    fh = make_fh(2, store.exports["swap"].fsid, store.exports["swap"].images["img"].fileid)
    wmsg = nfs3.encode_write_call(70, fh, 0, b"U" * 4096, nfs3.UNSTABLE, CRED)
    w = nfs3.decode_write_reply(core.handle(wmsg, ("198.18.5.2", 800), 0.0)[0])
    cmsg = nfs3.encode_call(71, nfs3.NFSPROC3_COMMIT, nfs3.CommitArgs(fh, 0, 4096), CRED)
    assert w.verf == nfs3.decode_commit_reply(core.handle(cmsg, ("198.18.5.2", 800), 0.0)[0]).verf == b"verf0001"
    wmsg2 = nfs3.encode_write_call(72, fh, 4096, b"V" * 4096, nfs3.UNSTABLE, CRED)
    core.handle(wmsg2, ("198.18.5.2", 800), 0.0)
    store.crash(b"verf0002")  # SIGKILL + restart: the pending page is gone, the DRC with it
    c = nfs3.decode_commit_reply(core.handle(cmsg, ("198.18.5.2", 801), 1.0)[0])
    assert (c.status, c.verf) == (nfs3.NFS3_OK, b"verf0002")  # the client sees the change and resends
    assert bytes(store.exports["swap"].images["img"].data[4096:4100]) == b"\0\0\0\0"
    w2 = nfs3.decode_write_reply(core.handle(wmsg2, ("198.18.5.2", 801), 1.0)[0])
    assert (w2.status, w2.count, w2.verf) == (nfs3.NFS3_OK, 4096, b"verf0002")
    assert store.exports["swap"].images["img"].pending_bytes == 4096  # once, not twice


# -- kind E: one peer's share of the DRC; image handles ---------------------------------------------

def test_drc_one_peer_cannot_flush_another_peers_replies():
    d = DuplicateRequestCache(max_entries=100, max_age_s=60, max_entries_per_peer=10)
    kb = (1, "198.18.5.3", 700, 100003, 3, 7, 0)
    d.lookup(kb, 0)
    d.finish(kb, b"B", 0)
    for xid in range(50):
        k = (xid, "198.18.5.2", 800, 100003, 3, 7, 0)
        d.lookup(k, 0)
        d.finish(k, b"A", 0)
    assert d.lookup(kb, 1) == ("hit", b"B")
    snap = d.snapshot()
    assert (snap["entries"], snap["evictions_peer"], snap["peers"], snap["evictions_size"]) == (11, 40, 2, 0)
    assert d.lookup((49, "198.18.5.2", 800, 100003, 3, 7, 0), 1) == ("hit", b"A")
    assert d.lookup((0, "198.18.5.2", 800, 100003, 3, 7, 0), 1)[0] == "miss"


def test_create_past_max_images_answers_nospc_and_is_counted():
    core, store, root = new_core(max_images=3)
    for i in range(3):
        assert create(core, root, f"n{i}".encode(), nfs3.GUARDED, xid=100 + i).status == nfs3.NFS3_OK
    assert create(core, root, b"n3", nfs3.GUARDED, xid=103).status == nfs3.NFS3ERR_NOSPC
    assert core.counters["create_refused_max_images"] == 1 and store.image_count() == 3
    assert core.snapshot()["limits"]["max_images"] == 3


# -- also found: unavailable programs, FSSTAT -------------------------------------------------------

def test_nfsacl_probe_is_prog_unavail_counted_by_program_not_a_procedure():
    core, _, _ = new_core()
    msg = rpc.encode_call(0x77, 100227, 3, 0, b"", CRED)  # NFSACL v3 NULL, as a Linux client probes
    out = core.handle(msg, PEER, 0.0)
    assert out == [rpc.encode_accepted(0x77, rpc.PROG_UNAVAIL)]
    core.observe_latency(core.last_label, 0.001)  # what the socket layer does after every call
    snap = core.snapshot()
    assert "-" not in snap["procedures"] and snap["procedures"] == {}
    assert snap["unavailable"] == {"100227 v3": 1} and snap["counters"]["rpc_prog_unavail"] == 1
    core.handle(rpc.encode_call(0x78, nfs3.NFS_PROGRAM, 3, 99, b"", CRED), PEER, 0.0)
    core.observe_latency(core.last_label, 0.001)
    assert core.snapshot()["unavailable"] == {"100227 v3": 1, "100003 v3 proc 99": 1}
    assert core.snapshot()["procedures"] == {}


def test_fsstat_reports_the_exports_file_system(tmp_path):
    core, store, root = new_core(DirStore(str(tmp_path), b"verf0001"))
    try:
        before = os.statvfs(tmp_path / "swap")
        r = core.handle(nfs3.encode_call(80, nfs3.NFSPROC3_FSSTAT, nfs3.FhArgs(root), CRED), PEER, 0.0)[0]
        after = os.statvfs(tmp_path / "swap")
        t, f, a, tf, ff, af, invarsec = nfs3.decode_reply(nfs3.NFSPROC3_FSSTAT, r)[1].fsstat
        fr = before.f_frsize
        assert (t, tf, invarsec) == (before.f_blocks * fr, before.f_files, 0)
        # free figures move with other users of the file system: between the two statvfs calls
        lo, hi = sorted((before.f_bfree * fr, after.f_bfree * fr))
        assert lo <= f <= hi and f > 0
        lo, hi = sorted((before.f_bavail * fr, after.f_bavail * fr))
        assert lo <= a <= hi and a <= f <= t
        assert min(before.f_ffree, after.f_ffree) <= ff <= max(before.f_ffree, after.f_ffree)
        assert min(before.f_favail, after.f_favail) <= af <= max(before.f_favail, after.f_favail)
    finally:
        store.close()
