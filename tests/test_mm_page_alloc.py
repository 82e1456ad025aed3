"""The page allocator against Linux's figures (mm/page_alloc.c), computed by hand here."""

import json
import math

import pytest

from client_agent.mm.gfp import (
    GFP_ATOMIC, GFP_KERNEL, GFP_NOFS, GFP_NOWAIT, RECLAIM, Gfp,
    gfp_pfmemalloc_flags, gfp_to_alloc_flags, ALLOC_NO_WATERMARKS, ALLOC_NON_BLOCK,
    ALLOC_MIN_RESERVE,
)
from client_agent.mm.page_alloc import BadPageError, PageAllocator, calculate_min_free_kbytes


def linux_wmarks(nr_pages, min_free_kbytes=None, wsf=10):
    """Written out independently of the module: calculate_min_free_kbytes + __setup_per_zone_wmarks."""
    if min_free_kbytes is None:
        min_free_kbytes = min(max(math.isqrt(nr_pages * 4 * 16), 128), 262144)
    wmin = min_free_kbytes >> 2                     # PAGE_SHIFT - 10 == 2
    scaled = (nr_pages // 10000) * wsf + ((nr_pages % 10000) * wsf) // 10000   # mult_frac
    step = max(wmin >> 2, scaled)
    return min_free_kbytes, wmin, wmin + step, wmin + 2 * step


def test_worked_example_from_the_issue():
    a = PageAllocator(8192, min_free_kbytes=2048)
    assert (a.wmark_min, a.wmark_low, a.wmark_high) == (512, 640, 768)
    assert a.watermark_floor(GFP_ATOMIC) == 192
    assert a.watermark_floor(Gfp.HIGH | RECLAIM) == 256
    assert a.watermark_floor(GFP_KERNEL) == 512
    assert a.watermark_floor(GFP_NOWAIT) == 512


@pytest.mark.parametrize("nr_pages, expected", [
    # (min_free_kbytes, min, low, high) worked by hand:
    (1024, (256, 64, 80, 96)),          # sqrt(4096*16)=256
    (8192, (724, 181, 226, 271)),       # sqrt(32768*16)=724.07 -> 724; 724>>2=181; 181>>2=45
    (65536, (2048, 512, 640, 768)),     # sqrt(262144*16)=2048; scaled 65 < 128
    (262144, (4096, 1024, 1286, 1548)),  # sqrt(1048576*16)=4096; scaled 262 > 1024>>2=256
    (64, (128, 32, 40, 48)),            # sqrt(256*16)=64 -> clamped up to 128 KiB
])
def test_default_watermarks_equal_linux(nr_pages, expected):
    a = PageAllocator(nr_pages)
    assert (a.min_free_kbytes, a.wmark_min, a.wmark_low, a.wmark_high) == expected
    assert expected == linux_wmarks(nr_pages)


def test_min_free_kbytes_ceiling_and_scale_factor():
    assert calculate_min_free_kbytes(1 << 30) == 262144      # 4 TiB pool: clamped to 256 MiB
    a = PageAllocator(100_000, min_free_kbytes=400, watermark_scale_factor=100)
    # min 100; scaled = 10*100 + 0 = 1000 > 25 -> low 1100, high 2100
    assert (a.wmark_min, a.wmark_low, a.wmark_high) == (100, 1100, 2100)
    assert linux_wmarks(100_000, 400, 100)[1:] == (100, 1100, 2100)
    with pytest.raises(ValueError, match="watermark_scale_factor=0"):
        PageAllocator(1000, watermark_scale_factor=0)
    with pytest.raises(ValueError, match="cannot hold"):
        PageAllocator(16)      # the 128 KiB floor is 32 pages: more than the pool


def test_alloc_flags_mirror_mainline():
    assert gfp_to_alloc_flags(GFP_KERNEL) & (ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE) == 0
    assert gfp_to_alloc_flags(GFP_ATOMIC) & (ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE) == \
        ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE
    assert gfp_to_alloc_flags(GFP_ATOMIC | Gfp.NOMEMALLOC) & ALLOC_NON_BLOCK == 0
    assert gfp_pfmemalloc_flags(GFP_KERNEL, in_pf_memalloc=True) == ALLOC_NO_WATERMARKS
    assert gfp_pfmemalloc_flags(GFP_KERNEL | Gfp.NOMEMALLOC, in_pf_memalloc=True) == 0
    assert gfp_pfmemalloc_flags(GFP_ATOMIC | Gfp.MEMALLOC, in_pf_memalloc=False) == \
        ALLOC_NO_WATERMARKS


def drain(a, gfp, owner="t"):
    got = []
    while True:
        p = a.alloc(1, gfp, owner)
        if p is None:
            return got
        got += p


@pytest.mark.parametrize("gfp, floor", [
    (GFP_KERNEL, 512),
    (GFP_NOFS, 512),
    (GFP_NOWAIT, 512),                          # non-blocking but not high: no bonus
    (Gfp.HIGH | RECLAIM, 256),                  # min - min/2
    (GFP_ATOMIC, 192),                          # 256 - 256/4
    (GFP_ATOMIC | Gfp.NOMEMALLOC, 256),         # NOMEMALLOC drops the atomic quarter, not HIGH's half
    (GFP_ATOMIC | Gfp.MEMALLOC, 0),             # ALLOC_NO_WATERMARKS: every page
    (GFP_ATOMIC | Gfp.MEMALLOC | Gfp.NOMEMALLOC, 256),
])
def test_each_context_stops_exactly_at_its_floor(gfp, floor):
    a = PageAllocator(8192, min_free_kbytes=2048)
    got = drain(a, gfp)
    assert a.nr_free == floor
    assert len(got) == 8192 - floor
    assert a.vmstat["pgalloc_fail"] == 1
    a.free(got)
    assert a.nr_free == 8192 and a.owner_pages() == {}


def test_multi_page_allocation_is_all_or_nothing():
    a = PageAllocator(8192, min_free_kbytes=2048)
    drain(a, GFP_KERNEL)
    a.free(a.alloc(1, GFP_ATOMIC, "x"))  # back at 512
    # 512 free, floor 192 for atomic: 320 pages fit exactly, 321 do not.
    assert a.alloc(321, GFP_ATOMIC, "big") is None
    assert a.nr_free == 512
    big = a.alloc(320, GFP_ATOMIC, "big")
    assert len(big) == 320 and a.nr_free == 192
    assert len({p.pfn for p in big}) == 320


def test_pfmemalloc_tag_only_when_reserve_needed_and_cleared_on_reuse():
    a = PageAllocator(8192, min_free_kbytes=2048)
    gfp = GFP_ATOMIC | Gfp.MEMALLOC
    above = drain(a, GFP_ATOMIC)          # down to the atomic floor without the reserve
    assert a.nr_free == 192
    assert not any(p.pfmemalloc for p in above)
    first = a.alloc(1, gfp, "sk")         # would fail at 192 as plain atomic: tagged
    assert first[0].pfmemalloc
    # Above the floor, the same MEMALLOC request is NOT tagged.
    a.free(above[:10])
    untagged = a.alloc(1, gfp, "sk")
    assert not untagged[0].pfmemalloc
    assert a.snapshot()["reserve"]["pgalloc_pfmemalloc"] == 1
    # The tagged page, freed and reallocated normally, loses its tag (no stale pfmemalloc).
    a.free(first)
    again = a.alloc(1, GFP_ATOMIC, "other")
    assert again[0] is first[0] and not again[0].pfmemalloc


def test_nomemalloc_cancels_pf_memalloc_and_scope_nests():
    a = PageAllocator(8192, min_free_kbytes=2048)
    drain(a, GFP_KERNEL)
    assert a.alloc(1, GFP_KERNEL, "x") is None
    with a.pf_memalloc():
        with a.pf_memalloc():
            assert a.in_pf_memalloc
            p1 = a.alloc(1, GFP_KERNEL, "x")
            assert p1[0].pfmemalloc
            assert a.alloc(1, GFP_KERNEL | Gfp.NOMEMALLOC, "x") is None
        assert a.in_pf_memalloc            # still inside the outer scope
        p2 = a.alloc(1, GFP_KERNEL, "x")
        assert p2[0].pfmemalloc
    assert not a.in_pf_memalloc
    assert a.alloc(1, GFP_KERNEL, "x") is None
    old = a.memalloc_noreclaim_save()
    assert a.alloc(1, GFP_KERNEL, "x")[0].pfmemalloc
    a.memalloc_noreclaim_restore(old)
    assert not a.in_pf_memalloc
    assert a.nr_free == 509


def test_no_watermarks_fails_only_when_empty():
    a = PageAllocator(1024)
    got = drain(a, GFP_KERNEL | Gfp.MEMALLOC)
    assert len(got) == 1024 and a.nr_free == 0
    assert sum(p.pfmemalloc for p in got) == 64   # exactly the pages below min=64
    assert a.snapshot()["reserve"]["reserve_in_use_max"] == 64


def test_kswapd_wakes_below_low_and_stops_above_high():
    a = PageAllocator(8192, min_free_kbytes=2048)
    wakes = []
    a.on_kswapd_wake = lambda: wakes.append(a.nr_free)
    held = a.alloc(8192 - 641, GFP_KERNEL, "x")   # free 641 > low: no wake
    assert wakes == [] and not a.kswapd_wanted
    held += a.alloc(1, GFP_KERNEL, "x")           # found 641 free: 641-1 = 640 is not < low
    assert wakes == []
    held += a.alloc(1, GFP_KERNEL, "x")           # found 640 <= low: fast path misses, wake
    assert wakes == [640] and a.kswapd_wanted     # callback runs before the page is taken
    held += a.alloc(1, GFP_KERNEL, "x")
    assert wakes == [640]                          # already awake: no second notification
    assert not a.kswapd_should_stop()
    a.kswapd_sleep()
    a.free(held[:130])                             # free = 638 + 130 = 768: not above high
    assert a.nr_free == 768 and not a.kswapd_should_stop()
    a.free(held[130:131])                          # 769 > high 768: balanced
    assert a.kswapd_should_stop()
    a.free(held[131:])
    assert a.snapshot()["kswapd"]["wakeups"] == 1
    # GFP without KSWAPD_RECLAIM never wakes it, even on failure.
    b = PageAllocator(1024)
    drain(b, Gfp.DIRECT_RECLAIM)
    assert not b.kswapd_wanted


def test_direct_reclaim_throttle_at_half_min():
    a = PageAllocator(8192, min_free_kbytes=2048)
    with a.pf_memalloc():
        held = a.alloc(8192 - 257, GFP_KERNEL, "x")
    assert a.nr_free == 257 and not a.should_throttle_direct_reclaim()
    held += a.alloc(1, GFP_ATOMIC, "x")
    assert a.nr_free == 256                        # free <= 512/2: throttled
    assert a.should_throttle_direct_reclaim()
    assert not a.should_throttle_direct_reclaim(kthread=True)
    a.zone_reclaimable_pages = lambda: 0           # nothing reclaimable: do not throttle forever
    assert not a.should_throttle_direct_reclaim()
    a.free(held)


def test_double_free_and_foreign_pages_raise():
    a = PageAllocator(1024)
    b = PageAllocator(1024)
    p = a.alloc(2, GFP_KERNEL, "x")
    a.free(p[:1])
    with pytest.raises(BadPageError, match="double free of pfn 0"):
        a.free(p[:1])
    with pytest.raises(BadPageError, match="not from this allocator"):
        a.free(b.alloc(1, GFP_KERNEL, "y"))
    assert a.nr_free == 1023 and a.owner_pages() == {"x": 1}


def test_counters_owners_and_snapshot_are_plain_json():
    a = PageAllocator(1024)
    rx = a.alloc(3, GFP_ATOMIC, "rx")
    sk = a.alloc(2, GFP_KERNEL, "sk:udp:198.18.0.2:2049")
    a.free(rx[:1])
    assert a.owner_pages() == {"rx": 2, "sk:udp:198.18.0.2:2049": 2}
    a.vmstat["pswpout"] += 5                       # cold counters are written through the dict
    snap = json.loads(json.dumps(a.snapshot()))
    assert snap["vmstat"]["nr_free_pages"] == 1020
    assert snap["vmstat"]["pgalloc_normal"] == 5 and snap["vmstat"]["pgfree"] == 1
    assert snap["vmstat"]["pswpout"] == 5
    assert snap["zoneinfo"] == {"free": 1020, "min": 64, "low": 80, "high": 96, "managed": 1024,
                                "min_free_kbytes": 256, "watermark_scale_factor": 10}
    assert snap["reserve"]["nr_free_lowwater"] == 1019
    a.free(rx[1:] + sk)
    assert a.nr_free == a.nr_pages and a.owner_pages() == {}


def test_memalloc_socks_counter():
    a = PageAllocator(1024)
    assert not a.sk_memalloc_socks()
    a.sk_memalloc_inc()
    assert a.memalloc_socks == 1 and a.sk_memalloc_socks()
    a.sk_memalloc_dec()
    with pytest.raises(AssertionError, match="unbalanced"):
        a.sk_memalloc_dec()
