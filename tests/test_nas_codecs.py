"""Codec tests: byte fixtures (parse + emit), round trips, strictness, and scapy as an oracle."""

import struct

import pytest

from protocols import mount as mnt
from protocols import nfs3, rpc
from protocols.xdr import Packer, Unpacker, XdrError

# A NULL call to NFS v3, xid 0x01020304, AUTH_NONE: RFC 5531 layout, written out by hand.
NULL_CALL_BYTES = bytes.fromhex(
    "01020304" "00000000" "00000002" "000186a3" "00000003" "00000000"  # xid CALL rpcvers prog vers proc
    "00000000" "00000000" "00000000" "00000000"  # cred AUTH_NONE len 0, verf AUTH_NONE len 0
)
# Its reply: MSG_ACCEPTED, AUTH_NONE verifier, SUCCESS, no body.
NULL_REPLY_BYTES = bytes.fromhex("01020304" "00000001" "00000000" "00000000" "00000000" "00000000")


def test_null_call_parse_and_emit():
    assert rpc.encode_call(0x01020304, 100003, 3, 0) == NULL_CALL_BYTES
    h = rpc.decode_call(NULL_CALL_BYTES)
    assert (h.xid, h.prog, h.vers, h.proc, h.cred_flavor, h.args_offset) == (0x01020304, 100003, 3, 0, 0, 40)


def test_null_reply_parse_and_emit():
    assert rpc.encode_accepted(0x01020304) == NULL_REPLY_BYTES
    r = rpc.decode_reply(NULL_REPLY_BYTES)
    assert r.ok and r.xid == 0x01020304 and r.body_offset == 24


def test_xdr_opaque_padding_and_bounds():
    p = Packer()
    p.pack_opaque(b"abcde")
    assert p.get_bytes() == b"\0\0\0\x05abcde\0\0\0"
    assert Unpacker(p.get_bytes()).unpack_opaque() == b"abcde"
    with pytest.raises(XdrError, match="non-zero XDR padding"):
        Unpacker(b"\0\0\0\x05abcde\0\x01\0").unpack_opaque()
    with pytest.raises(XdrError, match="exceeds its maximum 4"):
        Unpacker(p.get_bytes()).unpack_opaque(4)
    with pytest.raises(XdrError, match="truncated"):
        Unpacker(b"\xff\xff\xff\xf0abc").unpack_opaque()
    with pytest.raises(XdrError, match="bool must be 0 or 1, got 2"):
        Unpacker(b"\0\0\0\x02").unpack_bool()


def test_reject_replies_round_trip():
    r = rpc.decode_reply(rpc.encode_rpc_mismatch(9))
    assert (r.reply_stat, r.reject_stat, r.mismatch) == (rpc.MSG_DENIED, rpc.RPC_MISMATCH, (2, 2))
    r = rpc.decode_reply(rpc.encode_auth_error(9, rpc.AUTH_TOOWEAK))
    assert (r.reject_stat, r.auth_stat) == (rpc.AUTH_ERROR, rpc.AUTH_TOOWEAK)
    r = rpc.decode_reply(rpc.encode_prog_mismatch(9, 3, 4))
    assert (r.accept_stat, r.mismatch) == (rpc.PROG_MISMATCH, (3, 4))
    for st in (rpc.PROG_UNAVAIL, rpc.PROC_UNAVAIL, rpc.GARBAGE_ARGS, rpc.SYSTEM_ERR):
        assert rpc.decode_reply(rpc.encode_accepted(9, st)).accept_stat == st


def test_auth_sys_round_trip_and_limits():
    flavor, body = rpc.auth_sys_cred(1000, 100, b"host", 7, (1, 2, 3))
    c = rpc.decode_call(rpc.encode_call(1, 100003, 3, 0, b"", (flavor, body)))
    assert c.auth_sys == rpc.AuthSys(7, b"host", 1000, 100, (1, 2, 3))
    bad = struct.pack(">IIII", 0, 0, 0, 0) + struct.pack(">I", 17)  # 17 gids > 16
    with pytest.raises(rpc.RpcError) as e:
        rpc.decode_call(rpc.encode_call(1, 100003, 3, 0, b"", (rpc.AUTH_SYS, bad)))
    assert e.value.kind == "bad_cred"


