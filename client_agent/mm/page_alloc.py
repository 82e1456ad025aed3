"""The agent's page allocator: one zone of ``nr_pages`` 4 KiB pages with Linux's watermarks.

Invariant owned here: ``nr_free + (pages held by owners) == nr_pages`` at every instant, and no
allocation leaves fewer free pages than its context's floor (gfp.py's table) -- except one that
was granted ALLOC_NO_WATERMARKS, whose pages and only whose pages are tagged ``pfmemalloc``.

The memory below ``wmark_min`` is the reserve (kernel-mechanism.md §1). The watermarks, as in
include/linux/mmzone.h, each with what crossing it triggers:

    WMARK_HIGH  kswapd stops reclaiming once free pages are above it (pgdat_balanced)
    WMARK_LOW   an allocation that finds free pages at or below it wakes kswapd (fast-path miss)
    WMARK_MIN   ordinary allocations stop here; below it is the reserve. __GFP_HIGH may go to
                min - min/2, GFP_ATOMIC to 3*min/8, NO_WATERMARKS to zero.
    min/2       ("half of sum(min)", allow_direct_reclaim) direct reclaimers are throttled

Sans-I/O and single-threaded: the allocator never blocks, never reads a clock and never logs.
``alloc()`` returns ``None`` when its context's floor would be crossed; waiting is the task
layer's business (tasks.py), which registers ``on_pages_freed`` to be told when to retry.

Hot path: ``alloc(1, ...)`` and ``free([page])`` run once per received frame (~100k/s): they touch
a preallocated ``Page`` object, a free list, a handful of integer attributes and one per-owner
counter; the vmstat dict is refreshed from those attributes only when read.
"""

from __future__ import annotations

import math
from typing import Callable

from ..bugs import BUGS as _BUGS
from .gfp import (
    ALLOC_KSWAPD,
    GFP_ATOMIC,
    gfp_pfmemalloc_flags,
    gfp_to_alloc_flags,
    watermark_floor,
)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# calculate_min_free_kbytes(): int_sqrt(lowmem_kbytes * 16), clamped. 128 KiB keeps tiny machines
# able to allocate atomically at all; 256 MiB (262144 KiB) stops huge machines wasting memory.
MIN_FREE_KBYTES_FLOOR = 128
MIN_FREE_KBYTES_CEIL = 262144
# vm.watermark_scale_factor: the kswapd gap in 1/10000 of managed pages; sysctl range [1, 3000],
# default 10 (0.1%), below which the gap is min/4 anyway.
WATERMARK_SCALE_FACTOR_DEFAULT = 10
WATERMARK_SCALE_FACTOR_RANGE = (1, 3000)


class BadPageError(AssertionError):
    """A page was freed twice or does not belong to this allocator (Linux: bad_page()). A bug."""


class Page:
    """Accounting object; the payload lives in the buffer that owns it. ``owner is None`` = free."""

    __slots__ = ("pfn", "pfmemalloc", "owner")

    def __init__(self, pfn: int):
        self.pfn = pfn
        self.pfmemalloc = False
        self.owner: str | None = None

    def __repr__(self) -> str:
        tag = " pfmemalloc" if self.pfmemalloc else ""
        return f"<Page pfn={self.pfn} owner={self.owner!r}{tag}>"


def int_sqrt(x: int) -> int:
    return math.isqrt(x)


def mult_frac(x: int, numer: int, denom: int) -> int:
    """include/linux/math.h mult_frac(): x * numer / denom without overflowing x * numer."""
    q, r = divmod(x, denom)
    return q * numer + (r * numer) // denom


def calculate_min_free_kbytes(managed_pages: int) -> int:
    """mm/page_alloc.c calculate_min_free_kbytes() for a machine whose lowmem is this pool."""
    lowmem_kbytes = managed_pages * (PAGE_SIZE >> 10)
    new_min_free_kbytes = int_sqrt(lowmem_kbytes * 16)
    return max(MIN_FREE_KBYTES_FLOOR, min(new_min_free_kbytes, MIN_FREE_KBYTES_CEIL))


