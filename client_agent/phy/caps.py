"""What a NIC does for the host: the device capabilities the stack asks before it does work itself.

Modelled on smoltcp's ``phy::DeviceCapabilities`` / ``ChecksumCapabilities`` (a ``Checksum`` per
protocol says what the *stack* must still do: ``BOTH`` verify on receive and fill on transmit,
``RX`` verify only -- the device fills it on transmit, ``TX`` fill only, ``NONE`` neither) and
named after Linux's netdev features as ``ethtool -k`` shows them:

- ``tx`` -- NETIF_F_HW_CSUM (``tx-checksum-ip-generic``): the device completes the UDP checksum
  of an *unfragmented* IPv4/UDP datagram. The stack then leaves the pseudo-header sum in the
  checksum field (CHECKSUM_PARTIAL, as ``udp4_hwcsum`` does) and the device hands the frame to
  the kernel with ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` (csum_start = the UDP header, csum_offset = 6).
  A datagram that IP fragments is checksummed by the stack, as ``ip_do_fragment`` calls
  ``skb_checksum_help`` for CHECKSUM_PARTIAL.
- ``rx`` -- NETIF_F_RXCSUM: the device reports per frame that the kernel already validated the
  checksum (``VIRTIO_NET_HDR_F_DATA_VALID`` / ``TP_STATUS_CSUM_VALID``); the stack then skips
  its own verification of that frame (CHECKSUM_UNNECESSARY). Off: the stack verifies those
  itself. A frame whose sender left the checksum to the NIC (``NEEDS_CSUM`` /
  ``TP_STATUS_CSUMNOTREADY``: CHECKSUM_PARTIAL on a veth) is reported either way -- its field
  holds a pseudo-header sum, not a checksum, and no wire could have corrupted it.
- ``gro`` -- NETIF_F_GRO: frames the kernel merged (virtio ``gso_type`` != NONE, longer than the
  MTU) are accepted as one buffer, charged like Linux's GRO skb (one buffer per merged segment:
  ``truesize`` grows by each segment's). Off: such a frame is dropped and counted
  (``rx_gso_dropped``), as a host without GRO never receives one.
- ``tx`` covers TCP as well (NETIF_F_HW_CSUM is protocol-generic): every TCP segment leaves the
  stack with the pseudo-header sum in its checksum field and goes out with NEEDS_CSUM,
  csum_offset = 16 (``offsetof(struct tcphdr, check)``); TCP segments are never IP-fragmented.
- ``tso`` -- NETIF_F_TSO (needs ``tx``, as ethtool refuses TSO without a checksum feature): TCP
  hands the device one segment of up to ``GSO_MAX_SIZE`` bytes covering several full-MSS
  buffers of its write queue, with ``gso_size`` = MSS; the device sends it with
  ``gso_type = VIRTIO_NET_HDR_GSO_TCPV4`` and the kernel segments it in C before the wire
  (``validate_xmit_skb`` -> ``skb_gso_segment``, the veth's own TSO being off with its checksum
  feature), so captures show per-MTU frames. The GSO buffer is charged to the pool as Linux's
  GSO skb: its bytes in pages, once (not one buffer per wire frame).
- ``ufo`` -- NETIF_F_UFO as a packet socket may still use it (VIRTIO_NET_HDR_GSO_UDP, accepted
  from tuntap and packet sockets since "net: accept UFO datagrams from tuntap and packet",
  4.14; needs ``tx``): a UDP datagram longer than the MTU leaves the stack as one buffer with a
  partial checksum and ``gso_size`` = the fragment payload ((MTU - 20) & ~7); the kernel
  completes the checksum and IP-fragments it in C (``udp4_ufo_fragment``), so the wire carries
  the same fragments ``ip_do_fragment`` would make. Charged as one GSO buffer.

Invariant: a device without a ``caps`` attribute has ``NO_OFFLOADS`` (the stack does all of it),
and a wrapper device (fault injection) exposes its inner device's ``caps`` unchanged -- the stack
and the device must agree on which frames carry a partial checksum.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace


class Checksum(enum.Enum):
    """What the stack must do with one protocol's checksum (smoltcp ``phy::Checksum``)."""

    BOTH = "both"   # verify on receive, fill on transmit
    RX = "rx"       # verify on receive; the device fills it on transmit
    TX = "tx"       # fill on transmit; the device verified it on receive
    NONE = "none"

    def rx(self) -> bool:
        return self in (Checksum.BOTH, Checksum.RX)

    def tx(self) -> bool:
        return self in (Checksum.BOTH, Checksum.TX)


@dataclass(frozen=True)
class ChecksumCapabilities:
    ipv4: Checksum = Checksum.BOTH
    udp: Checksum = Checksum.BOTH
    tcp: Checksum = Checksum.BOTH


@dataclass(frozen=True)
class DeviceCapabilities:
    checksum: ChecksumCapabilities = field(default_factory=ChecksumCapabilities)
    rx_csum: bool = False      # per-frame "checksum already valid" reports are trusted
    gro: bool = False
    tso: bool = False
    ufo: bool = False

    @property
    def tx_csum(self) -> bool:
        """True when the device fills the UDP checksum (the stack leaves a partial one)."""
        return not self.checksum.udp.tx()

    @property
    def tx_csum_tcp(self) -> bool:
        """True when the device fills the TCP checksum (the stack leaves a partial one)."""
        return not self.checksum.tcp.tx()

    def names(self) -> list[str]:
        return [n for n, on in (("tx", self.tx_csum), ("rx", self.rx_csum), ("gro", self.gro),
                                ("tso", self.tso), ("ufo", self.ufo)) if on]


NO_OFFLOADS = DeviceCapabilities()
GSO_MAX_SIZE = 65536                 # netdev gso_max_size: the largest IP packet TCP hands a TSO device
OFFLOAD_NAMES = ("tx", "rx", "gro", "tso", "ufo")


def parse_offloads(text: str) -> DeviceCapabilities:
    """``"tx,rx,gro"`` (ethtool -K short names; ``none`` or ``""``: no offloads) -> capabilities.

    Raises ValueError naming the bad item and the known ones."""
    caps = NO_OFFLOADS
    items = [t.strip() for t in text.split(",") if t.strip()] if text.strip() != "none" else []
    for item in items:
        if item == "none":
            raise ValueError(f"offloads {text!r}: 'none' stands alone (no offloads); drop it or the others")
        if item not in OFFLOAD_NAMES:
            raise ValueError(f"unknown offload {item!r}; known: {', '.join(OFFLOAD_NAMES)} (or none)")
        if item == "tso":
            if "tx" not in items:
                raise ValueError("offload 'tso' needs 'tx' (TSO fills checksums: ethtool refuses it without "
                                 "a checksum feature); use tx,tso")
            caps = replace(caps, tso=True)
        if item == "ufo":
            if "tx" not in items:
                raise ValueError("offload 'ufo' needs 'tx' (the kernel completes the checksum it leaves "
                                 "partial); use tx,ufo")
            caps = replace(caps, ufo=True)
        if item == "tx":
            caps = replace(caps, checksum=replace(caps.checksum, udp=Checksum.RX, tcp=Checksum.RX))
        elif item == "rx":
            caps = replace(caps, rx_csum=True)
        elif item == "gro":
            caps = replace(caps, gro=True)
    return caps


def device_caps(dev) -> DeviceCapabilities:
    """The capabilities the stack must honour for ``dev`` (NO_OFFLOADS when it declares none)."""
    caps = getattr(dev, "caps", None)
    return caps if isinstance(caps, DeviceCapabilities) else NO_OFFLOADS
