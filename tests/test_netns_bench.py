"""`testbed bench --quick --section rx --json F` end to end, in namespaces it creates and removes.

Asserts the document's shape and that the measured figures are real positive numbers -- never the
speed targets themselves (those are the bench's output, not a test's verdict).
"""

import json

from netns_setup import nsutil
from testbed.bench.framework import FIGURE_KEYS
from testbed.bench.rx import QUICK_RATES_PPS
from testbed.cli import main


def test_bench_quick_rx_end_to_end(tmp_path, capsys):
    ours = lambda: {n for n in nsutil.list_netns() if n.startswith("nsdt-bench-rx-")}  # noqa: E731
    before = ours()                                      # other runs' namespaces are not ours to judge
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--section", "rx", "--json", str(out)]) == 0
    assert ours() == before                              # the bench's topology is gone
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["quick"] is True
    assert {"cpu_model", "nproc", "kernel", "python", "pyroute2", "scapy", "date"} <= set(doc["machine"])
    assert list(doc["sections"]) == ["rx"]
    rx = doc["sections"]["rx"]
    assert "error" not in rx and rx["duration_s"] > 0
    assert rx["params"]["rates_pps"] == list(QUICK_RATES_PPS)
    figs = {f["name"]: f for f in rx["figures"]}
    for f in rx["figures"]:
        assert set(f) - {"notes"} == set(FIGURE_KEYS)
        assert f["met"] in (True, False, None)
        assert f"rx.{f['name']}" in table
    for rate in QUICK_RATES_PPS:
        tag = f"{rate // 1000}kpps"
        flood = figs[f"{tag}.flood_pps"]
        assert flood["baseline"] == rate and flood["value"] > 0
        bare_rx, bare_cpu = figs[f"{tag}.bare.rx_pps"], figs[f"{tag}.bare.cpu_us_per_frame"]
        assert bare_rx["value"] > 0 and bare_rx["baseline"] > 0 and bare_rx["ratio"] > 0
        assert isinstance(bare_cpu["value"], float) and bare_cpu["value"] > 0
        assert figs[f"{tag}.bare.tp_drops"]["value"] >= 0
        ring_cpu = figs[f"{tag}.bare_ring.cpu_us_per_frame"]     # the second bare baseline: the TPACKET_V3 ring
        assert isinstance(ring_cpu["value"], float) and ring_cpu["value"] > 0
        assert ring_cpu["baseline"] == bare_cpu["value"]
        agent_cpu = figs[f"{tag}.agent.cpu_us_per_frame"]
        assert agent_cpu["target"] == "ratio <= 1.2"
        if agent_cpu["value"] is None:                    # client-agent not available: said so
            assert agent_cpu["met"] is None and "client-agent" in agent_cpu["notes"]
        else:
            # against the cheaper bare loop of the same run
            assert agent_cpu["value"] > 0 and agent_cpu["baseline"] in (bare_cpu["value"], ring_cpu["value"])
            assert agent_cpu["ratio"] > 0 and isinstance(agent_cpu["met"], bool)
            assert figs[f"{tag}.agent.rx_pps"]["value"] > 0
