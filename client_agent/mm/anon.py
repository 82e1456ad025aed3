"""Anonymous memory: the pages a workload touches, their LRU, and their deterministic contents
(mm/memory.c's anonymous faults, the anon LRU of mm/vmscan.c).

Invariants owned here:
- An anonymous page is on ``lru`` (resident, dirty, reclaimable) or owned by a swap device's
  writeback, or freed once a swap device acknowledged it durably. ``vmstat["nr_anon_pages"]``
  counts the first two: it is incremented here at the fault and decremented by the swap device
  when the page is freed.
- The workload is one task (``workload``): each page is allocated GFP_HIGHUSER (may block and
  reclaim), appended to the young end of the LRU; ``workload`` = {allocated, target, done, seed}.
- Page contents are ``page_bytes(seed, page_id, generation)``: deterministic, so any process (the
  simulation, the runner's reference client) can verify what a target holds.
"""

from __future__ import annotations

import hashlib
from collections import deque

from ..tasks import Sleep, WaitPages
from .gfp import GFP_KERNEL

PAGE_SIZE = 4096
# GFP_HIGHUSER = GFP_USER | __GFP_HIGHMEM; one zone here, so it behaves as GFP_KERNEL (ordinary,
# may block, direct reclaim throttled below half of min).
GFP_HIGHUSER = GFP_KERNEL


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


class AnonMemory:
    """The anonymous LRU of one host and the workload that fills it."""

    def __init__(self, alloc, sched, seed: int = 0):
        self.alloc = alloc
        self.sched = sched
        self.lru: deque[AnonPage] = deque()
        self.workload = {"allocated": 0, "target": 0, "done": False, "seed": seed}
        self._workload_task = None

    @property
    def seed(self) -> int:
        return self.workload["seed"]

    @seed.setter
    def seed(self, value: int) -> None:
        self.workload["seed"] = value

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

    def release(self) -> int:
        """Process exit: kill the workload, free every resident page. Returns pages freed."""
        for task in list(self.sched.tasks.values()):
            if task.name == "workload":
                self.sched.kill(task)
        pages = [ap.page for ap in self.lru]
        self.alloc.vmstat["nr_anon_pages"] -= len(pages)
        self.lru.clear()
        self.alloc.free(pages)
        return len(pages)
