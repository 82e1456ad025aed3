"""The device layer of the stack: NAPI receive, the EtherType table, taps, transmit, buffer accounting
(net/core/dev.c, net/core/skbuff.c).

Invariants owned here (kernel-mechanism.md §1-4):
- Receive allocates before it reads: every frame taken from the device first gets
  ceil(len/4096) pages (all or nothing) at GFP_ATOMIC, owner "rx" -- with __GFP_MEMALLOC added
  while ``alloc.memalloc_socks > 0``, so a frame that the atomic floor refuses is taken from the
  reserve and its buffer is tagged pfmemalloc (__netdev_alloc_skb with SKB_ALLOC_RX). If both
  fail the frame is dropped NOMEM and counted ``rx_nobuf``: it never became a buffer.
- A pfmemalloc frame is processed entirely inside a PF_MEMALLOC scope (so the ARP reply or ICMP
  reply it causes can be built from the reserve), skips ``taps`` (ptype_all), and is dropped
  PFMEMALLOC unless its EtherType is one ``skb_pfmemalloc_protocol`` accepts (ARP/IPv4/IPv6/
  VLAN) -- or, beyond Linux, one a protocol's ``ptype_memalloc`` entry admits (policy
  ``extended``: a marked AoE target, drivers/block/aoenet.py). Past that point the only pfmemalloc refusal is the receiving socket's ``sk_filter``
  (net/core/sock.py).
- EtherType dispatch is a table (``dev_add_pack(ethertype, handler)``, ptype_base): a protocol
  registers ``handler(skb, payload, pkt_type, now)`` with ``pkt_type`` PACKET_HOST /
  PACKET_BROADCAST (multicast included) / PACKET_OTHERHOST; an EtherType nobody registered is
  dropped UNHANDLED_PROTO. A protocol may also register one ``fast_rx(skb, frame, csum_ok, now)``
  (its early demux) that takes ordinary (not pfmemalloc) frames when no tap is attached and
  returns True if it consumed the frame; it must make the same checks and count the same
  counters as the table path, and queue through the same socket calls (``sk_filter`` included).
- Every buffer ends in exactly one ``kfree_skb(skb, reason)`` or ``consume_skb(skb, where)``;
  every received frame is counted once in ``rx_fate`` (drop reason, or where it was consumed),
  so Σ rx_fate + ``rx_in_flight()`` == ``counters["rx_packets"]`` at every instant.
- ``rx_trace_hooks`` (drop_monitor-style observers, e.g. the RPC layer's reply tracing) see the
  bytes and the fate of every received frame that was dropped (NOMEM included, before it had a
  buffer) or queued on a socket. They observe; they never change a frame's fate.
- The core reads no clock: ``poll(now, budget)`` handles at most ``budget`` frames (NAPI) and
  returns the next time it must run (a protocol timer, a frame held by the device) -- ``now`` if
  frames may still be waiting.
"""

from __future__ import annotations

from ...bugs import BUGS as _BUGS
from ...mm.gfp import GFP_ATOMIC, Gfp
from ...phy.caps import device_caps
from ...wire.ethernet import ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from .drop import DROP_REASONS, snmp_tables
from .skbuff import SkBuff
from .timer import TimerHeap

PFMEMALLOC_PROTOCOLS = frozenset((ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q))
PACKET_HOST, PACKET_BROADCAST, PACKET_OTHERHOST = 0, 1, 2
_RX_GFP = GFP_ATOMIC
_RX_GFP_RESERVE = GFP_ATOMIC | Gfp.MEMALLOC
NAPI_BUDGET = 64                     # net.core.dev_weight


def skb_pfmemalloc_protocol(ethertype: int) -> bool:
    """May a pfmemalloc buffer of this EtherType go on (net/core/dev.c)?"""
    return ethertype in PFMEMALLOC_PROTOCOLS


class StackPolicy:
    """Switches that exist only to show what goes wrong without a mechanism."""

    __slots__ = ("pfmemalloc_demux_drop",)

    def __init__(self, pfmemalloc_demux_drop: bool = True) -> None:
        # sk_filter_trim_cap's drop of pfmemalloc buffers for sockets without SOCK_MEMALLOC.
        # Turn off only to show what goes wrong: the reserve then feeds any socket.
        self.pfmemalloc_demux_drop = pfmemalloc_demux_drop


