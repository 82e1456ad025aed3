"""Swap over NFS: the swap device (slots in an image on the NAS), anonymous pages and the swap map.

Invariants owned here:
- An anonymous page is in exactly one of: ``lru`` (resident, dirty, reclaimable), writeback (a
  writeback task owns it and its slot), or freed (the NAS acknowledged its slot durably and the
  pool page went back). ``nr_anon_pages`` counts the first two.
- A page is freed only after a durable acknowledgement: a FILE_SYNC WRITE reply, or an UNSTABLE
  WRITE followed by a COMMIT whose verifier equals the WRITE's. A different verifier (the server
  restarted and lost uncommitted data) means the WRITE is sent again. Short writes, JUKEBOX and
  garbage replies are handled inside ``NfsTransport.write_durably`` as Linux's client does.
- A write error (``write_durably`` returned a WriteError: NFS3ERR_IO, NOSPC, ROFS, ..., a zero-byte
  write, garbage past the retry budget) ends the page's writeback as mm/page_io.c
  sio_write_complete does for swap over NFS: "Write error -5 on dio swapfile (4096)" is logged,
  the page is set dirty again, PG_reclaim cleared, end_page_writeback: it goes back on the LRU,
  resident, and ``nr_writeback`` drops. The error is counted by name (``write_errors``,
  ``write_error_reasons``, ``write_error_errnos``). Differs from Linux: the slot is returned to the
  free slots (Linux keeps it in the swap cache for the page) and the page goes to the LRU's young
  end (Linux leaves it where reclaim put it back).
- ``swap_map`` = {slot: (page_id, generation)} of every durably acknowledged slot, and nothing
  else: what a verifier reads back (``page_bytes``) must match.
- Writeback tasks run with PF_MEMALLOC (sunrpc runs RPC_TASK_SWAPPER tasks under
  memalloc_noreclaim_save): their transmit buffers and RPC buffers may come from the reserve.

Page contents are ``page_bytes(seed, page_id, generation)``: deterministic, so any process (the
simulation, the runner's reference client) can verify what the NAS holds.
"""

from __future__ import annotations

import hashlib
from collections import deque

from nas_server.protocol import nfs3

from .mm.gfp import GFP_KERNEL
from .nfs.transport import durability_counters
from .tasks import Sleep, WaitEvent, WaitPages

PAGE_SIZE = 4096
# GFP_HIGHUSER = GFP_USER | __GFP_HIGHMEM; one zone here, so it behaves as GFP_KERNEL (ordinary,
# may block, direct reclaim throttled below half of min).
GFP_HIGHUSER = GFP_KERNEL
WRITEBACK_KEY = "writeback_done"     # woken on every writeback completion (reclaim_throttle)
STABLE = {"FILE_SYNC": nfs3.FILE_SYNC, "UNSTABLE": nfs3.UNSTABLE, "DATA_SYNC": nfs3.DATA_SYNC}


def page_bytes(seed: int, page_id: int, generation: int) -> bytes:
    """The 4096 bytes of anonymous page ``page_id`` at ``generation`` in a run seeded ``seed``.

    SHAKE-128 of the page's name: deterministic in every process and Python version, and one
    C call (~9 us a page) where seeding a Random and drawing randbytes cost ~24 us -- once per
    page written, on the agent's writeback path. Writers and verifiers all call this."""
    return hashlib.shake_128(f"swap:{seed}:{page_id}:{generation}".encode()).digest(PAGE_SIZE)


class AnonPage:
    __slots__ = ("page", "page_id", "generation", "slot")

    def __init__(self, page, page_id: int, generation: int = 0):
        self.page = page
        self.page_id = page_id
        self.generation = generation
        self.slot: int | None = None


