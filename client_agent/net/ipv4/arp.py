"""ARP (RFC 826) for IPv4 over Ethernet: answer requests for our address, learn neighbours, ask
for unresolved next hops (net/ipv4/arp.c). The neighbour table itself is net/neigh.py.

Invariants owned here:
- ``arp_rcv`` is the ETH_P_ARP entry of the EtherType table. A frame for another MAC
  (PACKET_OTHERHOST) is consumed unread; a request for our address is answered and its sender
  learned (solicited); a reply for us updates the table (solicited); anything else from another
  address is learned as unsolicited (gratuitous / overheard). Every frame ends ``consume_skb(
  "arp")`` or a drop with the parser's reason.
- A transmitted ARP packet takes one page at GFP_ATOMIC (arp_create); if refused, it is a counted
  NOMEM drop and ``tx_nobuf``.
"""

from __future__ import annotations

from ...mm.gfp import GFP_ATOMIC
from ...wire import WireError
from ...wire.arp import ARPOP_REPLY, ARPOP_REQUEST, ArpPacket
from ...wire.ethernet import BROADCAST, ETH_P_ARP, ZERO_MAC, emit as eth_emit
from ..core.dev import PACKET_BROADCAST, PACKET_OTHERHOST
from ..core.skbuff import SkBuff


def arp_rcv(st, skb, payload, pkt_type: int, now: float) -> None:
    try:
        arp = ArpPacket.new_checked(payload)
    except WireError as e:
        st.kfree_skb(skb, e.reason)
        return
    if pkt_type == PACKET_OTHERHOST:
        st.consume_skb(skb, "arp")                    # arp_rcv: OTHERHOST -> consumeskb
        return
    stats = st.snmp["ArpCache"]
    if arp.tpa == st.ip and arp.spa != st.ip:
        if arp.op == ARPOP_REQUEST:
            stats["rcv_probes_mcast" if pkt_type == PACKET_BROADCAST else "rcv_probes_ucast"] += 1
            st.neigh.update(arp.spa, arp.sha, now, solicited=True)
            arp_send(st, ARPOP_REPLY, arp.sha, arp.sha, arp.spa, now)
        else:
            st.neigh.update(arp.spa, arp.sha, now, solicited=True)
    elif arp.spa != st.ip:
        st.neigh.update(arp.spa, arp.sha, now, solicited=False)   # gratuitous / overheard
    st.consume_skb(skb, "arp")


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
