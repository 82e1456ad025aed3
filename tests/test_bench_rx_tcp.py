"""Section "rx_tcp" without root: registration, the window's validity rules and the figures it
makes from a window's counts (the namespace run is in tests/test_netns_bench_sections.py)."""

import testbed.bench as bench
from testbed.bench.framework import SectionResult
from testbed.bench.rx_tcp import figures, invalid_reason


def _m(**kw):
    m = {"window_s": 5.0, "warmup_s": 1.0, "agent_cpu_s": 2.0, "bare_cpu_s": 0.5, "in_segs": 10000,
         "sink_bytes": 14_480_000, "bare_frames": 10002, "flow_frames": 10000, "agent_tp_drops": 0,
         "bare_tp_drops": 0, "softnet_drops": 0}
    return {**m, **kw}


def test_rx_tcp_is_registered_and_needs_root():
    sec = bench.load_sections().get("rx_tcp")
    assert sec.needs_root and "TCP segment" in sec.help


def test_figures_divide_cpu_by_segments_and_frames_against_the_same_window():
    res = SectionResult(params={})
    figures(res, _m())
    f = {x.name: x for x in res.figures}
    assert list(f) == ["tcp.stream_kB_per_s", "tcp.agent_in_segs", "tcp.bare_us_per_frame", "tcp.agent_us_per_segment"]
    assert f["tcp.agent_us_per_segment"].value == 200.0                  # 2 s / 10000 segments
    assert f["tcp.bare_us_per_frame"].value == round(0.5e6 / 10002, 3)  # every frame it read
    assert f["tcp.agent_us_per_segment"].baseline == f["tcp.bare_us_per_frame"].value
    assert f["tcp.agent_us_per_segment"].met is False and not f["tcp.agent_us_per_segment"].invalid
    assert f["tcp.stream_kB_per_s"].value == 2896.0


def test_a_window_with_drops_or_unmatched_counts_is_invalid_never_kept():
    assert invalid_reason(_m()) is None
    assert "softnet" in invalid_reason(_m(softnet_drops=3))
    assert "bare's socket overflowed (7 tp_drops)" in invalid_reason(_m(bare_tp_drops=7))
    assert "differ by > 1 %" in invalid_reason(_m(in_segs=9800))
    assert "no segments" in invalid_reason(_m(in_segs=0))
    res = SectionResult(params={})
    figures(res, _m(agent_tp_drops=1))
    a = res.figures[-1]
    assert a.invalid and "agent's socket overflowed" in a.notes and a.met is False
