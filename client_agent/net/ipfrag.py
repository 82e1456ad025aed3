"""IPv4 reassembly (net/ipv4/ip_fragment.c + inet_fragment.c), with its memory charged.

Invariants owned here:
- A queued fragment keeps its receive buffer (and so its pages) until the datagram completes,
  the queue is killed, or ``ipfrag_time_s`` passes -- the pool pays for every byte waiting here.
- ``mem`` == Σ truesize of queued fragments; no fragment is queued while ``mem`` exceeds
  ``high_thresh_bytes`` (inet_frag_find() refuses a queue, the fragment is dropped
  FRAG_MEM_LIMIT and ReasmFails counted). No eviction: queues leave by completing or timing out.
- Overlap (RFC 5722, as Linux since 2018): a fragment wholly inside one already queued is a
  duplicate (DUP_FRAG, queue kept); any other overlap kills the whole queue (FRAG_OVERLAP for
  the incoming and every queued fragment, ReasmOverlaps + ReasmFails).
- Timeout: each fragment of an expired queue is dropped FRAG_REASM_TIMEOUT; ReasmTimeout and
  ReasmFails count once per queue. (No ICMP time-exceeded is sent.)
- ``queues`` is ordered by expiry (insertion order; a reinitialised queue is moved to the end),
  so the next deadline is the first queue's and timers stop at the first unexpired one.
- ipfrag_max_dist: a per-source counter of fragments; when more than ``max_dist`` fragments from
  that source arrived since this queue's last one, the queue is reinitialised (its fragments
  dropped FRAG_TOO_FAR, ReasmFails) before the new fragment is queued.

pfmemalloc of the reassembled datagram: Linux keeps the fragments' skbs on the head's
frag_list (no copy, so no re-derived tag) and later checks only the head's own flag in
sk_filter_trim_cap(); which skb is the head depends on arrival order (inet_frag_reasm_prepare
morphs the completing skb into the head). That lets reserve pages carried by a non-head fragment
reach a socket without SOCK_MEMALLOC. The testbed is explicit and conservative instead: the
datagram is pfmemalloc if ANY fragment is (SkBuff.chain), so reserve memory never reaches a
socket that is not entitled to it, whatever the arrival order.

``linearize`` (testbed option, off by default): a completed datagram is copied into one fresh
buffer (skb_copy, as a path needing linear data does) allocated at the receive context, and the
fragments are freed at once. The copy's pfmemalloc tag is its own allocation's (SkBuff.copy) --
the path on which bugs.copy_inherits_pfmemalloc shows.
"""

from __future__ import annotations

from bisect import insort

from ..mm.gfp import GFP_ATOMIC, Gfp

IPFRAG_HIGH_THRESH = 4 * 1024 * 1024   # net.ipv4.ipfrag_high_thresh
IPFRAG_TIME_S = 30.0                   # net.ipv4.ipfrag_time
IPFRAG_MAX_DIST = 64                   # net.ipv4.ipfrag_max_dist
IP_MAX_PAYLOAD = 65535 - 20


class FragQueue:
    __slots__ = ("key", "frags", "length", "last_in", "meat", "expires", "rid", "hlen")

    def __init__(self, key, expires: float, rid: int) -> None:
        self.key = key
        self.frags: list = []          # sorted (offset, end, seq, skb, payload)
        self.length = 0                # known end of the datagram (max end seen, or the last's)
        self.last_in = False
        self.meat = 0
        self.expires = expires
        self.rid = rid
        self.hlen = 20


