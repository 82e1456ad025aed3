"""UDP sockets: bind/connect/sendto/recvfrom over the stack, with Linux's receive accounting.

Invariants owned here:
- ``rmem_alloc`` == Σ truesize of the datagrams queued on the socket; a datagram is admitted
  only while ``rmem_alloc <= rcvbuf`` before it (__udp_enqueue_schedule_skb: one datagram may
  overshoot), otherwise dropped SOCKET_RCVBUFF (Udp RcvbufErrors + InErrors, ``drops``).
  The limit applies to every socket, SOCK_MEMALLOC ones included.
- A pfmemalloc datagram is queued only on a socket with SOCK_MEMALLOC (sk_filter_trim_cap);
  otherwise dropped PFMEMALLOC and counted TcpExt PFMemallocDrop -- unless the stack's
  ``policy.pfmemalloc_demux_drop`` is off (to show why the drop is needed).
- A queued datagram's pages are freed when the application reads it (``recvfrom``) or the
  socket is closed (SOCKET_CLOSE).
- ``sk_set_memalloc``/``sk_clear_memalloc`` move ``alloc.memalloc_socks`` by exactly one each,
  and only on a change of the flag.

Errors to the caller are values, as in smoltcp: ``sendto`` returns the bytes sent or a negative
errno (-ENOBUFS: no transmit buffer at this socket's GFP context; -EMSGSIZE; -ENETUNREACH).
"""

from __future__ import annotations

import errno
import socket as _pysocket
from collections import deque

from ..mm.gfp import GFP_NOWAIT, Gfp
from ..tasks import TIMEOUT, WaitEvent

SK_RMEM_DEFAULT = 212992          # net.core.rmem_default
EPHEMERAL_PORTS = (32768, 60999)  # net.ipv4.ip_local_port_range
UDP_MAX_PAYLOAD = 65535 - 20 - 8
_MEMALLOC_MASK: dict = {}         # sk_gfp_mask's results (IntFlag operators are Python calls)


