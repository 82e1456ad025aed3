"""Issue 12 kind A: NfsTransport.write_durably takes a WRITE/COMMIT reply as final only where
RFC 1813 (3.3.7, 3.3.21) and Linux's v3 client (fs/nfs/write.c nfs_writeback_result,
nfs_write_need_commit, nfs_commit_release_pages; fs/nfs/nfs3proc.c nfs3_async_handle_jukebox;
net/sunrpc/clnt.c rpc_decode_header) do. The NAS is the real NasCore on the in-memory wire; the
faults are made by rewriting the call before NasCore sees it (so the image holds what the reply
says) or by replacing its reply -- nas_server is not changed."""

import struct

import pytest

from client_agent.loop import Loop, ManualClock
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.fs.nfs import nfs3proc as tp
from client_agent.fs.nfs.nfs3proc import NfsTransport, WriteError, classify_reply, durability_counters
from client_agent.phy.wire_pair import WirePair
from client_agent.mm.anon import page_bytes
from client_agent.tasks import Scheduler
from protocols import nfs3, rpc
from protocols.xdr import Unpacker
from tests.nas_wire_kit import MAC_A, MAC_B, agent_and_nas, file_teardown, nas_pumped

PAGE = page_bytes(1, 7, 0)


def parse(call: bytes):
    """(xid, proc, args) of a call; args decoded for WRITE/COMMIT, else None."""
    ch = rpc.decode_call(call)
    if ch.prog != nfs3.NFS_PROGRAM or ch.proc not in (nfs3.NFSPROC3_WRITE, nfs3.NFSPROC3_COMMIT):
        return ch.xid, ch.proc, None
    return ch.xid, ch.proc, nfs3.decode_args(ch.proc, Unpacker(call, ch.args_offset))


def rewrite_write(call: bytes, a, *, data=None, stable=None) -> bytes:
    ch = rpc.decode_call(call)
    return nfs3.encode_write_call(ch.xid, a.fh, a.offset, a.data if data is None else data,
                                  a.stable if stable is None else stable)


def nfs_fail(xid: int, status: int) -> bytes:
    """A WRITE3resfail/COMMIT3resfail: status, wcc_data with neither attribute."""
    return rpc.encode_accepted(xid, rpc.SUCCESS, struct.pack(">III", status, 0, 0))


class Nas:
    """Records every WRITE/COMMIT NasCore sees (time, proc, offset, count, stable) and lets a test
    rewrite the n-th one through ``fault(n, proc, xid, args, call) -> (call, replies or None)``."""

    def __init__(self, fault=None):
        self.fault = fault
        self.calls = []
        self.loop = None

    def __call__(self, core_handle, call, src, now):
        xid, proc, a = parse(call)
        if a is None:
            return core_handle(call, src, now)
        name = "WRITE" if proc == nfs3.NFSPROC3_WRITE else "COMMIT"
        n = sum(1 for c in self.calls if c[1] == name)
        replies = None
        if self.fault is not None:
            call, replies = self.fault(n, proc, xid, a, call)
            xid, proc, a = parse(call) if replies is None else (xid, proc, a)
        if proc == nfs3.NFSPROC3_WRITE:
            self.calls.append((now, "WRITE", a.offset, a.count, a.stable))
        else:
            self.calls.append((now, "COMMIT", a.offset, a.count, None))
        return replies if replies is not None else core_handle(call, src, now)

    def writes(self):
        return [(c[2], c[3], c[4]) for c in self.calls if c[1] == "WRITE"]


def _setup(fault=None, logs=None):
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    alloc = PageAllocator(1024)
    sched = Scheduler(alloc)
    sched.attach_loop(loop)
    st = Stack(alloc, w.a, MAC_A, "198.18.0.2", 24, sched)
    nas = Nas(fault)
    _store, img = nas_pumped(loop, st, w.b, handle=nas)
    t = NfsTransport(st, sched, "198.18.0.1", slots=4, timeo_s=0.1, timeo_max_s=0.4, retrans=2,
                     log=(logs.append if logs is not None else None))
    return loop, alloc, sched, t, nas, img


