"""Soak: one long real-packet memalloc run (flood on, a paced swap workload for the whole duration)
that samples every process of the run and fails on growth beyond stated bounds.

What is sampled every ``SAMPLE_EVERY_S`` (psutil for the processes, control sockets for the rest):
- per process (client agent, nas-server, flood): RSS bytes and open file descriptors;
- the agent's pool: pages in use (managed - free), anonymous pages, pages held by the network
  (pool in use minus anonymous and writeback pages: receive queues, reassembly, RPC buffers);
- the NAS's duplicate request cache: entries (and its configured max).

Bounds (checked over the steady state: from the end of the warm-up, ``WARMUP_FRACTION`` of the run,
to the last sample; a leak grows linearly, a cache fills once during warm-up):
- RSS growth per process  <= max(RSS_GROWTH_MIN_BYTES, RSS_GROWTH_FRACTION x RSS at warm-up end);
- open fds growth         <= FD_GROWTH_MAX;
- DRC entries             <= its max_entries at every sample;
- network-held pool pages at the end <= NET_PAGES_MAX (the flood's noise queues are bounded by their
  rcvbuf; everything else is transient).
The workload is paced (``rate_pps``) so the swap image (sized from the workload) stays small: a
looping workload of fixed size would fill the swap device (pages are never swapped back in here).
"""

from __future__ import annotations

import os
import time

SAMPLE_EVERY_S = 1.0
WARMUP_FRACTION = 0.25
RSS_GROWTH_MIN_BYTES = 16 << 20
RSS_GROWTH_FRACTION = 0.10
FD_GROWTH_MAX = 2
# The agent keeps per swapped-out page a swap-map entry and its LRU record (the contract's record of
# acked slots, bounded by the swap device, not a leak): measured ~170 B/page in a 120 s soak at 600
# pages/s (8.2 MiB for 48k pages); allowed 256 B/page on top of the RSS bound.
AGENT_BYTES_PER_SWAPPED_PAGE = 256
NET_PAGES_MAX = 4 * 1100          # four 4 MiB noise sockets hold <= 4 x 898 pages of 64-byte datagrams, + slack
DEFAULT_RATE_PPS = 150


def sample_processes(pids: dict[str, int]) -> dict:
    """{role: {"rss_bytes", "num_fds"}} for each live pid (None for a pid that is gone)."""
    import psutil
    out = {}
    for role, pid in pids.items():
        try:
            p = psutil.Process(pid)
            out[role] = {"rss_bytes": p.memory_info().rss, "num_fds": p.num_fds()}
        except psutil.Error:
            out[role] = None
    return out


def pool_view(snap: dict) -> dict:
    a = snap.get("alloc", {})
    z, vm = a.get("zoneinfo", {}), a.get("vmstat", {})
    managed, free = z.get("managed", 0), z.get("free", 0)
    in_use = managed - free
    anon, wb = vm.get("nr_anon_pages", 0), vm.get("nr_writeback", 0)
    return {"pool_in_use": in_use, "anon": anon, "writeback": wb, "net_held": max(0, in_use - anon - wb),
            "pswpout": vm.get("pswpout", 0)}


def bounds() -> dict:
    return {"rss_growth_bytes": f"max({RSS_GROWTH_MIN_BYTES >> 20} MiB, {int(RSS_GROWTH_FRACTION * 100)} % of RSS at warm-up end)"
                                f" (+ {AGENT_BYTES_PER_SWAPPED_PAGE} B per page swapped out, agent only)",
            "fd_growth": FD_GROWTH_MAX, "drc_entries": "<= max_entries", "net_held_pages_end": NET_PAGES_MAX}


