"""Switches that re-introduce the kernel's historical failures (kernel-mechanism.md §6).

Each attribute of ``BUGS`` is False by default: the agent behaves as the fixed kernel does. A
switch set to True puts back one bug, exactly where it lived; tests/test_kernel_history.py has one
test per switch showing the failure with the switch on and its absence with it off.

    stale_pfmemalloc_tag      (§6.1, 2013) the allocator does not clear a page's pfmemalloc tag when
                              it hands the page out again in an ordinary context (as compaction
                              kept it): a non-memalloc socket drops the same datagram forever.
                              Hook: mm/page_alloc.py ``alloc()``.
    copy_inherits_pfmemalloc  (§6.2) a copy of a buffer (skb_copy: fresh pages) takes the source's
                              pfmemalloc tag (__copy_skb_header copied the flag) although its own
                              allocation was ordinary. Hook: net/core/skbuff.py ``SkBuff.copy()``.
    shared_task_frag          (§6.3, NBD 2019, NFS/CIFS 2022) sk_page_frag() ignores
                              ``sk_use_task_frag``: a send made from reclaim shares the interrupted
                              task's current->task_frag and overwrites its half-built frame.
                              Hook: net/core/page_frag.py ``sk_page_frag()``.
    throttle_unreclaimable    (§6.4, 2024) allow_direct_reclaim() counts a zone with nothing
                              reclaimable: a direct reclaimer below min/2 is throttled forever and
                              never reaches the OOM step. Hook: mm/page_alloc.py
                              ``allow_direct_reclaim()``.
    pfmemalloc_drop_unnamed   (§6.5, until 2025) a pfmemalloc frame refused by the protocol filter
                              (skb_pfmemalloc_protocol) is counted UNHANDLED_PROTO, not PFMEMALLOC.
                              Hook: net/core/dev.py ``netif_receive_skb()``.
    nfs_reconnect_unmarked    (§6.6, until 2022) the NFS transport does not set SOCK_MEMALLOC again on
                              the socket made by a reconnect: swap over NFS stalls under pressure.
                              Hook: net/sunrpc/xprtsock.py ``XsUdp._connect()``.

Cost: a hook is one attribute read of this module-level object, placed only on the path the bug
lived on (never in the per-frame fast path for the ordinary case).

``CLIENT_AGENT_BUGS=name[,name...]`` (or ``all``) in the environment switches bugs on at import,
e.g. to show that a regression test fails:  CLIENT_AGENT_BUGS=stale_pfmemalloc_tag pytest ...
"""

from __future__ import annotations

import contextlib
import os

NAMES = (
    "stale_pfmemalloc_tag",
    "copy_inherits_pfmemalloc",
    "shared_task_frag",
    "throttle_unreclaimable",
    "pfmemalloc_drop_unnamed",
    "nfs_reconnect_unmarked",
)


class Bugs:
    __slots__ = NAMES

    def __init__(self) -> None:
        for name in NAMES:
            setattr(self, name, False)

    def enabled(self) -> list[str]:
        return [name for name in NAMES if getattr(self, name)]

    def __repr__(self) -> str:
        return f"<Bugs on={self.enabled()}>"


BUGS = Bugs()


def _check(names) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown bug switch(es) {unknown}; known: {', '.join(NAMES)}")


@contextlib.contextmanager
def reintroduced(*names: str):
    """``with reintroduced("stale_pfmemalloc_tag"):`` -- the named bugs are on inside the block,
    and every switch is put back as it was on exit (even if the block raises)."""
    _check(names)
    saved = {n: getattr(BUGS, n) for n in NAMES}
    try:
        for n in names:
            setattr(BUGS, n, True)
        yield BUGS
    finally:
        for n, v in saved.items():
            setattr(BUGS, n, v)


def _from_env() -> None:
    spec = os.environ.get("CLIENT_AGENT_BUGS", "").strip()
    if not spec:
        return
    names = NAMES if spec == "all" else tuple(s.strip() for s in spec.split(",") if s.strip())
    _check(names)
    for n in names:
        setattr(BUGS, n, True)


_from_env()
