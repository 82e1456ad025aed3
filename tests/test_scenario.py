"""Scenario model, validation errors (one line: file, key, fix) and the preflight, no root."""

import os

import pytest

from testbed import scenario as S


def write(tmp_path, body, name="s.toml"):
    p = tmp_path / name
    p.write_text(body)
    return str(p)


def test_builtins_load_and_pass_preflight():
    for n in ("no-reserve", "reserve-no-filter", "memalloc", "memalloc-undersized"):
        sc = S.load(n)
        assert sc.name == n
        checks, _ = S.preflight(sc)
        assert S.failing(sc, checks) == [], n
    assert S.load("memalloc").expect == "recovered"
    assert S.load("no-reserve").memalloc is False
    assert S.load("reserve-no-filter").pfmemalloc_demux_drop is False


def test_worked_example_by_hand():
    sc = S.from_dict({"name": "w", "expect": "recovered", "pool_pages": 8192, "min_free_kbytes": 2048,
                      "slots": 16, "noise_sockets": 4, "noise_rcvbuf_bytes": 832 * 1024, "flood_pps": 4000})
    checks, f = S.preflight(sc)
    # min = 2048 KiB / 4 KiB = 512; step = max(512/4, 8192*10/10000=8) = 128
    assert (f["min"], f["low"], f["high"]) == (512, 640, 768)
    # GFP_ATOMIC: 512 - 512/2 = 256; 256 - 256/4 = 192
    assert f["atomic_floor"] == 192
    # 64-byte payload frame = 106 bytes -> one page; truesize 4096 + 576
    assert f["flood_truesize"] == 4672
    # 851968 // 4672 = 182, +1 admitted while rmem <= rcvbuf -> 183 per socket, x4 = 732
    assert f["noise_pages"] == 4 * 183 == 732
    by = {c.name: c for c in checks}
    # The flood pins min - floor = 320 pages while kswapd (<= 2000 pages/s) hands pages back:
    # fill_s = 320 / (4000 - 2000) = 0.16 s, needed = 4000 x 0.16 = 640 <= 732 (a thin margin:
    # the built-in scenarios use 4 MiB sockets, 4 x 898 = 3592 pages).
    pin = by["flood_pins_free_at_atomic_floor"]
    assert pin.values["fill_s"] == 0.16 and pin.values["needed"] == 640
    assert pin.passed
    # Over TCP (the default): a WRITE record = 4-byte mark + call (RPC header with AUTH_SYS
    # "client-agent", 64-byte fh, offset/count/stable, 4096 data) = 4260 bytes; MSS 1500 - 20 - 20
    # - 12 (timestamps) = 1448: 3 segments, its bytes in at most 2 pages of TCP's write/retransmit
    # queue until ACKed (size_goal buffers).
    # The reply frame: 160 RPC + 4 mark + 32 TCP + 20 IP + 14 Ethernet = 230 bytes, one page.
    # 16 x (1 RPC buffer + 2 request pages + 1 reply) + 1 transmit + 1 received ACK = 66.
    assert sc.transport == "tcp"
    assert (f["write_record_bytes"], f["tcp_mss"], f["request_segments"],
            f["request_skb_pages"]) == (4260, 1448, 3, 2)
    assert f["tcp_reply_frame_bytes"] == 230 and f["reply_pages"] == 1
    assert by["reserve_covers_slot_table"].values["needed"] == 16 * (1 + 2 + 1) + 1 + 1 == 66
    assert by["reserve_covers_slot_table"].passed                  # 192 >= 66
    # The UDP form ("Linux before 5.6"): per-frame receive, one transmit page at a time:
    # 16 x (1 RPC buffer + 1 reply) + 1 = 33.
    sc_udp = S.from_dict({**sc.to_dict(), "transport": "udp"})
    udp = {c.name: c for c in S.preflight(sc_udp)[0]}
    assert udp["reserve_covers_slot_table"].values["needed"] == 16 * (1 + 1) + 1 + 0 == 33
    assert by["flood_within_agent_capacity"].values["limit"] == 149889 // 4 == 37472   # 4 kpps fits
    assert by["flood_within_agent_capacity"].passed
    assert all(set(c.to_json()) >= {"name", "formula", "values", "pass"} for c in checks)


