"""Issue 12, further inputs of each kind (a tester's pass after the fix): kind A (WRITE/COMMIT
replies that are not final), B (reply sizes the client bounds), C (receive-path state), D (replays
outside the DRC), E (per-peer resources). Each test names the RFC section or Linux function it
follows; the in-memory kits only (no namespaces)."""

import struct

import pytest

from client_agent.fs.nfs import nfs3proc as tp
from client_agent.fs.nfs.nfs3proc import WriteError, classify_reply
from client_agent.wire import arp, ethernet, ipv4, udp
from nas_server.core import FH_KIND_DIR, NasCore, make_fh
from protocols import mount as mnt
from protocols import nfs3, rpc
from protocols.xdr import Unpacker
from nas_server.store import MemoryStore
from test_nfs_durability import PAGE, _durable_page, nfs_fail, rewrite_write
from client_agent.phy.wire_pair import WirePair
from test_stack_kit import A, B, IP_B, MAC_B, kit, udp_frame  # noqa: F401
from test_nas_replies import create, make_dir, new_core, readdir
from test_stack_rx_state import MAC_S, STRANGER, _arp, _drops, _frags, _rx, _send

CRED = rpc.auth_sys_cred(0, 0, b"t")


def _ok_write_reply(xid, count, committed, verf=b"memstor1", wcc=b"\0\0\0\0\0\0\0\0"):
    """WRITE3resok: status, wcc_data (``wcc``: both attributes absent by default), count,
    committed, verf."""
    return rpc.encode_accepted(xid, rpc.SUCCESS, struct.pack(">I", 0) + wcc
                               + struct.pack(">II", count, committed) + verf)


# == kind A ========================================================================================
@pytest.mark.parametrize("committed", [3, 7, 0xFFFFFFFF])
def test_write_reply_with_bad_stable_how_is_an_eio_not_a_commit(committed):
    """fs/nfs/nfs3xdr.c decode_write3resok: committed > NFS_FILE_SYNC -> "NFS: bad stable_how
    value" -> -EIO; the page's writeback ends with EIO. It must not be taken for a weaker level
    and settled by a COMMIT."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE:
            return call, [_ok_write_reply(xid, len(a.data), committed)]
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res == WriteError("EIO", "undecodable result", 4096, "WRITE")
    assert [x[1] for x in nas.calls] == ["WRITE"] and c["commits"] == 0
    assert c["write_errors"] == 1


def test_short_data_sync_then_unstable_remainder_then_commit_with_a_new_verifier():
    """Short DATA_SYNC reply (count 1024): the rest at +1024 (nfs_writeback_result); that one is
    answered UNSTABLE -> COMMIT (nfs_write_need_commit); its verifier differs -> the whole page
    again (nfs_commit_release_pages), then durable."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            return rewrite_write(call, a, data=a.data[:1024], stable=nfs3.DATA_SYNC), None
        if proc == nfs3.NFSPROC3_WRITE and n == 1:
            return rewrite_write(call, a, stable=nfs3.UNSTABLE), None
        if proc == nfs3.NFSPROC3_COMMIT and n == 0:
            return call, [rpc.encode_accepted(xid, rpc.SUCCESS, struct.pack(">III", 0, 0, 0) + b"rebooted")]
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res is None and img.read(4096, 4096) == PAGE
    assert nas.writes() == [(4096, 1024, nfs3.DATA_SYNC), (5120, 3072, nfs3.UNSTABLE),
                            (4096, 4096, nfs3.FILE_SYNC)]
    assert c["shortwrite"] == 1 and c["verifier_changes"] == 1 and c["commits"] == 1


def test_short_write_then_jukebox_on_the_rest_retries_the_rest_after_5s():
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            return rewrite_write(call, a, data=a.data[:512]), None
        if proc == nfs3.NFSPROC3_WRITE and n == 1:
            return call, [nfs_fail(xid, nfs3.NFS3ERR_JUKEBOX)]
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res is None and img.read(4096, 4096) == PAGE
    assert nas.writes() == [(4096, 512, nfs3.FILE_SYNC), (4608, 3584, nfs3.FILE_SYNC),
                            (4608, 3584, nfs3.FILE_SYNC)]
    times = [x[0] for x in nas.calls]
    assert times[2] - times[1] >= tp.NFS_JUKEBOX_RETRY_S
    assert c["shortwrite"] == 1 and c["delay"] == 1


