"""A swap device: slots on a storage backend, the swap map, and page writeback through it
(mm/swapfile.c, mm/page_io.c). Protocol-free: the backend is any ``mm.page_io.StorageBackend``
(NFS: fs/nfs/file.py).

Invariants owned here:
- ``swapon(backend)`` marks the backend SOCK_MEMALLOC first when asked (swap_activate ->
  rpc_clnt_swap_activate / sk_set_memalloc happens before any swap I/O), then activates it; its
  size in pages is the number of slots. ``swapoff()`` stops new writeback and clears the mark.
- A page under writeback is owned by its writeback task and holds its slot; it is freed only after
  ``backend.write_page`` returned None (durable on the target). ``swap_map`` = {slot: (page_id,
  generation)} of every durably acknowledged slot, and nothing else: what a verifier reads back
  (``anon.page_bytes``) must match.
- A write error (``write_page`` returned a WriteError) ends the page's writeback as mm/page_io.c
  sio_write_complete does for swap over NFS: "Write error -5 on dio swapfile (4096)" is logged,
  the page is set dirty again, PG_reclaim cleared, end_page_writeback: it goes back on the LRU,
  resident, and ``nr_writeback`` drops. Differs from Linux: the slot is returned to the free slots
  (Linux keeps it in the swap cache for the page) and the page goes to the LRU's young end (Linux
  leaves it where reclaim put it back).
- A writeback task that crashes (a bug of this program, never a target's answer: client_agent/
  tasks.py) ends its page's writeback as a write error (EIO, reason "writeback task crashed",
  counted in the backend's ``write_errors``): ``nr_writeback`` drops, the page goes back to the
  LRU. In Linux an oops in the task that would complete the bio leaves the page under writeback
  for ever (the hang this testbed shows for other reasons); here the run ends and the watchdog
  classifies it ``testbed_bug``. A backend that is ``dead`` (its own task crashed: mm/page_io.py)
  gets no new writeback: every write would fail at once and kswapd resubmit it at the same instant.
- Writeback tasks run with PF_MEMALLOC (sunrpc runs RPC_TASK_SWAPPER tasks under
  memalloc_noreclaim_save): their transmit buffers and RPC buffers may come from the reserve.
- Every completion wakes ``WRITEBACK_KEY`` (kswapd's reclaim_throttle, dirty throttling).
"""

from __future__ import annotations

from collections import deque

from .anon import PAGE_SIZE, AnonMemory, AnonPage, page_bytes
from .page_io import TASK_CRASHED, ActivateError, WriteError, backend_dead, count_write_error
from .vmscan import WRITEBACK_KEY

__all__ = ["PAGE_SIZE", "WRITEBACK_KEY", "AnonMemory", "AnonPage", "SwapDevice", "page_bytes"]