def test_impossible_scenario_refused_with_numbers():
    # memalloc-undersized's reserve but expecting recovery: floor 6 < 66 (TCP).
    sc = S.from_dict({"name": "x", "expect": "recovered", "min_free_kbytes": 64,
                      "noise_rcvbuf_bytes": 4194304}, "x.toml")
    bad = S.failing(sc, S.preflight(sc)[0])
    assert [c.name for c in bad] == ["reserve_covers_slot_table"]
    line = bad[0].line(sc)
    assert "x.toml" in line and "atomic_floor=6" in line and "needed=66" in line and "\n" not in line
    # min_free_kbytes 1024 (floor 96 >= 66): a deadlock is not possible in this model over TCP;
    # 512 (floor 48) is enough over UDP (>= 33) but not over TCP
    sc = S.from_dict({"name": "u", "expect": "deadlock", "min_free_kbytes": 1024}, "u.toml")
    assert "reserve_undersized" in [c.name for c in S.failing(sc, S.preflight(sc)[0])]
    sc = S.from_dict({"name": "u", "expect": "deadlock", "min_free_kbytes": 512}, "u.toml")
    assert "reserve_undersized" not in [c.name for c in S.failing(sc, S.preflight(sc)[0])]
    sc = S.from_dict({"name": "u", "expect": "deadlock", "min_free_kbytes": 512, "transport": "udp"}, "u.toml")
    assert "reserve_undersized" in [c.name for c in S.failing(sc, S.preflight(sc)[0])]
    # 832 KiB noise sockets cannot let the flood eat the whole reserve: 732 < 4000 x 512 / 2000
    sc = S.from_dict({"name": "v", "expect": "deadlock", "pfmemalloc_demux_drop": False}, "v.toml")
    bad = S.failing(sc, S.preflight(sc)[0])
    assert [c.name for c in bad] == ["flood_eats_whole_reserve"] and "needed=1024" in bad[0].line(sc)
    # too few noise pages to pin free at the floor: 1 socket of 4 KiB -> 1 page < 320
    sc = S.from_dict({"name": "y", "expect": "deadlock", "memalloc": False, "noise_sockets": 1,
                      "noise_rcvbuf_bytes": 4096}, "y.toml")
    bad = S.failing(sc, S.preflight(sc)[0])
    assert "flood_pins_free_at_atomic_floor" in [c.name for c in bad]
    assert "noise_pages=1" in bad[0].line(sc) and "min=512" in bad[0].line(sc)
    # flood beyond a quarter of the agent's capacity
    sc = S.from_dict({"name": "z", "expect": "deadlock", "memalloc": False, "flood_pps": 40000})
    assert "flood_within_agent_capacity" in [c.name for c in S.failing(sc, S.preflight(sc)[0])]


