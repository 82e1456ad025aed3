"""The socket base every protocol's socket extends (struct sock, net/core/sock.c, net/core/filter.c).

Invariants owned here:
- Receive memory is charged by truesize: ``rmem_alloc`` == Σ truesize of the buffers the socket
  holds; ``rcvbuf`` is the limit each protocol's enqueue checks (UDP: one datagram may overshoot).
- ``sk_filter`` is the ONE place a pfmemalloc buffer is refused (sk_filter_trim_cap): a buffer
  allocated from the reserve reaches only a socket with SOCK_MEMALLOC; any other socket's buffer
  is refused with reason ``PFMEMALLOC`` and counted once in TcpExt ``PFMemallocDrop`` (and the
  stack's ``counters["PFMemallocDrop"]``) -- unless the stack's ``policy.pfmemalloc_demux_drop``
  is off, to show what goes wrong without it. Every receive path of every protocol, fast paths
  included, calls it before queueing; the caller frees the buffer and counts its own protocol's
  error counters.
- ``sk_set_memalloc``/``sk_clear_memalloc`` move ``alloc.memalloc_socks`` by exactly one each,
  and only on a change of the flag (sk_set_memalloc / sk_clear_memalloc, net/core/sock.c).
- ``sk_gfp_mask(gfp)`` adds __GFP_MEMALLOC for a SOCK_MEMALLOC socket; ``sk_allocation`` is the
  socket's own context (GFP_NOWAIT here: sends never block); ``sk_frag``/``sk_use_task_frag``
  are the socket's own page-fragment cache (net/core/page_frag.py).
- A task blocked on the socket waits on ``wait_key``; ``sk_data_ready()`` wakes it.
"""

from __future__ import annotations

from ...mm.gfp import GFP_NOWAIT, Gfp

SK_RMEM_DEFAULT = 212992          # net.core.rmem_default
_MEMALLOC_MASK: dict = {}         # sk_gfp_mask's results (IntFlag operators are Python calls)


class Sock:
    """State shared by every socket of the stack. Subclasses add their protocol's addressing,
    queues and calls; they call ``sk_filter`` on every received buffer before queueing it."""

    kind = "sock"

    def __init__(self, stack) -> None:
        self.stack = stack
        self.rcvbuf = SK_RMEM_DEFAULT
        self.rmem_alloc = 0
        self.drops = 0
        self.memalloc = False                            # SOCK_MEMALLOC
        # sk->sk_allocation: a non-blocking context here (see net/ipv4/ip_output.py).
        self.sk_allocation = GFP_NOWAIT
        # sk_page_frag() (net/core/page_frag.py): use the sending task's task_frag unless
        # cleared, as sockets written from reclaim (NFS, NBD, CIFS) do since 2022; sk_frag is the
        # socket's own.
        self.sk_use_task_frag = True
        self.sk_frag = None
        self.closed = False
        self.owner = f"sk:{self.kind}:unbound"
        self.wait_key = (f"{self.kind}-rx", id(self))
        self._waiters = 0

    # -- SOCK_MEMALLOC ---------------------------------------------------------------------
    def sk_set_memalloc(self) -> None:
        """SOCK_MEMALLOC on; the socket's allocations add __GFP_MEMALLOC (sk_gfp_mask), and so
        does ``sk_allocation`` (``sk->sk_allocation |= __GFP_MEMALLOC``)."""
        if not self.memalloc:
            self.memalloc = True
            self.sk_allocation = self.sk_allocation | Gfp.MEMALLOC
            self.stack.alloc.sk_memalloc_inc()

    def sk_clear_memalloc(self) -> None:
        """SOCK_MEMALLOC off. Linux also reclaims the socket's over-limit memory; the queue here
        stays until read."""
        if self.memalloc:
            self.memalloc = False
            self.sk_allocation = self.sk_allocation & ~Gfp.MEMALLOC
            self.stack.alloc.sk_memalloc_dec()

    def sk_gfp_mask(self, gfp: int) -> int:
        if not self.memalloc:
            return gfp
        m = _MEMALLOC_MASK.get(gfp)             # gfp | __GFP_MEMALLOC, once per mask
        if m is None:
            m = _MEMALLOC_MASK[gfp] = gfp | Gfp.MEMALLOC
        return m

    # -- receive ---------------------------------------------------------------------------
    def sk_filter(self, skb) -> str | None:
        """sk_filter_trim_cap's pfmemalloc check: None to accept ``skb``, else the drop reason
        (the caller frees the buffer with it). The only place PFMemallocDrop is counted."""
        if skb.pfmemalloc and not self.memalloc:
            st = self.stack
            if st.policy.pfmemalloc_demux_drop:
                st.snmp["TcpExt"]["PFMemallocDrop"] += 1
                st.counters["PFMemallocDrop"] += 1
                return "PFMEMALLOC"
        return None

    def sk_data_ready(self) -> None:
        """Wake the tasks waiting to read (sock_def_readable)."""
        if self._waiters and self.stack.sched is not None:
            self.stack.sched.wake(self.wait_key)

    def snapshot(self) -> dict:
        return {"rcvbuf": self.rcvbuf, "rmem_alloc": self.rmem_alloc, "drops": self.drops,
                "memalloc": self.memalloc}
