"""SkBuff: a frame's bytes and the pool pages that pay for them.

Invariant: an SkBuff holds the pages of exactly one ``alloc()`` (plus, for a reassembled
datagram, the fragments chained on ``frag_list``), and ``free()`` returns all of them to the
allocator exactly once; a second ``free()`` raises. ``pfmemalloc`` is read from this buffer's own
pages (prep_new_page's tag), never copied from another buffer (``copy()`` included) -- except
that a reassembled head is pfmemalloc if any fragment in its chain is (see ipfrag.py for why).

``truesize`` is what a socket is charged: pages x 4096 plus ``SKB_TRUESIZE_OVERHEAD``, the
x86_64 SKB_DATA_ALIGN(sizeof(struct sk_buff)) + SKB_DATA_ALIGN(sizeof(struct skb_shared_info))
= 256 + 320 bytes.

The payload bytes live in Python memory (the frame as the device handed it over); the pages are
the accounting: what the frame would occupy in a kernel's page pool.
"""

from __future__ import annotations

from ...bugs import BUGS as _BUGS

PAGE_SIZE = 4096
SKB_TRUESIZE_OVERHEAD = 576


class SkBuff:
    __slots__ = ("data", "pages", "pfmemalloc", "truesize", "rx", "frag_list", "csum_unnecessary",
                 "_alloc")

    def __init__(self, alloc, data, pages: list, rx: bool) -> None:
        self._alloc = alloc
        self.data = data
        self.pages = pages
        self.pfmemalloc = pages[0].pfmemalloc      # one alloc() call: every page has one tag
        self.truesize = len(pages) * PAGE_SIZE + SKB_TRUESIZE_OVERHEAD
        self.rx = rx
        self.frag_list = None
        self.csum_unnecessary = False

    def chain(self, frags: list["SkBuff"]) -> None:
        """Make this the head of a reassembled datagram holding ``frags`` (ip_frag_reasm)."""
        self.frag_list = frags
        for f in frags:
            self.truesize += f.truesize
            if f.pfmemalloc:
                self.pfmemalloc = True

    def copy(self, data, gfp: int, owner: str) -> "SkBuff | None":
        """skb_copy(): a new buffer holding ``data`` in fresh pages allocated at the copier's
        ``gfp``; None if the allocator refuses. Its pfmemalloc tag is its own allocation's
        (since "net: Don't copy pfmemalloc flag in __copy_skb_header()", 2015) -- unless
        bugs.copy_inherits_pfmemalloc puts back the copying of the source's flag."""
        alloc = self._alloc
        pages = alloc.alloc((len(data) + 4095) >> 12 or 1, gfp, owner)
        if pages is None:
            return None
        c = SkBuff(alloc, data, pages, self.rx)
        c.csum_unnecessary = self.csum_unnecessary
        if self.pfmemalloc and _BUGS.copy_inherits_pfmemalloc:
            c.pfmemalloc = True
        return c

    def free(self) -> None:
        pages = self.pages
        if pages is None:
            raise AssertionError("double free of an SkBuff")
        self.pages = None
        self._alloc.free(pages)
        if self.frag_list:
            for f in self.frag_list:
                f.free()
            self.frag_list = None
