"""ARP (RFC 826) for IPv4 over Ethernet: answer requests for our address, learn neighbours, ask
for unresolved next hops (net/ipv4/arp.c). The neighbour table itself is net/core/neighbour.py.

Invariants owned here:
- ``arp_rcv`` is the ETH_P_ARP entry of the EtherType table (arp_process). A frame for another
  MAC (PACKET_OTHERHOST) is consumed unread; a target address that is multicast or 127/8 is
  dropped ARP_BAD_TARGET before anything else; a request for our address is answered
  (neigh_event_ns makes the asker's entry STALE); any other ARP only updates an entry that
  exists, unless ``stack.arp_accept`` lets a gratuitous ARP or a reply create one. Reachability
  is asserted only by a reply to our MAC; override within locktime only for a gratuitous ARP. An
  RFC 5227 probe (sender 0.0.0.0) is answered and teaches nothing. Every frame ends
  ``consume_skb("arp")`` or a drop with the parser's reason.
- A transmitted ARP packet takes one page at GFP_ATOMIC (arp_create); if refused, it is a counted
  NOMEM drop and ``tx_nobuf``.
"""

from __future__ import annotations

from ...mm.gfp import GFP_ATOMIC
from ...wire import WireError
from ...wire.arp import ARPOP_REPLY, ARPOP_REQUEST, ArpPacket
from ...wire.ethernet import BROADCAST, ETH_P_ARP, ZERO_MAC, emit as eth_emit
from ..core.dev import PACKET_BROADCAST, PACKET_HOST, PACKET_OTHERHOST
from ..core.skbuff import SkBuff
from ..core.neighbour import NUD_REACHABLE, NUD_STALE
from .ip_input import LIMITED_BCAST

ANY = b"\0\0\0\0"


def arp_rcv(st, skb, payload, pkt_type: int, now: float) -> None:
    try:
        arp = ArpPacket.new_checked(payload)
    except WireError as e:
        st.kfree_skb(skb, e.reason)
        return
    if pkt_type == PACKET_OTHERHOST:
        st.consume_skb(skb, "arp")                    # arp_rcv: OTHERHOST -> consumeskb
        return
    sip, tip, op = arp.spa, arp.tpa, arp.op
    if 224 <= tip[0] < 240 or tip[0] == 127:
        # "Check for bad requests for 127.x.x.x and requests for multicast addresses. If
        # this is one such, delete it." (route_localnet 0): out_free_skb, before any update.
        st.kfree_skb(skb, "ARP_BAD_TARGET")
        return
    neigh = st.neigh
    if sip == ANY:                                    # RFC 5227 probe: answer, learn nothing
        if op == ARPOP_REQUEST and tip == st.ip:
            arp_send(st, ARPOP_REPLY, arp.sha, arp.sha, sip, now)
        st.consume_skb(skb, "arp")
        return
    if sip == st.ip:
        st.consume_skb(skb, "arp")
        return
    if op == ARPOP_REQUEST and tip == st.ip:
        stats = st.snmp["ArpCache"]
        stats["rcv_probes_mcast" if pkt_type == PACKET_BROADCAST else "rcv_probes_ucast"] += 1
        if neigh.neigh_event_ns(sip, arp.sha, now) is not None:
            arp_send(st, ARPOP_REPLY, arp.sha, arp.sha, sip, now)
        st.consume_skb(skb, "arp")
        return
    n = neigh.lookup(sip)
    accept = _arp_accept(st, sip)
    is_garp = False
    if n is not None or accept:                       # arp_is_garp
        is_garp = (sip == tip and (op != ARPOP_REPLY or arp.tha == arp.sha)
                   and _unicast(st, sip))
    if accept and n is None and (is_garp or (op == ARPOP_REPLY and _unicast(st, sip))):
        n = neigh.create(sip, now)
    if n is not None:
        state = NUD_REACHABLE if op == ARPOP_REPLY and pkt_type == PACKET_HOST else NUD_STALE
        override = now > n.updated + neigh.locktime_s or is_garp
        neigh.update(n, arp.sha, state, now, override)
    st.consume_skb(skb, "arp")


def _arp_accept(st, sip: bytes) -> bool:
    """arp_accept(in_dev, sip): 0 never, 1 always, 2 only from our own subnet."""
    a = st.arp_accept
    if a == 1:
        return True
    if a == 2:
        return (int.from_bytes(sip, "big") & st._mask) == st._net
    return False


def _unicast(st, ip: bytes) -> bool:
    """inet_addr_type() == RTN_UNICAST, for the addresses this host can tell apart."""
    return not (ip == ANY or ip == LIMITED_BCAST or ip == st.bcast or ip[0] >= 224
                or ip[0] == 127 or ip == st.ip)


def arp_send_request(st, ip: bytes, now: float) -> None:
    arp_send(st, ARPOP_REQUEST, BROADCAST, ZERO_MAC, ip, now)


def arp_send(st, op: int, eth_dst: bytes, tha: bytes, tpa: bytes, now: float) -> None:
    frame = eth_emit(eth_dst, st.mac, ETH_P_ARP, ArpPacket(op, st.mac, st.ip, tha, tpa).emit())
    pages = st.alloc.alloc(1, GFP_ATOMIC, "tx")       # arp_create: GFP_ATOMIC
    if pages is None:
        st.counters["tx_nobuf"] += 1
        st.drop_noskb("NOMEM", False)
        return
    st.dev_queue_xmit(SkBuff(st.alloc, frame, pages, False), now)
