"""Ethernet II frames (no FCS: devices hand frames over without it, as AF_PACKET does).

Invariant: an :class:`EthernetFrame` exists only for a buffer of at least ``ETH_HLEN`` bytes;
its ``payload`` is everything after the header (padding included -- the IP layer trims it).
"""

import struct

from .errors import WireError

ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_AOE = 0x88A2       # ATA over Ethernet: no socket, fails skb_pfmemalloc_protocol
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

_HDR = struct.Struct("!6s6sH")

# Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x0800) / b"\x45" -- fixture
PACKET_BYTES = bytes.fromhex("020000000002" "020000000001" "0800") + b"\x45"


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_bytes(text: str) -> bytes:
    out = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(out) != ETH_ALEN:
        raise ValueError(f"a MAC address has 6 bytes, {text!r} has {len(out)}")
    return out


def is_multicast(mac: bytes) -> bool:
    """Group bit set (broadcast included)."""
    return bool(mac[0] & 1)


class EthernetFrame:
    """View over one frame's bytes."""

    __slots__ = ("buf", "dst", "src", "ethertype")

    def __init__(self, buf, dst: bytes, src: bytes, ethertype: int) -> None:
        self.buf = buf
        self.dst = dst
        self.src = src
        self.ethertype = ethertype

    @classmethod
    def new_checked(cls, buf) -> "EthernetFrame":
        if len(buf) < ETH_HLEN:
            raise WireError("PKT_TOO_SMALL", f"ethernet frame of {len(buf)} bytes")
        dst, src, ethertype = _HDR.unpack_from(buf, 0)
        return cls(buf, dst, src, ethertype)

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[ETH_HLEN:]


def emit(dst: bytes, src: bytes, ethertype: int, payload) -> bytes:
    """Header + payload. No padding to 60 bytes: veths and AF_PACKET do not need it."""
    return _HDR.pack(dst, src, ethertype) + bytes(payload)
