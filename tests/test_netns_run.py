"""`testbed run` end to end on real packets (root): the four built-in scenarios end as they expect,
over TCP (the scenarios' transport).

Durations are capped with --set (a deadlock is declared after stall_threshold_s = 6 s, the minimum
3 x timeo_max_s allows; each run takes ~8 s), so the four stay well under 90 s. Each run is checked from its
report directory: outcome == expect (exit 0), every acked page read back intact over kernel
sockets, the counters that tell the story (PFMemallocDrop for the cure, rx_nobuf + a hung task
for the deadlock), pcaps and logs present, and nothing of the run left behind.
"""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _agent_has_swap_ops():
    with open(os.path.join(REPO, "client_agent", "agent.py")) as f:
        src = f.read()
    return all(f'"{op}"' in src for op in ("swapon", "workload", "swap_map"))


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not _agent_has_swap_ops(), reason="client_agent/agent.py has no swapon/workload/swap_map ops yet"),
]


def run_cli(name, out, *sets):
    argv = [sys.executable, "-m", "testbed.cli", "run", name, "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": REPO})
    rep = None
    if os.path.exists(os.path.join(out, "report.json")):
        with open(os.path.join(out, "report.json")) as f:
            rep = json.load(f)
    return p, rep


def common(p, rep, out, name):
    assert rep is not None, p.stderr[-3000:]
    assert rep["schema_version"] == 1
    e = rep["scenarios"][0]
    for k in ("name", "outcome", "seed", "expect", "time_to_stall_s", "time_to_recover_s", "pages_written",
              "pages_verified", "pages_lost", "reserve_low_pages", "rpc_retrans", "preflight", "counters", "watchdog"):
        assert k in e
    assert e["name"] == name
    assert all(c["pass"] for c in e["preflight"] if c["applies"] in ("all",) or e["expect"] in c["applies"])
    assert {"PFMemallocDrop", "rx_nobuf", "pswpout"} <= set(e["counters"])
    with open(os.path.join(out, "timeline.json")) as f:
        tl = json.load(f)["samples"]
    assert len(tl) >= 5 and all("free" in s and "pswpout" in s for s in tl)
    assert all(0.1 < b["t"] - a["t"] < 0.5 for a, b in zip(tl, tl[1:]))   # sampled every 0.2 s
    assert os.path.getsize(os.path.join(out, "pcap", "client.pcap")) > 24
    assert os.path.getsize(os.path.join(out, "pcap", "nas.pcap")) > 24
    logs = os.listdir(os.path.join(out, "logs"))
    assert any("client-agent" in l for l in logs) and any("nas-server" in l for l in logs) and any("flood" in l for l in logs)
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"nsdt-{e['run_name']}-" not in ns
    # every page the NAS acknowledged reads back as written
    assert e["pages_verified"] == e["pages_written"] and e["pages_lost"] == 0
    return e


def test_memalloc_recovers_and_no_reserve_deadlocks(tmp_path):
    out = tmp_path / "memalloc"
    p, rep = run_cli("memalloc", out, "max_duration_s=30")
    e = common(p, rep, out, "memalloc")
    assert p.returncode == 0 and e["outcome"] == "recovered", (e["outcome"], e["watchdog"], p.stderr[-2000:])
    assert e["pages_written"] > 0
    assert e["counters"]["PFMemallocDrop"] > 0          # the flood's reserve buffers dropped at the demux
    assert e["counters"]["rx_nobuf"] == 0               # no reply ever lacked a buffer
    assert e["reserve_low_pages"] < e["preflight"][0]["values"]["atomic_floor"]   # the reserve was used
    assert e["time_to_recover_s"] is not None
    # progress lines are key=value text, not Python dicts
    assert re.search(r"^testbed run: swapon: nr_slots=\d+ device=0 priority=-1 fh=[0-9a-f]+$", p.stdout + p.stderr, re.M), p.stdout[-2000:]
    assert "{'" not in p.stdout + p.stderr

    out = tmp_path / "no-reserve"
    p, rep = run_cli("no-reserve", out, "max_duration_s=20")
    e = common(p, rep, out, "no-reserve")
    assert p.returncode == 0 and e["outcome"] == "deadlock", (e["outcome"], e["watchdog"], p.stderr[-2000:])
    assert e["counters"]["rx_nobuf"] > 0                 # replies found no receive buffer
    assert e["counters"]["PFMemallocDrop"] == 0          # nothing marked: no reserve in play
    # never below the floor on receive (no pfmemalloc buffer); over TCP kswapd's own WRITE
    # records wait in the write/retransmit queue, allocated in its PF_MEMALLOC context: at most
    # slots x request_skb_pages (16 x 2) below the floor, plus a transmit frame
    assert e["counters"]["rx_pfmemalloc"] == 0
    floor = e["preflight"][0]["values"]["atomic_floor"]
    assert e["reserve_low_pages"] >= floor - 16 * 2 - 2
    assert "INFO: task" in e["watchdog"] and "Mem-Info: free:" in e["watchdog"]
    assert "never received by the NFS socket" in e["watchdog"]
    assert "INFO: task" in p.stderr


def test_reserve_without_filter_and_undersized_reserve_deadlock(tmp_path):
    out = tmp_path / "reserve-no-filter"
    p, rep = run_cli("reserve-no-filter", out, "max_duration_s=20")
    e = common(p, rep, out, "reserve-no-filter")
    assert p.returncode == 0 and e["outcome"] == "deadlock", (e["outcome"], e["watchdog"], p.stderr[-2000:])
    assert e["reserve_low_pages"] == 0                   # the flood's queues ate the whole reserve
    assert e["counters"]["PFMemallocDrop"] == 0 and e["counters"]["rx_nobuf"] > 0

    out = tmp_path / "memalloc-undersized"
    p, rep = run_cli("memalloc-undersized", out, "max_duration_s=20")
    e = common(p, rep, out, "memalloc-undersized")
    assert p.returncode == 0 and e["outcome"] == "deadlock", (e["outcome"], e["watchdog"], p.stderr[-2000:])
    assert e["reserve_low_pages"] == 0                   # RPC buffers took the whole reserve
    assert e["counters"]["rx_nobuf"] > 0                 # so the replies found none
    # and the requests find none either: over TCP the WRITE records cannot all enter the
    # socket's write queue (their bytes wait in the transport), RPC buffers fail too
    nfs = json.loads((out / "final_snapshot.json").read_text())["nfs"]
    assert nfs["socket"]["unsent_record_bytes"] > 0 and nfs["counters"]["rpc_alloc_nomem"] > 0