def _durable_page(fault=None, stable=nfs3.FILE_SYNC, offset=4096, logs=None):
    """write_durably of PAGE at ``offset``: (result, counters, nas, img, loop, transport)."""
    loop, alloc, sched, t, nas, img = _setup(fault, logs)
    out = {}
    counters = durability_counters()

    def run():
        root = yield from t.mount("swap")
        fh, _size = yield from t.lookup(root, "swap.img")
        out["t0"] = sched.now
        out["result"] = yield from t.write_durably(fh, offset, lambda: PAGE, stable, counters)

    task = sched.spawn("wb", run())
    assert loop.run_until(lambda: task.state == "done", 60.0), (task.state, task.error)
    t.close()
    assert alloc.nr_free == alloc.nr_pages, alloc.owner_pages()
    return out["result"], counters, nas, img, out["t0"]


# -- the example ------------------------------------------------------------------------
def test_short_file_sync_write_is_resent_from_offset_plus_count():
    """Issue 12's input: FILE_SYNC WRITE of 4096 bytes at 4096, answered NFS3_OK count=2048
    committed=FILE_SYNC with only the first 2048 bytes stored (NasCore is handed the first half
    only, so the image and the reply agree). Today's main acknowledges after that reply."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            return rewrite_write(call, a, data=a.data[:2048]), None
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert img.read(4096, 2048) == PAGE[:2048]
    assert img.read(6144, 2048) == PAGE[2048:]                  # main: 2048 zero bytes
    assert nas.writes() == [(4096, 2048, nfs3.FILE_SYNC), (6144, 2048, nfs3.FILE_SYNC)]
    assert res is None
    assert c["writes"] == 2 and c["shortwrite"] == 1 and c["commits"] == 0 and c["write_errors"] == 0


def test_short_unstable_write_is_resent_whole_as_file_sync():
    """nfs_writeback_result: a short UNSTABLE reply -> the whole request again, FILE_SYNC."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            return rewrite_write(call, a, data=a.data[:1000]), None
        return call, None
    res, c, nas, img, _ = _durable_page(fault, stable=nfs3.UNSTABLE)
    assert res is None and img.read(4096, 4096) == PAGE
    assert nas.writes() == [(4096, 1000, nfs3.UNSTABLE), (4096, 4096, nfs3.FILE_SYNC)]
    assert c["shortwrite"] == 1 and c["commits"] == 0          # the FILE_SYNC reply is final


def test_zero_byte_write_ends_writeback_with_eio():
    """nfs_writeback_result: count == 0 is no progress -> -EIO, "Server wrote zero bytes"."""
    def fault(n, proc, xid, a, call):
        return (rewrite_write(call, a, data=b""), None) if proc == nfs3.NFSPROC3_WRITE else (call, None)
    logs = []
    res, c, nas, img, _ = _durable_page(fault, logs=logs)
    assert res == WriteError("EIO", "zero-byte write", 4096, "WRITE") and res.errno_number == 5
    assert nas.writes() == [(4096, 0, nfs3.FILE_SYNC)]
    assert logs == ["NFS: Server wrote zero bytes, expected 4096."]
    assert c["write_errors"] == 1 and c["write_error_reasons"] == {"zero-byte write": 1}
    assert c["write_error_errnos"] == {"EIO": 1}


@pytest.mark.parametrize("answered", [nfs3.UNSTABLE, nfs3.DATA_SYNC])
def test_committed_weaker_than_file_sync_needs_a_commit(answered):
    """FILE_SYNC asked, UNSTABLE/DATA_SYNC answered: nfs_write_need_commit -> COMMIT; its verifier
    equals the WRITE's -> durable."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE:
            return rewrite_write(call, a, stable=answered), None
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res is None and img.read(4096, 4096) == PAGE
    assert [x[1] for x in nas.calls] == ["WRITE", "COMMIT"]
    assert c["commits"] == 1 and c["committed_lt_stable"] == 1 and c["verifier_changes"] == 0


def test_commit_with_another_verifier_rewrites_the_page():
    """nfs_commit_release_pages: COMMIT verifier != WRITE verifier -> the page is written again."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_COMMIT and n == 0:
            return call, [rpc.encode_accepted(xid, rpc.SUCCESS,
                                              struct.pack(">III", 0, 0, 0) + b"rebooted")]
        return call, None
    res, c, nas, img, _ = _durable_page(fault, stable=nfs3.UNSTABLE)
    assert res is None and img.read(4096, 4096) == PAGE
    assert [x[1] for x in nas.calls] == ["WRITE", "COMMIT", "WRITE", "COMMIT"]
    assert c["verifier_changes"] == 1 and c["resends"] == 1 and c["writes"] == 2