class SwapDevice:
    def __init__(self, alloc, sched, seed: int = 0, log=None):
        self.alloc = alloc
        self.sched = sched
        self.seed = seed
        self.log = log or (lambda line: None)
        self.transport = None
        self.fh: bytes | None = None
        self.nr_slots = 0
        self.active = False
        self.stable = nfs3.FILE_SYNC
        self.lru: deque[AnonPage] = deque()
        self.writeback: dict[int, AnonPage] = {}     # slot -> page under writeback
        self.swap_map: dict[int, tuple[int, int]] = {}
        self._free_slots: deque[int] = deque()
        self.counters = {**durability_counters(), "acked": 0}
        self.workload = {"allocated": 0, "target": 0, "done": False, "seed": seed}
        self._workload_task = None

    # -- swapon / swapoff --------------------------------------------------------------------
    def swapon(self, transport, export: str, image: str, nr_slots: int | None = None,
               memalloc: bool = True, stable: str | int = "FILE_SYNC"):
        """Generator: mount, look up the image, mark the transport. Returns nr_slots."""
        self.transport = transport
        self.stable = STABLE[stable] if isinstance(stable, str) else stable
        if memalloc:
            transport.set_memalloc(True)         # xs_set_memalloc (before any swap I/O)
        root = yield from transport.mount(export)
        fh, size = yield from transport.lookup(root, image)
        self.fh = fh
        if nr_slots is None:
            nr_slots = (size or 0) // PAGE_SIZE
        if nr_slots <= 0:
            raise ValueError(f"swap image {export}/{image} has no room ({size} bytes)")
        self.nr_slots = nr_slots
        self._free_slots = deque(range(nr_slots))
        self.active = True
        self.log(f"Adding {nr_slots * 4}k swap on {transport.server_ip}:/{export}/{image}")
        return nr_slots

    def swapoff(self) -> int:
        """Stop swapping to the device and clear SOCK_MEMALLOC. Returns memalloc_socks after."""
        self.active = False
        if self.transport is not None and self.transport.memalloc:
            self.transport.set_memalloc(False)
        return self.alloc.memalloc_socks

    # -- workload ----------------------------------------------------------------------------
    def start_workload(self, pages: int, rate_pps: float = 0.0):
        self.workload.update(target=pages, allocated=0, done=False)
        self._workload_task = self.sched.spawn("workload", self._workload(pages, rate_pps))
        return self._workload_task

    def _workload(self, pages: int, rate_pps: float):
        """An anonymous-memory toucher: each page is allocated (GFP_HIGHUSER) and dirtied."""
        wl = self.workload
        vm = self.alloc.vmstat
        t0 = self.sched.now
        for i in range(pages):
            if rate_pps:
                due = t0 + i / rate_pps
                if due > self.sched.now:
                    yield Sleep(due, reason="workload pacing")
            got = yield WaitPages(1, GFP_HIGHUSER, "anon", reason="page fault (anon)")
            self.lru.append(AnonPage(got[0], i, 0))
            vm["nr_anon_pages"] += 1
            wl["allocated"] = i + 1
        wl["done"] = True

    # -- reclaim side ------------------------------------------------------------------------
    @property
    def nr_writeback(self) -> int:
        return len(self.writeback)

    def can_swap(self) -> bool:
        return self.active and bool(self.lru) and bool(self._free_slots)

    def writepage(self) -> bool:
        """swap_writepage for the oldest resident anon page (LRU tail). False: nothing to do."""
        if not self.can_swap():
            return False
        ap = self.lru.popleft()
        ap.slot = self._free_slots.popleft()
        self.writeback[ap.slot] = ap
        vm = self.alloc.vmstat
        vm["nr_writeback"] += 1
        vm["pswpout"] += 1
        self.sched.spawn("rpc-swap", self._writeback(ap))
        return True

    def _writeback(self, ap: AnonPage):
        """One page to its slot, durably (RPC_TASK_SWAPPER: runs under PF_MEMALLOC)."""
        self.alloc.memalloc_noreclaim_save()
        err = yield from self.transport.write_durably(
            self.fh, ap.slot * PAGE_SIZE, lambda: page_bytes(self.seed, ap.page_id, ap.generation),
            self.stable, self.counters)
        if err is None:
            self._complete(ap)
        else:
            self._write_error(ap, err)

    def _write_error(self, ap: AnonPage, err) -> None:
        """sio_write_complete with ret != len: the page stays dirty and resident (see above)."""
        self.log(f"Write error -{err.errno_number} on dio swapfile ({ap.slot * PAGE_SIZE}): "
                 f"{err.proc} {err.reason}")
        del self.writeback[ap.slot]
        self._free_slots.append(ap.slot)
        ap.slot = None
        self.lru.append(ap)
        self.alloc.vmstat["nr_writeback"] -= 1
        self.sched.wake(WRITEBACK_KEY)

    def _complete(self, ap: AnonPage) -> None:
        vm = self.alloc.vmstat
        del self.writeback[ap.slot]
        self.swap_map[ap.slot] = (ap.page_id, ap.generation)
        self.alloc.free([ap.page])
        ap.page = None
        vm["nr_writeback"] -= 1
        vm["nr_anon_pages"] -= 1
        vm["pgsteal_kswapd"] += 1
        vm["nr_swap_acked"] = vm.get("nr_swap_acked", 0) + 1
        self.counters["acked"] += 1
        self.sched.wake(WRITEBACK_KEY)

    # -- teardown ----------------------------------------------------------------------------
    def release(self) -> int:
        """Process exit: kill writeback and the workload, free every anon page. Returns pages freed."""
        for task in list(self.sched.tasks.values()):
            if task.name in ("rpc-swap", "workload"):
                self.sched.kill(task)
        pages = [ap.page for ap in self.lru] + [ap.page for ap in self.writeback.values()]
        vm = self.alloc.vmstat
        vm["nr_anon_pages"] -= len(pages)
        vm["nr_writeback"] -= len(self.writeback)
        for slot in self.writeback:
            self._free_slots.append(slot)
        self.lru.clear()
        self.writeback.clear()
        self.alloc.free(pages)
        return len(pages)

    def snapshot(self) -> dict:
        return {
            "active": self.active,
            "nr_slots": self.nr_slots,
            "slots_used": self.nr_slots - len(self._free_slots),
            "writeback": len(self.writeback),
            "acked": len(self.swap_map),
            "resident": len(self.lru),
            **self.counters,
        }

    def map_json(self) -> dict:
        return {"page_size": PAGE_SIZE, "seed": self.seed,
                "acked": {str(s): [p, g] for s, (p, g) in sorted(self.swap_map.items())}}