@pytest.mark.parametrize("body,needle", [
    ('[scenario]\nname="a"\nbogus=1\n', "bogus: unknown key"),
    ('[scenario]\nname="a"\nexpect="maybe"\n', "expect: 'maybe' is not one of deadlock, recovered, completed"),
    ('[scenario]\nname="a"\nslots="16"\n', "slots: expected an integer"),
    ('[scenario]\nname="a"\nslots=0\n', "slots: 0 is outside 1..1024"),
    ('[scenario]\nname="a"\nmemalloc=1\n', "memalloc: expected true or false"),
    ('[scenario]\nname="a"\ntimeo_s="x"\n', "timeo_s: expected a number of seconds"),
    ('[scenario]\nname="a"\nstable="SYNC"\n', "stable: 'SYNC' is not one of"),
    ('[scenario]\nname="a"\nnoise_reader="slow"\n', "noise_reader: 'slow' is not one of"),
    ('[scenario]\nname="a"\nstall_threshold_s=3.0\n', "stall_threshold_s: 3.0 < 3 x timeo_max_s = 6.0"),
    ('[scenario]\nname="a"\ntimeo_s=3.0\ntimeo_max_s=2.0\n', "timeo_max_s: 2.0 < timeo_s 3.0"),
    ('[scenario]\nname="a"\nmax_duration_s=6.0\n', "max_duration_s: 6.0 <= stall_threshold_s"),
    ('[scenario]\nname="a"\nwsize=5000\n', "wsize: 5000 is not a multiple of 4096"),
    ('[scenario]\ndescription="no name"\n', "name: missing"),
    ('name="a"\n', "name: unknown top-level key"),
    ('', "scenario: missing [scenario] table"),
    ('[scenario\n', "not valid TOML"),
    ('[scenario]\nname="a"\npool_pages=64\n', "pool_pages: a pool of 64 pages cannot hold its watermarks (min 512, low 640, high 768"),
])
def test_validation_errors_are_one_line_with_file_and_key(tmp_path, body, needle):
    path = write(tmp_path, body)
    with pytest.raises(S.ScenarioError) as e:
        S.load(path)
    msg = str(e.value)
    assert needle in msg and path in msg and "\n" not in msg


def test_unreadable_scenario_files_are_one_line(tmp_path):
    """A directory, and a file that is not UTF-8 (found by a new user: tracebacks before)."""
    with pytest.raises(S.ScenarioError, match=r"cannot read it \(Is a directory\); pass a scenario file"):
        S.load(str(tmp_path))
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"\xff\xfe[scenario]\n")
    with pytest.raises(S.ScenarioError, match=r"not UTF-8 text \(byte 0xff at offset 0\)"):
        S.load(str(p))