@pytest.mark.parametrize("proc", [nfs3.NFSPROC3_WRITE, nfs3.NFSPROC3_COMMIT])
def test_jukebox_is_retried_after_nfs_jukebox_retry_time(proc):
    """nfs3_async_handle_jukebox: NFS3ERR_JUKEBOX -> the same call after 5 s (loop time)."""
    def fault(n, p, xid, a, call):
        if p == proc and n == 0:
            return call, [nfs_fail(xid, nfs3.NFS3ERR_JUKEBOX)]
        return call, None
    res, c, nas, img, t0 = _durable_page(fault, stable=nfs3.UNSTABLE)
    assert res is None and img.read(4096, 4096) == PAGE
    name = "WRITE" if proc == nfs3.NFSPROC3_WRITE else "COMMIT"
    times = [x[0] for x in nas.calls if x[1] == name]
    assert len(times) == 2 and times[1] - times[0] >= tp.NFS_JUKEBOX_RETRY_S
    assert c["delay"] == 1 and c["write_errors"] == 0


@pytest.mark.parametrize("astat", [rpc.GARBAGE_ARGS, rpc.SYSTEM_ERR])
def test_garbage_args_and_system_err_retried_twice_then_eio(astat):
    """rpc_decode_header: GARBAGE_ARGS/SYSTEM_ERR -> rpcgarbage++, retried while tk_garb_retry
    (2); a third one ends the task with -EIO."""
    for bad, ok in ((2, True), (3, False)):
        def fault(n, proc, xid, a, call, bad=bad):
            if proc == nfs3.NFSPROC3_WRITE and n < bad:
                return call, [rpc.encode_accepted(xid, astat)]
            return call, None
        res, c, nas, img, _ = _durable_page(fault)
        assert len(nas.writes()) == (3 if ok else 3) and c["rpcgarbage"] == bad
        if ok:
            assert res is None and img.read(4096, 4096) == PAGE
        else:
            name = rpc.ACCEPT_STAT_NAMES[astat]
            assert res == WriteError("EIO", name, 4096, "WRITE")
            assert c["write_error_reasons"] == {name: 1}
            assert img.read(4096, 4096) == b"\0" * 4096


def test_unparsable_reply_is_garbage_and_retried():
    """A reply that is not a multiple of 4 bytes, or whose header is cut short: out_unparsable."""
    def fault(n, proc, xid, a, call):
        if proc == nfs3.NFSPROC3_WRITE and n == 0:
            return call, [struct.pack(">II", xid, rpc.REPLY) + b"\0"]          # 9 bytes
        if proc == nfs3.NFSPROC3_WRITE and n == 1:
            return call, [struct.pack(">II", xid, rpc.REPLY)]                  # no reply_stat
        return call, None
    res, c, nas, img, _ = _durable_page(fault)
    assert res is None and img.read(4096, 4096) == PAGE
    assert len(nas.writes()) == 3 and c["rpcgarbage"] == 2


@pytest.mark.parametrize("status,errno", [
    (nfs3.NFS3ERR_IO, "EIO"), (nfs3.NFS3ERR_NOSPC, "ENOSPC"), (nfs3.NFS3ERR_DQUOT, "EDQUOT"),
    (nfs3.NFS3ERR_ROFS, "EROFS"), (nfs3.NFS3ERR_STALE, "ESTALE"), (nfs3.NFS3ERR_FBIG, "EFBIG"),
    (nfs3.NFS3ERR_SERVERFAULT, "EREMOTEIO")])
def test_nfs_error_status_ends_writeback_once_with_its_errno(status, errno):
    """No retry (only JUKEBOX is retried by nfs3_write_done): one WRITE, a named WriteError."""
    def fault(n, proc, xid, a, call):
        return call, [nfs_fail(xid, status)]
    res, c, nas, img, _ = _durable_page(fault)
    name = nfs3.STATUS_NAMES[status]
    assert res == WriteError(errno, name, 4096, "WRITE")
    assert len(nas.writes()) == 1 and c["write_errors"] == 1
    assert c["write_error_reasons"] == {name: 1} and c["write_error_errnos"] == {errno: 1}


