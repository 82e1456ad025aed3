"""Unit tests of the `testbed` CLI wiring (no root: errors caught before any kernel object)."""

import subprocess
import sys

import pytest

from testbed import cli


def test_every_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"doctor", "up", "status", "down", "clean", "capture"}
    args = parser.parse_args(["capture", "nas", "--name", "x", "--count", "3", "-w", "/tmp/f.pcap"])
    assert (args.host, args.name, args.count, args.file, args.duration) == ("nas", "x", 3, "/tmp/f.pcap", None)


def test_bad_topology_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESTBED_RUN_ROOT", str(tmp_path / "runs"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[hosts]]\nname = "nas"\naddress = "192.168.1.1/24"\n')
    assert cli.main(["up", "--topology", str(bad), "--name", "t"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"testbed: {bad}: hosts[0] (nas).address: 192.168.1.1/24")
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_status_of_unknown_run_names_the_runs_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESTBED_RUN_ROOT", str(tmp_path))
    assert cli.main(["status", "--name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == f"testbed: no topology named 'nope' is up (no {tmp_path}/nope/state.json); topologies up: none\n"


def test_bad_run_name_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESTBED_RUN_ROOT", str(tmp_path))
    assert cli.main(["down", "--name", "Bad/Name"]) == 2
    assert "run name 'Bad/Name' is not valid" in capsys.readouterr().err


def test_clean_with_no_records(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESTBED_RUN_ROOT", str(tmp_path / "none"))
    assert cli.main(["clean"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_python_dash_m_reports_user_errors_as_one_line(tmp_path):
    env = {"TESTBED_RUN_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "status", "--name", "zz"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("testbed: no topology named 'zz' is up") and p.stderr.count("\n") == 1


def test_no_command_prints_help():
    assert cli.main([]) == 2


def test_docs_name_every_stat_view_and_bench_section():
    """README's command table lists `testbed stat`'s views as its parser has them, and docs/bench.md's
    `--section` default names every section (the first two and the last four: it elides the middle)."""
    import pathlib
    import re

    from testbed.bench import load_sections
    root = pathlib.Path(__file__).resolve().parent.parent
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    views = next(a for a in sub.choices["stat"]._actions if a.dest == "view").choices
    row = next(l for l in (root / "README.md").read_text().splitlines() if l.startswith("| `testbed stat"))
    assert re.search(r"`testbed stat \[([^\]]*)\]", row).group(1).split("\\|") == list(views)
    names = load_sections().names()
    default = re.search(r"default: all \(([^)]*)\)", (root / "docs" / "bench.md").read_text()).group(1)
    assert re.findall(r"`(\w+)`", default) == names[:2] + names[-4:]
