"""IPv4 reassembly (net/ipv4/ip_fragment.c + inet_fragment.c), with its memory charged.

What Linux does, and what this module does the same way:
- ip_defrag() -> ip_find() -> inet_frag_find(): while ``mem`` (frag_mem_limit) exceeds
  ``high_thresh_bytes`` (net.ipv4.ipfrag_high_thresh, 4 MiB), or high_thresh is 0, no queue is
  found or created, for a new datagram or a known one: the fragment is dropped and ReasmFails
  counted (Linux: kfree_skb, NOT_SPECIFIED; here FRAG_MEM_LIMIT). ``mem`` is charged where
  Linux charges it: ``IPQ_QSIZE`` when a queue is allocated (inet_frag_alloc: f->qsize) and each
  queued fragment's truesize (ip_frag_queue: add_frag_mem_limit); both are given back when
  the queue ends. There is no eviction (the evictor and ipfrag_low_thresh are gone since 4.17):
  queues leave by completing, being killed, or timing out.
- A queued fragment keeps its receive buffer (and so its pages, owner "ipfrag") until the
  datagram completes, the queue is killed, or ``time_s`` (net.ipv4.ipfrag_time, 30 s) passes.
- Duplicates and overlaps (RFC 5722 + "net: ipv4: do not handle duplicate fragments as
  overlapping", 2019): inet_frag_queue_insert() keeps the queue as *runs* of contiguous
  fragments. A fragment ending beyond the last queued fragment (fragments_tail) overlaps if it
  starts before that fragment's end, is appended to the last run if it starts exactly there, or
  starts a new run. Any other fragment is compared against the runs: wholly inside one run it is
  a duplicate (IPFRAG_DUP: dropped DUP_FRAG, queue kept, no ReasmFails); touching a run otherwise
  it is an overlap (IPFRAG_OVERLAP: the whole queue is killed, ReasmOverlaps + ReasmFails).
  Only appends at the tail grow a run: a fragment filling a hole earlier in the datagram is a
  run of its own, so a resend spanning it and its neighbour is an overlap -- as in Linux.
- ip_frag_queue()'s length checks ("discard_qp"): a last fragment that disagrees with the known
  end, data beyond a known end, or an empty fragment kills the queue (ReasmFails).
- Timeout (ip_expire): each fragment of an expired queue is dropped FRAG_REASM_TIMEOUT;
  ReasmTimeout and ReasmFails count once per queue.
- ipfrag_max_dist (ip_frag_too_far): per source address an inet_peer counts the fragments
  queued from it (``rid``); when more than ``max_dist`` (64) arrived since a queue's last one,
  the queue is reinitialised (ip_frag_reinit: its fragments dropped FRAG_TOO_FAR, ReasmFails)
  before the new fragment is queued. ``max_dist`` 0 turns this off and creates no peers.
- The inet_peer table is bounded as net/ipv4/inetpeer.c bounds it: a peer is referenced by each
  queue from its source (ip4_frag_init .. ip4_frag_free) and cannot be freed while referenced;
  an unreferenced peer is freed once idle for a ttl that falls from inet_peer_maxttl (600 s)
  to inet_peer_minttl (120 s) as the table fills, and at once when the table holds
  ``peer_threshold`` (inet_peer_threshold, 65536 + 128) peers; at most PEER_MAX_GC (32) per
  new peer (inet_peer_gc).

Where this still differs from Linux:
- Drop reasons: Linux drops the incoming overlapping fragment NOT_SPECIFIED and purges the
  queue's fragments as consumed/FRAG_REASM_TIMEOUT; here all are FRAG_OVERLAP (drop.py). Over
  high_thresh Linux says NOT_SPECIFIED; here FRAG_MEM_LIMIT.
- inet_peer_gc frees only peers met on the rb-tree path of the lookup; here the oldest idle
  peers are the candidates (the same ttl rule). The peer table is kept here, not shared with
  ICMP rate limiting (which the agent does not do).
- IPQ_QSIZE is sizeof(struct ipq) worked out by hand for x86_64 6.x (192 bytes); it is charged to
  ``mem`` only, not to the page allocator (it is slab memory, not pages).
- No ICMP time-exceeded is sent on timeout; no ECN combination check (ip_frag_ecn_table).
- ``queues`` is ordered by expiry (insertion order; a reinitialised queue is moved to the end),
  so the next deadline is the first queue's and timers stop at the first unexpired one.

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

from bisect import bisect_right

from ...mm.gfp import GFP_ATOMIC, Gfp

IPFRAG_HIGH_THRESH = 4 * 1024 * 1024   # net.ipv4.ipfrag_high_thresh
IPFRAG_TIME_S = 30.0                   # net.ipv4.ipfrag_time
IPFRAG_MAX_DIST = 64                   # net.ipv4.ipfrag_max_dist
IP_MAX_PAYLOAD = 65535 - 20
IPQ_QSIZE = 192                        # sizeof(struct ipq), x86_64: inet_frags.qsize
INET_PEER_THRESHOLD = 65536 + 128      # inet_peer_threshold
INET_PEER_MINTTL_S = 120.0             # inet_peer_minttl
INET_PEER_MAXTTL_S = 600.0             # inet_peer_maxttl
PEER_MAX_GC = 32                       # inetpeer.c: peers freed per lookup at most

IPFRAG_OK, IPFRAG_DUP, IPFRAG_OVERLAP = 0, 1, 2   # inet_frag_queue_insert()


class InetPeer:
    """struct inet_peer, the part reassembly uses: ``rid`` and the references of queues."""
    __slots__ = ("rid", "refcnt", "dtime")

    def __init__(self, now: float) -> None:
        self.rid = 0
        self.refcnt = 0
        self.dtime = now


class FragQueue:
    __slots__ = ("key", "runs", "starts", "tail_end", "length", "last_in", "meat", "expires",
                 "rid", "hlen", "peer", "nfrags")

    def __init__(self, key, expires: float, peer: InetPeer | None) -> None:
        self.key = key
        # runs of contiguous fragments, in offset order: [start, end, [(skb, payload), ...]]
        self.runs: list = []
        self.starts: list[int] = []    # each run's start, for the binary search
        self.tail_end = 0              # end of fragments_tail (the last fragment appended)
        self.length = 0                # known end of the datagram (max end seen, or the last's)
        self.last_in = False
        self.meat = 0
        self.expires = expires
        self.rid = 0
        self.hlen = 20
        self.peer = peer
        self.nfrags = 0

    def insert(self, offset: int, end: int, frag) -> int:
        """inet_frag_queue_insert(): IPFRAG_OK (queued), IPFRAG_DUP or IPFRAG_OVERLAP."""
        runs = self.runs
        if not runs or self.tail_end < end:
            if runs and offset < self.tail_end:
                return IPFRAG_OVERLAP
            if runs and offset == self.tail_end:
                run = runs[-1]                  # fragrun_append_to_last
                run[1] = end
                run[2].append(frag)
            else:                               # fragrun_create
                runs.append([offset, end, [frag]])
                self.starts.append(offset)
            self.tail_end = end
        else:
            # Binary search among the runs. The runs are disjoint, so the one that may
            # hold [offset, end) is the last starting at or before ``offset``; any other run
            # it touches starts inside it.
            i = bisect_right(self.starts, offset) - 1
            if i >= 0 and offset < runs[i][1]:
                return IPFRAG_DUP if end <= runs[i][1] else IPFRAG_OVERLAP
            if i + 1 < len(runs) and runs[i + 1][0] < end:
                return IPFRAG_OVERLAP
            runs.insert(i + 1, [offset, end, [frag]])
            self.starts.insert(i + 1, offset)
        self.nfrags += 1
        return IPFRAG_OK

    def skbs(self):
        for run in self.runs:
            for skb, _p in run[2]:
                yield skb


class Reassembler:
    def __init__(self, stack, *, high_thresh_bytes: int = IPFRAG_HIGH_THRESH,
                 time_s: float = IPFRAG_TIME_S, max_dist: int = IPFRAG_MAX_DIST,
                 peer_threshold: int = INET_PEER_THRESHOLD) -> None:
        self.stack = stack
        self.ip = stack.snmp["Ip"]
        self.high_thresh_bytes = high_thresh_bytes
        self.time_s = time_s
        self.max_dist = max_dist
        self.peer_threshold = peer_threshold
        self.queues: dict = {}
        self.linearize = False
        self.mem = 0
        # inet_peer table: source address -> InetPeer, oldest dtime first.
        self.peers: dict[bytes, InetPeer] = {}
        self.peer_stats = {"peers_freed": 0}

    # -- inet_peer (net/ipv4/inetpeer.c) -------------------------------------------------
    def _getpeer(self, src: bytes, now: float) -> InetPeer:
        """inet_getpeer_v4(): the source's peer, created if missing, with a reference."""
        p = self.peers.get(src)
        if p is None:
            self._peer_gc(now)
            p = self.peers[src] = InetPeer(now)
        p.refcnt += 1
        return p

    def _putpeer(self, src: bytes, p: InetPeer, now: float) -> None:
        """inet_putpeer(): drop a reference; the peer's idle time starts now."""
        p.refcnt -= 1
        p.dtime = now
        del self.peers[src]                     # keep the dict in dtime order
        self.peers[src] = p

    def _peer_gc(self, now: float) -> None:
        """inet_peer_gc(): free up to PEER_MAX_GC unreferenced peers idle for at least ttl."""
        total = len(self.peers)
        thresh = self.peer_threshold
        if total >= thresh:
            ttl = 0.0                           # be aggressive
        else:
            ttl = INET_PEER_MAXTTL_S - (INET_PEER_MAXTTL_S - INET_PEER_MINTTL_S) * total / thresh
        freed = []
        for src, p in self.peers.items():
            if now - p.dtime < ttl:
                break                           # dtime order: the rest are younger
            if p.refcnt == 0:
                freed.append(src)
                if len(freed) >= PEER_MAX_GC:
                    break
        for src in freed:
            del self.peers[src]
        self.peer_stats["peers_freed"] += len(freed)

    # -- ip_defrag ----------------------------------------------------------------------
    def defrag(self, skb, ip, now: float):
        """Queue a fragment. Returns (head_skb, payload bytes) when the datagram completes,
        else None (queued or dropped -- already counted)."""
        st = self.stack
        ipc = self.ip
        ipc["ReasmReqds"] += 1
        if not self.high_thresh_bytes or self.mem > self.high_thresh_bytes:
            ipc["ReasmFails"] += 1              # inet_frag_find() -> NULL
            st.kfree_skb(skb, "FRAG_MEM_LIMIT")
            return None
        key = (ip.src, ip.dst, ip.proto, ip.ident)
        q = self.queues.get(key)
        if q is None:                           # inet_frag_alloc + ip4_frag_init
            q = FragQueue(key, now + self.time_s,
                          self._getpeer(ip.src, now) if self.max_dist else None)
            self.queues[key] = q
            self.mem += IPQ_QSIZE
        peer = q.peer
        if peer is not None:                    # ip_frag_too_far
            peer.rid += 1
            far = q.nfrags and peer.rid - q.rid > self.max_dist
            q.rid = peer.rid
            if far:                             # ip_frag_reinit
                ipc["ReasmFails"] += 1
                self._purge(q, "FRAG_TOO_FAR")
                q.length = q.meat = q.tail_end = 0
                q.last_in = False
                q.expires = now + self.time_s
                del self.queues[key]            # keep the dict ordered by expiry
                self.queues[key] = q
        payload = ip.payload
        offset = ip.frag_off
        end = offset + len(payload)
        if ip.more_frags:
            end &= ~7                           # non-last fragments carry multiples of 8
            if end > q.length:
                if q.last_in:
                    return self._kill(q, skb, "FRAG_INVALID", now)
                q.length = end
        else:
            if end < q.length or (q.last_in and end != q.length):
                return self._kill(q, skb, "FRAG_INVALID", now)
            q.last_in = True
            q.length = end
        if end <= offset:
            return self._kill(q, skb, "FRAG_INVALID", now)
        if end > IP_MAX_PAYLOAD:
            return self._kill(q, skb, "PKT_TOO_BIG", now)
        err = q.insert(offset, end, (skb, payload[: end - offset]))
        if err == IPFRAG_DUP:
            st.kfree_skb(skb, "DUP_FRAG")
            return None
        if err == IPFRAG_OVERLAP:
            ipc["ReasmOverlaps"] += 1
            return self._kill(q, skb, "FRAG_OVERLAP", now)
        if offset == 0:
            q.hlen = ip.hlen
        st.alloc.reassign(skb.pages, "ipfrag")     # held by the reassembly queue now
        q.meat += end - offset
        self.mem += skb.truesize
        if not (q.last_in and q.meat == q.length):
            return None
        # Complete: the first fragment becomes the head; the others hang on its frag_list.
        self._destroy(q, now)
        frags = [f for run in q.runs for f in run[2]]
        q.runs = []
        for f in frags:
            self.mem -= f[0].truesize
        head = frags[0][0]
        others = [f[0] for f in frags[1:]]
        data = b"".join(bytes(f[1]) for f in frags)
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

    def _destroy(self, q: FragQueue, now: float) -> None:
        """inet_frag_kill + inet_frag_destroy: out of the table, qsize and peer given back."""
        del self.queues[q.key]
        self.mem -= IPQ_QSIZE
        if q.peer is not None:
            self._putpeer(q.key[0], q.peer, now)

    def _kill(self, q: FragQueue, skb, reason: str, now: float):
        self.ip["ReasmFails"] += 1
        self._purge(q, reason)
        self._destroy(q, now)
        self.stack.kfree_skb(skb, reason)
        return None

    def _purge(self, q: FragQueue, reason: str) -> None:
        for skb in list(q.skbs()):
            self.mem -= skb.truesize
            self.stack.kfree_skb(skb, reason)
        q.runs = []
        q.starts = []
        q.nfrags = 0

    def run_timers(self, now: float) -> None:
        expired = []
        for q in self.queues.values():          # insertion order is expiry order
            if q.expires > now:
                break
            expired.append(q)
        for q in expired:
            self._destroy(q, now)
            self.ip["ReasmTimeout"] += 1
            self.ip["ReasmFails"] += 1
            self._purge(q, "FRAG_REASM_TIMEOUT")

    def next_deadline(self) -> float | None:
        for q in self.queues.values():
            return q.expires
        return None

    def queued(self) -> int:
        return sum(q.nfrags for q in self.queues.values())