class SwapDevice:
    """One swap area (struct swap_info_struct). Pages come from ``anon`` (AnonMemory); a device
    built without one gets its own (one device, one workload: the common case)."""

    def __init__(self, alloc, sched, seed: int = 0, log=None, anon: AnonMemory | None = None,
                 priority: int = -1):
        self.alloc = alloc
        self.sched = sched
        self.anon = anon if anon is not None else AnonMemory(alloc, sched, seed)
        self.log = log or (lambda line: None)
        self.priority = priority
        self.backend = None
        self.nr_slots = 0
        self.active = False
        self.writeback: dict[int, AnonPage] = {}     # slot -> page under writeback
        self.swap_map: dict[int, tuple[int, int]] = {}
        self._free_slots: deque[int] = deque()
        self.counters = {"acked": 0}

    # -- the anonymous memory it pages out (names kept from when it held them) ---------------
    lru = property(lambda self: self.anon.lru)
    workload = property(lambda self: self.anon.workload)

    @property
    def seed(self) -> int:
        return self.anon.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.anon.seed = value

    def start_workload(self, pages: int, rate_pps: float = 0.0):
        return self.anon.start_workload(pages, rate_pps)

    # -- swapon / swapoff --------------------------------------------------------------------
    def swapon(self, backend, nr_slots: int | None = None, memalloc: bool = True):
        """Generator: mark the backend (if ``memalloc``), activate it. Returns nr_slots."""
        self.backend = backend
        if memalloc:
            backend.set_memalloc(True)           # xs_set_memalloc (before any swap I/O)
        pages = yield from backend.activate()
        if nr_slots is None:
            nr_slots = pages
        if nr_slots <= 0:
            raise ActivateError(f"swap area {backend.describe()} has no room")
        self.nr_slots = nr_slots
        self._free_slots = deque(range(nr_slots))
        self.active = True
        self.log(f"Adding {nr_slots * 4}k swap on {backend.describe()}")
        return nr_slots

    def swapoff(self) -> int:
        """Stop swapping to the device and clear SOCK_MEMALLOC. Returns memalloc_socks after."""
        self.active = False
        if self.backend is not None and self.backend.memalloc:
            self.backend.set_memalloc(False)
        return self.alloc.memalloc_socks

    # -- reclaim side ------------------------------------------------------------------------
    @property
    def nr_writeback(self) -> int:
        return len(self.writeback)

    def has_free_slot(self) -> bool:
        return self.active and bool(self._free_slots) and not backend_dead(self.backend)

    def can_swap(self) -> bool:
        return (self.active and bool(self.anon.lru) and bool(self._free_slots)
                and not backend_dead(self.backend))

    def writepage(self) -> bool:
        """swap_writepage for the oldest resident anon page (LRU tail). False: nothing to do."""
        if not self.can_swap():
            return False
        ap = self.anon.lru.popleft()
        ap.slot = self._free_slots.popleft()
        self.writeback[ap.slot] = ap
        vm = self.alloc.vmstat
        vm["nr_writeback"] += 1
        vm["pswpout"] += 1
        self.sched.spawn("rpc-swap", self._writeback(ap),
                         on_crash=lambda task: self._writeback_crashed(ap, task))
        return True

    def _writeback_crashed(self, ap: AnonPage, task) -> None:
        """on_crash of a writeback task: the page's writeback ends with EIO (see above)."""
        if ap.slot is None or self.writeback.get(ap.slot) is not ap:
            return                                  # it had ended its writeback already
        err = WriteError("EIO", TASK_CRASHED, ap.slot * PAGE_SIZE, "WRITE")
        if self.backend is not None:
            count_write_error(self.backend.counters, err)
        self._write_error(ap, err)

    def _writeback(self, ap: AnonPage):
        """One page to its slot, durably (RPC_TASK_SWAPPER: runs under PF_MEMALLOC)."""
        self.alloc.memalloc_noreclaim_save()
        anon = self.anon
        err = yield from self.backend.write_page(
            ap.slot * PAGE_SIZE, lambda: page_bytes(anon.seed, ap.page_id, ap.generation))
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
        self.anon.lru.append(ap)
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
        """Process exit: kill writeback and the workload, free every anon page (the resident ones
        too). Returns pages freed."""
        for task in list(self.sched.tasks.values()):
            if task.name == "rpc-swap":
                self.sched.kill(task)
        pages = [ap.page for ap in self.writeback.values()]
        vm = self.alloc.vmstat
        vm["nr_anon_pages"] -= len(pages)
        vm["nr_writeback"] -= len(self.writeback)
        for slot in self.writeback:
            self._free_slots.append(slot)
        self.writeback.clear()
        self.alloc.free(pages)
        return len(pages) + self.anon.release()

    def snapshot(self) -> dict:
        return {
            "active": self.active,
            "nr_slots": self.nr_slots,
            "slots_used": self.nr_slots - len(self._free_slots),
            "writeback": len(self.writeback),
            "acked": len(self.swap_map),
            "resident": len(self.anon.lru),
            **(self.backend.snapshot() if self.backend is not None else {}),
            **self.counters,
            "backend": self.backend.describe() if self.backend is not None else None,
        }

    def map_json(self) -> dict:
        return {"page_size": PAGE_SIZE, "seed": self.anon.seed,
                "acked": {str(s): [p, g] for s, (p, g) in sorted(self.swap_map.items())}}
