"""The virtio-net header AF_PACKET puts before each frame with ``PACKET_VNET_HDR``.

``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h; 10 bytes, little-endian on x86 as
``virtio_legacy_is_little_endian``): flags u8, gso_type u8, hdr_len le16, gso_size le16,
csum_start le16, csum_offset le16. The kernel fills it on receive (``virtio_net_hdr_from_skb``:
NEEDS_CSUM for CHECKSUM_PARTIAL with csum_start/csum_offset, DATA_VALID for
CHECKSUM_UNNECESSARY, gso_type/gso_size for a GSO/GRO skb) and reads it on transmit
(``virtio_net_hdr_to_skb``: NEEDS_CSUM -> ``skb_partial_csum_set``, gso_type -> a GSO skb the
device or ``skb_gso_segment`` splits).
"""

from __future__ import annotations

import struct

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size            # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80
UDP_CSUM_OFFSET = 6                      # offsetof(struct udphdr, check)
TCP_CSUM_OFFSET = 16                     # offsetof(struct tcphdr, check)

NO_OFFLOAD_HDR = bytes(VNET_HDR_LEN)     # flags 0, GSO_NONE: the frame is complete as it is


def tx_header(frame, tx_csum: bool, gso_size: int = 0) -> bytes:
    """The header for ``frame`` on transmit.

    With ``tx_csum`` it asks the kernel to finish the checksum of an unfragmented IPv4/UDP
    frame (MF clear, offset 0 -- the stack leaves the pseudo-header sum in those only, see
    caps.py: csum_offset 6) and of every IPv4/TCP frame (csum_offset 16): NEEDS_CSUM,
    csum_start = 14 + IHL*4, hdr_len = the headers. ``gso_size`` > 0: a TSO frame
    (``GSO_TCPV4``: the kernel cuts its payload into ``gso_size`` pieces, tcp_gso_segment) or a
    UFO datagram (``GSO_UDP``: the kernel IP-fragments it, fragments of ``gso_size`` bytes,
    udp4_ufo_fragment). Anything else goes out as it is (flags 0)."""
    if (tx_csum and len(frame) >= 42 and frame[12] == 8 and frame[13] == 0
            and not (frame[20] & 0x3F) and not frame[21]):
        start = 14 + (frame[14] & 15) * 4
        proto = frame[23]
        if proto == 17:
            return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                 VIRTIO_NET_HDR_GSO_UDP if gso_size else VIRTIO_NET_HDR_GSO_NONE,
                                 start + 8, gso_size, start, UDP_CSUM_OFFSET)
        if proto == 6 and len(frame) >= start + 20:
            hlen = start + (frame[start + 12] >> 4) * 4
            return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                 VIRTIO_NET_HDR_GSO_TCPV4 if gso_size else VIRTIO_NET_HDR_GSO_NONE,
                                 hlen, gso_size, start, TCP_CSUM_OFFSET)
    return NO_OFFLOAD_HDR


def gso_segments(frame_len: int, hdr_len: int, gso_size: int) -> int:
    """Segments a GSO/GRO frame of ``frame_len`` bytes stands for (``skb_shinfo()->gso_segs``)."""
    if gso_size <= 0:
        return 1
    payload = max(frame_len - hdr_len, 1)
    return -(-payload // gso_size)


def gro_pages(frame_len: int, hdr_len: int, gso_size: int) -> int:
    """Pool pages a GRO'd frame is charged, as Linux's truesize of the merged skb: each merged
    segment keeps its own buffer (``skb_gro_receive`` adds every segment's truesize), so one
    buffer per segment of headers + gso_size bytes, at least the frame's own length."""
    segs = gso_segments(frame_len, hdr_len, gso_size)
    per_seg = (hdr_len + gso_size + 4095) >> 12 or 1
    return max(segs * per_seg, (frame_len + 4095) >> 12)