def check_growth(samples: list[dict]) -> tuple[dict, list[str]]:
    """Figures and violations from a list of samples {t, procs: {role: {rss_bytes, num_fds}}, pool, drc}."""
    problems: list[str] = []
    figs: dict = {"samples": len(samples)}
    if len(samples) < 2:
        return figs, ["fewer than 2 samples: nothing to compare"]
    w = samples[min(len(samples) - 1, int(len(samples) * WARMUP_FRACTION))]
    last = samples[-1]
    for role in sorted(last["procs"]):
        a, b = (w["procs"].get(role)), last["procs"].get(role)
        if a is None or b is None:
            problems.append(f"{role}: process gone during the soak")
            continue
        growth = b["rss_bytes"] - a["rss_bytes"]
        bound = max(RSS_GROWTH_MIN_BYTES, int(RSS_GROWTH_FRACTION * a["rss_bytes"]))
        if role == "agent":
            swapped = (last.get("pool") or {}).get("pswpout", 0) - (w.get("pool") or {}).get("pswpout", 0)
            bound += AGENT_BYTES_PER_SWAPPED_PAGE * max(0, swapped)
        fdg = b["num_fds"] - a["num_fds"]
        figs[role] = {"rss_warm_mib": round(a["rss_bytes"] / 2**20, 1), "rss_end_mib": round(b["rss_bytes"] / 2**20, 1),
                      "rss_growth_mib": round(growth / 2**20, 2), "rss_bound_mib": round(bound / 2**20, 1),
                      "fds_warm": a["num_fds"], "fds_end": b["num_fds"], "fd_growth": fdg, "fd_bound": FD_GROWTH_MAX}
        if growth > bound:
            problems.append(f"{role}: RSS grew {growth / 2**20:.1f} MiB after warm-up (bound {bound / 2**20:.1f} MiB)")
        if fdg > FD_GROWTH_MAX:
            problems.append(f"{role}: open fds grew by {fdg} after warm-up (bound {FD_GROWTH_MAX})")
    drc = [s["drc"] for s in samples if s.get("drc")]
    if drc:
        figs["drc_entries_max"] = max(d["entries"] for d in drc)
        figs["drc_max_entries"] = drc[-1]["max_entries"]
        over = [d for d in drc if d["entries"] > d["max_entries"]]
        if over:
            problems.append(f"nas DRC held {over[0]['entries']} entries > max_entries {over[0]['max_entries']}")
    if last.get("pool"):
        figs["pool_end"] = last["pool"]
        if last["pool"]["net_held"] > NET_PAGES_MAX:
            problems.append(f"agent: {last['pool']['net_held']} pool pages held by the network at the end "
                            f"(bound {NET_PAGES_MAX})")
    return figs, problems


def run_soak(duration_s: float, out: str, *, rate_pps: int = DEFAULT_RATE_PPS, seed: int = 1, log=print) -> dict:
    """The memalloc scenario for ``duration_s`` with a paced workload; returns {figures, bounds, problems, ok}."""
    from netns_setup.control import ControlClient
    from testbed import scenario as scn
    from testbed.runner import run_scenario

    pages = int(rate_pps * duration_s)
    sc = scn.load("memalloc", {"workload_rate_pps": rate_pps, "workload_pages": pages, "seed": seed,
                               "max_duration_s": duration_s + 60.0})
    checks, _ = scn.preflight(sc)
    samples: list[dict] = []
    state = {"next": 0.0}

    def during(ctx: dict) -> None:
        if ctx["t"] < state["next"]:
            return
        state["next"] = ctx["t"] + SAMPLE_EVERY_S
        pids = {role: p.pid for role, p in ctx["procs"].items()}
        s = {"t": round(ctx["t"], 2), "procs": sample_processes(pids), "pool": pool_view(ctx.get("snapshot") or {})}
        try:
            with ControlClient(ctx["ctl"]["nas"]) as nc:
                s["drc"] = nc.call("snapshot").get("drc")
        except Exception as e:  # noqa: BLE001 -- a missing figure is recorded, the soak goes on
            s["drc_error"] = str(e)
        samples.append(s)
        if len(samples) % 30 == 1:
            log(f"soak t={s['t']:.0f}s " + " ".join(
                f"{r}: rss {v['rss_bytes'] / 2**20:.1f} MiB fds {v['num_fds']}" for r, v in s["procs"].items() if v)
                + f" pool in use {s['pool']['pool_in_use']} (net {s['pool']['net_held']}) drc {(s.get('drc') or {}).get('entries')}")

    t0 = time.monotonic()
    entry = run_scenario(sc, checks, out, log=lambda m: None, print_watchdog=False, during=during)
    entry.pop("_timeline", None)
    figs, problems = check_growth(samples)
    ver = entry.get("verification") or {}
    if entry.get("pages_lost") or entry.get("pages_verified") is None:
        problems.append(f"acknowledged pages not read back intact: written {entry['pages_written']}, verified "
                        f"{entry['pages_verified']}; first mismatches {ver.get('mismatched', [])[:3]}, "
                        f"read errors {ver.get('read_errors', [])[:3]}")
    res = {"duration_s": round(time.monotonic() - t0, 1), "outcome": entry["outcome"],
           "pages_written": entry["pages_written"], "pages_verified": entry["pages_verified"],
           "verification": {k: ver.get(k) for k in ("mismatched", "read_errors", "note")},
           "figures": figs, "bounds": bounds(), "problems": problems, "ok": not problems}
    import json
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(res | {"samples": samples}, f, indent=1, default=str)
    return res