def _reply(xid, body=b"", astat=rpc.SUCCESS):
    return rpc.encode_accepted(xid, astat, body)


@pytest.mark.parametrize("msg,kind,reason,errno", [
    (_reply(1, struct.pack(">I", 0)), tp.FATAL, "undecodable result", "EIO"),   # NFS3_OK, no resok
    (_reply(1, astat=rpc.PROG_UNAVAIL), tp.FATAL, "PROG_UNAVAIL", "EPFNOSUPPORT"),
    (_reply(1, astat=rpc.PROC_UNAVAIL), tp.FATAL, "PROC_UNAVAIL", "EOPNOTSUPP"),
    (_reply(1, astat=9), tp.GARBAGE, "unparsable reply (accept_stat 9)", "EIO"),
    (rpc.encode_rpc_mismatch(1), tp.FATAL, "RPC_MISMATCH", "EPROTONOSUPPORT"),
    (rpc.encode_auth_error(1, rpc.AUTH_REJECTEDCRED), tp.CRED, "AUTH_REJECTEDCRED", "EACCES"),
    (rpc.encode_auth_error(1, rpc.AUTH_BADVERF), tp.GARBAGE, "AUTH_BADVERF", "EACCES"),
    (rpc.encode_auth_error(1, rpc.AUTH_TOOWEAK), tp.FATAL, "AUTH_TOOWEAK", "EACCES"),
    (nfs_fail(1, nfs3.NFS3ERR_JUKEBOX), tp.JUKEBOX, "NFS3ERR_JUKEBOX", "EJUKEBOX"),
    (nfs_fail(1, 12345), tp.FATAL, "nfsstat3 12345", "EIO"),
    (struct.pack(">III", 1, rpc.CALL, 0), tp.GARBAGE, "unparsable reply (not_reply)", "EIO"),
])
def test_classify_reply_as_rpc_decode_header_and_nfs3proc(msg, kind, reason, errno):
    for decode in (tp._decode_write_reply, nfs3.decode_commit_reply):
        v = classify_reply(msg, decode)
        assert (v.kind, v.reason, v.errno) == (kind, reason, errno)


