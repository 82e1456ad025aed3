"""testbed chaos on the in-memory wire (no root): replay from seed, every fault kind, the invariant
and the exit status. The real-packet part (--real) is tests/test_netns_chaos.py."""

import json
import os

import pytest

from testbed import chaos
from testbed.cli import main


def test_same_seed_twice_gives_identical_runs():
    for i in (0, 4, 12):                       # loss+reorder+flood, nas_restart (UNSTABLE resend), ...
        a, b = chaos.run_one(5, i), chaos.run_one(5, i)
        assert a["ok"], a["problems"]
        assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
        assert a["result"]["timeline"] == b["result"]["timeline"]
    # a different campaign seed draws different faults
    assert chaos.plan(5, 0)["params"] != chaos.plan(6, 0)["params"]


def test_short_campaign_every_kind_no_loss_no_leak():
    res = chaos.campaign(len(chaos.FAULT_KINDS), seed=3)      # run i always gets FAULT_KINDS[i % 9]
    assert res["ok"], [(r["run"], r["problems"]) for r in res["rows"] if not r["ok"]]
    assert res["kinds_missing"] == [] and set(res["kinds_exercised"]) == set(chaos.FAULT_KINDS)
    assert res["lost_total"] == 0
    for r in res["rows"]:
        assert r["lost"] == 0 and r["written"] == r["verified"]
        assert set(r["faults"]) >= {chaos.FAULT_KINDS[r["run"] % len(chaos.FAULT_KINDS)]}
        if "baseline_outcome" in r:                            # outcome-preserving set: same outcome
            assert r["baseline_outcome"] == r["outcome"]
    restarts = [r for r in res["rows"] if "nas_restart" in r["faults"]]
    assert restarts and all(r["faults"]["nas_restart"] >= 1 for r in restarts)
    # over TCP (the scenarios' transport): NAS-side RSTs reset connections the client re-made
    # (a client out of memory may never receive the RST -- its NIC drops it, NOMEM -- and so
    # never reconnects: a later RST finds no connection to reset, counted 0)
    rsts = [r for r in res["rows"] if "rst" in r["faults"]]
    assert rsts and any(r["faults"]["rst"] >= 1 for r in rsts)


def test_nas_restart_with_unstable_resends_and_loses_nothing():
    # find a planned run with a NAS restart and UNSTABLE writes; it must resend and verify everything
    for i in range(4, 200, len(chaos.FAULT_KINDS)):       # FAULT_KINDS[4] is nas_restart
        pl = chaos.plan(1, i)
        # a restart once UNSTABLE writes are in flight (an earlier one finds nothing to resend)
        if pl["params"].get("stable") == "UNSTABLE" and pl["scenario"] == "memalloc" \
                and min(pl["params"]["nas_restart_at_s"]) >= 1.0:
            break
    row = chaos.run_one(1, i)
    assert row["ok"], row["problems"]
    assert row["faults"]["nas_restart"] >= 1 and row["resends"] > 0
    assert row["written"] == row["verified"] > 0


def test_check_names_each_violation():
    good = {"verify_failures": 0, "pages_verified": 10, "acked_pages": 10, "leaked_pages": 0, "leaked_owners": {},
            "leaked_tasks": [], "leaked_sockets": 0, "memalloc_socks_after_swapoff": 0}
    assert chaos.check(good) == []
    assert "lost/corrupted" in chaos.check(good | {"pages_verified": 9, "verify_failures": 1})[0]
    assert "pages left in the pool" in chaos.check(good | {"leaked_pages": 3, "leaked_owners": {"rx": 3}})[0]
    assert "tasks left" in chaos.check(good | {"leaked_tasks": ["kswapd"]})[0]
    assert "sockets left" in chaos.check(good | {"leaked_sockets": 1})[0]


