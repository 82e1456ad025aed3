"""client_agent/mm/filemap.py: Linux's dirty limits, background writeback, balance_dirty_pages,
and that a dirty MAP_SHARED page is never freed before its write is acknowledged."""

from client_agent.mm.filemap import (PAGE_SIZE, FileMapping, FilePage, dirty_limits)
from client_agent.mm.page_alloc import PageAllocator
from client_agent.tasks import Scheduler


def test_dirty_limits_as_domain_dirty_limits():
    # dirtyable = free - min(free, totalreserve) + file pages; ratio in PAGE_SIZE/100 units.
    bg, thresh, dirtyable = dirty_limits(5000, 2000, 768, 20, 10)
    assert dirtyable == 5000 - 768 + 2000 == 6232
    assert thresh == (20 * PAGE_SIZE // 100) * 6232 // PAGE_SIZE == 1246
    assert bg == (10 * PAGE_SIZE // 100) * 6232 // PAGE_SIZE == 622
    # free below totalreserve counts as zero, not negative
    assert dirty_limits(100, 1000, 768, 20, 10)[2] == 1000
    # bg_thresh >= thresh -> thresh / 2
    bg, thresh, _ = dirty_limits(10000, 0, 0, 10, 50)
    assert bg == thresh // 2


class FakeTransport:
    """Holds every WRITE until the test acknowledges it."""
    server_ip = "198.18.0.1"

    def __init__(self, sched):
        self.sched = sched
        self.memalloc = False
        self.writes = []

    def set_memalloc(self, on):
        self.memalloc = on

    # the real transport's durability loop, over this fake's write()
    from client_agent.fs.nfs.nfs3proc import NfsTransport
    write_durably = NfsTransport.write_durably
    _until_final = NfsTransport._until_final
    _write_error = NfsTransport._write_error
    del NfsTransport

    def write_verdict(self, fh, offset, data, stable):
        from client_agent.fs.nfs.nfs3proc import OK, Verdict
        r = yield from self.write(fh, offset, data, stable)
        return Verdict(OK, r)

    def write(self, fh, offset, data, stable):
        key = ("fake-write", offset)
        self.writes.append(offset)
        from client_agent.tasks import WaitEvent
        r = yield WaitEvent(key)
        return r


class Reply:
    committed = 2   # FILE_SYNC
    count = PAGE_SIZE
    verf = b"v" * 8


def _mapping(pages=1024, **kw):
    alloc = PageAllocator(pages, 256)
    sched = Scheduler(alloc)
    fm = FileMapping(alloc, sched, seed=3, **kw)
    t = FakeTransport(sched)
    from client_agent.fs.nfs.file import NfsFile
    fm.backend = NfsFile(t, "swap", "file.img")       # the NFS backend over this fake transport
    fm.backend.fh = b"fh"
    fm.active, fm.nr_pages_max = True, 1 << 20
    return alloc, sched, fm, t


def test_writer_throttled_above_thresh_until_writeback_completes():
    alloc, sched, fm, t = _mapping()
    fm._flusher = sched.spawn("flush-nfs", fm._flush_loop(), kthread=True)
    fm.start_workload("write", 600)
    now = 0.0
    for _ in range(50):
        sched.run(now)
        now += 0.01
    bg, thresh, _ = fm.limits()
    assert fm.throttled_writers == {"file-write"}
    assert fm.counters["balance_dirty_pages"] == 1
    assert len(fm.dirty) + len(fm.writeback) == thresh + 1    # stopped just past the limit
    assert fm.counters["flusher_pages"] > 0                    # background writeback started
    assert len(fm.dirty) <= bg or len(fm.writeback) == fm.max_writeback
    # acknowledge every write: the writer is released and finishes (fsync) with all pages acked
    for _ in range(200):
        for off in list(t.writes):
            t.writes.remove(off)
            sched.wake(("fake-write", off), Reply())
        sched.run(now)
        now += 0.01
        if fm.workload["done"]:
            break
    assert fm.workload["done"] and not fm.throttled_writers
    assert len(fm.acked) == 600 and not fm.dirty and not fm.writeback
    assert alloc.vmstat["nr_dirty"] == 0 and alloc.vmstat["nr_writeback"] == 0
    assert fm.release() == 600 and alloc.nr_free == alloc.nr_pages


def test_background_writeback_starts_at_the_background_threshold():
    alloc, sched, fm, t = _mapping()
    fm._flusher = sched.spawn("flush-nfs", fm._flush_loop(), kthread=True)
    sched.run(0.0)
    bg, thresh, _ = fm.limits()
    for i in range(bg):             # dirty exactly bg pages: the flusher stays asleep
        fp = FilePage(alloc.alloc(1, 0, "file")[0], i, 0, True)
        fm.dirty[i] = fp
    sched.wake("flusher_wait")
    sched.run(0.1)
    assert not fm.writeback
    fp = FilePage(alloc.alloc(1, 0, "file")[0], bg, 0, True)
    fm.dirty[bg] = fp                # one more: over dirty_background_threshold
    sched.wake("flusher_wait")
    sched.run(0.2)
    assert len(fm.writeback) == 1 and len(fm.dirty) == bg
    fm.release()


def test_dirty_mapped_page_is_not_freed_before_its_write_is_acknowledged():
    alloc, sched, fm, t = _mapping()
    fp = FilePage(alloc.alloc(1, 0, "file")[0], 7, 0, True)
    fm.dirty[7] = fp
    page = fp.page
    free0 = alloc.nr_free
    assert not fm.drop_clean()               # a dirty page is not clean: reclaim cannot drop it
    assert fm.pageout()                      # kswapd writes it
    for k in range(20):
        sched.run(k * 0.1)
    assert page.owner == "file" and alloc.nr_free == free0 and 7 in fm.writeback
    assert fm.acked == {}
    sched.wake(("fake-write", 7 * PAGE_SIZE), Reply())
    sched.run(3.0)
    assert page.owner is None and alloc.nr_free == free0 + 1
    assert fm.acked == {7: 0} and not fm.writeback and fm.nr_file_pages == 0
    assert alloc.vmstat["pgsteal_kswapd"] == 1 and alloc.vmstat["nr_written"] == 1
