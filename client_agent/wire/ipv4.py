"""IPv4 header (RFC 791): view with Linux's ip_rcv_core validation order, and encoder.

Invariant: an :class:`Ipv4Packet` from ``new_checked`` has version 4, 5 <= IHL, a header that
fits the buffer, a correct header checksum and ``hlen <= total_len <= len(buf)``; its
``payload`` is exactly ``buf[hlen:total_len]`` (link-layer padding trimmed). Options are kept
as bytes and otherwise skipped. Failures raise :class:`WireError` with the reason Linux uses:
short/bad header -> IP_INHDR, checksum -> IP_CSUM, total length beyond the frame -> PKT_TOO_SMALL.

TTL: a host delivers datagrams whatever their TTL (RFC 1122 3.2.1.7: it "MUST NOT discard a
datagram just because it was received with TTL less than 2"; Linux checks TTL only when
forwarding). The TTL rule a host owns is on transmit: ``emit`` refuses TTL 0.
"""

import socket
import struct

from .checksum import checksum, ones_sum
from .errors import WireError

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IP_HLEN = 20
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET_MASK = 0x1FFF
IP_MAX_LEN = 65535
DEFAULT_TTL = 64         # Linux net.ipv4.ip_default_ttl

_HDR = struct.Struct("!BBHHHBBH4s4s")

# IP(src="198.18.0.1", dst="198.18.0.2", id=1, ttl=64, proto=17) / b"\0"*8 -- fixture
PACKET_BYTES = bytes.fromhex("4500001c000100004011eea8c6120001c6120002") + b"\x00" * 8


def ip_aton(text: str) -> bytes:
    return socket.inet_aton(text)


def ip_ntoa(addr: bytes) -> str:
    return socket.inet_ntoa(addr)


class Ipv4Packet:
    """Validated view. ``frag_off`` is in bytes."""

    __slots__ = ("buf", "hlen", "tos", "total_len", "ident", "flags", "frag_off", "ttl",
                 "proto", "src", "dst")

    @classmethod
    def new_checked(cls, buf) -> "Ipv4Packet":
        n = len(buf)
        if n < IP_HLEN:
            raise WireError("IP_INHDR", f"{n} bytes, shorter than an IPv4 header")
        vihl, tos, total_len, ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(buf, 0)
        hlen = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or hlen < IP_HLEN:
            raise WireError("IP_INHDR", f"version {vihl >> 4}, ihl {vihl & 15}")
        if n < hlen:
            raise WireError("IP_INHDR", f"header of {hlen} bytes in {n}")
        if ones_sum(buf[:hlen]) != 0xFFFF:
            raise WireError("IP_CSUM", "header checksum")
        if total_len > n:
            raise WireError("PKT_TOO_SMALL", f"total length {total_len} > {n} received")
        if total_len < hlen:
            raise WireError("IP_INHDR", f"total length {total_len} < header {hlen}")
        p = cls.__new__(cls)
        p.buf = buf
        p.hlen = hlen
        p.tos = tos
        p.total_len = total_len
        p.ident = ident
        p.flags = frag & 0xE000
        p.frag_off = (frag & IP_OFFSET_MASK) << 3
        p.ttl = ttl
        p.proto = proto
        p.src = src
        p.dst = dst
        return p

    @property
    def more_frags(self) -> bool:
        return bool(self.flags & IP_MF)

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags & IP_MF) or self.frag_off != 0

    @property
    def options(self) -> bytes:
        return bytes(self.buf[IP_HLEN:self.hlen])

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[self.hlen:self.total_len]


def emit_header(src: bytes, dst: bytes, proto: int, payload_len: int, *, ident: int = 0,
                ttl: int = DEFAULT_TTL, tos: int = 0, flags: int = 0, frag_off: int = 0,
                options: bytes = b"") -> bytes:
    """An IPv4 header with its checksum. ``frag_off`` in bytes (a multiple of 8)."""
    if ttl <= 0 or ttl > 255:
        raise ValueError(f"ttl {ttl}: a host must not send TTL 0 (RFC 1122 3.2.1.7)")
    if frag_off & 7:
        raise ValueError(f"fragment offset {frag_off} is not a multiple of 8")
    if len(options) & 3:
        options = options + b"\x00" * (4 - (len(options) & 3))   # pad with End of Option List
    hlen = IP_HLEN + len(options)
    total = hlen + payload_len
    if total > IP_MAX_LEN:
        raise ValueError(f"datagram of {total} bytes exceeds {IP_MAX_LEN}")
    hdr = _HDR.pack(0x40 | (hlen >> 2), tos, total, ident, flags | (frag_off >> 3), ttl,
                    proto, 0, src, dst) + options
    c = checksum(hdr)
    return hdr[:10] + c.to_bytes(2, "big") + hdr[12:]