def test_short_unstable_resent_file_sync_answered_unstable_needs_a_commit():
    """Short UNSTABLE -> whole page FILE_SYNC; that answered UNSTABLE (committed < stable, a
    "faulty server") -> COMMIT with the same verifier -> durable."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            return rewrite_write(call, a, data=a.data[:100]), None
        if proc == nfs3.NFSPROC3_WRITE and n == 1:
            return rewrite_write(call, a, stable=nfs3.UNSTABLE), None
        return call, None
    res, c, nas, img, _ = _durable_page(fault, stable=nfs3.UNSTABLE)
    assert res is None and img.read(4096, 4096) == PAGE
    assert [x[1:] for x in nas.calls] == [("WRITE", 4096, 100, nfs3.UNSTABLE),
                                          ("WRITE", 4096, 4096, nfs3.UNSTABLE),
                                          ("COMMIT", 4096, 4096, None)]
    assert c["committed_lt_stable"] == 1 and c["commits"] == 1


def test_count_larger_than_asked_is_taken_as_the_whole_write():
    """nfs_writeback_result acts only on count < requested; a count above it (the reply below
    claims 8192 for a 4096-byte FILE_SYNC WRITE) is a complete write: no resend, no COMMIT."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE:
            return call, [_ok_write_reply(xid, 8192, nfs3.FILE_SYNC)]
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res is None and len(nas.writes()) == 1
    assert (c["writes"], c["shortwrite"], c["commits"], c["write_errors"]) == (1, 0, 0, 0)


def test_reply_for_another_xid_is_counted_and_the_call_retransmitted():
    """xprt_lookup_rqst: a reply whose xid matches no request is dropped (rpc_bad_xid here);
    the call is retransmitted after timeo on the same xid and the page becomes durable."""
    replied = []

    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            replied.append(xid)
            return call, [_ok_write_reply(xid ^ 0x5A5A, len(a.data), nfs3.FILE_SYNC)]
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res is None and img.read(4096, 4096) == PAGE
    assert len(nas.writes()) == 2 and c["writes"] == 1 and c["rpcgarbage"] == 0