def test_cli_exit_1_and_keeps_the_failed_runs_report(tmp_path, monkeypatch, capsys):
    real = chaos.run_one

    def broken(seed, i):
        row = real(seed, i)
        if i == 1:
            row["result"]["leaked_pages"] = 5
            row["problems"] = ["5 pages left in the pool after teardown: {'rx': 5}"]
            row["ok"] = False
        return row

    monkeypatch.setattr(chaos, "run_one", broken)
    out = tmp_path / "c"
    assert main(["chaos", "--runs", "2", "--seed", "2", "--out", str(out)]) == 1
    kept = json.loads((out / "run-1.json").read_text())
    assert kept["result"]["leaked_pages"] == 5 and kept["row"]["params"]["name"].startswith("no-reserve")
    assert not (out / "run-0.json").exists()
    camp = json.loads((out / "campaign.json").read_text())
    assert camp["failed"] == [1] and camp["ok"] is False
    assert "FAIL" in capsys.readouterr().out
    assert os.stat(out).st_mode & 0o777 == 0o700


def test_cli_refuses_traversal_and_negative_counts(tmp_path, capsys):
    assert main(["chaos", "--runs", "1", "--out", str(tmp_path / ".." / "x")]) == 2
    assert main(["chaos", "--runs", "-1", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "'..'" in err and "testbed: --runs -1: a count of runs must be >= 0" in err and "--real" not in err
    assert main(["chaos", "--runs", "0", "--out", str(tmp_path / "z")]) == 2       # nothing to run
    assert capsys.readouterr().err.strip() == ("testbed: --runs 0 --real 0: nothing to run; give --runs N "
                                               "(in memory) and/or --real N (root)")


def test_two_campaigns_in_the_same_second_get_their_own_default_directories(tmp_path, monkeypatch, capsys):
    import time
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261130T120000")
    # one in-memory run each (--runs 0 --real 0 is refused: nothing to run)
    assert main(["chaos", "--runs", "1"]) == 0
    assert main(["chaos", "--runs", "1"]) == 0
    assert sorted(os.listdir(tmp_path / "reports")) == ["chaos-20261130T120000", "chaos-20261130T120000-2"]
    for d in ("chaos-20261130T120000", "chaos-20261130T120000-2"):
        assert json.loads((tmp_path / "reports" / d / "campaign.json").read_text())["runs"] == 1


@pytest.mark.parametrize("argv,line", [
    (["--only", "20"], "--only 20: the campaign's in-memory runs are 0..19 (--runs 20)"),
    (["--runs", "3", "--only", "3"], "--only 3: the campaign's in-memory runs are 0..2 (--runs 3)"),
    (["--only", "-1"], "--only -1: the campaign's in-memory runs are 0..19 (--runs 20)")])
def test_only_beyond_the_campaign_is_one_line(tmp_path, capsys, argv, line):
    assert main(["chaos", *argv, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"testbed: {line}; give --only in that range")
    assert not (tmp_path / "c").exists()


def test_aoe_campaign_in_memory(tmp_path, capsys):
    """--storage aoe: aoe-linux and aoe-extended under the kinds that apply to AoE; the invariant
    holds; --real is refused in one line."""
    pl = [chaos.plan(1, i, "aoe") for i in range(4)]
    assert [p["scenario"] for p in pl] == ["aoe-linux", "aoe-extended"] * 2
    assert all(set(p["kinds"]) <= set(chaos.AOE_KINDS) and p["params"]["storage"] == "aoe" for p in pl)
    out = tmp_path / "c"
    assert main(["chaos", "--storage", "aoe", "--runs", "2", "--out", str(out)]) == 0
    camp = json.loads((out / "campaign.json").read_text())
    assert camp["ok"] and [r["scenario"] for r in camp["rows"]] == ["aoe-linux", "aoe-extended"]
    assert camp["rows"][1]["written"] > 0 and camp["rows"][1]["lost"] == 0
    assert set(camp["kinds_exercised"]) | set(camp["kinds_missing"]) == set(chaos.AOE_KINDS)
    capsys.readouterr()
    assert main(["chaos", "--storage", "aoe", "--real", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage aoe --real 1" in err[0] and "use --real 0" in err[0]
