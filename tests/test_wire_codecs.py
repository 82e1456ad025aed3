"""Wire codecs: parse and emit each byte fixture; encoders' bytes equal scapy's (the oracle)."""

import pytest

from client_agent.wire import WireError, arp, checksum, ethernet, icmp, ipv4, udp

A = bytes([198, 18, 0, 1])
B = bytes([198, 18, 0, 2])
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def test_checksum_rfc1071_example():
    # RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2
    assert checksum.ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert checksum.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum.ones_sum(b"\x01") == 0x0100          # odd length padded at the end
    assert checksum.ones_sum(b"\xff\xff") == 0xFFFF
    assert checksum.ones_sum(b"\x00\x00") == 0


def test_ethernet_parse_and_emit():
    f = ethernet.EthernetFrame.new_checked(ethernet.PACKET_BYTES)
    assert (f.dst, f.src, f.ethertype, bytes(f.payload)) == (MAC_B, MAC_A, 0x0800, b"\x45")
    assert ethernet.emit(MAC_B, MAC_A, 0x0800, b"\x45") == ethernet.PACKET_BYTES
    with pytest.raises(WireError) as e:
        ethernet.EthernetFrame.new_checked(b"\x00" * 13)
    assert e.value.reason == "PKT_TOO_SMALL"
    assert ethernet.mac_str(ethernet.mac_bytes("02:00:00:00:00:01")) == "02:00:00:00:00:01"


def test_arp_parse_and_emit():
    p = arp.ArpPacket.new_checked(arp.PACKET_BYTES)
    assert (p.op, p.sha, p.spa, p.tha, p.tpa) == (1, MAC_A, A, b"\0" * 6, B)
    assert p.emit() == arp.PACKET_BYTES
    bad = bytearray(arp.PACKET_BYTES)
    bad[7] = 9                                             # opcode 9
    with pytest.raises(WireError) as e:
        arp.ArpPacket.new_checked(bytes(bad))
    assert e.value.reason == "UNHANDLED_PROTO"
    with pytest.raises(WireError) as e:
        arp.ArpPacket.new_checked(arp.PACKET_BYTES[:27])
    assert e.value.reason == "PKT_TOO_SMALL"


def test_ipv4_parse_and_emit():
    p = ipv4.Ipv4Packet.new_checked(ipv4.PACKET_BYTES)
    assert (p.hlen, p.total_len, p.ident, p.ttl, p.proto, p.src, p.dst) == (20, 28, 1, 64, 17, A, B)
    assert not p.is_fragment and bytes(p.payload) == b"\0" * 8
    assert ipv4.emit_header(A, B, 17, 8, ident=1) + b"\0" * 8 == ipv4.PACKET_BYTES
    # link-layer padding is trimmed from the payload
    assert bytes(ipv4.Ipv4Packet.new_checked(ipv4.PACKET_BYTES + b"pad").payload) == b"\0" * 8


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b[:19], "IP_INHDR"),
    (lambda b: bytes([0x65]) + b[1:], "IP_INHDR"),            # version 6
    (lambda b: bytes([0x44]) + b[1:], "IP_INHDR"),            # ihl 4
    (lambda b: bytes([0x4F]) + b[1:], "IP_INHDR"),            # ihl 15 > 28 bytes
    (lambda b: b[:11] + bytes([b[11] ^ 1]) + b[12:], "IP_CSUM"),
    (lambda b: b[:-1], "PKT_TOO_SMALL"),                      # total length 28 > 27
])
def test_ipv4_rejects(mutate, reason):
    with pytest.raises(WireError) as e:
        ipv4.Ipv4Packet.new_checked(mutate(ipv4.PACKET_BYTES))
    assert e.value.reason == reason


def test_ipv4_total_len_below_header_is_inhdr():
    hdr = bytearray(ipv4.emit_header(A, B, 17, 8))
    hdr[2:4] = (12).to_bytes(2, "big")
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum.checksum(bytes(hdr)).to_bytes(2, "big")
    with pytest.raises(WireError) as e:
        ipv4.Ipv4Packet.new_checked(bytes(hdr) + b"\0" * 8)
    assert e.value.reason == "IP_INHDR"


def test_ipv4_emit_refuses_ttl_zero():
    with pytest.raises(ValueError):
        ipv4.emit_header(A, B, 17, 0, ttl=0)


