"""kswapd: background reclaim of anonymous pages to swap (mm/vmscan.c, for one zone).

Invariants owned here:
- kswapd is a kthread that runs with PF_MEMALLOC for its whole life (as Linux's kswapd sets
  PF_MEMALLOC | PF_KSWAPD): whatever it allocates to write a page out may use the reserve.
- It is woken (``alloc.on_kswapd_wake``) when an allocation finds free pages at or below ``low``,
  and goes back to sleep (``alloc.kswapd_sleep()``) only once free pages are above ``high``
  (pgdat_balanced).
- Reclaim here is writeback: a page freed by kswapd is one the NAS acknowledged (swap.py), or a
  clean file page (filemap.py: freed first, no I/O; dirty file pages are written first). kswapd
  starts writeback for the oldest resident anon page while free + pages under writeback <= high
  (what completion will bring back) and fewer than ``max_writeback`` pages are in flight; else it
  waits for a writeback completion (reclaim_throttle(VMSCAN_THROTTLE_WRITEBACK), at most
  ``THROTTLE_WRITEBACK_S``). Counters: ``pgscan_kswapd`` per page scanned (taken off the LRU for
  writeback), ``pgsteal_kswapd`` per page freed (counted at completion by swap.py), ``pswpout``
  per page submitted (count_swpout_vm_event, as Linux counts it).
"""

from __future__ import annotations

from ..tasks import WaitEvent

KSWAPD_KEY = "kswapd_wait"
# reclaim_throttle(): VMSCAN_THROTTLE_WRITEBACK sleeps at most HZ/10.
THROTTLE_WRITEBACK_S = 0.1


class Kswapd:
    def __init__(self, alloc, sched, swap, max_writeback: int = 64):
        self.alloc = alloc
        self.sched = sched
        self.swap = swap
        self.max_writeback = max_writeback
        self.counters = {"wakeups": 0, "throttled": 0}
        # File pages (client_agent/mm/filemap.py), set by whoever mounts the file: clean ones are
        # freed first (no I/O), then dirty ones written by kswapd itself (pageout, via the file's
        # NFS transport), then anon pages to swap.
        self.filemap = None
        alloc.on_kswapd_wake = self._wake
        alloc.zone_reclaimable_pages = self._reclaimable
        self.task = sched.spawn("kswapd0", self._run(), kthread=True)

    def _reclaimable(self) -> int:
        n = len(self.swap.lru) + self.swap.nr_writeback
        if self.filemap is not None:
            n += self.filemap.reclaimable()
        return n

    def _wake(self) -> None:
        self.sched.wake(KSWAPD_KEY)

    def _run(self):
        alloc = self.alloc
        swap = self.swap
        vm = alloc.vmstat
        alloc.memalloc_noreclaim_save()          # PF_MEMALLOC for life
        from ..swap import WRITEBACK_KEY
        while True:
            if not alloc.kswapd_wanted:
                yield WaitEvent(KSWAPD_KEY, reason="kswapd: sleeping (balanced)")
                continue
            self.counters["wakeups"] += 1
            while not alloc.kswapd_should_stop():
                fm = self.filemap
                if fm is not None and fm.drop_clean():
                    vm["pgscan_kswapd"] += 1
                    continue
                nwb = swap.nr_writeback + (fm.nr_reclaim_writeback if fm is not None else 0)
                if (fm is not None and alloc.nr_free + nwb <= alloc.wmark_high
                        and nwb < self.max_writeback and fm.can_pageout()):
                    vm["pgscan_kswapd"] += 1
                    fm.pageout()
                    continue
                if (alloc.nr_free + nwb <= alloc.wmark_high and nwb < self.max_writeback
                        and swap.can_swap()):
                    vm["pgscan_kswapd"] += 1
                    swap.writepage()
                    continue
                self.counters["throttled"] += 1
                yield WaitEvent(WRITEBACK_KEY, until=self.sched.now + THROTTLE_WRITEBACK_S,
                                reason="kswapd: reclaim_throttle(writeback)")
            alloc.kswapd_sleep()

    def stop(self) -> None:
        self.sched.kill(self.task)
        if self.alloc.on_kswapd_wake == self._wake:
            self.alloc.on_kswapd_wake = None
