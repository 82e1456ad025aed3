"""GFP flags: what an allocation may do to get its pages, and how deep into the reserve it may go.

Invariant owned here: a ``Gfp`` value maps to exactly one (threshold reduction, NO_WATERMARKS)
pair, computed the way mainline's ``gfp_to_alloc_flags()`` and ``__gfp_pfmemalloc_flags()``
(mm/page_alloc.c, v6.3+) compute ``alloc_flags``; ``PageAllocator`` turns that into a watermark
check with ``__zone_watermark_ok()``'s integer maths:

    context                         alloc_flags                       order-0 floor (free pages left)
    GFP_KERNEL / GFP_NOIO / NOFS    WMARK_MIN                         min
    GFP_NOWAIT                      WMARK_MIN | NON_BLOCK             min  (NON_BLOCK alone lowers nothing)
    __GFP_HIGH and may block        MIN_RESERVE                       min - min/2
    GFP_ATOMIC (HIGH, non-blocking) MIN_RESERVE | NON_BLOCK           m = min - min/2; m - m/4  (= 3*min/8)
    ... | __GFP_NOMEMALLOC          MIN_RESERVE (no NON_BLOCK)        min - min/2  (HIGH's half stays)
    __GFP_MEMALLOC or PF_MEMALLOC   + NO_WATERMARKS (retry only)      0: every page
    ... | __GFP_NOMEMALLOC          no NO_WATERMARKS                  as without MEMALLOC

NO_WATERMARKS is a *second* attempt, as in ``__alloc_pages_slowpath()``: the allocation is first
tried at its own floor, and only if that fails is it retried ignoring watermarks -- which is what
tags the pages ``pfmemalloc`` (``prep_new_page``).

Bit values are those of the classic ``include/linux/gfp_types.h`` layout (v5.x); only the names and
their combinations matter here.
"""

from __future__ import annotations

import enum


class Gfp(enum.IntFlag):
    # __GFP_HIGH: the caller is high priority; may use half of the min reserve (ALLOC_MIN_RESERVE).
    HIGH = 0x20
    # __GFP_IO: may start physical I/O (block layer). Absent in GFP_NOIO.
    IO = 0x40
    # __GFP_FS: may call into the filesystem. A direct reclaimer without it is throttled for at
    # most 1 s (throttle_direct_reclaim: wait_event_interruptible_timeout(..., HZ)).
    FS = 0x80
    # __GFP_DIRECT_RECLAIM: may sleep and enter direct reclaim -- i.e. a task may block on it.
    DIRECT_RECLAIM = 0x400
    # __GFP_KSWAPD_RECLAIM: wake kswapd when the fast path finds free pages at or below low.
    KSWAPD_RECLAIM = 0x800
    # __GFP_MEMALLOC: ALLOC_NO_WATERMARKS -- may take every page (sk_gfp_mask of a SOCK_MEMALLOC sk).
    MEMALLOC = 0x20000
    # __GFP_NOMEMALLOC: never NO_WATERMARKS (cancels MEMALLOC and PF_MEMALLOC) and no NON_BLOCK
    # bonus; __GFP_HIGH's half still applies.
    NOMEMALLOC = 0x80000


NONE = Gfp(0)
RECLAIM = Gfp.DIRECT_RECLAIM | Gfp.KSWAPD_RECLAIM               # __GFP_RECLAIM
GFP_KERNEL = RECLAIM | Gfp.IO | Gfp.FS                            # ordinary: stops at min, may block
GFP_NOFS = RECLAIM | Gfp.IO                                       # throttled at most 1 s
GFP_NOIO = RECLAIM                                                # throttled at most 1 s
GFP_ATOMIC = Gfp.HIGH | Gfp.KSWAPD_RECLAIM                        # non-blocking, high: 3*min/8
GFP_NOWAIT = Gfp.KSWAPD_RECLAIM                                   # non-blocking, not high: min

# alloc_flags bits (mm/internal.h), reduced to the ones this allocator acts on.
ALLOC_NO_WATERMARKS = 0x04
ALLOC_MIN_RESERVE = 0x08     # == __GFP_HIGH in mainline (BUILD_BUG_ON)
ALLOC_NON_BLOCK = 0x80
ALLOC_KSWAPD = 0x800         # == __GFP_KSWAPD_RECLAIM in mainline (BUILD_BUG_ON)


def gfp_to_alloc_flags(gfp: int) -> int:
    """mainline gfp_to_alloc_flags(), order 0, without cpusets, CMA or rt-task boosts."""
    flags = 0
    if gfp & Gfp.HIGH:
        flags |= ALLOC_MIN_RESERVE
    if gfp & Gfp.KSWAPD_RECLAIM:
        flags |= ALLOC_KSWAPD
    # "Not worth trying to allocate harder for __GFP_NOMEMALLOC even if it can't schedule."
    if not gfp & Gfp.DIRECT_RECLAIM and not gfp & Gfp.NOMEMALLOC:
        flags |= ALLOC_NON_BLOCK
    return flags


def gfp_pfmemalloc_flags(gfp: int, in_pf_memalloc: bool) -> int:
    """mainline __gfp_pfmemalloc_flags(): ALLOC_NO_WATERMARKS or 0 (no OOM victims here)."""
    if gfp & Gfp.NOMEMALLOC:
        return 0
    if gfp & Gfp.MEMALLOC or in_pf_memalloc:
        return ALLOC_NO_WATERMARKS
    return 0


def watermark_floor(mark: int, alloc_flags: int) -> int:
    """__zone_watermark_ok()'s reductions of ``mark`` (integer maths, min/2 then min/4)."""
    m = mark
    if alloc_flags & ALLOC_MIN_RESERVE:
        m -= m // 2
        if alloc_flags & ALLOC_NON_BLOCK:
            m -= m // 4
    return m
