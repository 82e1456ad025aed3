"""UDP (RFC 768): view, checksum with the IPv4 pseudo-header, encoder.

Invariant: a :class:`UdpPacket` from ``new_checked`` has 8 <= ``length`` <= len(buf) (Linux
__udp4_lib_rcv: otherwise PKT_TOO_SMALL, the "short_packet" path); its ``payload`` is
``buf[8:length]``. A checksum field of zero means "none" and verifies (RFC 768); a computed
checksum of zero is sent as 0xffff.
"""

import struct

from .checksum import checksum, fold, ones_sum, pseudo_header_sum
from .errors import WireError
from .ipv4 import IPPROTO_UDP

UDP_HLEN = 8
_HDR = struct.Struct("!HHHH")

# UDP(sport=1234, dport=2049) / b"hi" between 198.18.0.1 and 198.18.0.2 -- fixture
PACKET_BYTES = bytes.fromhex("04d2" "0801" "000a" "fe75") + b"hi"
FIXTURE_SRC = bytes([198, 18, 0, 1])
FIXTURE_DST = bytes([198, 18, 0, 2])


class UdpPacket:
    __slots__ = ("sport", "dport", "length", "csum", "buf")

    @classmethod
    def new_checked(cls, buf) -> "UdpPacket":
        n = len(buf)
        if n < UDP_HLEN:
            raise WireError("PKT_TOO_SMALL", f"UDP of {n} bytes")
        p = cls.__new__(cls)
        p.sport, p.dport, p.length, p.csum = _HDR.unpack_from(buf, 0)
        if p.length > n or p.length < UDP_HLEN:
            raise WireError("PKT_TOO_SMALL", f"UDP length {p.length} in {n} bytes")
        p.buf = buf
        return p

    def verify_checksum(self, src: bytes, dst: bytes) -> bool:
        if self.csum == 0:
            return True
        s = pseudo_header_sum(src, dst, IPPROTO_UDP, self.length) + ones_sum(self.buf[:self.length])
        return fold(s) == 0xFFFF

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[UDP_HLEN:self.length]


def emit(src: bytes, dst: bytes, sport: int, dport: int, payload, with_checksum: bool = True) -> bytes:
    payload = bytes(payload)
    length = UDP_HLEN + len(payload)
    seg = _HDR.pack(sport, dport, length, 0) + payload
    if not with_checksum:
        return seg
    c = ~fold(pseudo_header_sum(src, dst, IPPROTO_UDP, length) + ones_sum(seg)) & 0xFFFF
    if c == 0:
        c = 0xFFFF
    return seg[:6] + c.to_bytes(2, "big") + seg[8:]
