"""The agent's network stack: Ethernet, ARP, IPv4 (+ reassembly), ICMP echo, UDP sockets.

Invariants owned here (kernel-mechanism.md §1-4):
- Receive allocates before it reads: every frame taken from the device first gets
  ceil(len/4096) pages (all or nothing) at GFP_ATOMIC, owner "rx" -- with __GFP_MEMALLOC added
  while ``alloc.memalloc_socks > 0``, so a frame that the atomic floor refuses is taken from the
  reserve and its buffer is tagged pfmemalloc (__netdev_alloc_skb with SKB_ALLOC_RX). If both
  fail the frame is dropped NOMEM and counted ``rx_nobuf``: it never became a buffer.
- A pfmemalloc frame is processed entirely inside a PF_MEMALLOC scope (so the ARP reply or ICMP
  reply it causes can be built from the reserve), skips ``taps`` (ptype_all), is dropped
  PFMEMALLOC unless its EtherType is ARP/IPv4/IPv6/VLAN (skb_pfmemalloc_protocol), and at a UDP
  socket without SOCK_MEMALLOC is dropped PFMEMALLOC + TcpExt PFMemallocDrop (sk_filter_trim_cap)
  -- the last one unless ``policy.pfmemalloc_demux_drop`` is off.
- Every buffer ends in exactly one ``kfree_skb(skb, reason)`` or ``consume_skb(skb, where)``;
  every received frame is counted once in ``rx_fate`` (drop reason, or where it was consumed),
  so Σ rx_fate + ``rx_in_flight()`` == ``counters["rx_packets"]`` at every instant.
- Transmit buffers are allocated per frame (one per IP fragment) at the sender's GFP context:
  GFP_ATOMIC for replies made in receive context, the socket's ``sk_allocation`` (GFP_NOWAIT:
  sends here never block) plus __GFP_MEMALLOC for SOCK_MEMALLOC sockets (sk_gfp_mask); inside
  PF_MEMALLOC the allocator itself grants the reserve. A failed transmit allocation is a counted
  NOMEM drop and -ENOBUFS to the caller. A buffer is freed once the device has taken the frame.
- The stack reads no clock and touches no OS object: ``poll(now, budget)`` handles at most
  ``budget`` frames (NAPI) and returns the next time it must run (ARP retransmit, reassembly
  timeout, a frame held by the device) -- ``now`` if frames may still be waiting.
"""

from __future__ import annotations

import errno
import socket as _pysocket
import struct as _struct
from collections import deque
from dataclasses import dataclass

from ..bugs import BUGS as _BUGS
from ..mm.gfp import GFP_ATOMIC, GFP_NOWAIT, Gfp
from ..wire import WireError
from ..wire import icmp as wicmp
from ..wire.arp import ARPOP_REPLY, ARPOP_REQUEST, ArpPacket
from ..wire.ethernet import (BROADCAST, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ZERO_MAC,
                             emit as eth_emit)
from ..wire.ipv4 import (IP_DF, IP_MF, IPPROTO_ICMP, IPPROTO_UDP, Ipv4Packet, emit_header)
from ..wire.udp import UdpPacket, emit as udp_emit
from .drop import DROP_REASONS, snmp_tables
from .ipfrag import Reassembler
from .neigh import NUD_REACHABLE, NUD_STALE, NUD_VALID, NeighTable
from .skb import SkBuff
from .udp import EPHEMERAL_PORTS, UdpSocket

_UDP_HDR = _struct.Struct("!HHHH")
_IP_HDR = _struct.Struct("!BBHHHBBH4s4s")
_ETH_HDR = _struct.Struct("!6s6sH")
_NUD_SEND_NOW = NUD_VALID                                               # as neigh.output
PFMEMALLOC_PROTOCOLS = frozenset((ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q))
_RX_GFP = GFP_ATOMIC
_RX_GFP_RESERVE = GFP_ATOMIC | Gfp.MEMALLOC
ANY = b"\0\0\0\0"
LIMITED_BCAST = b"\xff\xff\xff\xff"
NAPI_BUDGET = 64                     # net.core.dev_weight
FATE_RING = 32768                    # fates of the NFS server's frames kept for the drop explanations


