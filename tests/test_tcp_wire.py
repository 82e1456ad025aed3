"""TCP header and options codec (client_agent/wire/tcp.py): fixtures, scapy as the oracle."""

import pytest

from client_agent.wire import WireError
from client_agent.wire import tcp


def test_parse_syn_fixture():
    p = tcp.TcpPacket.new_checked(tcp.SYN_BYTES)
    assert (p.sport, p.dport, p.seq, p.ack_seq, p.flags, p.window) == (1234, 2049, 1, 0, tcp.SYN,
                                                                        64240)
    assert p.doff == 40 and p.verify_checksum(tcp.FIXTURE_SRC, tcp.FIXTURE_DST)
    o = p.options()
    assert (o.mss, o.wscale, o.sack_ok, o.saw_tstamp, o.tsval, o.tsecr) == (1460, 7, True, True,
                                                                             1, 0)


def test_emit_syn_fixture():
    assert tcp.emit(tcp.FIXTURE_SRC, tcp.FIXTURE_DST, 1234, 2049, 1, 0, tcp.SYN, 64240,
                    tcp.opt_syn(1460, 7, True, (1, 0))) == tcp.SYN_BYTES


def test_bad_offsets_are_pkt_too_small():
    for bad in (tcp.SYN_BYTES[:19], tcp.SYN_BYTES[:12] + b"\x40" + tcp.SYN_BYTES[13:],
                tcp.SYN_BYTES[:12] + b"\xf0" + tcp.SYN_BYTES[13:30]):
        with pytest.raises(WireError) as e:
            tcp.TcpPacket.new_checked(bad)
        assert e.value.reason == "PKT_TOO_SMALL"


@pytest.mark.parametrize("opts,check", [
    (b"\x02\x04\x05", lambda o: o.mss == 0),                   # partial option: parse stops
    (b"\x02\x00\x05\xb4", lambda o: o.mss == 0),               # length 0: parse stops
    (b"\x03\x03\x0e" + b"\x02\x04\x05\xb4", lambda o: o.wscale == 14 and o.mss == 1460),
    (b"\x03\x03\x63", lambda o: o.wscale == 14),               # > 14 is used as 14 (RFC 7323)
    (b"\x08\x09" + b"\0" * 7, lambda o: not o.saw_tstamp),     # wrong TS length: ignored
    (b"\x01\x01\x00\x02\x04\x05\xb4", lambda o: o.mss == 0),   # EOL ends the list
])
def test_option_parser_never_raises(opts, check):
    assert check(tcp.parse_options(opts, True))


def test_sack_blocks_only_without_syn():
    blk = tcp.opt_established(None, [(10, 20), (30, 40)])
    assert tcp.parse_options(blk, False).sack == [(10, 20), (30, 40)]
    assert tcp.parse_options(blk, True).sack is None


def test_sequence_comparisons_wrap():
    assert tcp.before(0xFFFFFFF0, 0x10) and tcp.after(0x10, 0xFFFFFFF0)
    assert not tcp.before(5, 5) and not tcp.after(5, 5)


def test_scapy_is_the_oracle():
    scapy = pytest.importorskip("scapy.all")
    ts = (0x01020304, 0x0a0b0c0d)
    for flags, sflags, opts, sopts, data in (
        (tcp.SYN | tcp.ACK, "SA", tcp.opt_syn(1448, 9, False, ts),
         [("MSS", 1448), ("NOP", None), ("NOP", None), ("Timestamp", ts), ("NOP", None),
          ("WScale", 9)], b""),
        (tcp.ACK | tcp.PSH, "PA", tcp.opt_established(ts, [(100, 200)]),
         [("NOP", None), ("NOP", None), ("Timestamp", ts), ("NOP", None), ("NOP", None),
          ("SAck", (100, 200))], b"hello, world!"),
        (tcp.RST | tcp.ACK, "RA", b"", [], b""),
    ):
        ref = bytes(scapy.IP(src="198.18.0.1", dst="198.18.0.2") /
                    scapy.TCP(sport=40000, dport=2049, seq=0xfffffff0, ack=77, flags=sflags,
                              window=1000, options=sopts) / data)[20:]
        ours = tcp.emit(tcp.FIXTURE_SRC, tcp.FIXTURE_DST, 40000, 2049, 0xfffffff0, 77, flags,
                        1000, opts, data)
        assert ours == ref
        p = tcp.TcpPacket.new_checked(ref)
        assert bytes(p.payload) == data and p.verify_checksum(tcp.FIXTURE_SRC, tcp.FIXTURE_DST)