# -- a running swap workload on the in-memory wire, every non-final reply kind injected ---------
class Injector:
    """Every 5th WRITE gets a non-final reply, by kind in turn; every 3rd COMMIT (they follow the
    "unstable" ones) returns another verifier."""
    KINDS = ("short", "unstable", "jukebox", "garbage", "nfs3err_io", "zero")

    def __init__(self):
        self.n = self.nc = 0
        self.done = {k: 0 for k in self.KINDS + ("verf",)}

    def __call__(self, core_handle, call, src, now):
        xid, proc, a = parse(call)
        if a is None:
            return core_handle(call, src, now)
        if proc == nfs3.NFSPROC3_COMMIT:
            self.nc += 1
            if self.nc % 3 == 1:
                kind = "verf"
                self.done[kind] += 1
                core_handle(call, src, now)
                return [_reply(xid, struct.pack(">III", 0, 0, 0) + b"changed!")]
            return core_handle(call, src, now)
        self.n += 1
        kind = self.KINDS[(self.n // 5) % len(self.KINDS)] if self.n % 5 == 0 else None
        if kind == "short":
            call = rewrite_write(call, a, data=a.data[:1536])
        elif kind == "unstable":
            call = rewrite_write(call, a, stable=nfs3.UNSTABLE)
        elif kind == "zero":
            call = rewrite_write(call, a, data=b"")
        elif kind in ("jukebox", "nfs3err_io"):
            self.done[kind] += 1
            return [nfs_fail(xid, nfs3.NFS3ERR_JUKEBOX if kind == "jukebox" else nfs3.NFS3ERR_IO)]
        elif kind == "garbage":
            self.done[kind] += 1
            return [_reply(xid, astat=rpc.GARBAGE_ARGS)]
        if kind in ("short", "unstable", "zero"):
            self.done[kind] += 1
        return core_handle(call, src, now)


def test_swap_workload_survives_every_non_final_reply_kind():
    inj = Injector()
    loop, agent, img = agent_and_nas("swap.img", 1024, handle=inj)
    h = agent.handlers(lambda: None)
    h["swapon"]({"op": "swapon", "server": "198.18.0.1", "memalloc": True})
    h["workload"]({"op": "workload", "pages": 1200, "seed": 4})
    assert loop.run_until(lambda: agent.swap.workload["done"] and not agent.swap.writeback, 600.0)
    snap = h["snapshot"]({"op": "snapshot"})
    sw, vm = snap["swap"], snap["alloc"]["vmstat"]
    assert sw["writeback"] == 0 and vm["nr_writeback"] == 0
    assert not [t for t in agent.sched.tasks.values() if t.state == "crashed"]
    assert agent.sched.counters["tasks_crashed"] == 0
    assert all(v > 0 for v in inj.done.values()), inj.done
    assert sw["shortwrite"] > 0 and sw["delay"] > 0 and sw["rpcgarbage"] > 0
    assert sw["verifier_changes"] > 0 and sw["committed_lt_stable"] > 0
    # NFS3ERR_IO and zero-byte writes end a page's writeback with an error: it went back to the LRU
    assert sw["write_error_reasons"]["NFS3ERR_IO"] == inj.done["nfs3err_io"]
    assert sw["write_error_reasons"]["zero-byte write"] == inj.done["zero"]
    assert sw["write_errors"] == inj.done["nfs3err_io"] + inj.done["zero"]
    assert any(line.startswith("Write error -5 on dio swapfile") for _t, line in agent.nfs_log)
    m = h["swap_map"]({"op": "swap_map"})
    assert len(m["acked"]) == sw["acked"] > 1200 - 1024
    for slot, (pid, gen) in m["acked"].items():
        assert img.read(int(slot) * 4096, 4096) == page_bytes(4, pid, gen)
    agent.swap.release()
    agent.transport.close()
    agent.kswapd.stop()
    assert agent.alloc.nr_free == agent.alloc.nr_pages, agent.alloc.owner_pages()


def test_write_errors_reach_the_watchdog_text_and_report_view():
    from testbed.watchdog import hung_task_report, writeback_view
    c = durability_counters() | {"shortwrite": 3, "delay": 1, "rpcgarbage": 2, "write_errors": 2,
                                 "write_error_reasons": {"NFS3ERR_NOSPC": 1, "zero-byte write": 1},
                                 "write_error_errnos": {"ENOSPC": 1, "EIO": 1}}
    snap = {"swap": {**c, "acked": 5, "active": True}}
    v = writeback_view(snap)
    assert v["write_errors"] == 2 and v["write_error_errnos"] == {"ENOSPC": 1, "EIO": 1} and "acked" not in v
    text = hung_task_report(snap, 6.0)
    assert ("nfs writeback: shortwrite:3 delay:1 rpcgarbage:2 write_errors:2 -- pages whose writeback "
            "ended with an error, by reason: NFS3ERR_NOSPC:1 zero-byte write:1") in text.splitlines()


def test_file_writeback_survives_every_non_final_reply_kind():
    """The file consumer (fileon, policy linux): same injections; an error page leaves writeback
    clean and unacknowledged (nfs_mapping_set_error) and fsync reports the error."""
    from client_agent.mm.filemap import file_page_bytes
    inj = Injector()
    loop, agent, img = agent_and_nas("file.img", 2048, handle=inj)
    h = agent.handlers(lambda: None)
    h["fileon"]({"op": "fileon", "server": "198.18.0.1", "memalloc": False})
    h["file_workload"]({"op": "file_workload", "kind": "write", "pages": 1500, "seed": 4})
    assert loop.run_until(lambda: agent.filemap.workload["done"], 600.0)
    f = h["snapshot"]({"op": "snapshot"})["filemap"]
    assert f["nr_writeback"] == 0 and f["nr_dirty"] == 0
    assert agent.sched.counters["tasks_crashed"] == 0
    assert f["write_errors"] == inj.done["nfs3err_io"] + inj.done["zero"] > 0
    assert f["wb_err"] == "EIO" and f["workload"]["fsync_error"] == "EIO"
    assert not f["workload"]["synced"]
    assert f["acked"] == 1500 - f["write_errors"]
    m = h["file_map"]({"op": "file_map"})
    for idx, (i, gen) in m["acked"].items():
        assert img.read(int(idx) * 4096, 4096) == file_page_bytes(4, i, gen)
    file_teardown(agent)