def test_record_marking_reassembles_fragments_and_bounds():
    msg = bytes(range(256)) * 40
    framed = rpc.frame_record(msg, max_fragment_bytes=1000)
    assert len(framed) == len(msg) + 4 * 11
    rm = rpc.RecordReassembler(1 << 16)
    got = []
    for i in range(0, len(framed), 7):  # dribble 7 bytes at a time
        got += rm.feed(framed[i : i + 7])
    assert got == [msg] and rm.fragments == 11 and rm.records == 1 and rm.buffered_bytes() == 0
    with pytest.raises(rpc.RecordError, match="exceeds the limit of 100"):
        rpc.RecordReassembler(100).feed(rpc.frame_record(b"x" * 101))


def test_write_hot_path_matches_generic_encoder():
    fh = bytes(range(20))
    cred = rpc.auth_sys_cred(0, 0, b"agent")
    fast = nfs3.encode_write_call(77, fh, 8192, b"p" * 4095, nfs3.DATA_SYNC, cred)
    slow = nfs3.encode_call(77, nfs3.NFSPROC3_WRITE, nfs3.WriteArgs(fh, 8192, 4095, nfs3.DATA_SYNC, b"p" * 4095), cred)
    assert fast == slow
    h = rpc.decode_call(fast)
    a = nfs3.decode_args(nfs3.NFSPROC3_WRITE, Unpacker(fast, h.args_offset))
    assert (a.offset, a.count, a.stable, bytes(a.data)) == (8192, 4095, nfs3.DATA_SYNC, b"p" * 4095)


def test_write_and_commit_reply_fast_decoders():
    attr = nfs3.Fattr3(size=1 << 20, fileid=5)
    wcc = nfs3.WccData(nfs3.WccAttr(1 << 20, (1, 2), (3, 4)), attr)
    body = nfs3.encode_res(nfs3.NFSPROC3_WRITE, nfs3.Res(wcc=wcc, count=4096, committed=nfs3.UNSTABLE, verf=b"VERIFIER"))
    w = nfs3.decode_write_reply(rpc.encode_accepted(5, rpc.SUCCESS, body))
    assert (w.xid, w.status, w.count, w.committed, w.verf) == (5, 0, 4096, nfs3.UNSTABLE, b"VERIFIER")
    body = nfs3.encode_res(nfs3.NFSPROC3_COMMIT, nfs3.Res(wcc=wcc, verf=b"NEWVERF!"))
    c = nfs3.decode_commit_reply(rpc.encode_accepted(6, rpc.SUCCESS, body))
    assert (c.xid, c.status, c.verf) == (6, 0, b"NEWVERF!")
    body = nfs3.encode_res(nfs3.NFSPROC3_WRITE, nfs3.Res(status=nfs3.NFS3ERR_NOSPC, wcc=wcc))
    assert nfs3.decode_write_reply(rpc.encode_accepted(7, rpc.SUCCESS, body)).status == nfs3.NFS3ERR_NOSPC
    assert not nfs3.decode_write_reply(rpc.encode_accepted(8, rpc.GARBAGE_ARGS)).rpc_ok


ARGS = {
    nfs3.NFSPROC3_GETATTR: nfs3.FhArgs(b"f" * 20),
    nfs3.NFSPROC3_SETATTR: nfs3.SetattrArgs(b"f" * 20, nfs3.Sattr3(mode=0o600, size=0, mtime=(5, 6)), (1, 2)),
    nfs3.NFSPROC3_LOOKUP: nfs3.DiropArgs(b"d" * 20, b"img"),
    nfs3.NFSPROC3_ACCESS: nfs3.AccessArgs(b"f" * 20, 0x3F),
    nfs3.NFSPROC3_READ: nfs3.ReadArgs(b"f" * 20, 1 << 40, 32768),
    nfs3.NFSPROC3_WRITE: nfs3.WriteArgs(b"f" * 20, 4096, 3, nfs3.FILE_SYNC, b"abc"),
    nfs3.NFSPROC3_CREATE: nfs3.CreateArgs(b"d" * 20, b"new", nfs3.GUARDED, nfs3.Sattr3(mode=0o644)),
    nfs3.NFSPROC3_FSSTAT: nfs3.FhArgs(b"f" * 20),
    nfs3.NFSPROC3_FSINFO: nfs3.FhArgs(b"f" * 20),
    nfs3.NFSPROC3_PATHCONF: nfs3.FhArgs(b"f" * 20),
    nfs3.NFSPROC3_COMMIT: nfs3.CommitArgs(b"f" * 20, 0, 0),
    nfs3.NFSPROC3_READDIRPLUS: nfs3.ReaddirplusArgs(b"d" * 20, 0, b"\0" * 8, 4096, 8192),
}


