"""ICMP (RFC 792): echo request/reply and the counters of /proc/net/snmp's Icmp line
(net/ipv4/icmp.c). Registered in the IP protocol table as IPPROTO_ICMP.

Invariants owned here:
- An echo request to our unicast address is answered (GFP_ATOMIC, receive context); to a
  broadcast address it is not (icmp_echo_ignore_broadcasts=1). An echo reply is recorded in
  ``stack.ping_replies``. A type above NR_ICMP_TYPES is an InErrors + UNHANDLED_PROTO drop; a
  bad checksum or short message is InErrors (+ InCsumErrors) and the parser's reason.
"""

from __future__ import annotations

import socket as _pysocket

from ...mm.gfp import GFP_ATOMIC
from ...wire import WireError
from ...wire import icmp as wicmp
from ...wire.ipv4 import IPPROTO_ICMP
from .ip_output import ip_queue_xmit


def icmp_rcv(st, skb, src: bytes, dst: bytes, bcast: bool, payload, now: float) -> None:
    ic = st.snmp["Icmp"]
    ic["InMsgs"] += 1
    try:
        msg = wicmp.IcmpPacket.new_checked(payload)
    except WireError as e:
        if e.reason == "ICMP_CSUM":
            ic["InCsumErrors"] += 1
        ic["InErrors"] += 1
        st.kfree_skb(skb, e.reason)
        return
    t = msg.type
    if t == wicmp.ICMP_ECHO:
        ic["InEchos"] += 1
        if not bcast:                                 # icmp_echo_ignore_broadcasts=1
            reply = wicmp.emit_echo(wicmp.ICMP_ECHOREPLY, msg.ident, msg.seq, msg.data)
            if ip_queue_xmit(st, src, IPPROTO_ICMP, reply, now, GFP_ATOMIC, "tx") >= 0:
                ic["OutMsgs"] += 1
                ic["OutEchoReps"] += 1
            else:
                ic["OutErrors"] += 1
    elif t == wicmp.ICMP_ECHOREPLY:
        ic["InEchoReps"] += 1
        st.ping_replies.append((_pysocket.inet_ntoa(src), msg.ident, msg.seq,
                                bytes(msg.data), now))
    elif t > wicmp.NR_ICMP_TYPES:
        ic["InErrors"] += 1
        st.kfree_skb(skb, "UNHANDLED_PROTO")
        return
    st.consume_skb(skb, "icmp")


def icmp_echo(st, dst: bytes, ident: int, seq: int, data=b"", now: float = 0.0) -> int:
    """Send an ICMP echo request. 0 or a negative errno."""
    msg = wicmp.emit_echo(wicmp.ICMP_ECHO, ident, seq, data)
    rc = ip_queue_xmit(st, dst, IPPROTO_ICMP, msg, now, st.tx_gfp, "tx")
    if rc >= 0:
        st.snmp["Icmp"]["OutMsgs"] += 1
        st.snmp["Icmp"]["OutEchos"] += 1
    return rc
