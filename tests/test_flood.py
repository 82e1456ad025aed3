"""testbed.flood without root: the pacing schedule on a fake clock, on/off phases, options, payload,
error counting. Nothing here sends a packet (the driver's socket is replaced by a fake)."""

import errno
import json

import pytest

from testbed import flood as fl
from testbed.flood import FloodError, OnOffSchedule, Pacer


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def drive(pacer: Pacer, n: int) -> list[float]:
    """Run a perfect sender: wake exactly at each due time, record when each send happened."""
    times = []
    while len(times) < n:
        now = pacer.due_at()
        k = pacer.take(now)
        times.extend([now] * k)
    return times[:n]


@pytest.mark.parametrize("rate,seconds", [(4000, 1.0), (5000, 3.0), (50000, 0.5), (7, 2.0)])
def test_absolute_schedule_is_exact(rate, seconds):
    start = 1234.5
    p = Pacer(rate, start)
    n = int(rate * seconds)
    times = drive(p, n)
    assert times == [start + k / rate for k in range(n)]
    assert p.late_sends == 0 and p.skipped_slots == 0
    # the n-th send is due exactly `seconds` after the start: n sends over T seconds at R pps
    assert p.due_at() == start + seconds


def test_nothing_due_before_time_and_one_at_time():
    p = Pacer(1000, 10.0)
    assert p.take(9.9999) == 0
    assert p.take(10.0) == 1
    assert p.take(10.0009) == 0
    assert p.take(10.001) == 1


def test_late_wakeup_catches_up_without_shifting_the_schedule():
    p = Pacer(10000, 0.0)                      # 100 us apart
    assert p.take(0.0) == 1
    n = p.take(0.0030)                         # woke 3 ms late: slots 1..30 are due
    assert n == 30
    assert p.late_sends == 25                  # due before now - 500 us: slots 1..25
    assert p.due_at() == pytest.approx(0.0031)  # schedule unchanged: send 31 at 3.1 ms
    assert p.skipped_slots == 0


def test_catch_up_is_bounded_per_wakeup():
    p = Pacer(100000, 0.0)
    p.take(0.0)
    assert p.take(0.0400) == fl.MAX_BATCH      # 4000 due, at most MAX_BATCH at once
    assert p.take(0.0400) == fl.MAX_BATCH


def test_stall_abandons_missed_slots_and_reanchors():
    p = Pacer(1000, 0.0)
    assert p.take(0.0) == 1
    assert p.take(1.0) == 1                   # stalled 1 s > MAX_BACKLOG_S: no burst of 1000
    assert p.skipped_slots == 999              # slots 1..999 (slot 1000 is the one sent now)
    assert p.due_at() == pytest.approx(1.001)


def test_restart_changes_rate_and_reanchors():
    p = Pacer(1000, 0.0)
    drive(p, 10)
    p.restart(5.0, 4000)
    assert p.take(5.0) == 1 and p.due_at() == 5.0 + 1 / 4000
    with pytest.raises(FloodError, match="must be > 0"):
        p.restart(6.0, 0)


def test_on_off_schedule_phases():
    s = OnOffSchedule(2.0, 1.0, start_s=10.0)
    assert s.phase(10.0) == (True, 12.0)
    assert s.phase(11.999) == (True, 12.0)
    assert s.phase(12.0) == (False, 13.0)
    assert s.phase(13.5) == (True, 15.0)
    assert s.phase(15.2) == (False, 16.0)


def test_options_are_checked_with_one_line_errors():
    assert fl.parse_ports("9001,9002") == [9001, 9002]
    assert fl.parse_ports("9001-9004") == [9001, 9002, 9003, 9004]
    for bad in ("", "x", "0", "70000", "9001,abc"):
        with pytest.raises(FloodError, match="--ports"):
            fl.parse_ports(bad)
    assert fl.check_dst("198.18.0.2") == "198.18.0.2"
    assert fl.check_dst("198.19.255.254") == "198.19.255.254"
    for bad in ("198.20.0.1", "10.0.0.1", "8.8.8.8", "127.0.0.1"):
        with pytest.raises(FloodError, match=r"outside 198\.18\.0\.0/15"):
            fl.check_dst(bad)
    with pytest.raises(FloodError, match="not an IPv4"):
        fl.check_dst("nas")
    assert fl.parse_on_off("2:1") == (2.0, 1.0)
    with pytest.raises(FloodError, match="ON_S:OFF_S"):
        fl.parse_on_off("2")
    with pytest.raises(FloodError, match="outside 12..65507"):
        fl.check_size(8)