def test_cli_out_that_cannot_be_created_is_one_line(capsys):
    from testbed.cli import main
    assert main(["run", "memalloc", "--sim", "--out", "/proc/no-such-dir-here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["testbed: --out /proc/no-such-dir-here: cannot create the report directory "
                   "(No such file or directory); give a path in a writable directory"]


@pytest.mark.parametrize("cmd", [["run", "memalloc", "--sim"], ["demo"]])
def test_cli_out_that_is_a_file_is_one_line(cmd, tmp_path, capsys):
    from testbed.cli import main
    f = tmp_path / "f"
    f.write_text("")
    assert main([*cmd, "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"testbed: --out {f}: exists and is not a directory; give a directory path (new or empty)"]


def test_unknown_scenario_name_lists_builtins():
    with pytest.raises(S.ScenarioError, match="built-ins: .*file-mmap-linux.*iscsi-memalloc.*, memalloc, memalloc-undersized, nbd-memalloc.*, no-reserve"):
        S.load("nope-not-here")


@pytest.mark.parametrize("argv,line", [
    (["run", "memaloc", "--sim"], "testbed: memaloc: no such scenario file or built-in scenario; did you mean memalloc? built-ins: "),
    (["run", "memalloc", "--sim", "--set", "storag=nfs"], "storag: unknown key; did you mean storage? known keys: "),
    (["run", "memalloc", "--sim", "--set", "storage=nsf"],
     "storage: 'nsf' is not one of nfs, nbd, iscsi, aoe; did you mean nfs?"),
    (["demo", "--scenario", "no-reserv"], "testbed: --scenario no-reserv: not one of the demo's ("),
    (["chaso"], "testbed: argument COMMAND: invalid choice: 'chaso' (choose from "),
    (["chaos", "--storage", "aoee"], "testbed chaos: argument --storage: invalid choice: 'aoee' (choose from "
                                     "'nfs', 'nbd', 'iscsi', 'aoe'); did you mean aoe? see `testbed chaos --help`"),
    (["stat", "vmstt"], "testbed stat: argument view: invalid choice: 'vmstt'"),
    (["run", "memalloc", "--client", "linx"], "testbed run: argument --client: invalid choice: 'linx'"),
])
def test_a_near_miss_gets_did_you_mean_in_one_line(tmp_path, capsys, argv, line):
    from testbed.cli import main
    try:
        rc = main([*argv, "--out", str(tmp_path / "r")] if argv[0] in ("run", "demo") else argv)
    except SystemExit as e:                   # argparse's own errors exit through Parser.error
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err
    want = {"memaloc": "memalloc", "no-reserv": "no-reserve", "chaso": "chaos", "vmstt": "vmstat", "linx": "linux"}
    for typo, fix in want.items():
        if typo in argv:
            assert f"did you mean {fix}?" in err[0]
    assert not (tmp_path / "r").exists()


def test_overrides():
    k, v = S.parse_override("max_duration_s=30")
    assert (k, v) == ("max_duration_s", 30)
    assert S.parse_override("stable=UNSTABLE") == ("stable", "UNSTABLE")
    assert S.parse_override("memalloc=false") == ("memalloc", False)
    sc = S.load("memalloc", {"max_duration_s": 30, "stable": "UNSTABLE"})
    assert sc.max_duration_s == 30.0 and sc.stable == "UNSTABLE"
    with pytest.raises(S.ScenarioError, match=r"\(--set\): flood_pps: expected an integer"):
        S.load("memalloc", {"flood_pps": "fast"})
    with pytest.raises(S.ScenarioError, match="expected KEY=VALUE"):
        S.parse_override("max_duration_s")


def test_capacity_from_bench(tmp_path):
    p = write(tmp_path, '{"figures": [{"name": "agent_rx_pps", "value": 52000.0, "unit": "pps"}]}', "b.json")
    assert S.capacity_from_bench(p) == 52000
    p = write(tmp_path, '{"figures": []}', "c.json")
    with pytest.raises(S.ScenarioError, match="--set agent_capacity_pps=N"):
        S.capacity_from_bench(p)


def test_cli_refuses_impossible_scenario_with_exit_2(capsys, tmp_path):
    from testbed.cli import main
    assert main(["run", "memalloc", "--set", "min_free_kbytes=64", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reserve_covers_slot_table" in err[0] and "atomic_floor=6" in err[0] and "needed=66" in err[0]
    assert not (tmp_path / "r").exists()          # nothing created
    assert main(["run", "memalloc", "--set", "bogus=1"]) == 2
    assert "bogus: unknown key" in capsys.readouterr().err
    assert main(["run", "no-reserve", "--preflight-only"]) == 0


@pytest.mark.parametrize("flood_pps", [0, 2000])
def test_flood_no_faster_than_kswapd_never_fills_shown_as_never_and_inf(flood_pps):
    """Issue 12: --set flood_pps=0 printed needed=4611686018427387904 (1 << 62) and fill_s=None.
    A flood no faster than kswapd (swap_rate_pps 2000) never pins the reserve: fill time "never",
    pages needed "inf"; the checks fail, and the report JSON holds no bogus number."""
    import json
    sc = S.from_dict({"name": "w", "expect": "recovered", "flood_pps": flood_pps,
                      "memalloc": True, "pfmemalloc_demux_drop": False})
    checks, f = S.preflight(sc)
    by = {c.name: c for c in checks}
    pin = by["flood_pins_free_at_atomic_floor"]
    assert (pin.values["fill_s"], pin.values["needed"], pin.passed) == ("never", "inf", False)
    eat = by["flood_eats_whole_reserve"]
    assert (eat.values["eat_s"], eat.values["needed"], eat.passed) == ("never", "inf", False)
    assert f["fill_to_floor_s"] == "never"
    assert by["flood_fills_noise_in_time"].values["fill_s"] == "never"
    assert not by["flood_fills_noise_in_time"].passed
    line = pin.line(sc)
    assert "fill_s=never" in line and "needed=inf" in line and str(1 << 62) not in line
    json.dumps([c.to_json() for c in checks], allow_nan=False)
