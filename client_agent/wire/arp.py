"""ARP for IPv4 over Ethernet (RFC 826).

Invariant: an :class:`ArpPacket` is only made from >= 28 bytes that say Ethernet/IPv4 with 6-
and 4-byte addresses and a request or reply opcode; anything else raises :class:`WireError`.
"""

import struct

from .errors import WireError

ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ARP_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")

# ARP(op=1, hwsrc="02:00:00:00:00:01", psrc="198.18.0.1", pdst="198.18.0.2") -- fixture
PACKET_BYTES = bytes.fromhex(
    "0001" "0800" "06" "04" "0001" "020000000001" "c6120001" "000000000000" "c6120002"
)


class ArpPacket:
    __slots__ = ("op", "sha", "spa", "tha", "tpa")

    def __init__(self, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> None:
        self.op = op
        self.sha = sha
        self.spa = spa
        self.tha = tha
        self.tpa = tpa

    @classmethod
    def new_checked(cls, buf) -> "ArpPacket":
        if len(buf) < ARP_LEN:
            raise WireError("PKT_TOO_SMALL", f"ARP of {len(buf)} bytes")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, 0)
        if htype != ARPHRD_ETHER or ptype != 0x0800 or hlen != 6 or plen != 4:
            raise WireError("UNHANDLED_PROTO", f"ARP hrd={htype} pro={ptype:#x} hln={hlen} pln={plen}")
        if op not in (ARPOP_REQUEST, ARPOP_REPLY):
            raise WireError("UNHANDLED_PROTO", f"ARP opcode {op}")
        return cls(op, sha, spa, tha, tpa)

    def emit(self) -> bytes:
        return _ARP.pack(ARPHRD_ETHER, 0x0800, 6, 4, self.op, self.sha, self.spa, self.tha, self.tpa)
