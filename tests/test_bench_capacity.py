"""Section "capacity" without root: the ladder's rules on fake windows (what counts as absorbed,
doubling, bisecting, the flood as the limit)."""

import testbed.bench as bench
from testbed.bench.capacity import absorbed, climb
from testbed.bench.rx import Window


def _window(rate, *, limit, flood_max=10**9, tp_drops_over=0):
    """A receiver that absorbs up to ``limit`` pps; beyond it the socket overflows."""
    achieved = min(rate, flood_max)
    w = Window("agent", rate, sent=int(achieved * 3), on_time_s=3.0)
    if achieved > limit:
        w.tp_drops = int((achieved - limit) * 3)
    w.received = w.sent - w.tp_drops
    w.sink_read = w.received
    return w


def test_absorbed_needs_no_drop_anywhere():
    w = _window(1000, limit=2000)
    assert absorbed(w) == (True, "")
    w.softnet_drops = 3
    assert absorbed(w) == (False, "3 softnet drops")
    w = _window(1000, limit=2000)
    w.sink_read = w.received - 10                    # a socket dropped datagrams: not absorbed
    ok, why = absorbed(w)
    assert not ok and why == f"sinks read {w.sink_read} of {w.received}"


def test_a_backlog_at_the_end_of_the_window_is_not_absorbing():
    w = _window(50000, limit=10**9)
    w.backlog_at_stop = 4000                          # 80 ms of the flood still queued: fine
    assert absorbed(w)[0]
    w.backlog_at_stop = 60000                         # it only kept up thanks to its buffer
    assert absorbed(w) == (False, "60000 frames still queued when the flood stopped")


def test_climb_doubles_then_bisects_to_the_limit():
    asked = []
    lad = climb(lambda r: asked.append(r) or _window(r, limit=57000), 3)
    assert asked == [10000, 20000, 40000, 80000, 60000, 50000, 55000]
    assert lad.best == 55000 and not lad.flood_limited
    assert [ok for _a, _x, ok, _w in lad.trials] == [True, True, True, False, False, True, True]
    assert "first failure 80000 pps" in lad.note()


def test_climb_stops_at_the_flood_and_says_so():
    lad = climb(lambda r: _window(r, limit=10**9, flood_max=33000), 3)
    assert lad.flood_limited and lad.best == 33000
    assert [a for a, *_ in lad.trials] == [10000, 20000, 40000, 40000]    # short twice: once retried
    assert "flood-limited" in lad.note()


def test_climb_retries_a_flood_that_fell_short_once():
    stalls = iter([True])

    def one_stall(r):
        return _window(r, limit=57000, flood_max=5000 if next(stalls, False) else 10**9)

    lad = climb(one_stall, 3)
    assert not lad.flood_limited and lad.best == 55000
    assert [a for a, *_ in lad.trials][:3] == [10000, 10000, 20000]


def test_capacity_section_is_registered_and_needs_root():
    sec = bench.load_sections().get("capacity")
    assert sec.needs_root and "softnet" in sec.help


def test_testbed_run_reads_the_agent_capacity_figure(tmp_path):
    """`testbed run --bench FILE` takes the scenarios' agent_capacity_pps from this section."""
    import json

    from testbed.scenario import capacity_from_bench
    doc = {"schema_version": 1, "sections": {"capacity": {"figures": [
        {"name": "bare_capacity_pps", "value": 110000, "unit": "pps"},
        {"name": "agent_capacity_pps", "value": 76000, "unit": "pps", "baseline": 110000}]}}}
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(doc))
    assert capacity_from_bench(str(p)) == 76000


def test_testbed_run_takes_the_median_capacity_of_repeated_runs(tmp_path):
    """`testbed bench --repeat 3 --json F`: the summary comes before the runs, so the median is used."""
    import json

    from testbed.scenario import capacity_from_bench
    docs = [{"schema_version": 1, "machine": {}, "quick": False, "sections": {"capacity": {"figures": [
        {"name": "agent_capacity_pps", "value": v, "unit": "pps", "baseline": None, "ratio": None,
         "target": None, "met": None}], "params": {}}}} for v in (90000, 60000, 70000)]
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(bench.summarize_runs(docs)))
    assert capacity_from_bench(str(p)) == 70000