@pytest.mark.parametrize("wcc", [
    struct.pack(">I", 1) + b"\0" * 12,                       # pre_op_attr TRUE, wcc_attr cut short
    struct.pack(">II", 0, 1) + b"\0" * 40,                   # post_op_attr TRUE, fattr3 cut short
])
def test_truncated_wcc_data_is_undecodable_eio(wcc):
    """nfs3xdr decode_wcc_data fails -> -EIO, final for the page (no commit, no resend)."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE:
            return call, [rpc.encode_accepted(xid, rpc.SUCCESS, struct.pack(">I", 0) + wcc)]
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res == WriteError("EIO", "undecodable result", 4096, "WRITE")
    assert len(nas.writes()) == 1


def test_accepted_reply_with_a_non_null_verifier_is_garbage():
    """net/sunrpc/auth_null.c nul_validate: the reply verifier of an AUTH_NULL call must be
    AUTH_NULL with length 0, else -EIO -> rpc_decode_header out_verifier -> out_garbage (retried
    within tk_garb_retry)."""
    ok = _ok_write_reply(1, 4096, nfs3.FILE_SYNC)
    body = ok[24:]
    bad_flavor = struct.pack(">IIIIII", 1, rpc.REPLY, rpc.MSG_ACCEPTED, rpc.AUTH_SYS, 0, 0) + body
    bad_length = struct.pack(">IIIII", 1, rpc.REPLY, rpc.MSG_ACCEPTED, rpc.AUTH_NONE, 4) + b"abcd" \
        + struct.pack(">I", 0) + body
    for msg in (bad_flavor, bad_length):
        assert classify_reply(msg, tp._decode_write_reply).kind == tp.GARBAGE


# == kind B ========================================================================================
LONG_NAMES = ["a" * 255, "b" * 254, "c" * 253, "d" * 1, "e" * 7, "f" * 129, "g" * 250]


@pytest.mark.parametrize("proc", [nfs3.NFSPROC3_READDIR, nfs3.NFSPROC3_READDIRPLUS])
def test_readdir_long_and_odd_names_from_a_middle_cookie_never_overrun(proc):
    """Names of 1..255 bytes (every padding case), from cookie 0 and from cookies in the middle,
    every bound from 0 to 4000: the resok never exceeds it, the entries are the longest prefix
    that fits, TOOSMALL only when none does (RFC 1813 3.3.16/3.3.17)."""
    core, _s, root = make_dir(LONG_NAMES)
    res0, _ = readdir(core, proc, root, 100000)
    verf = res0.verf
    all_names = [e[1] for e in res0.entries]
    assert len(all_names) == 2 + len(LONG_NAMES) and res0.eof
    for cookie in (0, 2, 4, 8):
        for limit in range(0, 4000, 7):
            res, size = readdir(core, proc, root, limit, cookie=cookie, verf=verf)
            if res.status == nfs3.NFS3ERR_TOOSMALL:
                continue
            assert res.status == nfs3.NFS3_OK and size <= limit, (cookie, limit, size)
            got = [e[1] for e in res.entries]
            assert got == all_names[cookie:cookie + len(got)]
            assert res.eof == (cookie + len(got) == len(all_names))
            if not res.eof:   # the next entry would not have fitted
                bigger, bsize = readdir(core, proc, root, size + 1, cookie=cookie, verf=verf)
                assert [e[1] for e in bigger.entries] == got


def test_read_count_0_and_past_the_end():
    """READ count 0 -> NFS3_OK, count 0, eof only at/after the end (RFC 1813 3.3.6)."""
    s = MemoryStore()
    exp = s.add_export("swap")
    img = s.create_image("swap", "img", 8192)
    core = NasCore(s)
    fh = make_fh(2, exp.fsid, img.fileid)
    for off, count, want in ((0, 0, (0, False)), (8192, 0, (0, True)), (8000, 4096, (192, True)),
                             (1 << 62, 10, (0, True))):
        r = core.handle(nfs3.encode_call(3, nfs3.NFSPROC3_READ, nfs3.ReadArgs(fh, off, count), CRED),
                        ("198.18.5.2", 800), 0.0)[0]
        res = nfs3.decode_reply(nfs3.NFSPROC3_READ, r)[1]
        assert (res.status, res.count, res.eof) == (nfs3.NFS3_OK, *want)
        assert len(res.data) == res.count


# == kind C ========================================================================================
SEG32 = udp.emit(A, B, 5000, 7000, b"0123456789abcdefghijklmnopqrstuv")     # 40 bytes


def test_fragments_in_reverse_order_complete(kit):
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(SEG32, [(32, 40), (24, 32), (16, 24), (8, 16), (0, 8)]))
    assert sk.recvfrom()[0] == b"0123456789abcdefghijklmnopqrstuv" and _drops(sb) == {}
    assert sb.reasm.mem == 0 and not sb.reasm.queues


def test_mf_fragment_of_odd_length_is_trimmed_to_a_multiple_of_8(kit):
    """ip_frag_queue: a non-last fragment's end is rounded down to a multiple of 8."""
    w, sb, sk = _rx(kit)
    frames = [udp_frame(seg=SEG32[0:13], ident=9, frag_off=0, flags=ipv4.IP_MF),
              udp_frame(seg=SEG32[8:40], ident=9, frag_off=8, flags=0)]
    _send(w, sb, frames)
    assert sk.recvfrom()[0] == b"0123456789abcdefghijklmnopqrstuv" and _drops(sb) == {}


def test_zero_length_last_fragment_kills_the_queue(kit):
    """ip_frag_queue: end == offset -> discard_qp (ReasmFails), whatever was queued."""
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(SEG32, [(0, 8)]) + [udp_frame(seg=b"", ident=77, frag_off=8, flags=0)])
    assert _drops(sb) == {"FRAG_INVALID": 2} and sk.recvfrom() is None
    assert sb.reasm.mem == 0 and not sb.reasm.queues and sb.snmp["Ip"]["ReasmFails"] == 1


def test_duplicate_last_fragment_is_dup_and_the_datagram_completes(kit):
    w, sb, sk = _rx(kit)
    _send(w, sb, _frags(SEG32, [(16, 40), (16, 40), (0, 16)]))
    assert _drops(sb) == {"DUP_FRAG": 1}
    assert sk.recvfrom()[0] == b"0123456789abcdefghijklmnopqrstuv"


