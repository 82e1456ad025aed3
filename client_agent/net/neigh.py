"""ARP neighbour table: states, timers, bounded pending queues, permanent entries.

Invariants owned here:
- Each entry is in exactly one NUD state. INCOMPLETE entries have a retransmit deadline and a
  queue of transmit buffers waiting for the address; every other state has an empty queue.
- A pending queue never holds more than ``unres_qlen_bytes`` of truesize: to make room the
  oldest buffer is dropped (NEIGH_QUEUEFULL, ``unresolved_discards``), as __neigh_event_send does.
  The queued buffers keep their pages: the queue's memory is charged to the pool.
- After ``mcast_solicit`` unanswered requests the entry is FAILED and its queue dropped
  (NEIGH_FAILED, ``res_failed``); new traffic to it starts resolution again.
- A PERMANENT entry is never changed by the wire: an ARP packet claiming another MAC for it is
  counted (``permanent_update_refused``) and not applied.

Simplifications against Linux (net/core/neighbour.c): no DELAY/PROBE states -- a REACHABLE
entry becomes STALE after ``reachable_time_s`` and a STALE entry is used as is until refreshed
by traffic from the neighbour, and removed after ``gc_stale_time_s`` unused; reachable_time is
not randomised (deterministic runs).
"""

from __future__ import annotations

from collections import deque

NUD_INCOMPLETE = "INCOMPLETE"
NUD_REACHABLE = "REACHABLE"
NUD_STALE = "STALE"
NUD_FAILED = "FAILED"
NUD_PERMANENT = "PERMANENT"

RETRANS_TIME_S = 1.0          # neigh/default/retrans_time_ms
MCAST_SOLICIT = 3             # neigh/default/mcast_solicit
REACHABLE_TIME_S = 30.0       # neigh/default/base_reachable_time_ms
GC_STALE_TIME_S = 60.0        # neigh/default/gc_stale_time
UNRES_QLEN_BYTES = 212992     # neigh/default/unres_qlen_bytes (= SK_WMEM_MAX)


class Neighbour:
    __slots__ = ("ip", "mac", "state", "updated", "used", "probes", "deadline", "queue",
                 "queue_bytes")

    def __init__(self, ip: bytes, now: float) -> None:
        self.ip = ip
        self.mac: bytes | None = None
        self.state = NUD_FAILED
        self.updated = now
        self.used = now
        self.probes = 0
        self.deadline: float | None = None
        self.queue: deque = deque()
        self.queue_bytes = 0


