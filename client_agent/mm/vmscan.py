"""kswapd: background reclaim of file pages and of anonymous pages to swap (mm/vmscan.c, one zone).

Invariants owned here:
- kswapd is a kthread that runs with PF_MEMALLOC for its whole life (as Linux's kswapd sets
  PF_MEMALLOC | PF_KSWAPD): whatever it allocates to write a page out may use the reserve.
- It is woken (``alloc.on_kswapd_wake``) when an allocation finds free pages at or below ``low``,
  and goes back to sleep (``alloc.kswapd_sleep()``) only once free pages are above ``high``
  (pgdat_balanced).
- It reclaims from any number of file mappings (``filemaps``, mm/filemap.py) and swap devices
  (``swap_devices``, mm/swapfile.py) fed by one anonymous LRU (``anon``, mm/anon.py), in this
  order: a clean file page is freed at once (no I/O); else, while free + pages under writeback
  <= high (what completion will bring back) and fewer than ``max_writeback`` pages are in flight,
  kswapd starts writeback of a dirty file page (pageout), else of the oldest resident anon page
  to the first swap device with a free slot (devices in swapon order: Linux's default priorities
  decrease with each swapon); else it waits for a writeback completion (reclaim_throttle(
  VMSCAN_THROTTLE_WRITEBACK), at most ``THROTTLE_WRITEBACK_S``). Counters: ``pgscan_kswapd`` per
  page scanned, ``pgsteal_kswapd`` per page freed (counted at completion by the device/mapping),
  ``pswpout`` per page submitted (count_swpout_vm_event, as Linux counts it).
- kswapd crashing (a bug of this program, client_agent/tasks.py) is as in Linux, where an oops
  in kswapd kills it (do_exit from the kthread): it is not restarted and reclaim stops; nothing
  waits on kswapd itself, so there is no waiter to fail. The crash is recorded and the watchdog
  classifies the run ``testbed_bug`` -- the stall that follows is never reported as a deadlock.
- Reclaim here is writeback: a page freed by kswapd is one the target acknowledged durably, or a
  clean file page.
"""

from __future__ import annotations

from ..tasks import WaitEvent

KSWAPD_KEY = "kswapd_wait"
WRITEBACK_KEY = "writeback_done"     # woken on every writeback completion (reclaim_throttle)
# reclaim_throttle(): VMSCAN_THROTTLE_WRITEBACK sleeps at most HZ/10.
THROTTLE_WRITEBACK_S = 0.1


class Kswapd:
    def __init__(self, alloc, sched, anon=None, max_writeback: int = 64):
        self.alloc = alloc
        self.sched = sched
        self.anon = anon
        self.max_writeback = max_writeback
        self.swap_devices: list = []
        self.filemaps: list = []
        self.counters = {"wakeups": 0, "throttled": 0}
        alloc.on_kswapd_wake = self._wake
        alloc.zone_reclaimable_pages = self._reclaimable
        self.task = sched.spawn("kswapd0", self._run(), kthread=True)

    def add_swap(self, dev) -> None:
        if dev not in self.swap_devices:
            self.swap_devices.append(dev)
            # swap_avail_heads: highest priority first, swapon order among equals
            self.swap_devices.sort(key=lambda d: -d.priority)
        if self.anon is None:
            self.anon = dev.anon

    def add_filemap(self, fm) -> None:
        if fm not in self.filemaps:
            self.filemaps.append(fm)

    def _reclaimable(self) -> int:
        n = len(self.anon.lru) if self.anon is not None else 0
        for d in self.swap_devices:
            n += d.nr_writeback
        for fm in self.filemaps:
            n += fm.reclaimable()
        return n

    def _wake(self) -> None:
        self.sched.wake(KSWAPD_KEY)

    def _run(self):
        alloc = self.alloc
        vm = alloc.vmstat
        alloc.memalloc_noreclaim_save()          # PF_MEMALLOC for life
        while True:
            if not alloc.kswapd_wanted:
                yield WaitEvent(KSWAPD_KEY, reason="kswapd: sleeping (balanced)")
                continue
            self.counters["wakeups"] += 1
            fms = self.filemaps
            devs = self.swap_devices
            while not alloc.kswapd_should_stop():
                # (plain loops, not generator expressions: this runs once per page reclaimed)
                dropped = False
                for fm in fms:
                    if fm.drop_clean():
                        dropped = True
                        break
                if dropped:
                    vm["pgscan_kswapd"] += 1
                    continue
                nwb = 0
                for d in devs:
                    nwb += d.nr_writeback
                for fm in fms:
                    nwb += fm.nr_reclaim_writeback
                if alloc.nr_free + nwb <= alloc.wmark_high and nwb < self.max_writeback:
                    start = None                        # a dirty file page first, else swap
                    for fm in fms:
                        if fm.can_pageout():
                            start = fm.pageout
                            break
                    else:
                        for d in devs:
                            if d.can_swap():
                                start = d.writepage
                                break
                    if start is not None:
                        vm["pgscan_kswapd"] += 1
                        start()
                        continue
                self.counters["throttled"] += 1
                yield WaitEvent(WRITEBACK_KEY, until=self.sched.now + THROTTLE_WRITEBACK_S,
                                reason="kswapd: reclaim_throttle(writeback)")
            alloc.kswapd_sleep()

    def stop(self) -> None:
        self.sched.kill(self.task)
        if self.alloc.on_kswapd_wake == self._wake:
            self.alloc.on_kswapd_wake = None
