"""`testbed run NAME --sim`: the in-memory run writes the real run's report directory -- report.json
with the scenario entry keys, timeline.json, a PNG, a pcap of the in-memory wire -- without root."""

import json

import pytest

from testbed.cli import main
from testbed.report import SCENARIO_KEYS


def test_run_sim_writes_the_report_directory(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["run", "no-reserve", "--sim", "--seed", "3", "--out", str(out),
               "--set", "max_duration_s=20"])
    assert rc == 0                                   # expect deadlock, and it deadlocks
    doc = json.loads((out / "report.json").read_text())
    e = doc["scenarios"][0]
    assert all(k in e for k in SCENARIO_KEYS) and doc["simulated"] is True
    assert e["outcome"] == "deadlock" and e["expect"] == "deadlock" and e["seed"] == 3
    assert e["pages_lost"] == 0 and e["pages_written"] == e["pages_verified"] > 0
    assert e["counters"]["rx_nobuf"] > 1000 and e["counters"]["PFMemallocDrop"] == 0
    tl = json.loads((out / "timeline.json").read_text())["samples"]
    assert tl[0]["t"] == 0.1 and tl[-1]["t"] == e["decided_at_s"]
    assert (out / "no-reserve.png").stat().st_size > 10_000
    assert "not responding, still trying" in (out / "logs" / "sim.log").read_text()
    # the pcap: classic pcap of both directions of the client's NIC, the flood and the NFS traffic
    # NFS over TCP (the default transport), the flood over UDP
    from scapy.all import TCP, UDP, rdpcap
    frames = rdpcap(str(out / "pcap" / "client.pcap"))
    nfs = {(f[TCP].sport, f[TCP].dport) for f in frames if TCP in f}
    assert any(d == 2049 for _s, d in nfs) and any(s == 2049 for s, _d in nfs)
    assert any(d == 111 for _s, d in nfs)                   # portmap GETPORT
    ports = {(f[UDP].sport, f[UDP].dport) for f in frames if UDP in f}
    assert any(9000 <= d < 9004 for _s, d in ports)
    assert len(frames) > e["counters"]["rx_nobuf"]
    assert "[simulated, seed 3]" in capsys.readouterr().out
    # final_snapshot.json: the agent's snapshot with a real run's keys, which `testbed stat` reads
    from client_agent.agent import Agent
    from client_agent.loop import Loop, ManualClock
    from client_agent.phy.wire_pair import WirePair
    loop = Loop(ManualClock())
    real = Agent(loop, WirePair(loop).a, ip="198.18.0.2", prefix_len=24, pool_pages=512).snapshot()
    snap = json.loads((out / "final_snapshot.json").read_text())
    assert set(snap) == set(real)
    assert snap["nfs"]["proto"] == "tcp" and snap["nfs"]["counters"]["rpc_calls"] > 0
    assert snap["alloc"]["vmstat"]["pswpout"] == e["counters"]["pswpout"]
    assert main(["stat", "vmstat", "--report", str(out)]) == 0
    assert f"pswpout {e['counters']['pswpout']}" in capsys.readouterr().out
    assert main(["stat", "sst", "--report", str(out)]) == 0           # ss -tinm: the NFS connection
    assert "198.18.0.1:2049" in capsys.readouterr().out


def test_run_sim_bad_override_is_one_line(tmp_path, capsys):
    rc = main(["run", "memalloc", "--sim", "--out", str(tmp_path / "x"), "--set", "slots=0"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "slots" in err[0]


@pytest.mark.parametrize("flags", [["--client", "linux"], ["--kernel", "/boot/vmlinuz"]])
def test_run_sim_with_the_linux_client_is_one_line(tmp_path, capsys, flags):
    """--sim has the agent client only: asking for the Linux VM client is refused, nothing created."""
    out = tmp_path / "x"
    assert main(["run", "memalloc", "--sim", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sim" in err[0] and "client=linux" in err[0] and "without --sim" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("cmd", [["run", "memalloc", "--sim"], ["demo", "--quick"]])
@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_a_seed_out_of_range_names_seed_and_its_range(tmp_path, capsys, cmd, seed):
    assert main([*cmd, "--out", str(tmp_path / "x"), "--seed", seed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"testbed: --seed {seed}: outside 0..{2**63 - 1}; give a seed in that range"]
    assert not (tmp_path / "x").exists()


def test_kv_text_is_one_progress_line():
    from testbed.report import kv_text
    assert kv_text({"nr_slots": 4096, "device": 0, "fh": "ab01"}) == "nr_slots=4096 device=0 fh=ab01"
    assert kv_text({"a": {"b": 1, "c": None}}) == "a=(b=1 c=None)"
