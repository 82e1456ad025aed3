"""IPv4 transmit: route, header, fragmentation, neighbour output (net/ipv4/ip_output.c, route.c).

Invariants owned here:
- Transmit buffers are allocated per frame (one per IP fragment) at the sender's GFP context:
  GFP_ATOMIC for replies made in receive context, the socket's ``sk_allocation`` (GFP_NOWAIT:
  sends here never block) plus __GFP_MEMALLOC for SOCK_MEMALLOC sockets (sk_gfp_mask); inside
  PF_MEMALLOC the allocator itself grants the reserve. A failed transmit allocation is a counted
  NOMEM drop (Ip OutDiscards, ``tx_nobuf``) and -ENOBUFS to the caller; the fragments already
  sent stay sent. A buffer is freed once the device has taken the frame.
- Routing is one connected prefix plus an optional gateway; no route is Ip OutNoRoutes,
  IP_OUTNOROUTES and -ENETUNREACH. A datagram larger than the MTU is fragmented (FragOKs,
  FragCreates) unless DF is asked for (-EMSGSIZE). A next hop for which no neighbour entry can
  be made (table full) is Ip OutDiscards and -EINVAL.
"""

from __future__ import annotations

import errno
import struct as _struct

from ...wire.ethernet import BROADCAST, ETH_P_IP, emit as eth_emit
from ...wire.ipv4 import IP_DF, IP_MF, emit_header
from ..core.skbuff import SkBuff
from ..core.neighbour import NUD_VALID
from .ip_input import LIMITED_BCAST

_IP_HDR = _struct.Struct("!BBHHHBBH4s4s")
_ETH_HDR = _struct.Struct("!6s6sH")
_NUD_SEND_NOW = NUD_VALID                                               # as neigh.output


def ip_route_output(st, dst: bytes) -> bytes | None:
    """Next hop for ``dst``: itself on the subnet (or broadcast), else the gateway."""
    if dst == LIMITED_BCAST or (int.from_bytes(dst, "big") & st._mask) == st._net:
        return dst
    return st.gateway


def ip_queue_xmit(st, dst: bytes, proto: int, payload: bytes, now: float, gfp: int,
                  owner: str, *, df: bool = False, ttl: int = 64) -> int:
    """Send ``payload`` as IP protocol ``proto`` to ``dst``: 0 or a negative errno."""
    ipc = st.snmp["Ip"]
    ipc["OutRequests"] += 1
    nh = ip_route_output(st, dst)
    if nh is None:
        ipc["OutNoRoutes"] += 1
        st.drop_noskb("IP_OUTNOROUTES", False)
        return -errno.ENETUNREACH
    st._ident = (st._ident + 1) & 0xFFFF
    ident = st._ident
    mtu = st.dev.mtu
    # (header, payload slice) per frame; joined once with the link-layer header below.
    if 20 + len(payload) <= mtu:
        parts = [(emit_header(st.ip, dst, proto, len(payload), ident=ident, ttl=ttl,
                              flags=IP_DF if df else 0), payload)]
    else:
        if df:
            return -errno.EMSGSIZE
        chunk = (mtu - 20) & ~7
        parts = []
        size = len(payload)
        view = memoryview(payload)
        src = st.ip
        if not 0 < ttl <= 255:
            emit_header(src, dst, proto, 0, ttl=ttl)          # raises: a host never sends TTL 0
        # emit_header for a 20-byte header, inlined: every fragment header is valid by
        # construction (offset a multiple of 8, length within the datagram's). Its checksum
        # is the words' sum: the fields that are the same in every fragment once, then
        # per fragment + total length + flags/offset (a sum of 16-bit words is congruent to
        # the header read as one number, modulo 0xffff, as ones_sum computes it).
        base = (0x4500 + ident + (ttl << 8 | proto) + int.from_bytes(src, "big")
                + int.from_bytes(dst, "big"))
        pack = _IP_HDR.pack
        for off in range(0, size, chunk):
            end = off + chunk
            if end > size:
                end = size
            tot = 20 + end - off
            frag = (IP_MF if end < size else 0) | (off >> 3)
            c = (base + tot + frag) % 0xFFFF or 0xFFFF
            parts.append((pack(0x45, 0, tot, ident, frag, ttl, proto, ~c & 0xFFFF, src, dst),
                          view[off:end]))
        ipc["FragOKs"] += 1
        ipc["FragCreates"] += len(parts)
    bcast = nh == LIMITED_BCAST or nh == st.bcast
    alloc = st.alloc
    # The link-layer header once per datagram when the next hop is known (broadcast, or a
    # neighbour in a state neigh.output sends to at once): each fragment then goes straight
    # to the device, as neigh.output -> neigh_xmit -> dev_queue_xmit would send it (same
    # header, same ``used`` stamp, same counters; the transmit buffer is freed once the
    # device took the frame, as consume_skb would). An unresolved next hop takes
    # neigh.output per fragment (queue + ARP).
    eth = None
    n = None
    if bcast:
        eth = _ETH_HDR.pack(BROADCAST, st.mac, ETH_P_IP)
    else:
        n = st.neigh.entries.get(nh)
        if n is not None and n.state in _NUD_SEND_NOW:
            eth = _ETH_HDR.pack(n.mac, st.mac, ETH_P_IP)
    join = b"".join
    transmit = st.dev.transmit
    c = st.counters
    for hdr, data in parts:
        size = len(hdr) + len(data)
        pages = alloc.alloc((size + 14 + 4095) >> 12, gfp, owner)
        if pages is None:
            ipc["OutDiscards"] += 1
            if len(parts) > 1:
                ipc["FragFails"] += 1
            c["tx_nobuf"] += 1
            st.drop_noskb("NOMEM", False)
            return -errno.ENOBUFS
        if eth is not None:
            if not bcast:
                n.used = now
            frame = join((eth, hdr, data))
            if transmit(frame, now) is False:
                c["tx_errors"] += 1
                st.kfree_skb(SkBuff(alloc, frame, pages, False), "FULL_RING")
                continue
            c["tx_packets"] += 1
            c["tx_bytes"] += size + 14
            alloc.free(pages)
        elif not st.neigh.output(nh, SkBuff(alloc, hdr + data, pages, False), now):
            # ip_finish_output2: no neighbour entry could be made (table full)
            ipc["OutDiscards"] += 1
            if len(parts) > 1:
                ipc["FragFails"] += 1
            return -errno.EINVAL
    return 0


def neigh_xmit(st, skb: SkBuff, mac: bytes, now: float) -> None:
    """A resolved neighbour's queued IP buffer: add the Ethernet header, send."""
    skb.data = eth_emit(mac, st.mac, ETH_P_IP, skb.data)
    st.dev_queue_xmit(skb, now)
