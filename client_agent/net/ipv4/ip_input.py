"""IPv4 receive: header checks, our-address filter, reassembly, and the IP protocol table
(net/ipv4/ip_input.c, net/ipv4/protocol.c).

Invariants owned here:
- ``ip_rcv`` is the ETH_P_IP entry of the EtherType table. A frame for another MAC is dropped
  OTHERHOST before it is counted; every other frame counts Ip InReceives once, then either fails
  a header check (InHdrErrors / InCsumErrors / InTruncatedPkts and the parser's reason), is not
  for us (InAddrErrors, IP_INADDRERRORS -- no forwarding), is a fragment (to reassembly, which
  hands back the whole datagram or keeps it), or is delivered.
- Delivery is a table (``inet_add_protocol(proto, handler)``, inet_protos): ``handler(skb, src,
  dst, bcast, payload, now)`` with addresses as 4 bytes and ``payload`` the transport header
  onwards. A delivered datagram counts InDelivers; a protocol nobody registered counts
  InUnknownProtos and is dropped IP_NOPROTO.
"""

from __future__ import annotations

from ...wire import WireError
from ...wire.ipv4 import IP_MF, Ipv4Packet
from ..core.dev import PACKET_OTHERHOST

LIMITED_BCAST = b"\xff\xff\xff\xff"


def inet_add_protocol(st, proto: int, handler) -> None:
    if proto in st.inet_protos:
        raise ValueError(f"IP protocol {proto} already has a handler")
    st.inet_protos[proto] = handler


def ip_rcv(st, skb, payload, pkt_type: int, now: float) -> None:
    ipc = st.snmp["Ip"]
    if pkt_type == PACKET_OTHERHOST:
        st.kfree_skb(skb, "OTHERHOST")
        return
    ipc["InReceives"] += 1
    try:
        ip = Ipv4Packet.new_checked(payload)
    except WireError as e:
        r = e.reason
        if r == "IP_CSUM":
            ipc["InCsumErrors"] += 1
            ipc["InHdrErrors"] += 1
        elif r == "IP_INHDR":
            ipc["InHdrErrors"] += 1
        else:
            ipc["InTruncatedPkts"] += 1
        st.kfree_skb(skb, r)
        return
    dst = ip.dst
    bcast = dst == LIMITED_BCAST or dst == st.bcast
    if dst != st.ip and not bcast:
        ipc["InAddrErrors"] += 1
        st.kfree_skb(skb, "IP_INADDRERRORS")
        return
    if ip.flags & IP_MF or ip.frag_off:
        done = st.reasm.defrag(skb, ip, now)
        if done is None:
            return
        skb, data = done
        ip_local_deliver(st, skb, ip.src, dst, bcast, ip.proto, memoryview(data), now)
        return
    ip_local_deliver(st, skb, ip.src, dst, bcast, ip.proto, ip.payload, now)


def ip_local_deliver(st, skb, src: bytes, dst: bytes, bcast: bool, proto: int, payload,
                     now: float) -> None:
    handler = st.inet_protos.get(proto)
    if handler is None:
        st.snmp["Ip"]["InUnknownProtos"] += 1
        st.kfree_skb(skb, "IP_NOPROTO")
        return
    st.snmp["Ip"]["InDelivers"] += 1
    handler(skb, src, dst, bcast, payload, now)