class NeighTable:
    """The stack owns one; ``stack`` provides ``_arp_send_request``, ``_neigh_xmit``,
    ``kfree_skb`` and the ArpCache counters."""

    def __init__(self, stack, *, retrans_time_s: float = RETRANS_TIME_S,
                 mcast_solicit: int = MCAST_SOLICIT, reachable_time_s: float = REACHABLE_TIME_S,
                 gc_stale_time_s: float = GC_STALE_TIME_S,
                 unres_qlen_bytes: int = UNRES_QLEN_BYTES) -> None:
        self.stack = stack
        self.entries: dict[bytes, Neighbour] = {}
        self.retrans_time_s = retrans_time_s
        self.mcast_solicit = mcast_solicit
        self.reachable_time_s = reachable_time_s
        self.gc_stale_time_s = gc_stale_time_s
        self.unres_qlen_bytes = unres_qlen_bytes
        self.stats = stack.snmp["ArpCache"]
        self.next_deadline: float | None = None

    def _create(self, ip: bytes, now: float) -> Neighbour:
        n = Neighbour(ip, now)
        self.entries[ip] = n
        self.stats["allocs"] += 1
        self.stats["entries"] = len(self.entries)
        return n

    def add_permanent(self, ip: bytes, mac: bytes, now: float = 0.0) -> None:
        n = self.entries.get(ip) or self._create(ip, now)
        n.mac, n.state, n.deadline = mac, NUD_PERMANENT, None
        self._flush(n, now)

    def lookup(self, ip: bytes) -> Neighbour | None:
        return self.entries.get(ip)

    # -- transmit side ------------------------------------------------------------------
    def output(self, ip: bytes, skb, now: float) -> None:
        """Send ``skb`` (an IP packet) to next hop ``ip``: now, or once ARP resolves it."""
        n = self.entries.get(ip)
        if n is not None and n.state in (NUD_REACHABLE, NUD_STALE, NUD_PERMANENT):
            n.used = now
            self.stack._neigh_xmit(skb, n.mac, now)
            return
        if n is None:
            n = self._create(ip, now)
        if n.state != NUD_INCOMPLETE:            # new, or FAILED: (re)start resolution
            n.state = NUD_INCOMPLETE
            n.probes = 0
            self._probe(n, now)
        limit = self.unres_qlen_bytes
        while n.queue and n.queue_bytes + skb.truesize > limit:
            old = n.queue.popleft()
            n.queue_bytes -= old.truesize
            self.stats["unresolved_discards"] += 1
            self.stack.kfree_skb(old, "NEIGH_QUEUEFULL")
        if skb.truesize > limit:
            self.stats["unresolved_discards"] += 1
            self.stack.kfree_skb(skb, "NEIGH_QUEUEFULL")
            return
        n.queue.append(skb)
        n.queue_bytes += skb.truesize

    def _probe(self, n: Neighbour, now: float) -> None:
        n.probes += 1
        n.deadline = now + self.retrans_time_s
        self._note_deadline(n.deadline)
        self.stack._arp_send_request(n.ip, now)

    def _note_deadline(self, t: float) -> None:
        if self.next_deadline is None or t < self.next_deadline:
            self.next_deadline = t

    # -- receive side -------------------------------------------------------------------
    def update(self, ip: bytes, mac: bytes, now: float, solicited: bool) -> None:
        """ARP from ``ip`` says it is at ``mac``. ``solicited``: a reply to us, or a request we
        answer -- both confirm reachability here (Linux: reply -> REACHABLE, request -> STALE)."""
        n = self.entries.get(ip)
        if n is None:
            if not solicited:
                return                            # arp_accept=0: unsolicited news creates nothing
            n = self._create(ip, now)
        if n.state == NUD_PERMANENT:
            if mac != n.mac:
                self.stats["permanent_update_refused"] += 1
            return
        n.mac = mac
        n.updated = n.used = now
        n.state = NUD_REACHABLE
        n.deadline = now + self.reachable_time_s
        self._note_deadline(n.deadline)
        self._flush(n, now)

    def _flush(self, n: Neighbour, now: float) -> None:
        q = n.queue
        while q:
            skb = q.popleft()
            n.queue_bytes -= skb.truesize
            self.stack._neigh_xmit(skb, n.mac, now)

    # -- timers -------------------------------------------------------------------------
    def run_timers(self, now: float) -> None:
        if self.next_deadline is None or now < self.next_deadline:
            return
        nxt = None
        for ip, n in list(self.entries.items()):
            d = n.deadline
            if d is not None and d <= now:
                if n.state == NUD_INCOMPLETE:
                    if n.probes >= self.mcast_solicit:
                        n.state = NUD_FAILED
                        n.deadline = now + self.gc_stale_time_s
                        self.stats["res_failed"] += 1
                        while n.queue:
                            skb = n.queue.popleft()
                            n.queue_bytes -= skb.truesize
                            self.stack.kfree_skb(skb, "NEIGH_FAILED")
                    else:
                        n.probes += 1
                        n.deadline = now + self.retrans_time_s
                        self.stack._arp_send_request(n.ip, now)
                elif n.state == NUD_REACHABLE:
                    n.state = NUD_STALE
                    n.deadline = n.used + self.gc_stale_time_s
                    if n.deadline <= now:
                        n.deadline = now + self.gc_stale_time_s
                elif n.state == NUD_STALE:
                    if n.used + self.gc_stale_time_s <= now:
                        self._destroy(ip)
                        continue
                    n.deadline = n.used + self.gc_stale_time_s
                elif n.state == NUD_FAILED:
                    self._destroy(ip)
                    continue
            if n.deadline is not None and (nxt is None or n.deadline < nxt):
                nxt = n.deadline
        self.next_deadline = nxt

    def _destroy(self, ip: bytes) -> None:
        del self.entries[ip]
        self.stats["destroys"] += 1
        self.stats["entries"] = len(self.entries)

    def queued(self) -> int:
        return sum(len(n.queue) for n in self.entries.values())

    def snapshot(self) -> list[dict]:
        import socket
        return [{"ip": socket.inet_ntoa(n.ip), "mac": n.mac.hex(":") if n.mac else None,
                 "state": n.state, "probes": n.probes, "queued": len(n.queue),
                 "queue_bytes": n.queue_bytes} for n in self.entries.values()]
