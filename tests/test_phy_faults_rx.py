"""Faults on a device's ingress (RxFaultInjector) and on both directions (BothWays, what
`client-agent --fault` wraps the AF_PACKET device in): accounting, determinism, the spec parser."""

import pytest

from client_agent.phy.fault import BothWays, RxFaultInjector, parse_fault_spec
from client_agent.phy.wire_pair import WirePair


def _frames(n):
    return [bytes([i >> 8, i & 0xFF]) + b"x" * 60 for i in range(n)]


def _run_rx(seed, **kw):
    w = WirePair()
    rx = RxFaultInjector(w.b, seed, **kw)
    got, t = [], 0.0
    for f in _frames(2000):
        w.a.transmit(f, t)
        got += rx.receive(t, 64)
        t += 0.0001
    while rx.poll_at() is not None:            # drain what is held back
        t = max(t, rx.poll_at())
        got += rx.receive(t, 64)
    return rx.counters, got


def test_rx_loss_dup_reorder_accounting_and_replay():
    c, got = _run_rx(7, loss=0.1, dup=0.05, reorder=0.05, delay_s=0.0005)
    assert c["rx_frames"] == 2000 == c["lost"] + c["passed"]
    assert len(got) == c["passed"] + c["duplicated"]
    assert 150 < c["lost"] < 250 and 50 < c["duplicated"] < 150 and c["reordered"] > 50
    seqs = [int.from_bytes(f[:2], "big") for f in got]
    assert seqs != sorted(seqs)                        # reordering happened
    assert _run_rx(7, loss=0.1, dup=0.05, reorder=0.05, delay_s=0.0005) == (c, got)   # same seed, same faults
    assert _run_rx(8, loss=0.1)[0]["lost"] != c["lost"]


def test_both_ways_faults_each_direction_with_its_own_counters():
    w = WirePair()
    dev = BothWays(w.b, parse_fault_spec("loss=0.2,seed=3"))
    for f in _frames(500):
        dev.transmit(f, 0.0)          # b -> a: egress faults
        w.a.transmit(f, 0.0)          # a -> b: ingress faults
    rx = dev.receive(0.0, 1000)
    tx = w.a.receive(0.0, 1000)
    c = dev.counters
    assert c["fault_tx_tx_frames"] == 500 and len(tx) == c["fault_tx_passed"] == 500 - c["fault_tx_lost"]
    assert c["fault_rx_rx_frames"] == 500 and len(rx) == c["fault_rx_passed"] == 500 - c["fault_rx_lost"]
    assert c["fault_tx_lost"] != c["fault_rx_lost"] or c["fault_tx_lost"] > 0   # two RNGs, both active


@pytest.mark.parametrize("spec, msg", [
    ("loss=2", "outside 0..0.5"), ("jitter=1", "KEY one of"), ("loss", "KEY=VALUE"),
    ("delay_ms=abc", "not a number"), ("delay_ms=5000", "outside 0..1000"),
])
def test_bad_fault_specs_are_refused_with_the_fix(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_fault_spec(spec)


def test_good_spec():
    assert parse_fault_spec("loss=0.05, dup=0.01,reorder=0.02,delay_ms=1,seed=7") == {
        "loss": 0.05, "dup": 0.01, "reorder": 0.02, "delay_ms": 1.0, "seed": 7}
    assert parse_fault_spec("") == {}