class UdpSocket:
    def __init__(self, stack) -> None:
        self.stack = stack
        self.local: tuple[bytes, int] | None = None      # (ip or 0.0.0.0, port)
        self.remote: tuple[bytes, int] | None = None
        self.rcvbuf = SK_RMEM_DEFAULT
        self.rmem_alloc = 0
        self.drops = 0
        self.memalloc = False                            # SOCK_MEMALLOC
        # sk->sk_allocation: a non-blocking context here (see stack.py's transmit notes).
        self.sk_allocation = GFP_NOWAIT
        # sk_page_frag() (net/page_frag.py): use the sending task's task_frag unless cleared, as
        # sockets written from reclaim (NFS, NBD, CIFS) do since 2022; sk_frag is the socket's own.
        self.sk_use_task_frag = True
        self.sk_frag = None
        self.rxq: deque = deque()                        # (skb, payload, (src_ip, sport))
        self.closed = False
        self.owner = "sk:udp:unbound"
        self.wait_key = ("udp-rx", id(self))
        self._waiters = 0
        self._wait_ev = None                             # cached untimed WaitEvent (recvfrom_wait)
        self.counters = {"rx_datagrams": 0, "tx_datagrams": 0, "tx_nobufs": 0}

    # -- setup ---------------------------------------------------------------------------
    def bind(self, addr: tuple[str, int]) -> None:
        ip = _pysocket.inet_aton(addr[0] or "0.0.0.0")
        self.stack._udp_bind(self, ip, addr[1])

    def connect(self, addr: tuple[str, int]) -> None:
        if self.local is None:
            self.stack._udp_bind(self, b"\0\0\0\0", 0)
        self.remote = (_pysocket.inet_aton(addr[0]), addr[1])

    def getsockname(self) -> tuple[str, int] | None:
        return None if self.local is None else (_pysocket.inet_ntoa(self.local[0]), self.local[1])

    def sk_set_memalloc(self) -> None:
        """SOCK_MEMALLOC on; the socket's allocations add __GFP_MEMALLOC (sk_gfp_mask)."""
        if not self.memalloc:
            self.memalloc = True
            self.stack.alloc.sk_memalloc_inc()

    def sk_clear_memalloc(self) -> None:
        """SOCK_MEMALLOC off. Linux also reclaims the socket's over-limit memory; a UDP socket
        here holds none beyond its queue, which stays until read."""
        if self.memalloc:
            self.memalloc = False
            self.stack.alloc.sk_memalloc_dec()

    def sk_gfp_mask(self, gfp: int) -> int:
        if not self.memalloc:
            return gfp
        m = _MEMALLOC_MASK.get(gfp)             # gfp | __GFP_MEMALLOC, once per mask
        if m is None:
            m = _MEMALLOC_MASK[gfp] = gfp | Gfp.MEMALLOC
        return m

    # -- transmit ------------------------------------------------------------------------
    def sendto(self, data, addr: tuple[str, int], now: float) -> int:
        return self._send(data, (_pysocket.inet_aton(addr[0]), addr[1]), now)

    def send(self, data, now: float) -> int:
        if self.remote is None:
            return -errno.EDESTADDRREQ
        return self._send(data, self.remote, now)

    def _send(self, data, dst: tuple[bytes, int], now: float) -> int:
        if self.closed:
            return -errno.EBADF
        if len(data) > UDP_MAX_PAYLOAD:
            return -errno.EMSGSIZE
        if self.local is None:
            self.stack._udp_bind(self, b"\0\0\0\0", 0)
        rc = self.stack._udp_output(self, dst, data, now)
        if rc >= 0:
            self.counters["tx_datagrams"] += 1
            return len(data)
        if rc == -errno.ENOBUFS:
            self.counters["tx_nobufs"] += 1
        return rc

    # -- receive -------------------------------------------------------------------------
    def _enqueue(self, skb, payload, src: tuple[bytes, int]) -> None:
        """Called by the demux after the pfmemalloc and rcvbuf checks passed."""
        self.rmem_alloc += skb.truesize
        alloc = self.stack.alloc                    # the socket holds these pages now
        alloc.reassign(skb.pages, self.owner)
        if skb.frag_list:
            for f in skb.frag_list:
                alloc.reassign(f.pages, self.owner)
        self.rxq.append((skb, payload, src))
        self.counters["rx_datagrams"] += 1
        if self.stack.fate_port:
            self.stack.record_fate(skb.data, "queued:" + self.owner)
        if self._waiters and self.stack.sched is not None:
            self.stack.sched.wake(self.wait_key)

    def recvfrom(self, bufsize: int = 65535) -> tuple[bytes, tuple[str, int]] | None:
        """Non-blocking: the oldest datagram (truncated to ``bufsize``) or None when empty."""
        if not self.rxq:
            return None
        skb, payload, src = self.rxq.popleft()
        data = bytes(payload[:bufsize])
        self.rmem_alloc -= skb.truesize
        st = self.stack
        st.snmp["Udp"]["InDatagrams"] += 1              # Linux counts it in udp_recvmsg
        st.consume_skb(skb, "udp_read")
        return data, (_pysocket.inet_ntoa(src[0]), src[1])

    def recvfrom_wait(self, bufsize: int = 65535, until: float | None = None):
        """Task-friendly blocking receive: ``data, addr = yield from sk.recvfrom_wait()``.
        Yields ``WaitEvent`` while the queue is empty; returns None at ``until``."""
        while not self.rxq:
            if self.closed:
                return None
            if until is None:
                # One wait per batch of datagrams: the untimed WaitEvent is built once per owner
                # (the scheduler never changes a Wait it is given).
                w = self._wait_ev
                if w is None or w.reason[9:] != self.owner:
                    w = self._wait_ev = WaitEvent(self.wait_key, reason=f"recvfrom {self.owner}")
            else:
                w = WaitEvent(self.wait_key, until=until, reason=f"recvfrom {self.owner}")
            self._waiters += 1
            try:
                got = yield w
            finally:
                self._waiters -= 1
            if got is TIMEOUT:
                return None
        return self.recvfrom(bufsize)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        st = self.stack
        while self.rxq:
            skb, _p, _s = self.rxq.popleft()
            self.rmem_alloc -= skb.truesize
            st.kfree_skb(skb, "SOCKET_CLOSE")
        self.sk_clear_memalloc()
        st._udp_unbind(self)
        if self._waiters and st.sched is not None:
            st.sched.wake(self.wait_key)

    def snapshot(self) -> dict:
        return {"local": self.getsockname(), "rcvbuf": self.rcvbuf, "rmem_alloc": self.rmem_alloc,
                "drops": self.drops, "memalloc": self.memalloc, "queued": len(self.rxq),
                **self.counters}