class Reassembler:
    def __init__(self, stack, *, high_thresh_bytes: int = IPFRAG_HIGH_THRESH,
                 time_s: float = IPFRAG_TIME_S, max_dist: int = IPFRAG_MAX_DIST) -> None:
        self.stack = stack
        self.ip = stack.snmp["Ip"]
        self.high_thresh_bytes = high_thresh_bytes
        self.time_s = time_s
        self.max_dist = max_dist
        self.queues: dict = {}
        self.linearize = False
        self.mem = 0
        self.peer_rid: dict[bytes, int] = {}
        self._seq = 0

    def defrag(self, skb, ip, now: float):
        """Queue a fragment. Returns (head_skb, payload bytes) when the datagram completes,
        else None (queued or dropped -- already counted)."""
        st = self.stack
        ipc = self.ip
        ipc["ReasmReqds"] += 1
        if self.mem > self.high_thresh_bytes:
            ipc["ReasmFails"] += 1
            st.kfree_skb(skb, "FRAG_MEM_LIMIT")
            return None
        key = (ip.src, ip.dst, ip.proto, ip.ident)
        q = self.queues.get(key)
        rid = self.peer_rid.get(ip.src, 0) + 1
        self.peer_rid[ip.src] = rid
        if q is None:
            q = FragQueue(key, now + self.time_s, rid)
            self.queues[key] = q
        else:
            if self.max_dist and q.frags and rid - q.rid > self.max_dist:
                ipc["ReasmFails"] += 1
                self._purge(q, "FRAG_TOO_FAR")
                q.length = q.meat = 0
                q.last_in = False
                q.expires = now + self.time_s
                del self.queues[key]            # keep the dict ordered by expiry
                self.queues[key] = q
            q.rid = rid
        payload = ip.payload
        offset = ip.frag_off
        end = offset + len(payload)
        if ip.more_frags:
            end &= ~7                           # non-last fragments carry multiples of 8
            if end > q.length:
                if q.last_in:
                    return self._kill(q, skb, "FRAG_INVALID")
                q.length = end
        else:
            if end < q.length or (q.last_in and end != q.length):
                return self._kill(q, skb, "FRAG_INVALID")
            q.last_in = True
            q.length = end
        if end <= offset:
            return self._kill(q, skb, "FRAG_INVALID")
        if end > IP_MAX_PAYLOAD:
            return self._kill(q, skb, "PKT_TOO_BIG")
        for o, e, _s, _k, _p in q.frags:
            if o < end and offset < e:
                if o <= offset and end <= e:
                    st.kfree_skb(skb, "DUP_FRAG")
                    return None
                ipc["ReasmOverlaps"] += 1
                return self._kill(q, skb, "FRAG_OVERLAP")
        if offset == 0:
            q.hlen = ip.hlen
        self._seq += 1
        insort(q.frags, (offset, end, self._seq, skb, payload[: end - offset]))
        st.alloc.reassign(skb.pages, "ipfrag")     # held by the reassembly queue now
        q.meat += end - offset
        self.mem += skb.truesize
        if not (q.last_in and q.meat == q.length):
            return None
        # Complete: the first fragment becomes the head; the others hang on its frag_list.
        del self.queues[key]
        frags = q.frags
        for f in frags:
            self.mem -= f[3].truesize
        head = frags[0][3]
        others = [f[3] for f in frags[1:]]
        data = b"".join(bytes(f[4]) for f in frags)
        if self.linearize:
            return self._linearize(head, others, data)
        head.chain(others)
        st.count_rx_fate("ip_frag_merged", len(others))
        ipc["ReasmOKs"] += 1
        return head, data

    def _linearize(self, head, others: list, data: bytes):
        """One fresh buffer for the whole datagram; it carries the head's rx fate."""
        st = self.stack
        gfp = GFP_ATOMIC | Gfp.MEMALLOC if st.alloc.memalloc_socks else GFP_ATOMIC
        copy = head.copy(data, gfp, "rx")
        if copy is None:                        # ip_frag_reasm: out_nomem
            self.ip["ReasmFails"] += 1
            for f in [head] + others:
                st.kfree_skb(f, "NOMEM")
            return None
        head.free()
        for f in others:
            f.free()
        st.count_rx_fate("ip_frag_merged", len(others))
        self.ip["ReasmOKs"] += 1
        return copy, data

    def _kill(self, q: FragQueue, skb, reason: str):
        self.ip["ReasmFails"] += 1
        self._purge(q, reason)
        del self.queues[q.key]
        self.stack.kfree_skb(skb, reason)
        return None

    def _purge(self, q: FragQueue, reason: str) -> None:
        for f in q.frags:
            self.mem -= f[3].truesize
            self.stack.kfree_skb(f[3], reason)
        q.frags = []

    def run_timers(self, now: float) -> None:
        expired = []
        for q in self.queues.values():          # insertion order is expiry order
            if q.expires > now:
                break
            expired.append(q)
        for q in expired:
            del self.queues[q.key]
            self.ip["ReasmTimeout"] += 1
            self.ip["ReasmFails"] += 1
            self._purge(q, "FRAG_REASM_TIMEOUT")

    def next_deadline(self) -> float | None:
        for q in self.queues.values():
            return q.expires
        return None

    def queued(self) -> int:
        return sum(len(q.frags) for q in self.queues.values())
