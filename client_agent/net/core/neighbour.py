"""ARP neighbour table (net/core/neighbour.c): states, timers, bounded queues, bounded size.

Invariants owned here:
- Each entry is in exactly one NUD state. INCOMPLETE entries have a retransmit deadline and a
  queue of transmit buffers waiting for the address; every other state has an empty queue.
- A pending queue never holds more than ``unres_qlen_bytes`` of truesize: to make room the
  oldest buffer is dropped (NEIGH_QUEUEFULL, ``unresolved_discards``), as __neigh_event_send does.
  The queued buffers keep their pages: the queue's memory is charged to the pool.
- After ``mcast_solicit`` unanswered requests the entry is FAILED and its queue dropped
  (NEIGH_FAILED, ``res_failed``); new traffic to it starts resolution again.
- A PERMANENT entry is never changed by the wire: an ARP packet claiming another MAC for it is
  counted (``permanent_update_refused``, a testbed counter) and not applied (__neigh_update
  refuses non-admin updates of PERMANENT entries).
- The table is bounded as neigh_alloc() bounds it. PERMANENT entries are exempt; the others
  (``gc_entries``) may number ``gc_thresh3`` (1024) at most: creating one when gc_entries >=
  gc_thresh3, or >= gc_thresh2 (512) with the last forced GC over 5 s ago, first runs
  neigh_forced_gc() (``forced_gc_runs``), which removes, oldest first, up to gc_entries -
  gc_thresh2 entries not held by a timer (STALE or FAILED here) that are FAILED or were not
  updated within 5 s. If that frees nothing and the table is at gc_thresh3, no entry is made:
  "neighbor table overflow!", ``table_fulls`` counted. The caller then drops its packet
  (transmit: NEIGH_CREATEFAIL, ip_finish_output2) or sends no ARP reply (neigh_event_ns).
- neigh_periodic_work (every base_reachable_time/2 = 15 s) does nothing while the table holds
  fewer than ``gc_thresh1`` (128) entries; above, it removes every entry not PERMANENT and not
  held by a timer that is FAILED or unused for ``gc_stale_time_s`` (``periodic_gc_runs``).
- Updates follow __neigh_update with arp_process's flags: a valid entry (REACHABLE, STALE,
  PERMANENT) is given a different MAC only with OVERRIDE (``locktime_s`` = 1 s since its last
  update, or a gratuitous ARP; a request to us always overrides, neigh_event_ns); an update to
  STALE with the same MAC leaves the state as it is; reaching a valid state from INCOMPLETE or
  FAILED sends the queued packets. Whether a packet creates an entry at all is arp_process's
  decision (net/ipv4/arp.py, arp_accept).

Where this still differs from Linux: no DELAY/PROBE states and no NOARP -- a REACHABLE entry
becomes STALE after ``reachable_time_s`` and a STALE entry is used as is until refreshed by ARP
from the neighbour; reachable_time is not randomised (deterministic runs); no references other
than timers hold an entry (Linux's dst/route references also keep entries from forced GC);
the periodic work is only armed while it has something to do (>= gc_thresh1 entries), on the
same 15 s grid from time 0; forced GC's 1 ms time budget is not modelled.
"""

from __future__ import annotations

from collections import deque

NUD_INCOMPLETE = "INCOMPLETE"
NUD_REACHABLE = "REACHABLE"
NUD_STALE = "STALE"
NUD_FAILED = "FAILED"
NUD_PERMANENT = "PERMANENT"
NUD_VALID = frozenset((NUD_REACHABLE, NUD_STALE, NUD_PERMANENT))
NUD_IN_TIMER = frozenset((NUD_INCOMPLETE, NUD_REACHABLE))   # a timer holds a reference

RETRANS_TIME_S = 1.0          # neigh/default/retrans_time_ms
MCAST_SOLICIT = 3             # neigh/default/mcast_solicit
REACHABLE_TIME_S = 30.0       # neigh/default/base_reachable_time_ms
GC_STALE_TIME_S = 60.0        # neigh/default/gc_stale_time
UNRES_QLEN_BYTES = 212992     # neigh/default/unres_qlen_bytes (= SK_WMEM_MAX)
LOCKTIME_S = 1.0              # neigh/default/locktime (arp_tbl: 1 * HZ)
GC_THRESH1 = 128              # neigh/default/gc_thresh1
GC_THRESH2 = 512              # neigh/default/gc_thresh2
GC_THRESH3 = 1024             # neigh/default/gc_thresh3
FORCED_GC_AGE_S = 5.0         # neigh_alloc/neigh_forced_gc: 5 * HZ
PERIODIC_GC_S = REACHABLE_TIME_S / 2   # neigh_periodic_work: BASE_REACHABLE_TIME >> 1


