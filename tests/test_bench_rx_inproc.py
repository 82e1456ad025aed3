"""Section "rx_inproc" (no root, no system call): a tiny run through the agent's Host on the
in-memory ring; the figures exist and are positive, every frame was read by a sink and every
pool page came back. No timing is asserted."""

import math

import pytest

import testbed.bench as bench
from testbed.bench import rx_inproc
from testbed.bench.framework import BenchContext, BenchError


def test_rx_inproc_is_registered_and_needs_no_root():
    sec = bench.load_sections().get("rx_inproc")
    assert not sec.needs_root and "in-process" in sec.help


def test_a_tiny_run_gives_positive_finite_figures_and_reads_every_frame():
    res = rx_inproc.rx_inproc_section(BenchContext(quick=True), frames=640)
    f = {x.name: x for x in res.figures}
    for b in rx_inproc.BATCHES:
        agent, bare = f[f"batch{b}.agent.cpu_us_per_frame"], f[f"batch{b}.bare_ring.cpu_us_per_frame"]
        for fig in (agent, bare):
            assert isinstance(fig.value, float) and math.isfinite(fig.value) and fig.value > 0
        assert agent.baseline == bare.value
        read = f[f"batch{b}.agent.sink_read"]
        assert read.value == read.baseline == 640 - 640 % b and read.met
        assert f[f"batch{b}.agent.polls_per_batch"].value >= 1
    assert res.params["runs"]["batch64"]["polls"] == 2 * 10     # budget 64 exhausted: one repoll each


def test_measure_agent_counts_every_frame_and_returns_every_page():
    a = rx_inproc.measure_agent(96, 8, 0)
    assert a["read"] == 96 and a["rx_packets"] == a["handed"] == a["udp_read_fate"] == 96 + 96
    assert a["nr_free"] == a["nr_pages"] and a["rmem_held"] == 0 and not a["dropped"] and not a["ring_left"]
    rx_inproc._check("batch8", a)


def test_a_run_that_lost_a_frame_or_a_page_is_an_error_not_a_figure():
    a = rx_inproc.measure_agent(16, 1, 0)
    with pytest.raises(BenchError, match="sinks read 15 of 16"):
        rx_inproc._check("batch1", {**a, "read": 15})
    with pytest.raises(BenchError, match="3 pool pages not returned"):
        rx_inproc._check("batch1", {**a, "nr_free": a["nr_pages"] - 3})
    with pytest.raises(BenchError, match="drops"):
        rx_inproc._check("batch1", {**a, "dropped": {"NO_SOCKET": 1}})
