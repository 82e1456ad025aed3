"""The issue-8 bench sections without root: registration, order, and their pure figure helpers."""

import testbed.bench as bench
from testbed.bench import recovery


def test_new_sections_are_registered_in_order_and_need_root():
    reg = bench.load_sections()
    names = reg.names()
    assert names[:7] == ["rx", "nas", "writeback", "recovery", "memory", "scale", "demo"]
    for n in ("writeback", "recovery", "memory", "scale", "demo"):
        sec = reg.get(n)
        assert sec.needs_root and sec.help


def _row(t, free, high, pswpout, acked, pfm, done=False):
    return {"t": t, "free": free, "high": high, "pswpout": pswpout, "acked": acked, "rx_pfmemalloc": pfm,
            "PFMemallocDrop": 0, "done": done, "valid": True, "lowwater": None}


def test_recovery_rate_from_first_pswpout_to_workload_done():
    rows = [_row(0.1, 900, 768, 0, 0, 0), _row(0.2, 700, 768, 10, 0, 0), _row(0.7, 600, 768, 600, 512, 0),
            _row(1.2, 800, 768, 1100, 1024, 0, done=True), _row(1.3, 900, 768, 1100, 1024, 0, done=True)]
    rate, note = recovery._rate(rows)
    assert rate == 1024 * 4096 / 1.0 / (1 << 20) and "1024 pages" in note
    assert recovery._rate([_row(0.1, 900, 768, 0, 0, 0)]) == (None, "pswpout never grew")


def test_reserve_to_high_measures_first_pfmemalloc_to_free_above_high():
    rows = [_row(0.1, 700, 768, 1, 0, 0), _row(0.3, 100, 768, 5, 0, 3), _row(0.9, 500, 768, 9, 4, 9),
            _row(1.4, 800, 768, 20, 20, 9)]
    t, note = recovery._reserve_to_high(rows)
    assert abs(t - 1.1) < 1e-9 and "t=0.30" in note
    t, note = recovery._reserve_to_high(rows[:1])
    assert t is None and "rx_pfmemalloc stayed 0" in note
    t, note = recovery._reserve_to_high(rows[:3])
    assert t is None and "never rose above high" in note


def test_writeback_cpu_per_page_figures_are_in_us_per_page(monkeypatch):
    """The section's figures from canned measurements (no namespaces): CPU per page is µs/page."""
    from testbed.bench import writeback
    from testbed.bench.framework import BenchContext
    ag = {"mib_per_s": 20.0, "pages": 1000, "seconds": 0.2, "cpu_pct": 90.0, "retrans": 0,
          "workload_done_early": False, "cpu_user_s": 0.05, "cpu_sys_s": 0.03}
    ref = {"mib_per_s": 40.0, "calls": 2000, "client": {"retransmits": 0}, "cpu_user_s": 0.02, "cpu_sys_s": 0.04}
    monkeypatch.setattr(writeback.os, "geteuid", lambda: 0)
    monkeypatch.setattr(writeback, "measure_mtu", lambda *a, **k: {"agent": ag, "ref": ref})
    figs = {f.name: f for f in writeback.writeback_section(BenchContext(quick=True)).figures}
    a, r = figs["mtu1500.agent_cpu_us_per_page"], figs["mtu1500.refclient_cpu_us_per_page"]
    assert (a.value, a.unit, r.value, r.unit) == (80.0, "µs/page", 30.0, "µs/page") and a.baseline == 30.0
    assert figs["tcp.mtu1500.agent_mib_per_s"].unit == "MiB/s"
