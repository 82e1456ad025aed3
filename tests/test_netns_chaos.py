"""`testbed chaos --runs 20 --real 2` end to end (root): 20 in-memory runs and 2 real ones, every
fault kind exercised, no acknowledged page lost, nothing left behind. ~45 s."""

import json
import os

from testbed.cli import main


def _runs():
    from netns_setup.state import list_runs
    return set(list_runs())


def test_chaos_campaign_20_plus_2_real(tmp_path, capsys):
    before = _runs()
    out = tmp_path / "chaos"
    rc = main(["chaos", "--runs", "20", "--real", "2", "--seed", "1", "--out", str(out)])
    text = capsys.readouterr().out
    camp = json.loads((out / "campaign.json").read_text())
    assert rc == 0, text
    assert camp["ok"] and camp["failed"] == [] and camp["lost_total"] == 0
    assert camp["kinds_missing"] == [], camp["kinds_exercised"]
    rows = camp["rows"]
    assert len(rows) == 22 and sum(r["kind"] == "real" for r in rows) == 2
    for r in rows:
        assert r["ok"] and r["lost"] == 0 and r["written"] == r["verified"], r
    for r in (r for r in rows if r["kind"] == "real"):
        # faults keyed by the agent's packet counts: the NAS was killed and restarted mid-run, the
        # flood went off and on again, and every acked page still reads back from the restarted NAS
        assert r["faults"]["nas_restart"] == 1 and r["faults"]["flood_toggle"] == 2, r
        # over TCP (the scenario's transport): the NAS kernel reset the NFS connection (ss -K)
        # and the client reconnected; every acked page still reads back
        assert r["faults"]["rst"] >= 1, r
        # and the client's NIC lost, duplicated, reordered and delayed frames both ways
        assert all(r["faults"][k] > 0 for k in ("loss", "dup", "reorder", "delay")), r["faults"]
        assert r["written"] > 1000
        assert not os.listdir(os.path.join(r["report"], "pcap"))      # passing runs drop their pcaps
        assert os.stat(r["report"]).st_mode & 0o777 == 0o700
    sim = [r for r in rows if r["kind"] == "sim"]
    assert all("leak" not in " ".join(r["problems"]) for r in sim)
    left = _runs() - before                                            # nothing of the real runs left
    assert not any(r.get("run_name") in left for r in rows), left     # (others' runs may come and go)
    assert "22/22 runs kept the invariant" in text
