"""ICMPv4 (RFC 792): echo request/reply view and encoder.

Invariant: an :class:`IcmpPacket` is made only from >= 8 bytes whose checksum over the whole
message is correct (ICMP_CSUM otherwise; PKT_TOO_SMALL when shorter than the header).
"""

import struct

from .checksum import checksum, ones_sum
from .errors import WireError

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO = 8
NR_ICMP_TYPES = 18        # types above it are unhandled (Linux icmp_rcv)
ICMP_HLEN = 8

_ECHO = struct.Struct("!BBHHH")

# ICMP(type=8, id=0x1234, seq=1) / b"ping" -- fixture
PACKET_BYTES = bytes.fromhex("0800" "06fa" "1234" "0001") + b"ping"


class IcmpPacket:
    __slots__ = ("type", "code", "ident", "seq", "buf")

    @classmethod
    def new_checked(cls, buf) -> "IcmpPacket":
        if len(buf) < ICMP_HLEN:
            raise WireError("PKT_TOO_SMALL", f"ICMP of {len(buf)} bytes")
        if ones_sum(buf) != 0xFFFF:
            raise WireError("ICMP_CSUM", "ICMP checksum")
        p = cls.__new__(cls)
        p.type, p.code, _c, p.ident, p.seq = _ECHO.unpack_from(buf, 0)
        p.buf = buf
        return p

    @property
    def data(self) -> memoryview:
        return memoryview(self.buf)[ICMP_HLEN:]


def emit_echo(icmp_type: int, ident: int, seq: int, data=b"", code: int = 0) -> bytes:
    msg = _ECHO.pack(icmp_type, code, 0, ident, seq) + bytes(data)
    c = checksum(msg)
    return msg[:2] + c.to_bytes(2, "big") + msg[4:]
