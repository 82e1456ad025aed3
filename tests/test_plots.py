"""testbed.plots: a scenario timeline and the overview are written as real, non-trivial PNGs."""

import struct

from testbed import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _timeline(n=30, stall=True):
    tl = []
    for i in range(n):
        t = 0.2 * (i + 1)
        free = 190 if (stall and i < n - 5) else 190 + 300 * (i - n + 6)
        tl.append({"t": t, "free": free, "min": 512, "low": 640, "high": 768, "atomic_floor": 192,
                   "nr_free_lowwater": free - 3, "reserve_in_use": 300 if free < 192 else 0,
                   "pswpout": 100 * i, "swap_acked": 95 * i, "nr_writeback": 16, "rpc_retrans": i // 5,
                   "drop_reasons": {"PFMEMALLOC": 50 * i, "SOCKET_RCVBUFF": 3 * i}})
    return tl


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC
    return struct.unpack(">II", head[16:24])


def test_scenario_png_and_overview(tmp_path):
    e = {"name": "memalloc", "outcome": "recovered", "expect": "recovered", "seed": 1,
         "time_to_stall_s": 0.2, "time_to_recover_s": 4.8, "decided_at_s": 5.0}
    p = plots.scenario_png(e, _timeline(), str(tmp_path / "memalloc.png"))
    w, h = _png_size(p)
    assert w >= 600 and h >= 600
    assert (tmp_path / "memalloc.png").stat().st_size > 20_000
    d = {"name": "no-reserve", "outcome": "deadlock", "expect": "deadlock", "seed": 1,
         "time_to_stall_s": 0.2, "time_to_recover_s": None, "decided_at_s": 6.2}
    assert [x[1] for x in plots.events(d)] == ["stall", "watchdog: deadlock"]
    assert [x[1] for x in plots.events(e)] == ["stall", "recovered"]
    p = plots.overview_png([(e, _timeline()), (d, _timeline(stall=True)), (d, []), (e, _timeline(3))],
                           str(tmp_path / "overview.png"))
    w, h = _png_size(p)
    assert w > 2 * h
    assert (tmp_path / "overview.png").stat().st_size > 20_000
