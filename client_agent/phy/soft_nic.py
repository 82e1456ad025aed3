"""Offloads on an in-memory wire: what the kernel behind a packet socket does with a frame's
virtio-net header, done in Python, so a scenario's ``offloads`` mean the same in the simulation
as on real packets.

On a real run the agent's ring or socket device (phy/ring.py, phy/afpacket.py) hands the kernel
each frame with a virtio-net header (phy/vnet.py) and the kernel finishes it in C before the veth
(``virtio_net_hdr_to_skb``, then ``validate_xmit_skb``: ``skb_checksum_help`` for a partial
checksum on a device without the feature, ``skb_gso_segment`` for a GSO buffer). ``SoftNic``
wraps an in-memory device (phy/wire_pair.py, possibly a fault injector) and does the same on
transmit, so the frames on the wire -- and in the simulation's pcap -- are the ones the veth
would carry:

- a partial checksum (``tx``: the stack left the pseudo-header sum, CHECKSUM_PARTIAL) is
  completed as ``skb_checksum_help`` does: the ones'-complement sum from ``csum_start`` to the
  end, folded, complemented, at ``csum_start + csum_offset`` (a UDP result of 0 is sent as
  0xffff, RFC 768);
- a TSO buffer (``tso``, ``VIRTIO_NET_HDR_GSO_TCPV4``) is cut as ``tcp_gso_segment`` /
  ``inet_gso_segment`` cut it: ``gso_size`` payload bytes a segment, the IP ID incremented per
  segment, each segment's total length and header checksum, the sequence number advanced, FIN
  and PSH on the last segment only, CWR on the first only, and each TCP checksum in full;
- a UFO datagram (``ufo``, ``VIRTIO_NET_HDR_GSO_UDP``) gets its UDP checksum over the whole
  datagram and is IP-fragmented in ``gso_size``-byte pieces, as ``udp4_ufo_fragment`` does (same
  IP ID, MF on all but the last, offsets in 8-byte units).

On receive, with ``rx`` the device reports per frame whether its checksum is valid, as the
kernel's CHECKSUM_UNNECESSARY does (``(frame, csum_ok)`` items, phy/device.py): it verifies the
UDP/TCP checksum of an unfragmented IPv4 datagram itself -- a hostile frame with a bad checksum
is reported not valid and the stack verifies and drops it as it would without the offload.
``gro`` is accepted and has no effect here: nothing on an in-memory wire merges frames (a GRO'd
frame reaches a real agent only when the kernel merged it, phy/caps.py).

The caps the stack sees are ``caps`` (what the scenario said the NIC has); the wrapped device is
asked for nothing but whole, finished frames. Counters: ``soft_csum`` (checksums completed),
``soft_gso`` (GSO buffers) and ``soft_gso_segs`` (wire frames cut from them), plus the inner
device's.
"""

from __future__ import annotations

import struct

from ..wire.checksum import ones_sum
from .caps import DeviceCapabilities, device_caps
from .device import ForwardsOnRx
from .vnet import (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP,
                   VNET_HDR, tx_header)

__all__ = ["SoftNic"]

_H16 = struct.Struct("!H")
_H32 = struct.Struct("!I")
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80
_IP_MF = 0x2000


def _ip_csum(hdr: bytearray) -> None:
    """The IPv4 header checksum of ``hdr`` (20+ bytes) in place (ip_send_check)."""
    hdr[10:12] = b"\0\0"
    hdr[10:12] = _H16.pack(~ones_sum(hdr) & 0xFFFF)


def _l4_csum(ip: bytes | bytearray, proto: int, l4: bytearray, off: int) -> None:
    """The UDP/TCP checksum of ``l4`` (header + payload) with its IPv4 pseudo-header, at ``off``."""
    l4[off:off + 2] = b"\0\0"
    s = ones_sum(ip[12:20]) + proto + len(l4) + ones_sum(l4)
    c = ~(s % 0xFFFF or 0xFFFF) & 0xFFFF
    if proto == 17 and c == 0:
        c = 0xFFFF
    l4[off:off + 2] = _H16.pack(c)


