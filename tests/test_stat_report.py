"""`testbed stat --report DIR` on the report directories a user really has: a `--client linux`
report (laid out as testbed/linux_vm/run.py writes it: report.json, timeline.json, guest/ with the
guest's final /proc snapshot, no agent snapshot) and a report without AoE asked for its aoe view."""

import json

from testbed import cli


def _linux_report(d):
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"scenarios": [{"name": "memalloc", "client": "linux"}]}))
    (d / "timeline.json").write_text("[]")
    (d / "guest").mkdir()
    (d / "guest" / "final_snapshot.json").write_text(json.dumps({"proc": {"vmstat": {"pswpout": 31}}}))
    (d / "guest" / "console.log").write_text("")
    return d


def test_stat_of_a_linux_client_report_says_where_the_guest_figures_are(tmp_path, capsys):
    d = _linux_report(tmp_path / "r")
    assert cli.main(["stat", "--report", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "a Linux-client report has no agent snapshot" in err
    assert f"{d}/guest/final_snapshot.json" in err and "is it a testbed report directory" not in err


def test_stat_of_an_empty_directory_still_asks_if_it_is_a_report(tmp_path, capsys):
    assert cli.main(["stat", "--report", str(tmp_path)]) == 2
    assert "is it a testbed report directory?" in capsys.readouterr().err


def test_stat_aoe_of_a_report_without_aoe_says_so(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"scenarios": [{"name": "memalloc"}]}))
    (d / "final_snapshot.json").write_text(json.dumps({"swap_devices": [{"kind": "nfs"}]}))
    assert cli.main(["stat", "aoe", "--report", str(d)]) == 0
    out = capsys.readouterr().out
    assert out == ("memalloc: no AoE device in this snapshot (its swap/file storage is not AoE); "
                   "`testbed stat` shows its other views\n")