def test_main_refuses_a_destination_outside_the_benchmark_range(capsys):
    assert fl.main(["--dst", "8.8.8.8", "--ports", "9001", "--rate-pps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8.8.8.8" in err[0] and "198.18.0.0/15" in err[0]


def test_payload_is_seeded_and_carries_the_sequence_number():
    a, b, c = fl.payload_template(7, 64), fl.payload_template(7, 64), fl.payload_template(8, 64)
    assert a == b and a[12:] != c[12:]
    assert fl.parse_seq(bytes(a)) == 0
    assert fl.parse_seq(b"XXXX" + bytes(8)) is None
    assert fl.parse_seq(b"NSDF") is None


def test_port_chooser_round_robin_and_seeded_random():
    rr = fl.PortChooser([1, 2, 3], "round-robin", 1)
    assert [rr.next() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    r1 = [fl.PortChooser([1, 2, 3, 4], "random", 5).next() for _ in range(1)]
    c1, c2 = fl.PortChooser([1, 2, 3, 4], "random", 5), fl.PortChooser([1, 2, 3, 4], "random", 5)
    seq1 = [c1.next() for _ in range(200)]
    assert seq1 == [c2.next() for _ in range(200)] and set(seq1) == {0, 1, 2, 3} and r1[0] == seq1[0]


class FakeSock:
    """sendto fails with ENOBUFS every third call and EAGAIN every fifth; records what was sent."""

    def __init__(self):
        self.calls = 0
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data, addr):
        self.calls += 1
        if self.calls % 3 == 0:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        if self.calls % 5 == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.sent.append((bytes(data), addr))

    def close(self):
        pass


def make_flood(clock, **kw) -> fl.Flood:
    f = fl.Flood("198.18.0.2", [9001, 9002], 1000, 64, 3, clock=clock, **kw)
    f.sock.close()
    f.sock = FakeSock()
    return f


def test_send_errors_are_counted_never_raised_and_sequence_counts_successes():
    clock = FakeClock()
    f = make_flood(clock)
    f.send_burst(30)
    sock = f.sock
    assert f.errors == {"ENOBUFS": 10, "EAGAIN": 4}    # calls 3, 6, .., 30 and 5, 10, 20, 25
    assert f.sent == 16 == len(sock.sent)
    assert [fl.parse_seq(d) for d, _ in sock.sent] == list(range(16))
    assert all(len(d) == 64 for d, _ in sock.sent)
    assert f.sent_per_port == [sum(1 for _, a in sock.sent if a[1] == p) for p in (9001, 9002)]
    snap = f.snapshot()
    assert snap["errors_total"] == 14 and snap["sent_per_port"] == {"9001": f.sent_per_port[0], "9002": f.sent_per_port[1]}
    json.dumps(snap)


def test_set_and_snapshot_bookkeeping_on_a_fake_clock():
    clock = FakeClock(50.0)
    f = make_flood(clock, start_on=False)
    f._update_phase(clock())
    assert f.snapshot()["on"] is False and f.snapshot()["offered_rate_pps"] == 0.0
    f.set("rate_pps", 2000)
    f.set("on", True)
    assert f.sending and f.pacer.due_at() == 50.0
    clock.t = 52.0
    f.set("on", False)
    clock.t = 60.0
    snap = f.snapshot()
    assert snap["on_time_s"] == pytest.approx(2.0) and snap["rate_pps"] == 2000 and snap["enabled"] is False
    f.set("size", 1400)
    assert f.size == 1400
    for key, value, msg in (("rate_pps", -1, "must be > 0"), ("on", "yes", "true or false"),
                            ("size", 5, "outside"), ("colour", 1, "settable: rate_pps, on, size")):
        with pytest.raises(FloodError, match=msg):
            f.set(key, value)


def test_on_off_schedule_drives_the_sending_state():
    clock = FakeClock(0.0)
    f = make_flood(clock, on_off=(1.0, 0.5))
    assert f._update_phase(0.2) == 1.0 and f.sending
    assert f._update_phase(1.2) == 1.5 and not f.sending
    assert f._update_phase(1.6) == 2.5 and f.sending and f.pacer.start_s == 1.6