def test_icmp_parse_and_emit():
    p = icmp.IcmpPacket.new_checked(icmp.PACKET_BYTES)
    assert (p.type, p.code, p.ident, p.seq, bytes(p.data)) == (8, 0, 0x1234, 1, b"ping")
    assert icmp.emit_echo(8, 0x1234, 1, b"ping") == icmp.PACKET_BYTES
    with pytest.raises(WireError) as e:
        icmp.IcmpPacket.new_checked(icmp.PACKET_BYTES[:-1] + b"x")
    assert e.value.reason == "ICMP_CSUM"


def test_udp_parse_emit_and_checksum():
    p = udp.UdpPacket.new_checked(udp.PACKET_BYTES)
    assert (p.sport, p.dport, p.length, bytes(p.payload)) == (1234, 2049, 10, b"hi")
    assert p.verify_checksum(udp.FIXTURE_SRC, udp.FIXTURE_DST)
    assert not p.verify_checksum(udp.FIXTURE_SRC, bytes([198, 18, 0, 3]))
    assert udp.emit(udp.FIXTURE_SRC, udp.FIXTURE_DST, 1234, 2049, b"hi") == udp.PACKET_BYTES
    none = udp.emit(A, B, 1, 2, b"x", with_checksum=False)
    assert none[6:8] == b"\0\0" and udp.UdpPacket.new_checked(none).verify_checksum(A, B)
    for bad in (udp.PACKET_BYTES[:7], udp.PACKET_BYTES[:9]):
        with pytest.raises(WireError) as e:
            udp.UdpPacket.new_checked(bad)
        assert e.value.reason == "PKT_TOO_SMALL"


# --- scapy as the oracle -------------------------------------------------------------------

def test_oracle_ether_ip_udp():
    from scapy.all import IP, UDP, Ether
    for payload in (b"", b"hi", bytes(range(256)) * 5 + b"odd"):
        ref = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
                    / IP(src="198.18.0.1", dst="198.18.0.2", id=77, ttl=63, flags="DF")
                    / UDP(sport=700, dport=2049) / payload)
        seg = udp.emit(A, B, 700, 2049, payload)
        ours = ethernet.emit(MAC_B, MAC_A, 0x0800,
                             ipv4.emit_header(A, B, 17, len(seg), ident=77, ttl=63, flags=ipv4.IP_DF) + seg)
        assert ours == ref


def test_oracle_checksum_ffff_case():
    """A segment whose checksum computes to 0 must be sent as 0xffff, as scapy does."""
    from scapy.all import IP, UDP
    for sport in range(65536):
        seg = udp.emit(A, B, sport, 9, b"", with_checksum=False)
        s = checksum.fold(checksum.pseudo_header_sum(A, B, 17, 8) + checksum.ones_sum(seg))
        if s == 0xFFFF:
            break
    ref = bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=sport, dport=9))[20:]
    assert udp.emit(A, B, sport, 9, b"")[6:8] == b"\xff\xff" == ref[6:8]


def test_oracle_icmp_arp_options_fragment():
    from scapy.all import ARP, ICMP, IP, Ether, IPOption_Router_Alert
    ref = bytes(IP(src="198.18.0.1", dst="198.18.0.2", id=5) / ICMP(type=0, id=9, seq=3) / b"abc")
    msg = icmp.emit_echo(0, 9, 3, b"abc")
    assert ipv4.emit_header(A, B, 1, len(msg), ident=5) + msg == ref
    ref = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01")
                / ARP(op=2, hwsrc="02:00:00:00:00:01", psrc="198.18.0.1",
                      hwdst="02:00:00:00:00:02", pdst="198.18.0.2"))
    ours = ethernet.emit(ethernet.BROADCAST, MAC_A, ethernet.ETH_P_ARP,
                         arp.ArpPacket(2, MAC_A, A, MAC_B, B).emit())
    assert ours == ref
    ra = bytes(IPOption_Router_Alert())
    ref = bytes(IP(src="198.18.0.1", dst="198.18.0.2", id=3, options=[IPOption_Router_Alert()],
                   flags="MF", frag=185, proto=17) / (b"z" * 16))
    ours = ipv4.emit_header(A, B, 17, 16, ident=3, flags=ipv4.IP_MF, frag_off=185 * 8, options=ra)
    assert ours + b"z" * 16 == ref
    p = ipv4.Ipv4Packet.new_checked(ref)
    assert (p.hlen, p.options, p.frag_off, p.more_frags) == (24, ra, 1480, True)
