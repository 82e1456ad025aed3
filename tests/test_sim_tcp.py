"""The simulation over TCP (transport = "tcp"): the NAS side of the in-memory wire serves RPC over
its own copy of the agent's TCP (testbed/nas_tcp.py), so a TCP scenario replays exactly from its
seed. Recorded figures for seed 1 of the four swap scenarios and the MAP_SHARED pair:
tests/data/sim_baseline_tcp.json (re-record with the snippet in its test below when a change is
explained). The UDP form of every scenario stays pinned by tests/test_sim_baseline.py."""

import json
from pathlib import Path

import pytest

from testbed import scenario
from testbed.sim import run_sim

BASELINE = json.loads((Path(__file__).parent / "data" / "sim_baseline_tcp.json").read_text())
FAST = ("memalloc", "no-reserve", "reserve-no-filter", "memalloc-undersized", "file-mmap-linux")


def _run(name, **over):
    sc = scenario.load(name)
    return sc, run_sim({**sc.to_dict(), "transport": "tcp", **over}, sc.seed)


@pytest.mark.parametrize("name", FAST)
def test_tcp_scenario_ends_as_expected_and_matches_its_baseline(name):
    sc, r = _run(name)
    b = BASELINE[name]
    assert r["outcome"] == sc.expect == b["outcome"]
    assert r["verify_failures"] == 0 and r["leaked_pages"] == 0 and r["leaked_sockets"] == 0
    assert r["pswpout"] == b["pswpout"] and r["tcp"] == b["tcp"]
    # over TCP indeed: rpcbind, mountd and NFS connections, data segments sent
    assert r["tcp"]["agent"]["Tcp"]["ActiveOpens"] == 3
    assert r["tcp"]["agent"]["TcpExt"]["TCPOrigDataSent"] > 0


def test_tcp_replays_exactly_from_its_seed():
    _sc, a = _run("no-reserve")
    _sc, b = _run("no-reserve")
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_nas_restart_reconnects_under_memory_pressure():
    # the NAS process dies twice during writeback: every connection reset, no listener for 1 s
    sc, r = _run("memalloc", nas_restart_at_s=(1.5, 3.0), nas_down_s=1.0, max_duration_s=120.0)
    assert r["outcome"] in ("recovered", "completed") and r["verify_failures"] == 0
    rpc = r["tcp"]["rpc"]
    # 1.5 s: reset; the immediate reconnect meets no listener (RST: connect_fails 1); xs_connect
    # then waits reestablish_timeout (3 s) from that attempt: 4.5 s, after the second restart
    # (3.0 s, down until 4.0 s) found no connection to reset -- one reconnect, every call that
    # was waiting (the 16 slots) sent again on it, no major timeout
    assert (rpc["connect_count"], rpc["connect_fails"], rpc["rpc_reconnects"]) == (2, 1, 1)
    assert rpc["rpc_retrans"] == sc.slots and rpc["rpc_major_timeouts"] == 0
    assert r["tcp"]["nas_server"]["reset_at_restart"] == 1 and r["faults"]["nas_restarts"] == 2
    assert r["leaked_pages"] == 0