def zone_watermarks(managed_pages: int, min_free_kbytes: int,
                    watermark_scale_factor: int) -> tuple[int, int, int]:
    """__setup_per_zone_wmarks() for a single lowmem zone (no boost): (min, low, high)."""
    pages_min = min_free_kbytes >> (PAGE_SHIFT - 10)
    # min = pages_min * managed / lowmem_pages; with one lowmem zone that is pages_min itself.
    wmin = pages_min
    # "ensure a minimum size on small systems": at least min/4 between the watermarks.
    step = max(wmin >> 2, mult_frac(managed_pages, watermark_scale_factor, 10000))
    low = wmin + step
    high = low + step
    return wmin, low, high


class _PfMemallocScope:
    """``with alloc.pf_memalloc():`` -- memalloc_noreclaim_save()/restore(), nestable."""

    __slots__ = ("_alloc",)

    def __init__(self, alloc: "PageAllocator"):
        self._alloc = alloc

    def __enter__(self) -> "PageAllocator":
        self._alloc.pf_memalloc_depth += 1
        return self._alloc

    def __exit__(self, *exc) -> None:
        self._alloc.pf_memalloc_depth -= 1


# vmstat counters that other parts of the agent (reclaim, swap, page cache, tasks) increment in
# ``alloc.vmstat`` directly. The hot ones (nr_free_pages, pgalloc_normal, pgfree, pgalloc_fail)
# live in attributes and are copied into the dict when it is read: do not write those via the dict.
COLD_VMSTAT = (
    "allocstall",              # allocations that had to wait (ALLOCSTALL_*, summed over zones)
    "pgscan_direct_throttle",  # direct reclaimers throttled below half of sum(min)
    "pgscan_kswapd", "pgsteal_kswapd",
    "pgscan_direct", "pgsteal_direct",
    "pswpin", "pswpout",
    "nr_dirty", "nr_writeback",
    "nr_anon_pages", "nr_file_pages",
)


