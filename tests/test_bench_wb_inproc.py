"""`testbed bench --section wb_inproc`: the agent's writeback path in process (no root). No timing
is asserted (speed lives in the bench's figures); what is asserted is that the section measures
what it says: every page acknowledged went through the agent's stack as the MTU dictates, nothing
was retransmitted, and the figures are finite and positive."""

import math

from testbed.bench import load_sections
from testbed.bench.framework import BenchContext
from testbed.bench.wb_inproc import MTUS, measure


def test_each_write_crosses_the_wire_as_the_mtu_dictates():
    for mtu, frames in ((1500, 3), (9000, 1)):
        m = measure(mtu, 400)
        assert m["pages"] >= 400 and m["writes"] >= m["pages"]          # one WRITE a page, all FILE_SYNC
        assert m["frames_to_nas"] == frames * m["writes"]                 # 4 KiB + headers: 3 fragments at 1500
        assert m["rpc_retrans"] == 0 and m["pswpout"] >= m["pages"]
        assert 0 < m["responder_cpu_s"] < m["cpu_s"] and m["us_per_page"] > 0


def test_the_section_reports_per_mtu_figures_against_the_rpc_floor(monkeypatch):
    import testbed.bench.wb_inproc as wb
    monkeypatch.setattr(wb, "QUICK_PAGES", 300)
    res = load_sections().get("wb_inproc").fn(BenchContext(quick=True))
    figs = {f.name: f for f in res.figures}
    # the floor is one measurement, reported once, and the baseline of every MTU's figure
    assert set(figs) == {"rpc_min_cpu_us_per_page"} | {f"mtu{m}.agent_cpu_us_per_page" for m in MTUS}
    floor = figs["rpc_min_cpu_us_per_page"]
    assert floor.unit == "µs/page" and floor.value > 0
    for m in MTUS:
        a = figs[f"mtu{m}.agent_cpu_us_per_page"]
        assert math.isfinite(a.value) and a.value > 0 and a.baseline == floor.value and a.unit == "µs/page"
        assert a.target is None and "frames a WRITE" in a.notes


def test_a_stalled_writeback_is_an_error_not_a_figure(monkeypatch):
    import pytest
    import testbed.bench.wb_inproc as wb
    from testbed.bench.framework import BenchError
    monkeypatch.setattr(wb, "RUN_LIMIT_S", 5.0)
    monkeypatch.setattr(wb.Responder, "handle", lambda self, frame, now: None)    # a NAS that never answers
    with pytest.raises(BenchError, match=r"wb_inproc mtu 9000: 0 of 50 pages acknowledged within 5.0 s .*stalled"):
        measure(9000, 50)
    import gc
    assert gc.get_freeze_count() == 0                    # the bench process's collector is as it was
