"""`testbed bench` framework without root: figures, targets, the JSON document, the table, exit codes,
and the nas adapter's translation of nas_server.bench figures."""

import json

import pytest

import testbed.bench as bench
from testbed.bench import BenchError, Figure, Registry, SectionResult, Target, format_table, run_sections
from testbed.bench.framework import FIGURE_KEYS, SCHEMA_VERSION
from testbed.bench.nas import adapt_figure
from testbed.cli import main


def test_figure_ratio_target_and_json_shape():
    f = Figure("agent.cpu_us_per_frame", 12.0, "µs/frame", 10.0, "ratio <= 1.4")
    assert f.ratio == pytest.approx(1.2) and f.met is True
    d = f.to_json()
    assert tuple(d) == FIGURE_KEYS
    assert d == {"name": "agent.cpu_us_per_frame", "value": 12.0, "unit": "µs/frame", "baseline": 10.0,
                 "ratio": pytest.approx(1.2), "target": "ratio <= 1.4", "met": True}
    assert Figure("x", 15.0, "µs", 10.0, "ratio <= 1.4").met is False
    assert Figure("x", 0, "frames", None, "value == 0").met is True
    assert Figure("x", 3, "frames", None, "value == 0").met is False
    assert Figure("x", 5000.0, "pps", 5000, "value >= 4750").met is True


def test_missing_numbers_give_null_ratio_and_unknown_met():
    assert Figure("x", None, "µs", 10.0, "ratio <= 1.4").to_json()["met"] is None
    assert Figure("x", 5.0, "µs", 0, "ratio <= 1.4").ratio is None
    assert Figure("x", 5.0, "µs", None, None).to_json() == {
        "name": "x", "value": 5.0, "unit": "µs", "baseline": None, "ratio": None, "target": None, "met": None}
    assert Figure("x", float("nan"), "µs").to_json()["value"] is None


def test_figures_are_rounded_when_recorded():
    d = Figure("x", 0.1 + 0.2, "s", 0.9, "ratio <= 0.3333").to_json()
    assert (d["value"], d["baseline"], d["ratio"]) == (0.3, 0.9, 0.3333) and d["met"] is True
    assert json.dumps(d["value"]) == "0.3"
    assert Figure("x", 19987.34, "pps", 3).to_json()["value"] == 19987.3 and Figure("x", 7, "n").value == 7
    f = bench.summarize_runs(_doc_with([70.7, 70.72]))["sections"]["s"]["figures"][0]
    assert json.dumps([f["value"], f["ratio"]]) == "[70.71, 7.071]"      # medians too


def test_invalid_figure_is_not_met_whatever_its_value_and_says_why():
    f = Figure("x", 1.0, "µs", 10.0, "ratio <= 1.4", notes="kernel dropped 12 frames", invalid=True)
    d = f.to_json()
    assert d["met"] is False and d["notes"] == "kernel dropped 12 frames"


def test_target_parse_and_errors():
    t = Target.parse("ratio >= 0.95")
    assert (t.on, t.op, t.bound) == ("ratio", ">=", 0.95) and str(t) == "ratio >= 0.95"
    for bad in ("ratio < 1", "speed <= 1", "ratio <= fast", "ratio<=1"):
        with pytest.raises(ValueError):
            Target.parse(bad)


def make_registry(calls):
    reg = Registry()

    @reg.register("good", "two figures")
    def good(ctx):
        calls.append(ctx.quick)
        res = SectionResult(params={"rate_pps": 5000})
        res.add("a", 10.0, "µs", 5.0, "ratio <= 1.4")
        res.add(Figure("b", 0, "frames", target="value == 0"))
        return res

    @reg.register("refused", "a known failure")
    def refused(ctx):
        raise BenchError("nothing to measure: tool X missing; install X")

    @reg.register("buggy", "a bug")
    def buggy(ctx):
        raise ZeroDivisionError("division by zero")

    return reg


