"""fs/nfs/file.py: an NFS file as mm's storage backend -- activate, set_memalloc, write_page
(durable), read_page, snapshot, close -- against NasCore on the in-memory wire."""

from client_agent.fs.nfs.file import NfsFile
from client_agent.mm.anon import page_bytes
from client_agent.mm.page_io import ActivateError, WriteError
from tests.test_nfs_transport import _setup


def test_nfs_file_backend_round_trip():
    loop, alloc, sched, st, t, store, img, logs = _setup()
    f = NfsFile(t, "swap", "swap.img", "UNSTABLE")
    out = {}

    def run():
        f.set_memalloc(True)
        out["pages"] = yield from f.activate()
        out["w"] = yield from f.write_page(3 * 4096, lambda: page_bytes(2, 7, 1))
        out["r"] = yield from f.read_page(3 * 4096)
        out["beyond"] = yield from f.read_page(1 << 40)

    task = sched.spawn("io", run())
    assert loop.run_until(lambda: task.state == "done", 10.0), task.error
    assert out["pages"] == 64 and out["w"] is None
    assert out["r"] == page_bytes(2, 7, 1) == img.read(3 * 4096, 4096)
    assert out["beyond"] == b""                        # READ past EOF: no bytes, eof
    assert f.describe() == "198.18.0.1:/swap/swap.img" and f.memalloc
    assert alloc.memalloc_socks == 1 and t.sk.memalloc
    snap = f.snapshot()
    assert snap["writes"] == 1 and snap["commits"] == 1 and snap["write_errors"] == 0
    f.set_memalloc(False)
    f.close()
    assert alloc.memalloc_socks == 0 and alloc.nr_free == alloc.nr_pages, alloc.owner_pages()


def test_nfs_file_backend_missing_file_and_stale_read():
    loop, alloc, sched, st, t, store, img, logs = _setup()
    store.create_image("swap", "empty.img", 0)
    missing = NfsFile(t, "swap", "nope.img")
    empty = NfsFile(t, "swap", "empty.img")
    present = NfsFile(t, "swap", "swap.img")
    out = {}

    def run():
        try:
            yield from missing.activate()
        except Exception as e:                       # NfsError from LOOKUP
            out["missing"] = e
        try:
            yield from empty.activate()
        except ActivateError as e:
            out["empty"] = e
        yield from present.activate()
        present.fh = b"\x00" * len(present.fh)       # a handle the server never issued
        out["stale"] = yield from present.read_page(0)

    task = sched.spawn("io", run())
    assert loop.run_until(lambda: task.state == "done", 10.0), task.error
    assert "LOOKUP nope.img" in str(out["missing"])
    assert isinstance(out["stale"], WriteError) and out["stale"].proc == "READ"
    assert "NFS3ERR_" in out["stale"].reason
    assert str(out["empty"]) == "198.18.0.1:/swap/empty.img has no room (0 bytes)"
    t.close()