def test_last_fragment_overlapping_the_tail_kills_the_queue(kit):
    w, sb, sk = _rx(kit)
    frames = _frags(SEG32, [(0, 16)]) + [udp_frame(seg=SEG32[8:40], ident=77, frag_off=8, flags=0)]
    _send(w, sb, frames)
    assert _drops(sb) == {"FRAG_OVERLAP": 2} and sb.snmp["Ip"]["ReasmOverlaps"] == 1
    assert sb.reasm.mem == 0 and not sb.reasm.queues


@pytest.mark.parametrize("tip", ["224.0.0.1", "127.0.0.1"])
def test_arp_for_a_multicast_or_loopback_target_updates_nothing(kit, tip):
    """arp_process: "Check for bad requests for 127.x.x.x and requests for multicast addresses.
    If this is one such, delete it." -- goto out_free_skb before any neighbour update. A known
    neighbour's MAC must not change through such a packet."""
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, MAC_S, STRANGER, B, dst_mac=ethernet.BROADCAST)])
    n = sb.neigh.lookup(STRANGER)
    assert (n.state, n.mac) == ("STALE", MAC_S)
    other = bytes.fromhex("0200000000cc")
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, other, STRANGER, ipv4.ip_aton(tip),
                       dst_mac=ethernet.BROADCAST)], now=5.0)
    assert (n.mac, n.updated) == (MAC_S, 0.0)
    assert _drops(sb) == {"ARP_BAD_TARGET": 1}


def test_gratuitous_reply_with_tha_not_sha_is_not_gratuitous_within_locktime(kit):
    """arp_is_garp: a REPLY with sip == tip is gratuitous only if tha == sha; otherwise within
    locktime the first MAC stays."""
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    _send(w, sb, [_arp(arp.ARPOP_REQUEST, MAC_S, STRANGER, B, dst_mac=ethernet.BROADCAST)])
    n = sb.neigh.lookup(STRANGER)
    other = bytes.fromhex("0200000000dd")
    _send(w, sb, [_arp(arp.ARPOP_REPLY, other, STRANGER, STRANGER, tha=b"\xff" * 6,
                       dst_mac=ethernet.BROADCAST)], now=0.5)
    assert n.mac == MAC_S
    _send(w, sb, [_arp(arp.ARPOP_REPLY, other, STRANGER, STRANGER, tha=other,
                       dst_mac=ethernet.BROADCAST)], now=0.6)
    assert (n.mac, n.state) == (other, "STALE")        # gratuitous; broadcast -> not REACHABLE


# == kind D ========================================================================================
def test_exclusive_create_replay_survives_a_mode_only_setattr():
    """A SETATTR of the mode leaves atime/mtime (Linux's verifier words): the replay still
    answers NFS3_OK with the same handle."""
    core, s, root = new_core()
    first = create(core, root, b"x1", nfs3.EXCLUSIVE, b"vvvvvvv1")
    sa = nfs3.encode_call(5, nfs3.NFSPROC3_SETATTR, nfs3.SetattrArgs(first.fh, nfs3.Sattr3(mode=0o600)), CRED)
    assert nfs3.decode_reply(2, core.handle(sa, ("198.18.5.2", 800), 1.0)[0])[1].status == nfs3.NFS3_OK
    again = create(core, root, b"x1", nfs3.EXCLUSIVE, b"vvvvvvv1", port=801, now=2.0)
    assert (again.status, again.fh) == (nfs3.NFS3_OK, first.fh)


def test_exclusive_create_replayed_from_another_address_same_verifier_is_ok():
    core, s, root = new_core()
    first = create(core, root, b"x2", nfs3.EXCLUSIVE, b"vvvvvvv2")
    r = core.handle(nfs3.encode_call(90, nfs3.NFSPROC3_CREATE,
                                     nfs3.CreateArgs(root, b"x2", nfs3.EXCLUSIVE, nfs3.Sattr3(), b"vvvvvvv2"),
                                     CRED), ("198.18.5.3", 800), 0.0)[0]
    again = nfs3.decode_reply(nfs3.NFSPROC3_CREATE, r)[1]
    assert (again.status, again.fh) == (nfs3.NFS3_OK, first.fh)