def test_document_shape_and_error_entries(capsys):
    calls = []
    reg = make_registry(calls)
    doc = run_sections(reg, None, quick=True)
    assert calls == [True]
    assert doc["schema_version"] == SCHEMA_VERSION == 1 and doc["quick"] is True
    assert set(doc["machine"]) >= {"cpu_model", "nproc", "kernel", "python", "pyroute2", "scapy", "date"}
    assert doc["machine"]["nproc"] >= 1
    assert list(doc["sections"]) == ["good", "refused", "buggy"]
    good = doc["sections"]["good"]
    assert good["params"] == {"rate_pps": 5000} and good["duration_s"] >= 0
    assert [f["met"] for f in good["figures"]] == [False, True]
    assert doc["sections"]["refused"]["error"] == "nothing to measure: tool X missing; install X"
    assert doc["sections"]["buggy"]["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in capsys.readouterr().err  # a bug keeps its traceback
    assert bench.has_errors(doc)
    json.dumps(doc)
    with pytest.raises(BenchError, match="no bench section 'nope'; sections: good, refused, buggy"):
        run_sections(reg, ["nope"], quick=False)


def test_table_rows_and_marks():
    reg = make_registry([])
    doc = run_sections(reg, ["good", "refused"], quick=False)
    doc["sections"]["good"]["figures"][1]["notes"] = "all clear"
    table = format_table(doc)
    lines = table.splitlines()
    assert lines[0].split() == ["figure", "value", "unit", "baseline", "ratio", "target", "met"]
    row_a = next(l for l in lines if l.startswith("good.a"))
    assert row_a.split() == ["good.a", "10.00", "µs", "5.00", "2.00×", "ratio", "<=", "1.4", "✗"]
    assert next(l for l in lines if l.startswith("good.b")).split()[-1] == "✓"
    assert "refused: ERROR" in table and "note: refused: nothing to measure" in table
    assert "note: good.b: all clear" in table


def test_command_exit_codes_and_json(tmp_path, monkeypatch, capsys):
    reg = make_registry([])
    monkeypatch.setattr(bench, "load_sections", lambda: reg)
    out = tmp_path / "b.json"
    # a missed target is a measurement: exit 0
    assert main(["bench", "--quick", "--section", "good", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["sections"]["good"]["figures"][0]["met"] is False
    assert "good.a" in capsys.readouterr().out
    # a section that could not measure: exit 1, the document still written
    assert main(["bench", "--section", "good", "--section", "refused", "--json", str(out)]) == 1
    assert "error" in json.loads(out.read_text())["sections"]["refused"]
    # an unknown section: one line, exit 2
    assert main(["bench", "--section", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "testbed: unknown bench section(s) nope; sections: good, refused, buggy"
    assert main(["bench", "--section", "list"]) == 0
    assert "refused" in capsys.readouterr().out


def test_section_names_get_a_suggestion_and_the_list_is_aligned(monkeypatch, capsys):
    reg = make_registry([])

    @reg.register("a_very_long_section_name", "long")
    def long_(ctx):
        return SectionResult()

    monkeypatch.setattr(bench, "load_sections", lambda: reg)
    assert main(["bench", "--section", "refusd"]) == 2
    assert capsys.readouterr().err.strip() == ("testbed: unknown bench section(s) refusd; did you mean refused? "
                                               "sections: good, refused, buggy, a_very_long_section_name")
    assert main(["bench", "--section", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    helps = [l.rindex(reg.get(n).help) for l, n in zip(lines, reg.names())]
    assert len(lines) == 4 and len(set(helps)) == 1 and helps[0] == len("a_very_long_section_name") + 2


def test_real_registry_has_rx_and_nas():
    reg = bench.load_sections()
    assert reg.names()[:2] == ["rx", "nas"]


def test_nas_adapter_translates_numeric_targets_and_extras():
    raw = {"name": "nas_refclient_udp_write_4k", "value": 40.0, "unit": "MiB/s", "baseline": 100.0, "ratio": 0.4,
           "target": 0.5, "met": False, "baseline_kind": "nfs-ganesha 4 VFS, same client"}
    f = adapt_figure(raw).to_json()
    assert f["target"] == "ratio >= 0.5" and f["met"] is False and f["ratio"] == pytest.approx(0.4)
    assert f["notes"] == "baseline_kind: nfs-ganesha 4 VFS, same client"
    nobase = adapt_figure({"name": "n", "value": 40.0, "unit": "MiB/s", "baseline": None, "ratio": None,
                           "target": 0.5, "met": None, "baseline_error": "ganesha.nfsd not installed"}).to_json()
    assert nobase["met"] is None and nobase["notes"] == "baseline_error: ganesha.nfsd not installed"
    with pytest.raises(BenchError, match="lacks"):
        adapt_figure({"name": "n"})


def _doc_with(values, invalid_run=None):
    """One run's document: section "s", figure "a" = values[k] against baseline 10, target ratio <= 1.4."""
    docs = []
    for k, v in enumerate(values):
        f = Figure("a", v, "µs", 10.0, "ratio <= 1.4", notes="dropped" if k == invalid_run else None,
                   invalid=k == invalid_run)
        docs.append({"schema_version": 1, "machine": {"nproc": 2}, "quick": False,
                     "sections": {"s": {"figures": [f.to_json()] if v is not None else [], "params": {"p": 1},
                                        "duration_s": 1.0}}})
    return docs


def test_repeated_runs_give_the_median_and_the_range_of_each_figure():
    doc = bench.summarize_runs(_doc_with([13.0, 11.0, 20.0]))
    assert doc["repeat"] == 3 and len(doc["runs"]) == 3 and list(doc) .index("sections") < list(doc).index("runs")
    (f,) = doc["sections"]["s"]["figures"]
    assert f["value"] == 13.0 and f["baseline"] == 10.0 and f["ratio"] == pytest.approx(1.3)
    assert f["met"] is True and f["runs"] == 3 and f["values"] == [13.0, 11.0, 20.0]
    assert f["spread"] == {"value": [11.0, 20.0], "ratio": [pytest.approx(1.1), pytest.approx(2.0)]}
    row = next(l for l in format_table(doc).splitlines() if l.startswith("s.a"))
    assert "13.00 (11.00–20.00)" in row and "1.30× (1.10–2.00)" in row and row.endswith("✓")
    # an even count: the mean of the middle two; a run that did not measure the figure is null
    f2 = bench.summarize_runs(_doc_with([10.0, None, 12.0, 16.0, 30.0]))["sections"]["s"]["figures"][0]
    assert f2["value"] == 14.0 and f2["runs"] == 4 and f2["values"][1] is None and f2["met"] is True


def test_a_run_that_marked_a_figure_invalid_keeps_it_unmet_and_says_which():
    f = bench.summarize_runs(_doc_with([11.0, 12.0, 12.5], invalid_run=1))["sections"]["s"]["figures"][0]
    assert f["met"] is False and f["notes"] == "run 2: dropped" and f["value"] == 12.0
    with pytest.raises(ValueError):
        bench.summarize_runs([])


def test_repeated_runs_keep_each_figures_notes():
    def runs(*notes):
        docs = _doc_with([11.0] * len(notes))
        for d, n in zip(docs, notes):
            if n:
                d["sections"]["s"]["figures"][0]["notes"] = n
        return bench.summarize_runs(docs)
    doc = runs("3 retransmissions", "3 retransmissions")
    assert doc["sections"]["s"]["figures"][0]["notes"] == "3 retransmissions"
    assert "note: s.a: 3 retransmissions" in format_table(doc)
    assert runs("1 retransmission", None, "4 retransmissions")["sections"]["s"]["figures"][0]["notes"] == \
        "run 1: 1 retransmission; run 3: 4 retransmissions"
    assert "notes" not in runs(None, None)["sections"]["s"]["figures"][0]


def test_command_repeat_writes_the_summary_and_every_run(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench, "load_sections", lambda: make_registry(calls))
    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--section", "good", "--repeat", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert calls == [True] * 3 and doc["repeat"] == 3 and len(doc["runs"]) == 3
    assert doc["sections"]["good"]["figures"][0]["values"] == [10.0, 10.0, 10.0]
    assert "[run 3/3] section good" in capsys.readouterr().err
    assert main(["bench", "--repeat", "0"]) == 2
    assert "--repeat 0: give a number of runs from 1 to 20" in capsys.readouterr().err


def test_a_bad_json_path_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench, "load_sections", lambda: make_registry(calls))
    for path, why in ((tmp_path / "no" / "x.json", f"directory {tmp_path / 'no'} does not exist"),
                      (tmp_path, "is a directory")):
        assert main(["bench", "--section", "good", "--json", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"testbed: --json {path}: {why}")
    assert calls == []                                   # nothing was measured


def test_a_json_path_that_fails_at_the_end_keeps_the_results(tmp_path, monkeypatch, capsys):
    reg = Registry()
    gone = tmp_path / "gone"
    gone.mkdir()

    @reg.register("good", "removes the --json directory while it measures")
    def good(ctx):
        gone.rmdir()
        res = SectionResult()
        res.add("a", 10.0, "µs")
        return res

    monkeypatch.setattr(bench, "load_sections", lambda: reg)
    monkeypatch.chdir(tmp_path)
    out = gone / "x.json"
    assert main(["bench", "--section", "good", "--json", str(out)]) == 2
    cap = capsys.readouterr()
    assert "good.a" in cap.out                           # the table is printed anyway
    err = cap.err.strip().splitlines()[-1]
    (fallback,) = tmp_path.glob("testbed-bench-*.json")
    assert err == f"testbed: --json {out}: cannot write it (No such file or directory); the results are in {fallback}"
    assert json.loads(fallback.read_text())["sections"]["good"]["figures"][0]["value"] == 10.0
