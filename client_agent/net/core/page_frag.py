"""Transmit page-fragment caches (struct page_frag, sk_page_frag()): a small model for §6.3.

Linux copies sendmsg() data into a page-fragment cache -- ``current->task_frag`` (one per task)
or the socket's own ``sk->sk_frag`` -- and the skb references the bytes there until the frame is
sent. Sharing the task's cache is safe only while nothing else can write into it during one send.
Memory reclaim breaks that: an allocation made half-way through a send may enter direct reclaim,
which (swap over NBD/NFS, CIFS writeback) sends on another socket *in the same task* and, with
the same ``current->task_frag``, writes over the bytes of the frame still being built. Fixes:
"net: fix sk_page_frag() recursion from memory reclaim" (2019, NBD) and ``sk_use_task_frag``
(2022; cleared by the NFS, NBD, CIFS... sockets).

What is modelled: a cache is one pool page (accounted in the PageAllocator) plus a 4 KiB
bytearray and an offset; a send copies its data into the cache, in two halves with a point in
between where an allocation may enter reclaim (``reenter``), then advances the offset and hands
the bytes to the socket. The interleaving is simplified -- Linux's exact steps are refill, copy,
skb_fill_page_desc, offset += copy -- but the failure is the same: the inner send reuses the
offset the outer one has not advanced yet. The agent's own transmit path builds frames in Python
memory and does not use these caches; tests/test_kernel_history.py drives this model and sends
the resulting bytes through the real stack.
"""

from __future__ import annotations

import errno

from ...bugs import BUGS as _BUGS
from ...mm.gfp import GFP_ATOMIC

PAGE_SIZE = 4096


class PageFrag:
    __slots__ = ("alloc", "owner", "page", "buf", "offset")

    def __init__(self, alloc, owner: str) -> None:
        self.alloc = alloc
        self.owner = owner
        self.page = None
        self.buf = bytearray(PAGE_SIZE)
        self.offset = 0

    def refill(self, n: int, gfp: int = GFP_ATOMIC) -> bool:
        """skb_page_frag_refill(): room for ``n`` bytes at ``offset`` (a new page if needed)."""
        if n > PAGE_SIZE:
            raise ValueError(f"a fragment holds at most {PAGE_SIZE} bytes, asked {n}")
        if self.page is not None and self.offset + n <= PAGE_SIZE:
            return True
        pages = self.alloc.alloc(1, gfp, self.owner)
        if pages is None:
            return False
        self.release()
        self.page = pages[0]
        self.offset = 0
        return True

    def release(self) -> None:
        if self.page is not None:
            self.alloc.free([self.page])
            self.page = None


class Current:
    """The sending task as sk_page_frag() sees it: its ``task_frag``."""

    def __init__(self, alloc, name: str = "task") -> None:
        self.name = name
        self.task_frag = PageFrag(alloc, f"task_frag:{name}")


def sk_page_frag(sk, current: Current) -> PageFrag:
    """The task's cache unless the socket opted out (bugs.shared_task_frag: opt-out ignored)."""
    if sk.sk_use_task_frag or _BUGS.shared_task_frag:
        return current.task_frag
    pf = sk.sk_frag
    if pf is None:
        pf = sk.sk_frag = PageFrag(sk.stack.alloc, f"sk_frag:{sk.owner}")
    return pf


def frag_sendto(sk, current: Current, data: bytes, addr, now: float, reenter=None) -> int:
    """sendmsg through the page-frag cache: copy in two halves (``reenter()`` in between stands
    for an allocation that entered reclaim), advance the offset, send the cached bytes."""
    pf = sk_page_frag(sk, current)
    n = len(data)
    if not pf.refill(n):
        return -errno.ENOBUFS
    off = pf.offset
    half = n // 2
    pf.buf[off:off + half] = data[:half]
    if reenter is not None:
        reenter()
    pf.buf[off + half:off + n] = data[half:]
    pf.offset = off + n
    return sk.sendto(bytes(pf.buf[off:off + n]), addr, now)