class Neighbour:
    __slots__ = ("ip", "mac", "state", "updated", "used", "probes", "deadline", "queue",
                 "queue_bytes")

    def __init__(self, ip: bytes, now: float) -> None:
        self.ip = ip
        self.mac: bytes | None = None
        self.state = NUD_FAILED       # NUD_NONE: not valid, no timer
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
                 unres_qlen_bytes: int = UNRES_QLEN_BYTES, locktime_s: float = LOCKTIME_S,
                 gc_thresh1: int = GC_THRESH1, gc_thresh2: int = GC_THRESH2,
                 gc_thresh3: int = GC_THRESH3) -> None:
        self.stack = stack
        self.entries: dict[bytes, Neighbour] = {}     # creation order = Linux's gc_list order
        self.retrans_time_s = retrans_time_s
        self.mcast_solicit = mcast_solicit
        self.reachable_time_s = reachable_time_s
        self.gc_stale_time_s = gc_stale_time_s
        self.unres_qlen_bytes = unres_qlen_bytes
        self.locktime_s = locktime_s
        self.gc_thresh1 = gc_thresh1
        self.gc_thresh2 = gc_thresh2
        self.gc_thresh3 = gc_thresh3
        self.gc_entries = 0                            # entries not PERMANENT
        self.last_flush = 0.0                          # tbl->last_flush (table made at 0)
        self.next_periodic: float | None = None
        self.stats = stack.snmp["ArpCache"]
        self.next_deadline: float | None = None

    # -- neigh_alloc / neigh_forced_gc --------------------------------------------------
    def create(self, ip: bytes, now: float) -> Neighbour | None:
        """___neigh_create(): a new entry (NUD_NONE, shown as FAILED), or None when the table
        is full (``table_fulls``; Linux logs "neighbor table overflow!")."""
        entries = self.gc_entries
        if entries >= self.gc_thresh3 or (entries >= self.gc_thresh2
                                          and now > self.last_flush + FORCED_GC_AGE_S):
            if not self._forced_gc(now) and entries >= self.gc_thresh3:
                self.stats["table_fulls"] += 1
                return None
        self.gc_entries += 1
        return self._create(ip, now)

    def _create(self, ip: bytes, now: float) -> Neighbour:
        n = Neighbour(ip, now)
        self.entries[ip] = n
        self.stats["allocs"] += 1
        self.stats["entries"] = len(self.entries)
        if self.next_periodic is None and len(self.entries) >= self.gc_thresh1:
            self.next_periodic = (now // PERIODIC_GC_S + 1) * PERIODIC_GC_S
            self._note_deadline(self.next_periodic)
        return n

    def _forced_gc(self, now: float) -> int:
        self.stats["forced_gc_runs"] += 1
        max_clean = self.gc_entries + 1 - self.gc_thresh2
        tref = now - FORCED_GC_AGE_S
        shrunk = 0
        for ip, n in list(self.entries.items()):
            if n.state in NUD_IN_TIMER or n.state == NUD_PERMANENT:
                continue                        # held by its timer / not on the gc_list
            if n.state == NUD_FAILED or not tref <= n.updated <= now:
                self._destroy(ip)
                shrunk += 1
                if shrunk >= max_clean:
                    break
        self.last_flush = now
        return shrunk

    def add_permanent(self, ip: bytes, mac: bytes, now: float = 0.0) -> None:
        n = self.entries.get(ip)
        if n is None:
            n = self._create(ip, now)            # exempt_from_gc: not counted in gc_entries
        elif n.state != NUD_PERMANENT:
            self.gc_entries -= 1                 # neigh_update_gc_list: off the gc_list
        n.mac, n.state, n.deadline = mac, NUD_PERMANENT, None
        self._flush(n, now)

    def lookup(self, ip: bytes) -> Neighbour | None:
        return self.entries.get(ip)

    # -- transmit side ------------------------------------------------------------------
    def output(self, ip: bytes, skb, now: float) -> bool:
        """Send ``skb`` (an IP packet) to next hop ``ip``: now, or once ARP resolves it.
        False if no entry could be made (table full): ``skb`` dropped NEIGH_CREATEFAIL."""
        n = self.entries.get(ip)
        if n is not None and n.state in NUD_VALID:
            n.used = now
            self.stack._neigh_xmit(skb, n.mac, now)
            return True
        if n is None:
            n = self.create(ip, now)
            if n is None:
                self.stack.kfree_skb(skb, "NEIGH_CREATEFAIL")
                return False
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
            return True
        n.queue.append(skb)
        n.queue_bytes += skb.truesize
        return True

    def _probe(self, n: Neighbour, now: float) -> None:
        n.probes += 1
        n.deadline = now + self.retrans_time_s
        self._note_deadline(n.deadline)
        self.stack._arp_send_request(n.ip, now)

    def _note_deadline(self, t: float) -> None:
        if self.next_deadline is None or t < self.next_deadline:
            self.next_deadline = t

    # -- receive side -------------------------------------------------------------------
    def neigh_event_ns(self, ip: bytes, mac: bytes, now: float) -> Neighbour | None:
        """A request to us from ``ip`` at ``mac``: its entry, created if missing, updated to
        STALE with OVERRIDE. None if the table is full (then Linux sends no reply)."""
        n = self.entries.get(ip) or self.create(ip, now)
        if n is not None:
            self.update(n, mac, NUD_STALE, now, override=True)
        return n

    def update(self, n: Neighbour, mac: bytes, new: str, now: float, override: bool) -> None:
        """__neigh_update(n, mac, new, override ? NEIGH_UPDATE_F_OVERRIDE : 0)."""
        old = n.state
        if old == NUD_PERMANENT:
            if mac != n.mac:
                self.stats["permanent_update_refused"] += 1
            return
        if old in NUD_VALID:
            if mac != n.mac and not override:
                return                            # "use the FIRST one" (locktime)
            if mac == n.mac and new == NUD_STALE:
                new = old
        if new != old or mac != n.mac:
            n.updated = now
        n.mac = mac
        if new == NUD_REACHABLE:                  # confirmed: the reachable timer runs again
            n.used = max(n.used, now)
            n.deadline = now + self.reachable_time_s
            self._note_deadline(n.deadline)
        elif new != old:
            n.deadline = None                     # STALE: no timer
        n.state = new
        if old not in NUD_VALID:
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
        if self.next_periodic is not None and self.next_periodic <= now:
            self._periodic_work(now)
        nxt = self.next_periodic
        for n in self.entries.values():
            d = n.deadline
            if d is not None and d <= now:
                if n.state == NUD_INCOMPLETE:
                    if n.probes >= self.mcast_solicit:
                        n.state = NUD_FAILED
                        n.deadline = None
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
                    n.deadline = None
            if n.deadline is not None and (nxt is None or n.deadline < nxt):
                nxt = n.deadline
        self.next_deadline = nxt

    def _periodic_work(self, now: float) -> None:
        """neigh_periodic_work: nothing below gc_thresh1; above, drop unused entries."""
        self.stats["periodic_gc_runs"] += 1
        if len(self.entries) >= self.gc_thresh1:
            for ip, n in list(self.entries.items()):
                if n.state == NUD_PERMANENT or n.state in NUD_IN_TIMER:
                    continue
                if n.state == NUD_FAILED or not n.used <= now <= n.used + self.gc_stale_time_s:
                    self._destroy(ip)
        if len(self.entries) >= self.gc_thresh1:
            self.next_periodic = now + PERIODIC_GC_S
        else:
            self.next_periodic = None

    def _destroy(self, ip: bytes) -> None:
        n = self.entries.pop(ip)
        if n.state != NUD_PERMANENT:
            self.gc_entries -= 1
        self.stats["destroys"] += 1
        self.stats["entries"] = len(self.entries)

    def queued(self) -> int:
        return sum(len(n.queue) for n in self.entries.values())

    def snapshot(self) -> list[dict]:
        import socket
        return [{"ip": socket.inet_ntoa(n.ip), "mac": n.mac.hex(":") if n.mac else None,
                 "state": n.state, "probes": n.probes, "queued": len(n.queue),
                 "queue_bytes": n.queue_bytes} for n in self.entries.values()]