class SoftNic(ForwardsOnRx):
    """``SoftNic(inner, caps)``: ``inner`` is any Device without offloads; ``caps`` the NIC's."""

    def __init__(self, inner, caps: DeviceCapabilities) -> None:
        if device_caps(inner).names():
            raise ValueError(f"SoftNic wraps a device without offloads; {inner!r} has "
                             f"{','.join(device_caps(inner).names())}")
        self.inner = inner
        self.caps = caps
        self.mac, self.mtu = inner.mac, inner.mtu
        self._tx_csum = caps.tx_csum or caps.tx_csum_tcp
        self.soft_counters = {"soft_csum": 0, "soft_gso": 0, "soft_gso_segs": 0, "soft_rx_csum_bad": 0}

    # -- transmit ----------------------------------------------------------------------------
    def transmit(self, frame: bytes, now: float, gso_size: int = 0) -> bool:
        """Finish ``frame`` as the kernel would (module docstring) and send what it becomes."""
        hdr = tx_header(frame, self._tx_csum, gso_size)
        flags, gso_type, hdr_len, gsz, start, off = VNET_HDR.unpack(hdr)
        if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return self.inner.transmit(frame, now)
        c = self.soft_counters
        if gso_type == VIRTIO_NET_HDR_GSO_TCPV4 and len(frame) - hdr_len > gsz > 0:
            frames = self._tcp_segment(frame, hdr_len, gsz, start)
        elif gso_type == VIRTIO_NET_HDR_GSO_UDP and len(frame) - 14 > self.mtu and gsz > 0:
            frames = self._ufo_fragment(frame, gsz, start)
        else:
            buf = bytearray(frame)
            proto = buf[23]
            l4 = buf[start:]
            _l4_csum(buf[14:start], proto, l4, off)
            buf[start:] = l4
            c["soft_csum"] += 1
            return self.inner.transmit(bytes(buf), now)
        c["soft_gso"] += 1
        c["soft_gso_segs"] += len(frames)
        ok = True
        for f in frames:
            ok = self.inner.transmit(f, now) and ok
        return ok

    @staticmethod
    def _tcp_segment(frame: bytes, hdr_len: int, mss: int, start: int) -> list[bytes]:
        """tcp_gso_segment + inet_gso_segment for one IPv4/TCP buffer (module docstring)."""
        eth_ip = frame[:start]
        tcp_hdr = frame[start:hdr_len]
        payload = memoryview(frame)[hdr_len:]
        ip_id = _H16.unpack_from(frame, 18)[0]
        seq = _H32.unpack_from(frame, start + 4)[0]
        flags = frame[start + 13]
        out = []
        n = len(payload)
        for i, pos in enumerate(range(0, n, mss)):
            chunk = payload[pos:pos + mss]
            last = pos + mss >= n
            ip = bytearray(eth_ip[14:])
            ip[2:4] = _H16.pack(len(ip) + len(tcp_hdr) + len(chunk))
            ip[4:6] = _H16.pack((ip_id + i) & 0xFFFF)
            _ip_csum(ip)
            l4 = bytearray(tcp_hdr) + chunk
            l4[4:8] = _H32.pack((seq + pos) & 0xFFFFFFFF)
            f = flags
            if not last:
                f &= ~(_TCP_FIN | _TCP_PSH)
            if i:
                f &= ~_TCP_CWR
            l4[13] = f
            _l4_csum(ip, 6, l4, 16)
            out.append(bytes(eth_ip[:14] + ip + l4))
        return out

    @staticmethod
    def _ufo_fragment(frame: bytes, frag_size: int, start: int) -> list[bytes]:
        """udp4_ufo_fragment: the datagram's UDP checksum, then IP fragments (module docstring)."""
        ip0 = bytearray(frame[14:start])
        l4 = bytearray(frame[start:])
        _l4_csum(ip0, 17, l4, 6)
        out = []
        n = len(l4)
        for pos in range(0, n, frag_size):
            chunk = l4[pos:pos + frag_size]
            ip = bytearray(ip0)
            ip[2:4] = _H16.pack(len(ip) + len(chunk))
            ip[6:8] = _H16.pack((_IP_MF if pos + frag_size < n else 0) | (pos >> 3))
            _ip_csum(ip)
            out.append(bytes(frame[:14] + ip + chunk))
        return out

    # -- receive -----------------------------------------------------------------------------
    def receive(self, now: float, budget: int) -> list:
        items = self.inner.receive(now, budget)
        if not self.caps.rx_csum:
            return items
        return [self._rx_item(it) for it in items]

    def _rx_item(self, item):
        frame = item[0] if type(item) is tuple else item
        return (frame, self._l4_valid(frame))

    def _l4_valid(self, frame: bytes) -> bool:
        """CHECKSUM_UNNECESSARY: an unfragmented IPv4 UDP/TCP datagram whose checksum verifies
        (a UDP checksum of 0 means none was sent: nothing to trust)."""
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[20] & 0x3F or frame[21]:
            return False
        ihl = (frame[14] & 15) * 4
        proto = frame[23]
        total = _H16.unpack_from(frame, 16)[0]
        if proto not in (6, 17) or total > len(frame) - 14 or total < ihl + 8:
            return False
        l4 = frame[14 + ihl:14 + total]
        if proto == 17 and l4[6:8] == b"\0\0":
            return False
        ok = (ones_sum(frame[26:34]) + proto + len(l4) + ones_sum(l4)) % 0xFFFF == 0
        if not ok:
            self.soft_counters["soft_rx_csum_bad"] += 1
        return ok

    def poll_at(self) -> float | None:
        return self.inner.poll_at()

    @property
    def pending(self) -> int:
        return getattr(self.inner, "pending", 0)

    @property
    def counters(self) -> dict:
        return {**getattr(self.inner, "counters", {}), **self.soft_counters}

    def __getattr__(self, name: str):
        # anything else a wrapped in-memory device offers (flush_tx, sample_stats, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
