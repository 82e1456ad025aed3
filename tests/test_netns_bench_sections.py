"""`testbed bench --quick` for the issue-8 sections (writeback, recovery, memory, scale) and rx_tcp, end to end
in namespaces they create and remove. Checks the JSON is complete and the figures are real numbers
-- never whether a speed target was met (that is the bench's output, not a test's verdict)."""

import json

import pytest

from netns_setup import nsutil
from netns_setup.state import RunState, creator_alive, list_runs


def _leaked(before: set) -> set:
    """Namespaces that appeared during the test and belong to no live run of another process
    (a concurrent `testbed run` elsewhere is not this test's leak)."""
    live = []
    for r in list_runs():
        try:
            if creator_alive(RunState.load(r).data):
                live.append(f"nsdt-{r}-")
        except Exception:  # noqa: BLE001 -- a record being written or removed right now
            pass
    return {n for n in set(nsutil.list_netns()) - before if not any(n.startswith(p) for p in live)}
from testbed.bench.framework import FIGURE_KEYS
from testbed.cli import main

EXPECTED = {
    "rx_tcp": ["tcp.stream_kB_per_s", "tcp.agent_in_segs", "tcp.bare_us_per_frame", "tcp.agent_us_per_segment"],
    "writeback": [f"{pre}.{fig}" for pre in ("mtu1500", "mtu9000", "tcp.mtu1500")
                  for fig in ("refclient_mib_per_s", "agent_mib_per_s", "refclient_cpu_us_per_page",
                              "agent_cpu_us_per_page")],
    "recovery": ["quiet.writeback_mib_per_s", "flood.writeback_mib_per_s", "flood.reserve_to_high_s"],
    "memory": ["start.rss_mib", "after_flood.rss_mib", "after_flood.rss_over_pool_mib", "after_flood.rss_minus_pool_mib",
               "scapy_imported"],
    "scale": ["hosts2.up_s", "hosts2.down_s", "hosts16.up_s", "hosts16.down_s", "hosts64.up_s", "hosts64.down_s",
              "leaked_netns", "leaked_root_links", "fleet1.writeback_mib_per_s", "fleet1.nas_requests_per_s",
              "fleet1.nas_cpu_pct", "fleet4.writeback_mib_per_s", "fleet4.nas_requests_per_s", "fleet4.nas_cpu_pct"],
}


@pytest.mark.parametrize("section", list(EXPECTED))
def test_bench_quick_section_json_is_complete(section, tmp_path, capsys):
    before = set(nsutil.list_netns())
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--section", section, "--json", str(out)]) == 0
    assert _leaked(before) == set()
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    sec = doc["sections"][section]
    assert "error" not in sec and sec["duration_s"] > 0 and sec["params"]
    figs = {f["name"]: f for f in sec["figures"]}
    assert list(figs) == EXPECTED[section]
    for f in sec["figures"]:
        assert set(f) - {"notes"} == set(FIGURE_KEYS)
        assert f["met"] in (True, False, None)
        assert f"{section}.{f['name']}" in table
    if section == "writeback":
        for tag in ("mtu1500", "mtu9000", "tcp.mtu1500"):       # NFS over UDP at both MTUs, over TCP
            a = figs[f"{tag}.agent_mib_per_s"]
            assert a["value"] > 0 and a["baseline"] == figs[f"{tag}.refclient_mib_per_s"]["value"] > 0
            assert a["target"] == "ratio >= 0.9" and isinstance(a["met"], bool)
    if section == "rx_tcp":                                   # CPU per TCP segment vs the bare loop, same frames
        a, b = figs["tcp.agent_us_per_segment"], figs["tcp.bare_us_per_frame"]
        assert a["value"] > 0 and a["baseline"] == b["value"] > 0
        assert a["target"] == "ratio <= 1.2" and isinstance(a["met"], bool)
        assert figs["tcp.agent_in_segs"]["value"] > 0 and figs["tcp.agent_in_segs"]["baseline"] > 0
    if section == "recovery":
        f = figs["flood.writeback_mib_per_s"]
        assert f["value"] > 0 and f["baseline"] > 0 and f["target"] == "ratio >= 0.8"
    if section == "memory":
        assert figs["start.rss_mib"]["value"] > 0 and figs["after_flood.rss_mib"]["baseline"] == figs["start.rss_mib"]["value"]
        rss, pool = figs["after_flood.rss_over_pool_mib"]["value"], figs["after_flood.rss_over_pool_mib"]["baseline"]
        assert rss == figs["after_flood.rss_mib"]["value"] and pool == 32.0      # the plain RSS, as published
        assert abs(figs["after_flood.rss_minus_pool_mib"]["value"] - (rss - pool)) <= 0.01
        assert figs["after_flood.rss_minus_pool_mib"]["target"] == "value <= 40"
        assert figs["scapy_imported"]["value"] in (0, 1) and figs["scapy_imported"]["target"] == "value == 0"
    if section == "scale":
        assert figs["hosts64.up_s"]["value"] > 0 and figs["hosts64.up_s"]["target"] == "value <= 10"
        assert figs["leaked_netns"]["value"] == 0          # a state, not a speed
        assert figs["fleet4.writeback_mib_per_s"]["baseline"] == figs["fleet1.writeback_mib_per_s"]["value"] > 0
        assert figs["fleet4.nas_requests_per_s"]["value"] > 0


def test_bench_demo_section_reports_a_figure_or_one_error_line(tmp_path, monkeypatch):
    """The demo section never crashes the bench: a wall-time figure, or an error entry (exit 1)."""
    import testbed.bench.demo as demo
    monkeypatch.setattr(demo, "QUICK_LIMIT_S", 0.5)           # too short for any demo: the error path
    before = set(nsutil.list_netns())
    out = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--section", "demo", "--json", str(out)])
    sec = json.loads(out.read_text())["sections"]["demo"]
    assert rc == 1 and sec["figures"] == [] and "did not finish within" in sec["error"] and "\n" not in sec["error"]
    assert _leaked(before) == set()                           # stopped with SIGTERM: it cleaned up