@dataclass
class StackPolicy:
    # sk_filter_trim_cap's drop of pfmemalloc buffers for sockets without SOCK_MEMALLOC. Turn
    # off only to show what goes wrong: the reserve then feeds any socket.
    pfmemalloc_demux_drop: bool = True


def _as_ip(ip) -> bytes:
    return _pysocket.inet_aton(ip) if isinstance(ip, str) else bytes(ip)


class Stack:
    def __init__(self, alloc, dev, mac: bytes, ip, prefix_len: int, sched=None, *,
                 gateway=None, taps=None) -> None:
        self.alloc = alloc
        self.dev = dev
        self.mac = bytes(mac)
        self.ip = _as_ip(ip)
        self.prefix_len = prefix_len
        mask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF if prefix_len else 0
        self._mask = mask
        self._net = int.from_bytes(self.ip, "big") & mask
        self.bcast = (self._net | (~mask & 0xFFFFFFFF)).to_bytes(4, "big")
        self.gateway = _as_ip(gateway) if gateway is not None else None
        self.sched = sched
        self.policy = StackPolicy()
        # net.ipv4.conf.<dev>.arp_accept: may unsolicited ARP (a gratuitous ARP, or a reply
        # nobody asked for) create a neighbour entry? 0 (Linux's default) no, 1 yes, 2 only
        # for a sender in our subnet.
        self.arp_accept = 0
        self.taps: list = list(taps or [])              # callables(frame, now): what the stack saw
        self.snmp = snmp_tables()
        self.drop_reasons: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.rx_fate: dict[str, int] = {}
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "rx_nobuf": 0, "rx_pfmemalloc": 0,
                         "tx_packets": 0, "tx_bytes": 0, "tx_nobuf": 0, "tx_errors": 0,
                         "PFMemallocDrop": 0, "rx_pfmemalloc_proto_drop": 0}
        self.neigh = NeighTable(self)
        self.reasm = Reassembler(self)
        self.udp_ports: dict[int, UdpSocket] = {}
        self.sockets: list[UdpSocket] = []
        self.ping_replies: deque = deque(maxlen=4096)   # (src, ident, seq, data, now)
        self._ident = 0
        self._next_port = EPHEMERAL_PORTS[0]
        self.tx_gfp = GFP_NOWAIT                        # stack-originated sends (ping)
        self.fate_port = 0                              # see record_fate (0: off)
        self.fates: deque = deque(maxlen=FATE_RING)

    # ================================================================== accounting
    def kfree_skb(self, skb: SkBuff, reason: str) -> None:
        self.drop_reasons[reason] += 1
        if skb.rx:
            f = self.rx_fate
            f[reason] = f.get(reason, 0) + 1
            if self.fate_port:
                self.record_fate(skb.data, reason)
        skb.free()

    def record_fate(self, frame, fate: str) -> None:
        """Observability only (a drop_monitor/tracepoint, not the data path): if ``frame`` is the
        first fragment of a UDP datagram from ``fate_port`` (the NFS server), remember
        ``(ip_id, xid, fate)`` so every NFS reply on the wire can be matched to its end in the
        agent. Reads the bytes even of a frame that never got a buffer (NOMEM)."""
        if len(frame) < 46 or frame[12] != 8 or frame[13] != 0:
            return
        ihl = (frame[14] & 15) * 4
        if frame[23] != 17 or (frame[20] & 0x1F) or frame[21] or len(frame) < 14 + ihl + 12:
            return
        u = 14 + ihl
        if (frame[u] << 8 | frame[u + 1]) != self.fate_port:
            return
        self.fates.append((frame[18] << 8 | frame[19], int.from_bytes(frame[u + 8:u + 12], "big"), fate))

    def consume_skb(self, skb: SkBuff, where: str) -> None:
        if skb.rx:
            f = self.rx_fate
            f[where] = f.get(where, 0) + 1
        skb.free()

    def count_rx_fate(self, where: str, n: int = 1) -> None:
        if n:
            self.rx_fate[where] = self.rx_fate.get(where, 0) + n

    def _drop_noskb(self, reason: str, rx: bool) -> None:
        self.drop_reasons[reason] += 1
        if rx:
            self.count_rx_fate(reason)

    def rx_in_flight(self) -> int:
        """Received frames still held: queued fragments and datagrams on sockets."""
        return self.reasm.queued() + sum(len(s.rxq) for s in self.sockets)

    # ================================================================== poll
    def poll(self, now: float, budget: int = NAPI_BUDGET) -> float | None:
        items = self.dev.receive(now, budget)
        rx = self.rx_frame
        for item in items:
            rx(item, now)
        self.run_timers(now)
        if len(items) >= budget:
            return now
        return self.next_deadline()

    def run_timers(self, now: float) -> None:
        nd = self.neigh.next_deadline
        if nd is not None and nd <= now:
            self.neigh.run_timers(now)
        rd = self.reasm.next_deadline()
        if rd is not None and rd <= now:
            self.reasm.run_timers(now)

    def next_deadline(self) -> float | None:
        ds = [d for d in (self.neigh.next_deadline, self.reasm.next_deadline(),
                          self.dev.poll_at()) if d is not None]
        return min(ds) if ds else None

    # ================================================================== receive
    def rx_frame(self, item, now: float) -> None:
        """One frame from the device: allocate its buffer first, then look at it."""
        if type(item) is tuple:
            frame, csum_ok = item
        else:
            frame, csum_ok = item, False
        c = self.counters
        c["rx_packets"] += 1
        c["rx_bytes"] += len(frame)
        alloc = self.alloc
        n = (len(frame) + 4095) >> 12 or 1
        pages = alloc.alloc(n, _RX_GFP_RESERVE if alloc.memalloc_socks else _RX_GFP, "rx")
        if pages is None:
            c["rx_nobuf"] += 1
            if self.fate_port:
                self.record_fate(frame, "NOMEM")
            self._drop_noskb("NOMEM", True)
            return
        skb = SkBuff(alloc, frame, pages, True)
        skb.csum_unnecessary = csum_ok
        # Fast path: a unicast IPv4/UDP datagram for us, unfragmented, 20-byte header, valid,
        # to a bound socket, on an ordinary (not pfmemalloc) buffer and no taps. It makes the
        # same checks in the same order as _netif_receive -> _ip_rcv -> _ip_local_deliver ->
        # _udp_rcv and counts the same counters; anything else -- a failed check included --
        # leaves it before counting anything and takes the general path, which then counts it.
        if (not skb.pfmemalloc and not self.taps and len(frame) >= 42 and frame[12] == 8
                and frame[13] == 0 and frame[14] == 0x45 and frame[23] == 17
                and not (frame[20] & 0x3F) and not frame[21]
                and frame[:6] == self.mac and frame[30:34] == self.ip
                and int.from_bytes(frame[14:34], "big") % 0xFFFF == 0):
            total_len = frame[16] << 8 | frame[17]
            sport, dport, ulen, ucsum = _UDP_HDR.unpack_from(frame, 34)
            if 28 <= total_len <= len(frame) - 14 and 8 <= ulen <= total_len - 20:
                sk = self.udp_ports.get(dport)
                if (sk is not None and (sk.local[0] == ANY or sk.local[0] == self.ip)
                        and (sk.remote is None or sk.remote == (frame[26:30], sport))):
                    if ucsum and not csum_ok:
                        # RFC 768 sum over pseudo-header + segment, as UdpPacket.verify_checksum:
                        # the ones'-complement sum is the value modulo 0xffff.
                        seg = int.from_bytes(frame[34:34 + ulen], "big")
                        if ulen & 1:
                            seg <<= 8
                        ok = (int.from_bytes(frame[26:34], "big") + 17 + ulen + seg) % 0xFFFF == 0
                    else:
                        ok = True
                    if ok:
                        ipc = self.snmp["Ip"]
                        ipc["InReceives"] += 1
                        ipc["InDelivers"] += 1
                        if sk.rmem_alloc > sk.rcvbuf:
                            uc = self.snmp["Udp"]
                            uc["RcvbufErrors"] += 1
                            uc["InErrors"] += 1
                            sk.drops += 1
                            self.kfree_skb(skb, "SOCKET_RCVBUFF")
                            return
                        sk._enqueue(skb, memoryview(frame)[42:34 + ulen], (frame[26:30], sport))
                        return
        if skb.pfmemalloc:
            c["rx_pfmemalloc"] += 1
            old = alloc.memalloc_noreclaim_save()
            try:
                self._netif_receive(skb, now)
            finally:
                alloc.memalloc_noreclaim_restore(old)
        else:
            self._netif_receive(skb, now)

    def _netif_receive(self, skb: SkBuff, now: float) -> None:
        frame = skb.data
        if len(frame) < 14:
            self.kfree_skb(skb, "PKT_TOO_SMALL")
            return
        if not skb.pfmemalloc:
            for tap in self.taps:
                tap(frame, now)
        ethertype = frame[12] << 8 | frame[13]
        if skb.pfmemalloc and ethertype not in PFMEMALLOC_PROTOCOLS:
            # bugs.pfmemalloc_drop_unnamed: before SKB_DROP_REASON_PFMEMALLOC (2025) this drop
            # was reported as an unhandled protocol
            self.counters["rx_pfmemalloc_proto_drop"] += 1   # which layer: skb_pfmemalloc_protocol
            self.kfree_skb(skb, "UNHANDLED_PROTO" if _BUGS.pfmemalloc_drop_unnamed else "PFMEMALLOC")
            return
        dst = frame[:6]
        if dst == self.mac:
            l2 = 0                                        # PACKET_HOST
        elif dst[0] & 1:
            l2 = 1                                        # PACKET_BROADCAST / MULTICAST
        else:
            l2 = 2                                        # PACKET_OTHERHOST
        if ethertype == ETH_P_IP:
            self._ip_rcv(skb, memoryview(frame)[14:], l2, now)
        elif ethertype == ETH_P_ARP:
            self._arp_rcv(skb, memoryview(frame)[14:], l2, now)
        else:
            self.kfree_skb(skb, "UNHANDLED_PROTO")

    # ------------------------------------------------------------------ ARP
    def _arp_rcv(self, skb: SkBuff, payload, l2: int, now: float) -> None:
        """arp_process(): answer requests for our address (neigh_event_ns makes the asker's
        entry STALE); any other ARP only updates an entry that exists, unless ``arp_accept``
        lets a gratuitous ARP or a reply create one. Reachability is asserted only by a reply
        to our MAC; override within locktime only for a gratuitous ARP."""
        try:
            arp = ArpPacket.new_checked(payload)
        except WireError as e:
            self.kfree_skb(skb, e.reason)
            return
        if l2 == 2:
            self.consume_skb(skb, "arp")                  # arp_rcv: OTHERHOST -> consumeskb
            return
        sip, tip, op = arp.spa, arp.tpa, arp.op
        neigh = self.neigh
        if sip == ANY:                                    # RFC 5227 probe: answer, learn nothing
            if op == ARPOP_REQUEST and tip == self.ip:
                self._arp_send(ARPOP_REPLY, arp.sha, arp.sha, sip, now)
            self.consume_skb(skb, "arp")
            return
        if sip == self.ip:
            self.consume_skb(skb, "arp")
            return
        if op == ARPOP_REQUEST and tip == self.ip:
            stats = self.snmp["ArpCache"]
            stats["rcv_probes_mcast" if l2 == 1 else "rcv_probes_ucast"] += 1
            if neigh.neigh_event_ns(sip, arp.sha, now) is not None:
                self._arp_send(ARPOP_REPLY, arp.sha, arp.sha, sip, now)
            self.consume_skb(skb, "arp")
            return
        n = neigh.lookup(sip)
        accept = self._arp_accept(sip)
        is_garp = False
        if n is not None or accept:                       # arp_is_garp
            is_garp = (sip == tip and (op != ARPOP_REPLY or arp.tha == arp.sha)
                       and self._unicast(sip))
        if accept and n is None and (is_garp or (op == ARPOP_REPLY and self._unicast(sip))):
            n = neigh.create(sip, now)
        if n is not None:
            state = NUD_REACHABLE if op == ARPOP_REPLY and l2 == 0 else NUD_STALE
            override = now > n.updated + neigh.locktime_s or is_garp
            neigh.update(n, arp.sha, state, now, override)
        self.consume_skb(skb, "arp")

    def _arp_accept(self, sip: bytes) -> bool:
        """arp_accept(in_dev, sip): 0 never, 1 always, 2 only from our own subnet."""
        a = self.arp_accept
        if a == 1:
            return True
        if a == 2:
            return (int.from_bytes(sip, "big") & self._mask) == self._net
        return False

    def _unicast(self, ip: bytes) -> bool:
        """inet_addr_type() == RTN_UNICAST, for the addresses this host can tell apart."""
        return not (ip == ANY or ip == LIMITED_BCAST or ip == self.bcast or ip[0] >= 224
                    or ip[0] == 127 or ip == self.ip)

    def _arp_send_request(self, ip: bytes, now: float) -> None:
        self._arp_send(ARPOP_REQUEST, BROADCAST, ZERO_MAC, ip, now)

    def _arp_send(self, op: int, eth_dst: bytes, tha: bytes, tpa: bytes, now: float) -> None:
        frame = eth_emit(eth_dst, self.mac, ETH_P_ARP, ArpPacket(op, self.mac, self.ip, tha, tpa).emit())
        pages = self.alloc.alloc(1, GFP_ATOMIC, "tx")     # arp_create: GFP_ATOMIC
        if pages is None:
            self.counters["tx_nobuf"] += 1
            self._drop_noskb("NOMEM", False)
            return
        self._dev_xmit(SkBuff(self.alloc, frame, pages, False), now)

    # ------------------------------------------------------------------ IPv4
    def _ip_rcv(self, skb: SkBuff, payload, l2: int, now: float) -> None:
        ipc = self.snmp["Ip"]
        if l2 == 2:
            self.kfree_skb(skb, "OTHERHOST")
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
            self.kfree_skb(skb, r)
            return
        dst = ip.dst
        bcast = dst == LIMITED_BCAST or dst == self.bcast
        if dst != self.ip and not bcast:
            ipc["InAddrErrors"] += 1
            self.kfree_skb(skb, "IP_INADDRERRORS")
            return
        if ip.flags & IP_MF or ip.frag_off:
            done = self.reasm.defrag(skb, ip, now)
            if done is None:
                return
            skb, data = done
            self._ip_local_deliver(skb, ip.src, dst, bcast, ip.proto, memoryview(data), now)
            return
        self._ip_local_deliver(skb, ip.src, dst, bcast, ip.proto, ip.payload, now)

    def _ip_local_deliver(self, skb, src: bytes, dst: bytes, bcast: bool, proto: int, payload,
                          now: float) -> None:
        ipc = self.snmp["Ip"]
        if proto == IPPROTO_UDP:
            ipc["InDelivers"] += 1
            self._udp_rcv(skb, src, dst, bcast, payload, now)
        elif proto == IPPROTO_ICMP:
            ipc["InDelivers"] += 1
            self._icmp_rcv(skb, src, bcast, payload, now)
        else:
            ipc["InUnknownProtos"] += 1
            self.kfree_skb(skb, "IP_NOPROTO")

    # ------------------------------------------------------------------ ICMP
    def _icmp_rcv(self, skb, src: bytes, bcast: bool, payload, now: float) -> None:
        ic = self.snmp["Icmp"]
        ic["InMsgs"] += 1
        try:
            msg = wicmp.IcmpPacket.new_checked(payload)
        except WireError as e:
            if e.reason == "ICMP_CSUM":
                ic["InCsumErrors"] += 1
            ic["InErrors"] += 1
            self.kfree_skb(skb, e.reason)
            return
        t = msg.type
        if t == wicmp.ICMP_ECHO:
            ic["InEchos"] += 1
            if not bcast:                                 # icmp_echo_ignore_broadcasts=1
                reply = wicmp.emit_echo(wicmp.ICMP_ECHOREPLY, msg.ident, msg.seq, msg.data)
                if self._ip_output(src, IPPROTO_ICMP, reply, now, GFP_ATOMIC, "tx") >= 0:
                    ic["OutMsgs"] += 1
                    ic["OutEchoReps"] += 1
                else:
                    ic["OutErrors"] += 1
        elif t == wicmp.ICMP_ECHOREPLY:
            ic["InEchoReps"] += 1
            self.ping_replies.append((_pysocket.inet_ntoa(src), msg.ident, msg.seq,
                                      bytes(msg.data), now))
        elif t > wicmp.NR_ICMP_TYPES:
            ic["InErrors"] += 1
            self.kfree_skb(skb, "UNHANDLED_PROTO")
            return
        self.consume_skb(skb, "icmp")

    def ping(self, dst, ident: int, seq: int, data=b"", now: float = 0.0) -> int:
        """Send an ICMP echo request (for tests and scenarios). 0 or a negative errno."""
        msg = wicmp.emit_echo(wicmp.ICMP_ECHO, ident, seq, data)
        rc = self._ip_output(_as_ip(dst), IPPROTO_ICMP, msg, now, self.tx_gfp, "tx")
        if rc >= 0:
            self.snmp["Icmp"]["OutMsgs"] += 1
            self.snmp["Icmp"]["OutEchos"] += 1
        return rc

    # ------------------------------------------------------------------ UDP
    def _udp_rcv(self, skb, src: bytes, dst: bytes, bcast: bool, payload, now: float) -> None:
        uc = self.snmp["Udp"]
        try:
            udp = UdpPacket.new_checked(payload)
        except WireError as e:
            uc["InErrors"] += 1
            self.kfree_skb(skb, e.reason)
            return
        if not skb.csum_unnecessary and udp.csum and not udp.verify_checksum(src, dst):
            uc["InCsumErrors"] += 1
            uc["InErrors"] += 1
            self.kfree_skb(skb, "UDP_CSUM")
            return
        sk = self.udp_ports.get(udp.dport)
        if sk is not None:
            lip = sk.local[0]
            if (lip != ANY and lip != self.ip and not bcast) or \
                    (sk.remote is not None and sk.remote != (src, udp.sport)):
                sk = None
        if sk is None:
            uc["NoPorts"] += 1
            self.kfree_skb(skb, "NO_SOCKET")
            return
        if skb.pfmemalloc and not sk.memalloc and self.policy.pfmemalloc_demux_drop:
            self.snmp["TcpExt"]["PFMemallocDrop"] += 1
            self.counters["PFMemallocDrop"] += 1
            uc["InErrors"] += 1
            sk.drops += 1
            self.kfree_skb(skb, "PFMEMALLOC")
            return
        if sk.rmem_alloc > sk.rcvbuf:
            uc["RcvbufErrors"] += 1
            uc["InErrors"] += 1
            sk.drops += 1
            self.kfree_skb(skb, "SOCKET_RCVBUFF")
            return
        sk._enqueue(skb, udp.payload, (src, udp.sport))

    def udp_socket(self) -> UdpSocket:
        sk = UdpSocket(self)
        self.sockets.append(sk)
        return sk

    def _udp_bind(self, sk: UdpSocket, ip: bytes, port: int) -> None:
        if sk.local is not None:
            raise OSError(errno.EINVAL, f"socket already bound to {sk.getsockname()}")
        if ip not in (ANY, self.ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{_pysocket.inet_ntoa(ip)} is not this stack's "
                          f"address {_pysocket.inet_ntoa(self.ip)}")
        if port == 0:
            lo, hi = EPHEMERAL_PORTS
            for _ in range(hi - lo + 1):
                p = self._next_port
                self._next_port = lo if p >= hi else p + 1
                if p not in self.udp_ports:
                    port = p
                    break
            else:
                raise OSError(errno.EADDRINUSE, "no free ephemeral UDP port")
        elif port in self.udp_ports:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is already bound")
        sk.local = (ip, port)
        sk.owner = f"sk:udp:{_pysocket.inet_ntoa(self.ip if ip == ANY else ip)}:{port}"
        self.udp_ports[port] = sk

    def _udp_unbind(self, sk: UdpSocket) -> None:
        if sk.local is not None and self.udp_ports.get(sk.local[1]) is sk:
            del self.udp_ports[sk.local[1]]
        if sk in self.sockets:
            self.sockets.remove(sk)

    def _udp_output(self, sk: UdpSocket, dst: tuple[bytes, int], data, now: float) -> int:
        # wire.udp.emit, inlined: the checksum over pseudo-header + header + payload in one
        # int.from_bytes of the payload (a sum of 16-bit words is that number modulo 0xffff, so
        # each address and field is added as an int) and one copy of the payload (header +
        # payload); the same bytes as udp_emit(self.ip, dst[0], sport, dport, data).
        payload = data if type(data) is bytes else bytes(data)
        length = 8 + len(payload)
        sport = sk.local[1]
        dip, dport = dst
        n = int.from_bytes(payload, "big")
        if length & 1:
            n <<= 8
        c = (n + int.from_bytes(self.ip, "big") + int.from_bytes(dip, "big") + 17 + length
             + sport + dport + length) % 0xFFFF or 0xFFFF
        c = ~c & 0xFFFF or 0xFFFF
        seg = _UDP_HDR.pack(sport, dport, length, c) + payload
        rc = self._ip_output(dip, IPPROTO_UDP, seg, now, sk.sk_gfp_mask(sk.sk_allocation),
                             sk.owner)
        if rc >= 0:
            self.snmp["Udp"]["OutDatagrams"] += 1
        elif rc == -errno.ENOBUFS:
            self.snmp["Udp"]["SndbufErrors"] += 1
        return rc

    # ------------------------------------------------------------------ IPv4 output
    def _route(self, dst: bytes) -> bytes | None:
        """Next hop for ``dst``: itself on the subnet (or broadcast), else the gateway."""
        if dst == LIMITED_BCAST or (int.from_bytes(dst, "big") & self._mask) == self._net:
            return dst
        return self.gateway

    def _ip_output(self, dst: bytes, proto: int, payload: bytes, now: float, gfp: int,
                   owner: str, *, df: bool = False, ttl: int = 64) -> int:
        ipc = self.snmp["Ip"]
        ipc["OutRequests"] += 1
        nh = self._route(dst)
        if nh is None:
            ipc["OutNoRoutes"] += 1
            self._drop_noskb("IP_OUTNOROUTES", False)
            return -errno.ENETUNREACH
        self._ident = (self._ident + 1) & 0xFFFF
        ident = self._ident
        mtu = self.dev.mtu
        # (header, payload slice) per frame; joined once with the link-layer header below.
        if 20 + len(payload) <= mtu:
            parts = [(emit_header(self.ip, dst, proto, len(payload), ident=ident, ttl=ttl,
                                  flags=IP_DF if df else 0), payload)]
        else:
            if df:
                return -errno.EMSGSIZE
            chunk = (mtu - 20) & ~7
            parts = []
            size = len(payload)
            view = memoryview(payload)
            src = self.ip
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
        bcast = nh == LIMITED_BCAST or nh == self.bcast
        alloc = self.alloc
        # The link-layer header once per datagram when the next hop is known (broadcast, or a
        # neighbour in a state neigh.output sends to at once): each fragment then goes straight
        # to the device, as neigh.output -> _neigh_xmit -> _dev_xmit would send it (same
        # header, same ``used`` stamp, same counters; the transmit buffer is freed once the
        # device took the frame, as consume_skb would). An unresolved next hop takes
        # neigh.output per fragment (queue + ARP).
        eth = None
        n = None
        if bcast:
            eth = _ETH_HDR.pack(BROADCAST, self.mac, ETH_P_IP)
        else:
            n = self.neigh.entries.get(nh)
            if n is not None and n.state in _NUD_SEND_NOW:
                eth = _ETH_HDR.pack(n.mac, self.mac, ETH_P_IP)
        join = b"".join
        transmit = self.dev.transmit
        c = self.counters
        for hdr, data in parts:
            size = len(hdr) + len(data)
            pages = alloc.alloc((size + 14 + 4095) >> 12, gfp, owner)
            if pages is None:
                ipc["OutDiscards"] += 1
                if len(parts) > 1:
                    ipc["FragFails"] += 1
                c["tx_nobuf"] += 1
                self._drop_noskb("NOMEM", False)
                return -errno.ENOBUFS
            if eth is not None:
                if not bcast:
                    n.used = now
                frame = join((eth, hdr, data))
                if transmit(frame, now) is False:
                    c["tx_errors"] += 1
                    self.kfree_skb(SkBuff(alloc, frame, pages, False), "FULL_RING")
                    continue
                c["tx_packets"] += 1
                c["tx_bytes"] += size + 14
                alloc.free(pages)
            elif not self.neigh.output(nh, SkBuff(alloc, hdr + data, pages, False), now):
                # ip_finish_output2: no neighbour entry could be made (table full)
                ipc["OutDiscards"] += 1
                if len(parts) > 1:
                    ipc["FragFails"] += 1
                return -errno.EINVAL
        return 0

    def _neigh_xmit(self, skb: SkBuff, mac: bytes, now: float) -> None:
        skb.data = eth_emit(mac, self.mac, ETH_P_IP, skb.data)
        self._dev_xmit(skb, now)

    def _dev_xmit(self, skb: SkBuff, now: float) -> None:
        frame = skb.data
        if self.dev.transmit(frame, now) is False:
            self.counters["tx_errors"] += 1
            self.kfree_skb(skb, "FULL_RING")
            return
        c = self.counters
        c["tx_packets"] += 1
        c["tx_bytes"] += len(frame)
        self.consume_skb(skb, "tx")

    # ================================================================== observation
    def snapshot(self) -> dict:
        return {
            "counters": dict(self.counters),
            "snmp": {k: dict(v) for k, v in self.snmp.items()},
            "drop_reasons": {k: v for k, v in self.drop_reasons.items() if v},
            "rx_fate": dict(self.rx_fate),
            "sockets": [s.snapshot() for s in self.sockets],
            "neigh": self.neigh.snapshot(),
            "ipfrag": {"queues": len(self.reasm.queues), "fragments": self.reasm.queued(),
                       "mem_bytes": self.reasm.mem, "peers": len(self.reasm.peers)},
            "policy": {"pfmemalloc_demux_drop": self.policy.pfmemalloc_demux_drop},
        }
