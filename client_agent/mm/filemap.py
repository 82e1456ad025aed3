"""The page cache of one file on a storage backend (NFS today): dirty/writeback/clean file pages, dirty throttling,
the flusher, and writeback to the file's image on the NAS (mm/filemap.c, mm/page-writeback.c,
fs/nfs/write.c for one address_space).

Invariants owned here:
- A file page is in exactly one of ``dirty`` (resident, must be written before it can be freed),
  ``writeback`` (an RPC task owns it), ``clean`` (resident, identical to what the NAS acknowledged:
  reclaim may free it at once) -- or freed. ``nr_file_pages`` counts all three, ``nr_dirty`` the
  first, this file's share of ``nr_writeback`` the second; ``nr_mapped`` counts pages of the
  MAP_SHARED mapping.
- A dirty page is never freed before the NAS acknowledged its contents durably (FILE_SYNC reply,
  or UNSTABLE + COMMIT with the WRITE's verifier; a changed verifier resends). ``acked`` =
  {index: generation} of every durably acknowledged page and nothing else: what a verifier reads
  back from the image (``file_page_bytes``) must match.
- A write error (``write_durably`` returned a WriteError: NFS3ERR_IO, NOSPC, DQUOT, ROFS, STALE, ...,
  a zero-byte write, garbage past the retry budget) ends the page's writeback as fs/nfs/write.c
  nfs_write_completion -> nfs_mapping_set_error does: the error is recorded on the mapping
  (``wb_err``, returned by the next fsync/msync: ``workload["fsync_error"]``, ``synced`` False), the
  page leaves writeback *clean* and not in ``acked`` -- its data is lost, as Linux drops the
  request -- and a page kswapd wrote (PG_reclaim) is freed. Counted by name in ``write_errors``,
  ``write_error_reasons``, ``write_error_errnos``. A writeback task that crashed (a bug of this
  program) ends its page's writeback the same way, reason "writeback task crashed"; a backend
  that is ``dead`` (mm/page_io.py) gets no new writeback from the flusher or kswapd.
- Dirty limits are Linux's (domain_dirty_limits over global_dirtyable_memory):
  ``dirtyable = (nr_free - min(nr_free, totalreserve)) + nr_file_pages`` with totalreserve = the
  zone's high watermark (calculate_totalreserve_pages, one zone, no lowmem_reserve);
  ``thresh = (dirty_ratio * PAGE_SIZE / 100) * dirtyable / PAGE_SIZE`` and the same for
  ``bg_thresh`` with dirty_background_ratio; ``bg_thresh >= thresh`` -> ``thresh / 2``.
- write() pages go through ``balance_dirty_pages``: above the freerun ceiling
  ((thresh + bg_thresh) / 2) background writeback is started; while ``nr_dirty + nr_writeback >
  thresh`` the writer sleeps (at most MAX_PAUSE_S at a time, re-checking after each writeback
  completion) -- it is *throttled*, counted in ``balance_dirty_pages`` and listed in
  ``throttled_writers``. (Linux pauses proportionally between freerun and thresh; only the hard
  limit is modelled.)
- MAP_SHARED pages are dirtied in place through the mapping: the model does not call
  balance_dirty_pages for them (Linux since 2.6.19 does, once per write fault, from
  fault_dirty_shared_page; a page whose PTE stays writable is re-dirtied with no fault at all).
  They are written by the periodic flusher (dirty_writeback_interval) above bg_thresh, and by
  reclaim: kswapd writes dirty file pages itself (pageout) when no clean one is left.
- The flusher (wb_workfn) is a kthread without PF_MEMALLOC. It writes the oldest dirty pages
  while ``nr_dirty > bg_thresh`` (wb_over_bg_thresh) or an fsync/msync asked for everything.
- Policy (what marks the file's transport SOCK_MEMALLOC):
    ``linux``     as Linux: sunrpc's xs_set_memalloc marks a transport for swap only. File
                  writeback RPCs are ordinary async tasks: rpc_malloc with GFP_NOWAIT (stops at
                  min), no PF_MEMALLOC, replies on an ordinary socket (NOMEM below the atomic
                  floor, PFMemallocDrop when the reserve is in use).
    ``extended``  beyond Linux: the file's transport is marked too (sk_set_memalloc, buffers with
                  __GFP_MEMALLOC as for RPC_TASK_SWAPPER) and its writeback tasks run under
                  PF_MEMALLOC, as swap writeback does.
  The file has its own transport (own socket), not the swap mount's: Linux shares one sunrpc
  transport between mounts of one server with the same options, and a data file on the *swap*
  mount's transport would receive through the marked socket by accident; a swapless client, or a
  data mount of another server, has no marked socket at all -- that is what is modelled.

Page contents are ``file_page_bytes(seed, index, generation)``: deterministic, so the simulation
and the runner's reference client can verify what the NAS holds at offset ``index * PAGE_SIZE``.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from ..tasks import Sleep, WaitEvent, WaitPages
from .gfp import GFP_KERNEL
from .vmscan import WRITEBACK_KEY
from .page_io import TASK_CRASHED, WriteError, backend_dead, count_write_error

PAGE_SIZE = 4096
GFP_HIGHUSER = GFP_KERNEL          # one zone: GFP_HIGHUSER(_MOVABLE) behaves as GFP_KERNEL
POLICIES = ("linux", "extended")
KINDS = ("mmap", "write")
# vm.dirty_ratio / vm.dirty_background_ratio defaults (mm/page-writeback.c).
DIRTY_RATIO_DEFAULT = 20
DIRTY_BACKGROUND_RATIO_DEFAULT = 10
# vm.dirty_writeback_centisecs = 500: the flusher's periodic wakeup.
DIRTY_WRITEBACK_INTERVAL_S = 5.0
# balance_dirty_pages: MAX_PAUSE = HZ/5.
MAX_PAUSE_S = 0.2
# Writeback pages in flight from this file (the transport's slot table bounds RPCs anyway).
MAX_WRITEBACK_DEFAULT = 32
FLUSH_KEY = "flusher_wait"
DIRTY, WRITEBACK, CLEAN = "dirty", "writeback", "clean"


def file_page_bytes(seed: int, index: int, generation: int) -> bytes:
    """The 4096 bytes of file page ``index`` at ``generation`` in a run seeded ``seed``."""
    return random.Random(f"file:{seed}:{index}:{generation}").randbytes(PAGE_SIZE)


def dirty_limits(nr_free: int, nr_file_pages: int, totalreserve: int, dirty_ratio: int,
                 dirty_background_ratio: int) -> tuple[int, int, int]:
    """(bg_thresh, thresh, dirtyable) in pages, as global_dirtyable_memory + domain_dirty_limits."""
    dirtyable = nr_free - min(nr_free, totalreserve) + nr_file_pages
    ratio = dirty_ratio * PAGE_SIZE // 100
    bg_ratio = dirty_background_ratio * PAGE_SIZE // 100
    thresh = ratio * dirtyable // PAGE_SIZE
    bg_thresh = bg_ratio * dirtyable // PAGE_SIZE
    if bg_thresh >= thresh:
        bg_thresh = thresh // 2
    return bg_thresh, thresh, dirtyable


class FilePage:
    __slots__ = ("page", "index", "generation", "state", "mapped", "reclaim")

    def __init__(self, page, index: int, generation: int, mapped: bool):
        self.page = page
        self.index = index
        self.generation = generation
        self.state = DIRTY
        self.mapped = mapped
        self.reclaim = False           # PG_reclaim: written by kswapd, freed at completion


class FileMapping:
    def __init__(self, alloc, sched, seed: int = 0, *, dirty_ratio: int = DIRTY_RATIO_DEFAULT,
                 dirty_background_ratio: int = DIRTY_BACKGROUND_RATIO_DEFAULT,
                 max_writeback: int = MAX_WRITEBACK_DEFAULT,
                 writeback_interval_s: float = DIRTY_WRITEBACK_INTERVAL_S, log=None):
        if not 0 < dirty_ratio <= 100 or not 0 <= dirty_background_ratio <= 100:
            raise ValueError(f"dirty_ratio={dirty_ratio} must be 1..100 and "
                             f"dirty_background_ratio={dirty_background_ratio} 0..100")
        self.alloc = alloc
        self.sched = sched
        self.seed = seed
        self.dirty_ratio = dirty_ratio
        self.dirty_background_ratio = dirty_background_ratio
        self.max_writeback = max_writeback
        self.writeback_interval_s = writeback_interval_s
        self.log = log or (lambda line: None)
        self.backend = None             # a mm.page_io.StorageBackend (NFS: fs/nfs/file.py)
        self.policy = "linux"
        self.active = False
        self.nr_pages_max = 0
        self.clean: OrderedDict[int, FilePage] = OrderedDict()     # oldest first
        self.dirty: OrderedDict[int, FilePage] = OrderedDict()     # dirtying order
        self.writeback: dict[int, FilePage] = {}
        self.acked: dict[int, int] = {}
        self.nr_reclaim_writeback = 0
        self.sync_pending = False
        self.throttled_writers: set[str] = set()
        self.wb_err: str | None = None       # errseq wb_err of the mapping: errno name
        self.counters = {"acked": 0, "balance_dirty_pages": 0,
                         "bg_writeback_starts": 0, "pageout": 0, "flusher_pages": 0,
                         "dropped_clean": 0}
        self.workload = {"kind": None, "allocated": 0, "target": 0, "done": False, "seed": seed,
                         "synced": False}
        self._flusher = None
        self._workload_task = None

    # -- mount ---------------------------------------------------------------------------------
    def attach(self, backend, policy: str = "linux"):
        """Generator: mark the backend per policy, activate it (NFS: mount the export, look up
        the file), start the flusher. Returns the file's size in pages."""
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: one of {', '.join(POLICIES)}")
        self.backend = backend
        self.policy = policy
        if policy == "extended":
            backend.set_memalloc(True)       # beyond Linux: file writeback's socket SOCK_MEMALLOC
        self.nr_pages_max = yield from backend.activate()
        self.active = True
        self._flusher = self.sched.spawn("flush-nfs", self._flush_loop(), kthread=True)
        self.log(f"file {backend.describe()}: {self.nr_pages_max} pages, "
                 f"policy {policy}, transport memalloc={bool(backend.memalloc)}")
        return self.nr_pages_max

    def detach(self) -> None:
        self.active = False
        if self.backend is not None and self.backend.memalloc:
            self.backend.set_memalloc(False)

    # -- counters -------------------------------------------------------------------------------
    @property
    def nr_file_pages(self) -> int:
        return len(self.clean) + len(self.dirty) + len(self.writeback)

    @property
    def nr_writeback(self) -> int:
        return len(self.writeback)

    def limits(self) -> tuple[int, int, int]:
        """(bg_thresh, thresh, dirtyable) now. Every file page of the pool is this mapping's."""
        a = self.alloc
        return dirty_limits(a.nr_free, self.nr_file_pages, a.wmark_high, self.dirty_ratio,
                            self.dirty_background_ratio)

    def _vm(self, key: str, n: int) -> None:
        vm = self.alloc.vmstat
        vm[key] = vm.get(key, 0) + n

    # -- the workload ---------------------------------------------------------------------------
    def start_workload(self, kind: str, pages: int, rate_pps: float = 0.0):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: one of {', '.join(KINDS)}")
        if pages > self.nr_pages_max:
            raise ValueError(f"{pages} pages do not fit the file image ({self.nr_pages_max} pages)")
        self.workload.update(kind=kind, target=pages, allocated=0, done=False, synced=False)
        self._workload_task = self.sched.spawn(f"file-{kind}", self._workload(kind, pages, rate_pps))
        return self._workload_task

    def _workload(self, kind: str, pages: int, rate_pps: float):
        """mmap: fault each page of a MAP_SHARED mapping and store into it (dirtied in place);
        write: write() each page (page cache page + balance_dirty_pages). Then msync/fsync."""
        wl = self.workload
        mapped = kind == "mmap"
        reason = "page fault (MAP_SHARED file)" if mapped else "write() page cache page"
        t0 = self.sched.now
        name = f"file-{kind}"
        for i in range(pages):
            if rate_pps:
                due = t0 + i / rate_pps
                if due > self.sched.now:
                    yield Sleep(due, reason=f"{name} pacing")
            got = yield WaitPages(1, GFP_HIGHUSER, "file", reason=reason)
            fp = FilePage(got[0], i, 0, mapped)
            self.dirty[i] = fp
            self._vm("nr_file_pages", 1)
            self._vm("nr_dirty", 1)
            self._vm("nr_dirtied", 1)
            if mapped:
                self._vm("nr_mapped", 1)
            wl["allocated"] = i + 1
            if not mapped:
                yield from self.balance_dirty_pages(name)
        # fsync / msync(MS_SYNC): everything dirty written and acknowledged.
        self.sync_pending = True
        self.sched.wake(FLUSH_KEY)

        while self.dirty or self.writeback:
            yield WaitEvent(WRITEBACK_KEY, until=self.sched.now + MAX_PAUSE_S,
                            reason=f"{'msync' if mapped else 'fsync'}: writeback of "
                                   f"{len(self.dirty) + len(self.writeback)} pages")
        # filemap_check_wb_err: fsync reports an error recorded since the file was opened.
        wl["fsync_error"] = self.wb_err
        wl["synced"] = self.wb_err is None
        wl["done"] = True

    def balance_dirty_pages(self, name: str):
        """Generator: the writer's dirty throttle (see the module docstring)."""
        throttled = False
        try:
            while True:
                bg, thresh, _ = self.limits()
                dirty = len(self.dirty) + len(self.writeback)
                if dirty > (bg + thresh) // 2 and len(self.dirty) > bg:
                    self._kick_background()
                if dirty <= thresh:
                    return
                if not throttled:
                    throttled = True
                    self.counters["balance_dirty_pages"] += 1
                    self.throttled_writers.add(name)
                yield WaitEvent(WRITEBACK_KEY, until=self.sched.now + MAX_PAUSE_S,
                                reason=f"balance_dirty_pages: nr_dirty {len(self.dirty)} + "
                                       f"nr_writeback {len(self.writeback)} > thresh {thresh}")
        finally:
            self.throttled_writers.discard(name)

    def _kick_background(self) -> None:
        self.counters["bg_writeback_starts"] += 1
        self.sched.wake(FLUSH_KEY)

    # -- the flusher ----------------------------------------------------------------------------
    def _flush_loop(self):
        while True:
            bg, _thresh, _ = self.limits()
            if not self.dirty or not (self.sync_pending or len(self.dirty) > bg):
                if not self.dirty:
                    self.sync_pending = False
                yield WaitEvent(FLUSH_KEY, until=self.sched.now + self.writeback_interval_s,
                                reason="flusher: sleeping (below dirty_background_threshold)")
                continue
            if len(self.writeback) >= self.max_writeback:
                yield WaitEvent(WRITEBACK_KEY, until=self.sched.now + MAX_PAUSE_S,
                                reason="flusher: writeback in flight at its limit")
                continue
            if backend_dead(self.backend):                # mm/page_io.py: no new writeback
                yield WaitEvent(FLUSH_KEY, until=self.sched.now + self.writeback_interval_s,
                                reason=f"flusher: backing store dead ({backend_dead(self.backend)})")
                continue
            _idx, fp = self.dirty.popitem(last=False)
            self.counters["flusher_pages"] += 1
            self._start_writeback(fp, reclaim=False)

    # -- reclaim side (kswapd) ------------------------------------------------------------------
    def reclaimable(self) -> int:
        return self.nr_file_pages

    def drop_clean(self) -> bool:
        """Free the oldest clean page at once (no I/O). False: none."""
        if not self.clean:
            return False
        _idx, fp = self.clean.popitem(last=False)
        self._free(fp)
        self.counters["dropped_clean"] += 1
        self._vm("pgsteal_kswapd", 1)
        return True

    def can_pageout(self) -> bool:
        return self.active and bool(self.dirty) and not backend_dead(self.backend)

    def pageout(self) -> bool:
        """kswapd's pageout() of the oldest dirty page: written, then freed at completion."""
        if not self.can_pageout():
            return False
        _idx, fp = self.dirty.popitem(last=False)
        fp.reclaim = True
        self.nr_reclaim_writeback += 1
        self.counters["pageout"] += 1
        self._start_writeback(fp, reclaim=True)
        return True

    # -- writeback ------------------------------------------------------------------------------
    def _start_writeback(self, fp: FilePage, reclaim: bool) -> None:
        fp.state = WRITEBACK
        self.writeback[fp.index] = fp
        self._vm("nr_dirty", -1)
        self._vm("nr_writeback", 1)
        self._vm("pgpgout", PAGE_SIZE >> 10)          # KiB, as /proc/vmstat counts it
        self.sched.spawn("rpc-file", self._writeback(fp),
                         on_crash=lambda task: self._writeback_crashed(fp))

    def _writeback_crashed(self, fp: FilePage) -> None:
        """on_crash of a writeback task (a bug of this program, client_agent/tasks.py): the page's
        writeback ends with EIO, reason "writeback task crashed", as a write error does -- in
        Linux the page would stay under writeback for ever; here the run ends and the watchdog
        classifies it ``testbed_bug``."""
        if self.writeback.get(fp.index) is not fp:
            return                                  # it had ended its writeback already
        err = WriteError("EIO", TASK_CRASHED, fp.index * PAGE_SIZE, "WRITE")
        if self.backend is not None:
            count_write_error(self.backend.counters, err)
        self._write_error(fp, err)

    def _writeback(self, fp: FilePage):
        """One page to its offset in the file image, durably."""
        if self.policy == "extended":
            self.alloc.memalloc_noreclaim_save()      # beyond Linux: as RPC_TASK_SWAPPER
        err = yield from self.backend.write_page(
            fp.index * PAGE_SIZE, lambda: file_page_bytes(self.seed, fp.index, fp.generation))
        if err is None:
            self._complete(fp)
        else:
            self._write_error(fp, err)

    def _write_error(self, fp: FilePage, err) -> None:
        """nfs_write_completion with NFS_IOHDR_ERROR: nfs_mapping_set_error, request removed,
        end of writeback -- the page is clean but not acknowledged (see the module docstring)."""
        self.wb_err = err.errno
        self.log(f"nfs: write error {err.errno} ({err.proc} {err.reason}) at offset {err.offset}")
        self._end_writeback(fp)

    def _complete(self, fp: FilePage) -> None:
        self.acked[fp.index] = fp.generation
        self.counters["acked"] += 1
        self._vm("nr_written", 1)
        self._end_writeback(fp)

    def _end_writeback(self, fp: FilePage) -> None:
        """end_page_writeback: a page kswapd wrote (PG_reclaim) is freed, any other one is clean."""
        del self.writeback[fp.index]
        self._vm("nr_writeback", -1)
        if fp.reclaim:
            self.nr_reclaim_writeback -= 1
            self._free(fp)
            self._vm("pgsteal_kswapd", 1)
        else:
            fp.state = CLEAN
            self.clean[fp.index] = fp
        self.sched.wake(WRITEBACK_KEY)

    def _free(self, fp: FilePage) -> None:
        self.alloc.free([fp.page])
        fp.page = None
        self._vm("nr_file_pages", -1)
        if fp.mapped:
            self._vm("nr_mapped", -1)

    # -- teardown and observation ---------------------------------------------------------------
    def release(self) -> int:
        """Process exit / umount -f: kill the tasks, free every file page. Returns pages freed."""
        for task in list(self.sched.tasks.values()):
            if task.name in ("rpc-file", "flush-nfs", "file-mmap", "file-write"):
                self.sched.kill(task)
        n = 0
        for d, state in ((self.clean, None), (self.dirty, "nr_dirty"),
                         (self.writeback, "nr_writeback")):
            for fp in list(d.values()):
                if state:
                    self._vm(state, -1)
                self._free(fp)
                n += 1
            d.clear()
        self.nr_reclaim_writeback = 0
        self.throttled_writers.clear()
        return n

    def snapshot(self) -> dict:
        bg, thresh, dirtyable = self.limits()
        return {
            "active": self.active, "policy": self.policy,
            "memalloc": bool(self.backend is not None and self.backend.memalloc),
            "nr_file_pages": self.nr_file_pages, "nr_dirty": len(self.dirty),
            "nr_writeback": len(self.writeback), "nr_clean": len(self.clean),
            "nr_mapped": sum(1 for d in (self.clean, self.dirty, self.writeback)
                             for fp in d.values() if fp.mapped),
            "dirty_ratio": self.dirty_ratio,
            "dirty_background_ratio": self.dirty_background_ratio,
            "nr_dirty_threshold": thresh, "nr_dirty_background_threshold": bg,
            "dirtyable_pages": dirtyable,
            "throttled_writers": sorted(self.throttled_writers),
            "acked": len(self.acked),
            "wb_err": self.wb_err,
            **(self.backend.snapshot() if self.backend is not None else {}),
            **self.counters,
            "backend": self.backend.describe() if self.backend is not None else None,
        }

    def map_json(self) -> dict:
        """Like swap_map: {index: [index, generation]} of every durably acknowledged page; the
        contents are ``file_page_bytes`` (``"content": "file"``)."""
        return {"page_size": PAGE_SIZE, "seed": self.seed, "content": "file",
                "acked": {str(i): [i, g] for i, g in sorted(self.acked.items())}}