def test_unchecked_create_larger_size_replayed_answers_nospc_both_times_and_nothing_changes():
    core, s, root = new_core()
    a = create(core, root, b"u2", nfs3.UNCHECKED, attrs=nfs3.Sattr3(size=2 << 20), port=800)
    b = create(core, root, b"u2", nfs3.UNCHECKED, attrs=nfs3.Sattr3(size=2 << 20), port=801)
    assert (a.status, b.status) == (nfs3.NFS3ERR_NOSPC, nfs3.NFS3ERR_NOSPC)
    assert "u2" not in s.exports["swap"].images


def test_failed_guarded_setattr_replayed_answers_the_same():
    """A guarded SETATTR that failed (size grows: NOSPC) changed nothing, so its replay meets the
    same guard and fails the same way (not NOT_SYNC)."""
    core, s, root = new_core()
    fh = create(core, root, b"s2", nfs3.GUARDED).fh
    c0 = nfs3.decode_reply(1, core.handle(nfs3.encode_call(7, 1, nfs3.FhArgs(fh), CRED),
                                          ("198.18.5.2", 800), 0.0)[0])[1].attr.ctime
    msg = nfs3.encode_call(40, 2, nfs3.SetattrArgs(fh, nfs3.Sattr3(size=4 << 20), c0), CRED)
    for port, now in ((800, 3.0), (801, 4.0)):
        r = nfs3.decode_reply(2, core.handle(msg, ("198.18.5.2", port), now)[0])[1]
        assert r.status == nfs3.NFS3ERR_NOSPC


# == kind E ========================================================================================
def test_mount_list_holds_one_entry_per_client_and_export_whatever_the_path_spelling():
    """rpc.mountd keeps its mount list (rmtab) by host and the export's canonical path
    (get_rootfh realpath()s the dirpath). One client sending MNT with /swap, //swap, swap/, ...
    must not grow the list without bound (nor make DUMP's reply outgrow a UDP datagram)."""
    s = MemoryStore()
    s.add_export("swap")
    core = NasCore(s)
    for i in range(2000):
        path = b"/" * (i % 50 + 1) + b"swap" + b"/" * (i // 50)
        r = core.handle(rpc.encode_call(i, mnt.MOUNT_PROGRAM, 3, mnt.MOUNTPROC3_MNT, mnt.encode_dirpath(path), CRED),
                        ("198.18.5.2", 700), 0.0)[0]
        assert mnt.decode_mnt_res(Unpacker(r, rpc.decode_reply(r).body_offset)).status == mnt.MNT3_OK
    assert len(core.mounts) == 1
    d = core.handle(rpc.encode_call(9999, mnt.MOUNT_PROGRAM, 3, mnt.MOUNTPROC3_DUMP, b"", CRED),
                    ("198.18.5.3", 700), 0.0)[0]
    assert len(d) < 200
    # UMNT with another spelling removes it
    core.handle(rpc.encode_call(10000, mnt.MOUNT_PROGRAM, 3, mnt.MOUNTPROC3_UMNT, mnt.encode_dirpath(b"swap//"), CRED),
                ("198.18.5.2", 700), 0.0)
    assert len(core.mounts) == 0


def test_a_call_that_fails_inside_the_server_does_not_leave_its_drc_entry_in_progress():
    """nfsd_dispatch: on its error path nfsd_cache_update(rqstp, RC_NOCACHE, NULL) frees the
    entry. Here an internal error (SYSTEM_ERR) left the WRITE's entry "in progress", so every
    retransmission was dropped (drop_drc_inprogress) until the entry aged out after 120 s."""
    core, s, _root = new_core()
    img = s.create_image("swap", "img", 1 << 20)
    fh = make_fh(2, s.exports["swap"].fsid, img.fileid)
    real_write, fails = img.write, [1]

    def write(*a, **k):
        if fails.pop() if fails else 0:
            raise RuntimeError("injected")
        return real_write(*a, **k)
    img.write = write
    msg = nfs3.encode_write_call(5, fh, 0, b"x" * 4096, nfs3.FILE_SYNC, CRED)
    first = core.handle(msg, ("198.18.5.2", 800), 0.0)
    assert rpc.decode_reply(first[0]).accept_stat == rpc.SYSTEM_ERR
    again = core.handle(msg, ("198.18.5.2", 800), 1.0)              # the client's retransmission
    assert [nfs3.decode_write_reply(r).status for r in again] == [nfs3.NFS3_OK]
    assert core.counters["drop_drc_inprogress"] == 0 and img.read(0, 4096) == b"x" * 4096