class PageAllocator:
    __slots__ = (
        "nr_pages", "nr_free", "min_free_kbytes", "watermark_scale_factor",
        "wmark_min", "wmark_low", "wmark_high",
        "pf_memalloc_depth", "memalloc_socks",
        "kswapd_wanted", "on_kswapd_wake", "on_pages_freed", "zone_reclaimable_pages",
        "_pages", "_free_list", "_owner_nr", "_ctx_cache", "_vmstat",
        "_pgalloc", "_pgfree", "_pgalloc_fail", "_pgalloc_pfmemalloc", "_kswapd_wakeups",
        "nr_free_lowwater",
    )

    def __init__(self, nr_pages: int, min_free_kbytes: int | None = None,
                 watermark_scale_factor: int = WATERMARK_SCALE_FACTOR_DEFAULT):
        if nr_pages <= 0:
            raise ValueError(f"a pool needs at least one page, got nr_pages={nr_pages}")
        self.nr_pages = nr_pages
        self._pages = [Page(pfn) for pfn in range(nr_pages)]
        # Lowest pfn handed out first (popped from the end): deterministic, easy to read in tests.
        self._free_list = self._pages[::-1]
        self.nr_free = nr_pages
        self.nr_free_lowwater = nr_pages  # lowest nr_free seen since the last reset_lowwater()
        self._owner_nr: dict[str, int] = {}
        self._ctx_cache: dict[int, tuple[int, int, int]] = {}
        self.pf_memalloc_depth = 0        # > 0 inside a PF_MEMALLOC scope (per task: tasks.py swaps it)
        self.memalloc_socks = 0           # sk_memalloc_socks(): SOCK_MEMALLOC sockets in existence
        self.kswapd_wanted = False        # set by a wakeup, cleared by kswapd_sleep()
        self.on_kswapd_wake: Callable[[], None] | None = None   # called on a False->True wakeup
        self.on_pages_freed: Callable[[], None] | None = None   # set by the scheduler while tasks wait
        # zone_reclaimable_pages(): None = "assume reclaimable" until a reclaim layer provides it.
        self.zone_reclaimable_pages: Callable[[], int] | None = None
        self._pgalloc = 0
        self._pgfree = 0
        self._pgalloc_fail = 0
        self._pgalloc_pfmemalloc = 0
        self._kswapd_wakeups = 0
        self._vmstat = {name: 0 for name in COLD_VMSTAT}
        self.watermark_scale_factor = WATERMARK_SCALE_FACTOR_DEFAULT
        self.min_free_kbytes = 0
        self.set_watermarks(min_free_kbytes, watermark_scale_factor)

    # ------------------------------------------------------------------ tunables
    def set_watermarks(self, min_free_kbytes: int | None = None,
                       watermark_scale_factor: int | None = None) -> None:
        """sysctl vm.min_free_kbytes / vm.watermark_scale_factor (None: keep / default formula)."""
        if watermark_scale_factor is not None:
            lo, hi = WATERMARK_SCALE_FACTOR_RANGE
            if not lo <= watermark_scale_factor <= hi:
                raise ValueError(f"watermark_scale_factor={watermark_scale_factor} outside "
                                 f"the sysctl range [{lo}, {hi}]")
            self.watermark_scale_factor = watermark_scale_factor
        if min_free_kbytes is None:
            min_free_kbytes = calculate_min_free_kbytes(self.nr_pages)
        if min_free_kbytes < 0:
            raise ValueError(f"min_free_kbytes={min_free_kbytes} is negative")
        wmin, low, high = zone_watermarks(self.nr_pages, min_free_kbytes,
                                          self.watermark_scale_factor)
        if high > self.nr_pages:
            raise ValueError(
                f"a pool of {self.nr_pages} pages cannot hold its watermarks (min {wmin}, low {low}, "
                f"high {high} pages from min_free_kbytes={min_free_kbytes}): pass a smaller "
                f"min_free_kbytes or a bigger pool")
        self.min_free_kbytes = min_free_kbytes
        self.wmark_min, self.wmark_low, self.wmark_high = wmin, low, high
        self._ctx_cache.clear()

    def _context(self, gfp: int) -> tuple[int, int, int, int]:
        """(floor, alloc_flags, reserve_flags outside / inside PF_MEMALLOC) for a mask; cached."""
        ctx = self._ctx_cache.get(gfp)
        if ctx is None:
            flags = gfp_to_alloc_flags(gfp)
            ctx = (watermark_floor(self.wmark_min, flags), flags,
                   gfp_pfmemalloc_flags(gfp, False), gfp_pfmemalloc_flags(gfp, True))
            self._ctx_cache[gfp] = ctx
        return ctx

    def watermark_floor(self, gfp: int) -> int:
        """Free pages an allocation in this context must leave (0 if it may use NO_WATERMARKS)."""
        floor, _flags, reserve, reserve_pf = self._context(gfp)
        if reserve or (self.pf_memalloc_depth and reserve_pf):
            return 0
        return floor

    # ------------------------------------------------------------------ hot path
    def alloc(self, n: int, gfp: int, owner: str) -> list[Page] | None:
        """n pages, all or nothing; never blocks. None: this context's floor would be crossed.

        The n pages count as n order-0 allocations made at once: all pass __zone_watermark_ok
        (``free - (n-1) > floor``, i.e. ``free - n >= floor``) or none is taken.
        """
        free = self.nr_free
        ctx = self._ctx_cache.get(gfp)
        if ctx is None:
            ctx = self._context(gfp)
        floor, flags, reserve, reserve_pf = ctx
        pfmemalloc = False
        if free - n < floor or n <= 0 or owner is None:
            if n <= 0 or owner is None:
                raise ValueError(f"alloc(n={n}, owner={owner!r}): need n >= 1 and an owner")
            # Slow path: retry ignoring watermarks if the context grants ALLOC_NO_WATERMARKS.
            if (reserve or (self.pf_memalloc_depth and reserve_pf)) and free >= n:
                pfmemalloc = True
            else:
                self._pgalloc_fail += 1
                if flags & ALLOC_KSWAPD:
                    self.wakeup_kswapd()
                return None
        # Fast path checks the low watermark first; missing it wakes kswapd.
        if free - n < self.wmark_low and flags & ALLOC_KSWAPD and not self.kswapd_wanted:
            self.wakeup_kswapd()
        free -= n
        self.nr_free = free
        if free < self.nr_free_lowwater:
            self.nr_free_lowwater = free
        self._pgalloc += n
        fl = self._free_list
        if n == 1:
            page = fl.pop()
            page.owner = owner
            # every fresh allocation sets or clears the tag (bugs.stale_pfmemalloc_tag: keeps it;
            # BUGS is read only for a page that still carries a tag)
            page.pfmemalloc = pfmemalloc or (page.pfmemalloc and _BUGS.stale_pfmemalloc_tag)
            pages = [page]
        else:
            pages = fl[-n:]
            del fl[-n:]
            pages.reverse()
            for page in pages:
                page.owner = owner
                page.pfmemalloc = pfmemalloc or (page.pfmemalloc and _BUGS.stale_pfmemalloc_tag)
        if pfmemalloc:
            self._pgalloc_pfmemalloc += n
        on = self._owner_nr
        on[owner] = on.get(owner, 0) + n
        return pages

    def free(self, pages: list[Page]) -> None:
        """Return pages to the pool (free_pages). Double frees and foreign pages raise."""
        all_pages = self._pages
        fl = self._free_list
        on = self._owner_nr
        for page in pages:
            owner = page.owner
            pfn = page.pfn
            if owner is None or pfn >= len(all_pages) or all_pages[pfn] is not page:
                self._bad_page(page)
            on[owner] -= 1
            page.owner = None
            fl.append(page)
        n = len(pages)
        self.nr_free += n
        self._pgfree += n
        if self.on_pages_freed is not None:
            self.on_pages_freed()

    def reassign(self, pages: list[Page], owner: str) -> None:
        """Charge held pages to a new owner (a received buffer queued on a socket or in a
        reassembly queue), so ``owner_pages()`` says who holds the memory. Accounting only."""
        on = self._owner_nr
        n = 0
        for page in pages:
            old = page.owner
            if old is None:
                self._bad_page(page)
            on[old] -= 1
            page.owner = owner
            n += 1
        on[owner] = on.get(owner, 0) + n

    def _bad_page(self, page: object) -> None:
        pfn = getattr(page, "pfn", None)
        if not isinstance(page, Page) or not isinstance(pfn, int) or pfn < 0 \
                or pfn >= self.nr_pages or self._pages[pfn] is not page:
            raise BadPageError(f"free of a page not from this allocator: {page!r} "
                               f"(pool has pfn 0..{self.nr_pages - 1}, nr_free={self.nr_free})")
        raise BadPageError(f"double free of pfn {pfn}: the page is already free "
                           f"(nr_free={self.nr_free}, nr_pages={self.nr_pages})")

    # ------------------------------------------------------------------ PF_MEMALLOC, SOCK_MEMALLOC
    def pf_memalloc(self) -> _PfMemallocScope:
        """Nestable PF_MEMALLOC scope: every allocation inside may use ALLOC_NO_WATERMARKS
        (unless __GFP_NOMEMALLOC); it also means "do not recurse into reclaim"."""
        return _PfMemallocScope(self)

    @property
    def in_pf_memalloc(self) -> bool:
        return self.pf_memalloc_depth > 0

    def memalloc_noreclaim_save(self) -> int:
        old = self.pf_memalloc_depth
        self.pf_memalloc_depth = old + 1
        return old

    def memalloc_noreclaim_restore(self, old: int) -> None:
        self.pf_memalloc_depth = old

    def sk_memalloc_inc(self) -> None:
        """static_branch_inc(&memalloc_socks_key) -- from sk_set_memalloc()."""
        self.memalloc_socks += 1

    def sk_memalloc_dec(self) -> None:
        if self.memalloc_socks <= 0:
            raise AssertionError(f"sk_memalloc_dec with memalloc_socks={self.memalloc_socks}: "
                                 f"unbalanced sk_clear_memalloc")
        self.memalloc_socks -= 1

    def sk_memalloc_socks(self) -> bool:
        return self.memalloc_socks > 0

    # ------------------------------------------------------------------ reclaim hooks
    def wakeup_kswapd(self) -> None:
        """wakeup_kswapd(): set the flag; notify the registered kswapd only if it was asleep."""
        if not self.kswapd_wanted:
            self.kswapd_wanted = True
            self._kswapd_wakeups += 1
            if self.on_kswapd_wake is not None:
                self.on_kswapd_wake()

    def kswapd_should_stop(self) -> bool:
        """pgdat_balanced(): zone_watermark_ok(high) holds, i.e. free pages > high."""
        return self.nr_free > self.wmark_high

    def kswapd_sleep(self) -> None:
        """kswapd goes back to sleep: the next crossing of low wakes it again."""
        self.kswapd_wanted = False

    def allow_direct_reclaim(self) -> bool:
        """mm/vmscan.c allow_direct_reclaim(): free pages > half of sum(min) (or nothing to
        reclaim, or no reserve at all). False wakes kswapd: throttled tasks need it running."""
        reserve = self.wmark_min
        if not reserve:
            return True
        zrp = self.zone_reclaimable_pages
        if zrp is not None and not zrp() and not _BUGS.throttle_unreclaimable:
            return True  # an unreclaimable zone does not count (the 2024 endless-throttle fix)
        ok = self.nr_free > reserve // 2
        if not ok:
            self.wakeup_kswapd()
        return ok

    def should_throttle_direct_reclaim(self, kthread: bool = False) -> bool:
        """throttle_direct_reclaim()'s decision for the calling task (kernel threads exempt).
        Counting pgscan_direct_throttle is the caller's job, once per throttle."""
        if kthread:
            return False
        return not self.allow_direct_reclaim()

    # ------------------------------------------------------------------ observation
    @property
    def reserve_in_use(self) -> int:
        """Pages allocated below the min watermark right now."""
        return max(0, self.wmark_min - self.nr_free)

    def reset_lowwater(self) -> None:
        self.nr_free_lowwater = self.nr_free

    def owner_pages(self) -> dict[str, int]:
        """Pages in use by owner (leak checks): only owners holding pages."""
        return {owner: nr for owner, nr in self._owner_nr.items() if nr}

    @property
    def vmstat(self) -> dict[str, int]:
        """/proc/vmstat-like counters. The same dict every time: cold counters may be incremented
        through it; the hot ones are refreshed here from their attributes."""
        v = self._vmstat
        v["nr_free_pages"] = self.nr_free
        v["pgalloc_normal"] = self._pgalloc
        v["pgfree"] = self._pgfree
        v["pgalloc_fail"] = self._pgalloc_fail   # testbed: failed alloc() calls (no Linux twin)
        return v

    def zoneinfo(self) -> dict:
        """/proc/zoneinfo-like view of the single zone, plus the sysctls that shaped it."""
        return {
            "free": self.nr_free,
            "min": self.wmark_min,
            "low": self.wmark_low,
            "high": self.wmark_high,
            "managed": self.nr_pages,
            "min_free_kbytes": self.min_free_kbytes,
            "watermark_scale_factor": self.watermark_scale_factor,
        }

    def snapshot(self) -> dict:
        """Plain JSON-serialisable state for the control socket and the report timeline."""
        return {
            "vmstat": dict(self.vmstat),
            "zoneinfo": self.zoneinfo(),
            "reserve": {
                "reserve_in_use": self.reserve_in_use,
                "reserve_in_use_max": max(0, self.wmark_min - self.nr_free_lowwater),
                "nr_free_lowwater": self.nr_free_lowwater,
                "pgalloc_pfmemalloc": self._pgalloc_pfmemalloc,  # pages given via NO_WATERMARKS
                "atomic_floor": self.watermark_floor(GFP_ATOMIC),
                "throttle_below": self.wmark_min // 2,
                "memalloc_socks": self.memalloc_socks,
            },
            "kswapd": {"wanted": self.kswapd_wanted, "wakeups": self._kswapd_wakeups},
            "owners": self.owner_pages(),
        }
