"""phy: WirePair hand-over and latency, seeded FaultInjector, pcap files readable by scapy."""

from client_agent.phy.fault import FaultInjector
from client_agent.phy.pcap import PcapTap, PcapWriter
from client_agent.phy.wire_pair import WirePair


def _frames(n):
    return [bytes([i % 256]) * 60 for i in range(n)]


def test_wire_pair_latency_and_budget():
    pair = WirePair(latency_s=0.002)
    for f in _frames(5):
        assert pair.a.transmit(f, 1.0)
    assert pair.b.receive(1.001, 10) == []
    assert pair.b.poll_at() == 1.002
    got = pair.b.receive(1.002, 3)
    assert got == _frames(5)[:3]                          # budget bounds the batch, order kept
    assert pair.b.receive(1.002, 10) == _frames(5)[3:]
    assert pair.b.poll_at() is None
    assert pair.b.counters["rx_packets"] == 5 and pair.a.counters["tx_packets"] == 5
    assert not pair.a.transmit(b"x" * 1515, 1.0)          # above MTU 1500 + 14
    assert pair.a.counters["tx_dropped_mtu"] == 1


def test_wire_pair_calls_loop_for_delayed_frames():
    calls = []

    class FakeLoop:
        def call_at(self, t, fn):
            calls.append(t)
            fn()
    woke = []
    pair = WirePair(loop=FakeLoop(), latency_s=0.5)
    pair.b.on_rx = lambda: woke.append(1)
    pair.a.transmit(b"y" * 20, 2.0)
    assert calls == [2.5] and woke == [1]


def _run_faults(seed, n=2000, **kw):
    pair = WirePair()
    fi = FaultInjector(pair.a, seed, **kw)
    frames = [i.to_bytes(4, "big") * 15 for i in range(n)]
    out = []
    t = 0.0
    for f in frames:
        fi.transmit(f, t)
        t += 0.0001
        out += pair.b.receive(t, 10**6)
    fi.flush(t + 10)
    out += pair.b.receive(t + 10, 10**6)
    return fi, frames, out


def test_fault_injector_is_seeded_and_accounts_every_frame():
    fi, frames, out = _run_faults(7, loss=0.1, dup=0.05, reorder=0.05)
    fi2, _f, out2 = _run_faults(7, loss=0.1, dup=0.05, reorder=0.05)
    assert out == out2 and fi.counters == fi2.counters    # same seed, same faults
    c = fi.counters
    assert c["tx_frames"] == 2000 == c["lost"] + c["passed"]
    assert len(out) == c["passed"] + c["duplicated"]
    assert 150 < c["lost"] < 250 and 60 < c["duplicated"] < 140 and c["reordered"] > 50
    # reordering happened: the received sequence is not sorted
    seq = [int.from_bytes(f[:4], "big") for f in out]
    assert seq != sorted(seq) and set(seq) <= set(range(2000))
    _fi3, _f3, out3 = _run_faults(8, loss=0.1, dup=0.05, reorder=0.05)
    assert out3 != out


def test_fault_injector_delay_and_corrupt():
    pair = WirePair()
    fi = FaultInjector(pair.a, 1, delay_s=0.1, corrupt=1.0)
    fi.transmit(b"\x00" * 64, 5.0)
    assert pair.b.receive(5.05, 10) == [] and fi.poll_at() == 5.1
    got = fi.receive(5.1, 10) + pair.b.receive(5.1, 10)
    assert len(got) == 1 and got[0] != b"\x00" * 64 and sum(bin(b).count("1") for b in got[0]) == 1


def test_pcap_writer_and_tap_read_back_with_scapy(tmp_path):
    from scapy.all import IP, UDP, Ether, rdpcap
    pkt = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src="198.18.0.1",
                dst="198.18.0.2") / UDP(sport=1, dport=2) / b"hello")
    pair = WirePair()
    tap = PcapTap(pair.b, tmp_path / "b.pcap")
    pair.a.transmit(pkt, 12.25)
    assert tap.receive(12.5, 10) == [pkt]
    tap.transmit(pkt[:40], 13.0)
    tap.close()
    caps = rdpcap(str(tmp_path / "b.pcap"))
    assert [bytes(p) for p in caps] == [pkt, pkt[:40]]
    assert float(caps[0].time) == 12.5 and caps[0][UDP].load == b"hello"
    w = PcapWriter(tmp_path / "w.pcap")
    w(pkt, 1.9999999)
    w.close()
    assert float(rdpcap(str(tmp_path / "w.pcap"))[0].time) == 2.0