class NetCore:
    """Device-level state and the receive/transmit core; ``net/stack.py``'s ``Stack`` adds the
    address families on top (net/ipv4)."""

    def __init__(self, alloc, dev, mac: bytes, sched=None, *, taps=None) -> None:
        self.alloc = alloc
        self.dev = dev
        self.mac = bytes(mac)
        self.sched = sched
        self.policy = StackPolicy()
        self.taps: list = list(taps or [])              # callables(frame, now): what the stack saw
        self.snmp = snmp_tables()
        self.drop_reasons: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.rx_fate: dict[str, int] = {}
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "rx_nobuf": 0, "rx_pfmemalloc": 0,
                         "tx_packets": 0, "tx_bytes": 0, "tx_nobuf": 0, "tx_errors": 0,
                         "PFMemallocDrop": 0, "rx_pfmemalloc_proto_drop": 0}
        self.ptype_base: dict[int, object] = {}         # EtherType -> handler (dev_add_pack)
        # EtherType -> allowed(frame): beyond Linux (policy "extended"), a protocol that is no
        # socket (AoE) may let a marked peer's reserve-backed frames past skb_pfmemalloc_protocol
        self.ptype_memalloc: dict[int, object] = {}
        self.fast_rx = None                             # one early demux, see the module docstring
        self.rx_trace_hooks: list = []                  # callables(frame, fate)
        self.timers = TimerHeap()
        self.sockets: list = []                         # every open socket, any protocol
        self.rx_holders: list = []                      # callables() -> received frames held
        # What the device does for the stack (dev->features; phy/caps.py), asked once: the device
        # and the protocols must agree on which frames carry a partial checksum.
        self.caps = device_caps(dev)
        self.tx_csum_udp = self.caps.tx_csum            # NETIF_F_HW_CSUM for UDP
        self.tx_csum_tcp = self.caps.tx_csum_tcp        # ... and for TCP
        self.tso = self.caps.tso                        # NETIF_F_TSO: TCPv4 GSO buffers
        self.ufo = self.caps.ufo                        # UFO: UDP datagrams the kernel fragments

    # ================================================================== registration
    def dev_add_pack(self, ethertype: int, handler) -> None:
        if ethertype in self.ptype_base:
            raise ValueError(f"EtherType {ethertype:#06x} already has a handler")
        self.ptype_base[ethertype] = handler

    # ================================================================== accounting
    def kfree_skb(self, skb: SkBuff, reason: str) -> None:
        self.drop_reasons[reason] += 1
        if skb.rx:
            f = self.rx_fate
            f[reason] = f.get(reason, 0) + 1
            if self.rx_trace_hooks:
                self.rx_trace(skb.data, reason)
        skb.free()

    def rx_trace(self, frame, fate: str) -> None:
        for hook in self.rx_trace_hooks:
            hook(frame, fate)

    def consume_skb(self, skb: SkBuff, where: str) -> None:
        if skb.rx:
            f = self.rx_fate
            f[where] = f.get(where, 0) + 1
        pages = skb.pages
        if pages is None or skb.frag_list:
            skb.free()                          # a chain, or a double free: SkBuff.free says so
        else:
            skb.pages = None                    # SkBuff.free, inline
            skb._alloc.free(pages)

    def count_rx_fate(self, where: str, n: int = 1) -> None:
        if n:
            self.rx_fate[where] = self.rx_fate.get(where, 0) + n

    def drop_noskb(self, reason: str, rx: bool) -> None:
        """A frame dropped before it had a buffer (NOMEM, no route...)."""
        self.drop_reasons[reason] += 1
        if rx:
            self.count_rx_fate(reason)

    def rx_in_flight(self) -> int:
        """Received frames still held: queued fragments, datagrams on sockets."""
        return sum(h() for h in self.rx_holders)

    # ================================================================== poll and timers
    def poll(self, now: float, budget: int = NAPI_BUDGET) -> float | None:
        dev = self.dev
        items = dev.receive(now, budget)
        rx = self.rx_frame
        for item in items:
            rx(item, now)
        t = self.timers.run(now)                 # run_timers(now), and the deadline after it
        if len(items) >= budget:
            return now
        d = dev.poll_at()
        if d is None:
            return t
        return d if t is None or d < t else t

    def run_timers(self, now: float) -> None:
        self.timers.run(now)

    def next_deadline(self) -> float | None:
        t = self.timers.next_deadline()
        d = self.dev.poll_at()
        if d is None:
            return t
        return d if t is None or d < t else t

    # ================================================================== receive
    def rx_frame(self, item, now: float) -> None:
        """One frame from the device: allocate its buffer first, then look at it."""
        if type(item) is tuple:
            if len(item) == 2:
                frame, csum_ok = item
                n = (len(frame) + 4095) >> 12 or 1
            else:
                # a GRO'd frame (frame, csum_ok, segments): charged as Linux's merged skb is --
                # its truesize grew by each merged segment's buffer (skb_gro_receive)
                frame, csum_ok, n = item
                n = n or (len(frame) + 4095) >> 12 or 1
        else:
            frame, csum_ok = item, False
            n = (len(frame) + 4095) >> 12 or 1
        c = self.counters
        c["rx_packets"] += 1
        c["rx_bytes"] += len(frame)
        alloc = self.alloc
        pages = alloc.alloc(n, _RX_GFP_RESERVE if alloc.memalloc_socks else _RX_GFP, "rx")
        if pages is None:
            c["rx_nobuf"] += 1
            if self.rx_trace_hooks:
                self.rx_trace(frame, "NOMEM")
            self.drop_noskb("NOMEM", True)
            return
        skb = SkBuff(alloc, frame, pages, True)
        skb.csum_unnecessary = csum_ok
        if skb.pfmemalloc:
            c["rx_pfmemalloc"] += 1
            old = alloc.memalloc_noreclaim_save()
            try:
                self.netif_receive_skb(skb, now)
            finally:
                alloc.memalloc_noreclaim_restore(old)
            return
        fast = self.fast_rx
        if fast is not None and not self.taps and fast(skb, frame, csum_ok, now):
            return
        self.netif_receive_skb(skb, now)

    def netif_receive_skb(self, skb: SkBuff, now: float) -> None:
        """__netif_receive_skb_core: taps, the pfmemalloc EtherType check, the EtherType table."""
        frame = skb.data
        if len(frame) < 14:
            self.kfree_skb(skb, "PKT_TOO_SMALL")
            return
        if not skb.pfmemalloc:
            for tap in self.taps:
                tap(frame, now)
        ethertype = frame[12] << 8 | frame[13]
        if skb.pfmemalloc and not skb_pfmemalloc_protocol(ethertype) and not (
                ethertype in self.ptype_memalloc and self.ptype_memalloc[ethertype](frame)):
            # bugs.pfmemalloc_drop_unnamed: before SKB_DROP_REASON_PFMEMALLOC (2025) this drop
            # was reported as an unhandled protocol
            self.counters["rx_pfmemalloc_proto_drop"] += 1   # which layer: skb_pfmemalloc_protocol
            self.kfree_skb(skb, "UNHANDLED_PROTO" if _BUGS.pfmemalloc_drop_unnamed else "PFMEMALLOC")
            return
        handler = self.ptype_base.get(ethertype)
        if handler is None:
            self.kfree_skb(skb, "UNHANDLED_PROTO")
            return
        dst = frame[:6]
        if dst == self.mac:
            pkt_type = PACKET_HOST
        elif dst[0] & 1:
            pkt_type = PACKET_BROADCAST                   # broadcast / multicast
        else:
            pkt_type = PACKET_OTHERHOST
        handler(skb, memoryview(frame)[14:], pkt_type, now)

    # ================================================================== transmit
    def dev_queue_xmit(self, skb: SkBuff, now: float) -> None:
        """Hand a complete frame to the device; the buffer is freed once it took the frame."""
        frame = skb.data
        if (self.dev.transmit(frame, now, skb.gso_size) if skb.gso_size
                else self.dev.transmit(frame, now)) is False:
            self.counters["tx_errors"] += 1
            self.kfree_skb(skb, "FULL_RING")
            return
        c = self.counters
        c["tx_packets"] += 1
        c["tx_bytes"] += len(frame)
        self.consume_skb(skb, "tx")
