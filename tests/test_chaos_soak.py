"""Soak's sampling and bounds (no root; the soak itself is `testbed soak`, minutes, not CI)."""

import os

from testbed import soak


def test_sample_processes_reads_rss_and_fds_of_live_pids():
    got = soak.sample_processes({"me": os.getpid(), "gone": 2 ** 22 + 12345})
    assert got["me"]["rss_bytes"] > 10 << 20 and got["me"]["num_fds"] >= 3
    assert got["gone"] is None


def _samples(rss_end, fds_end, drc_end=10, net_end=100):
    out = []
    for i in range(20):
        f = i / 19
        out.append({"t": i, "procs": {"agent": {"rss_bytes": int(100e6 + f * (rss_end - 100e6)),
                                                "num_fds": 10 + round(f * (fds_end - 10))}},
                    "pool": {"pool_in_use": 8000, "anon": 7000, "writeback": 0, "net_held": net_end},
                    "drc": {"entries": drc_end, "max_entries": 1024}})
    return out


def test_check_growth_passes_steady_and_names_each_violation():
    figs, problems = soak.check_growth(_samples(101e6, 10))
    assert problems == [] and figs["agent"]["fd_growth"] == 0 and figs["drc_entries_max"] == 10
    _, p = soak.check_growth(_samples(200e6, 10))
    assert len(p) == 1 and "agent: RSS grew" in p[0]
    _, p = soak.check_growth(_samples(101e6, 20))
    assert len(p) == 1 and "open fds grew" in p[0]
    _, p = soak.check_growth(_samples(101e6, 10, drc_end=2000))
    assert len(p) == 1 and "DRC" in p[0]
    _, p = soak.check_growth(_samples(101e6, 10, net_end=soak.NET_PAGES_MAX + 1))
    assert len(p) == 1 and "held by the network" in p[0]
    assert soak.check_growth([])[1]


def test_pool_view_from_an_agent_snapshot():
    v = soak.pool_view({"alloc": {"zoneinfo": {"managed": 8192, "free": 1000},
                                  "vmstat": {"nr_anon_pages": 6000, "nr_writeback": 100}}})
    assert v == {"pool_in_use": 7192, "anon": 6000, "writeback": 100, "net_held": 1092, "pswpout": 0}


def test_agent_rss_bound_grows_with_pages_swapped_out():
    s = _samples(130e6, 10)                       # +30 MiB: over 16 MiB ...
    _, p = soak.check_growth(s)
    assert p and "agent: RSS grew" in p[0]
    for i, x in enumerate(s):                     # ... unless 200k pages went out meanwhile (swap map)
        x["pool"]["pswpout"] = i * 10_000
    _, p = soak.check_growth(s)
    assert p == []
