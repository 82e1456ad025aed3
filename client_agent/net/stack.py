"""The agent's network stack: one interface with one IPv4 address (a network namespace's worth).

``Stack`` is the device core (net/core/dev.py: NAPI receive, EtherType table, taps, buffer
accounting, protocol timers) plus IPv4 (net/ipv4/: ARP, IP, ICMP, UDP, TCP), registered through the
tables by ``inet_init``. It holds the per-namespace state the protocols share: the address and
prefix, the neighbour table, the reassembly queues, the IP protocol table, the sockets.

Invariants owned here: those of the parts (net/core/dev.py, net/core/sock.py, net/ipv4/*), and
- the stack reads no clock and touches no OS object: ``poll(now, budget)`` handles at most
  ``budget`` frames (NAPI) and returns the next time it must run (ARP retransmit, reassembly
  timeout, a protocol timer, a frame held by the device) -- ``now`` if frames may still be waiting.
"""

from __future__ import annotations

import socket as _pysocket
from collections import deque

from ..mm.gfp import GFP_NOWAIT
from .core.dev import NAPI_BUDGET, PFMEMALLOC_PROTOCOLS, NetCore, StackPolicy
from .ipv4.ip_fragment import Reassembler
from .ipv4 import inet_init
from .ipv4 import arp as _arp
from .ipv4 import icmp as _icmp
from .ipv4 import ip_input as _ip_input
from .ipv4 import ip_output as _ip_output
from .ipv4.udp import UdpSocket
from .core.neighbour import NeighTable

__all__ = ["NAPI_BUDGET", "PFMEMALLOC_PROTOCOLS", "Stack", "StackPolicy", "UdpSocket"]


def _as_ip(ip) -> bytes:
    return _pysocket.inet_aton(ip) if isinstance(ip, str) else bytes(ip)


class _NeighTimers:
    """The neighbour table as a timer source (it keeps ``next_deadline`` as an attribute)."""

    __slots__ = ("neigh",)

    def __init__(self, neigh) -> None:
        self.neigh = neigh

    def next_deadline(self) -> float | None:
        return self.neigh.next_deadline

    def run_timers(self, now: float) -> None:
        self.neigh.run_timers(now)


class Stack(NetCore):
    def __init__(self, alloc, dev, mac: bytes, ip, prefix_len: int, sched=None, *,
                 gateway=None, taps=None, seed: int = 0) -> None:
        super().__init__(alloc, dev, mac, sched, taps=taps)
        self.ip = _as_ip(ip)
        self.prefix_len = prefix_len
        mask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF if prefix_len else 0
        self._mask = mask
        self._net = int.from_bytes(self.ip, "big") & mask
        self.bcast = (self._net | (~mask & 0xFFFFFFFF)).to_bytes(4, "big")
        self.gateway = _as_ip(gateway) if gateway is not None else None
        self.inet_protos: dict[int, object] = {}        # IP protocol -> handler (inet_protos)
        # net.ipv4.conf.<dev>.arp_accept: may unsolicited ARP (a gratuitous ARP, or a reply
        # nobody asked for) create a neighbour entry? 0 (Linux's default) no, 1 yes, 2 only
        # for a sender in our subnet.
        self.arp_accept = 0
        self.neigh = NeighTable(self)
        self.reasm = Reassembler(self)
        self.timers.add_source(_NeighTimers(self.neigh))
        self.timers.add_source(self.reasm)
        self.rx_holders.append(self.reasm.queued)
        self.ping_replies: deque = deque(maxlen=4096)   # (src, ident, seq, data, now)
        self._ident = 0
        self.tx_gfp = GFP_NOWAIT                        # stack-originated sends (ping)
        inet_init(self, seed)

    # -- tables ----------------------------------------------------------------------------
    def inet_add_protocol(self, proto: int, handler) -> None:
        _ip_input.inet_add_protocol(self, proto, handler)

    # -- sockets and stack-originated traffic ----------------------------------------------
    def udp_socket(self) -> UdpSocket:
        sk = UdpSocket(self)
        self.sockets.append(sk)
        return sk

    def tcp_socket(self):
        """A new TCP socket (net.ipv4.tcp.TcpSock)."""
        return self.tcp.socket()

    def ping(self, dst, ident: int, seq: int, data=b"", now: float = 0.0) -> int:
        """Send an ICMP echo request (for tests and scenarios). 0 or a negative errno."""
        return _icmp.icmp_echo(self, _as_ip(dst), ident, seq, data, now)

    # -- what the neighbour table and reassembly call back -----------------------------------
    def _arp_send_request(self, ip: bytes, now: float) -> None:
        _arp.arp_send_request(self, ip, now)

    def _neigh_xmit(self, skb, mac: bytes, now: float) -> None:
        _ip_output.neigh_xmit(self, skb, mac, now)

    def _ip_output(self, dst: bytes, proto: int, payload: bytes, now: float, gfp: int,
                   owner: str, *, df: bool = False, ttl: int = 64) -> int:
        return _ip_output.ip_queue_xmit(self, dst, proto, payload, now, gfp, owner, df=df, ttl=ttl)

    # ================================================================== observation
    def snapshot(self) -> dict:
        return {
            "counters": dict(self.counters),
            "snmp": {k: dict(v) for k, v in self.snmp.items()},
            "drop_reasons": {k: v for k, v in self.drop_reasons.items() if v},
            "rx_fate": dict(self.rx_fate),
            "sockets": [s.snapshot() for s in self.sockets],
            "tcp": self.tcp.snapshot(),
            "neigh": self.neigh.snapshot(),
            "ipfrag": {"queues": len(self.reasm.queues), "fragments": self.reasm.queued(),
                       "mem_bytes": self.reasm.mem, "peers": len(self.reasm.peers)},
            "policy": {"pfmemalloc_demux_drop": self.policy.pfmemalloc_demux_drop},
        }