@pytest.mark.parametrize("proc", sorted(ARGS))
def test_args_round_trip(proc):
    enc = nfs3.encode_args(proc, ARGS[proc])
    dec = nfs3.decode_args(proc, Unpacker(enc))
    if proc == nfs3.NFSPROC3_WRITE:
        dec.data = bytes(dec.data)
    assert dec == ARGS[proc]
    assert nfs3.encode_args(proc, dec) == enc
    for cut in range(len(enc)):  # every truncation is an XdrError, never another exception
        with pytest.raises(XdrError):
            nfs3.decode_args(proc, Unpacker(enc[:cut]))


def test_results_round_trip():
    a = nfs3.Fattr3(nfs3.NF3REG, 0o644, 1, 0, 0, 4096, 4096, (0, 0), 9, 10, (1, 2), (3, 4), (5, 6))
    wcc = nfs3.WccData(nfs3.WccAttr(4096, (3, 4), (5, 6)), a)
    cases = {
        nfs3.NFSPROC3_GETATTR: nfs3.Res(attr=a),
        nfs3.NFSPROC3_LOOKUP: nfs3.Res(fh=b"x" * 20, attr=a, dir_attr=a),
        nfs3.NFSPROC3_READ: nfs3.Res(attr=a, count=3, eof=True, data=b"abc"),
        nfs3.NFSPROC3_CREATE: nfs3.Res(fh=b"y" * 20, attr=a, wcc=wcc),
        nfs3.NFSPROC3_FSINFO: nfs3.Res(attr=a, fsinfo=(1, 2, 3, 4, 5, 6, 7, 8, (0, 1), 24)),
        nfs3.NFSPROC3_FSSTAT: nfs3.Res(attr=a, fsstat=(1, 2, 3, 4, 5, 6, 7)),
        nfs3.NFSPROC3_PATHCONF: nfs3.Res(attr=a, pathconf=(1, 255, True, True, False, True)),
        nfs3.NFSPROC3_READDIRPLUS: nfs3.Res(attr=a, verf=b"c" * 8, entries=[(10, b"img", 1, a, b"z" * 20)], eof=True),
    }
    for proc, res in cases.items():
        enc = nfs3.encode_res(proc, res)
        assert nfs3.encode_res(proc, nfs3.decode_res(proc, Unpacker(enc))) == enc, nfs3.PROC_NAMES[proc]


def test_mount_and_portmap_round_trip():
    r = mnt.MntRes(mnt.MNT3_OK, b"h" * 20, [1, 0])
    assert mnt.decode_mnt_res(Unpacker(mnt.encode_mnt_res(r))) == r
    ex = [(b"/swap", [b"198.18.0.0/15"]), (b"/b", [])]
    assert mnt.decode_exports(Unpacker(mnt.encode_exports(ex))) == ex
    m = [mnt.Mapping(100003, 3, 6, 2049)]
    assert mnt.decode_pmap_list(Unpacker(mnt.encode_pmap_list(m))) == m
    with pytest.raises(XdrError):
        mnt.decode_dirpath(Unpacker(struct.pack(">I", 1025) + b"a" * 1028))


def test_scapy_oracle_decodes_our_call_and_reply():
    """scapy's RPC/NFS layers (independent code) read the fields our encoder wrote."""
    nfs_layers = pytest.importorskip("scapy.contrib.nfs")
    rpc_layers = pytest.importorskip("scapy.contrib.oncrpc")
    fh = bytes(range(20))
    msg = nfs3.encode_write_call(0xABCDEF01, fh, 12288, b"q" * 100, nfs3.FILE_SYNC, rpc.auth_sys_cred(1, 2, b"m"))
    pkt = rpc_layers.RPC(msg)
    assert pkt.xid == 0xABCDEF01 and pkt.mtype == 0
    call = pkt[rpc_layers.RPC_Call]
    assert (call.program, call.pversion, call.procedure) == (100003, 3, 7)
    w = pkt[nfs_layers.WRITE_Call]
    assert (w.offset, w.count, w.stable, w.length, w.contents) == (12288, 100, 2, 100, b"q" * 100)
