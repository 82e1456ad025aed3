"""Section "recovery": the `memalloc` scenario's writeback under the flood, and how fast it recovers.

Two runs with the parameters of ``scenarios/memalloc.toml`` (loaded through testbed.scenario, so a
recalibrated scenario is measured as it now stands), one topology each, composed with the agent's
control ops as testbed.runner does (noise sinks with blocked ``ordinary`` readers, SOCK_MEMALLOC
transport, pfmemalloc drop at the demux), sampled every SAMPLE_S through ``snapshot``:
- FLOOD: the scenario's flood (``flood_pps``, default 4 kpps) toward the noise ports;
- QUIET: the same run without the flood (the baseline).

Figures:
- ``flood.writeback_mib_per_s``: pages the NAS acknowledged, from the first ``pswpout`` to the end
  of the workload (or the window), × 4 KiB / time; baseline = the quiet run. Target ≥ 0.8×.
- ``flood.reserve_to_high_s``: from the first sample with ``rx_pfmemalloc > 0`` (the first
  receive backed by the reserve) to the first later sample with ``free > high``. No target (a
  figure to track); null with a note if the reserve was never used.
"""

from __future__ import annotations

import os
import time

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult
from testbed.rig import PAGE, SwapRig, profile_path

SCENARIO = "memalloc"
TARGET = "ratio >= 0.8"
SAMPLE_S = 0.1
NOISE_PORT_BASE = 9001
QUICK_MAX_S = 25.0
FULL_MAX_S = 60.0
# Each run lasts a few seconds (the scenario's workload is 1.25 pools): repeat and take the median
# of each figure, so one unlucky second does not decide it.
QUICK_REPEATS = 1
FULL_REPEATS = 3


def _run(sc, flood: bool, max_s: float, say, profile: str | None = None) -> dict:
    from netns_setup.topology import default_topology
    ports = list(range(NOISE_PORT_BASE, NOISE_PORT_BASE + sc.noise_sockets))
    image_mib = int(sc.workload_pages * PAGE * 1.25) // (1 << 20) + 4
    # The NAS as testbed.runner runs it: data on tmpfs, the scenario's stated service time per call
    # (nas_write_latency_ms), so the timing -- how long writeback lasts against the flood filling
    # the noise sockets -- is the scenario's, not the host disk's.
    with SwapRig(default_topology(), "rc", image_mib=image_mib, nas_write_latency_ms=sc.nas_write_latency_ms,
                 say=say) as rig:
        agent = rig.start_agent("client", pool_pages=sc.pool_pages, min_free_kbytes=sc.min_free_kbytes,
                                budget=sc.budget, seed=sc.seed, profile=profile,
                                extra=["--watermark-scale-factor", str(sc.watermark_scale_factor)])
        for p in ports:
            agent.call("udp_sink", port=p, reader=sc.noise_reader, rcvbuf=sc.noise_rcvbuf_bytes)
        rig.swapon("client", slots=sc.slots, wsize=sc.wsize, timeo_s=sc.timeo_s, timeo_max_s=sc.timeo_max_s,
                   retrans=sc.retrans, memalloc=sc.memalloc, stable=sc.stable)
        agent.call("set", key="pfmemalloc_demux_drop", value=sc.pfmemalloc_demux_drop)
        fl = None
        if flood:
            fl = rig.start_flood(str(rig.hosts["client"].address.ip), ports, sc.flood_pps, size=sc.flood_size,
                                 seed=sc.seed)
        agent.call("workload", pages=sc.workload_pages, seed=sc.seed, rate_pps=sc.workload_rate_pps)
        t0 = time.monotonic()
        rows = []
        nxt = t0
        while True:
            nxt += SAMPLE_S
            d = nxt - time.monotonic()
            if d > 0:
                time.sleep(d)
            s = agent.call("snapshot")
            z, vm = s["alloc"]["zoneinfo"], s["alloc"]["vmstat"]
            c = s["stack"]["counters"]
            rows.append({"t": time.monotonic() - t0, "free": z.get("free"), "high": z.get("high"),
                         "pswpout": vm.get("pswpout", 0), "acked": s["swap"]["acked"],
                         "rx_pfmemalloc": c.get("rx_pfmemalloc", 0), "PFMemallocDrop": c.get("PFMemallocDrop", 0),
                         "done": s["workload"]["done"], "valid": s.get("valid", True),
                         "lowwater": s["alloc"].get("reserve", {}).get("nr_free_lowwater")})
            r = rows[-1]
            if r["done"] and r["free"] is not None and r["high"] is not None and r["free"] > r["high"]:
                break
            if r["t"] >= max_s:
                break
        flood_sum = fl.call("snapshot") if fl is not None else None
        last = s
    return {"rows": rows, "flood": flood_sum, "last": last}


def _rate(rows: list[dict]) -> tuple[float | None, str]:
    start = next((r for r in rows if r["pswpout"] > 0), None)
    if start is None:
        return None, "pswpout never grew"
    end = next((r for r in rows if r["done"]), rows[-1])
    dt = end["t"] - start["t"]
    if dt <= 0 or end["acked"] <= start["acked"]:
        return None, f"no acknowledged pages after pswpout started ({start['acked']} -> {end['acked']})"
    return (end["acked"] - start["acked"]) * PAGE / dt / (1 << 20), \
        f"{end['acked'] - start['acked']} pages acked in {dt:.2f} s" + ("" if end["done"] else " (workload unfinished)")


def _reserve_to_high(rows: list[dict]) -> tuple[float | None, str]:
    first = next((r for r in rows if r["rx_pfmemalloc"] > 0), None)
    if first is None:
        return None, "no receive was backed by the reserve (rx_pfmemalloc stayed 0): nothing to recover from"
    after = next((r for r in rows if r["t"] >= first["t"] and r["free"] is not None and r["high"] is not None
                  and r["free"] > r["high"]), None)
    if after is None:
        return None, f"free never rose above high after the first reserve-backed receive at t={first['t']:.2f} s"
    return after["t"] - first["t"], (f"first rx_pfmemalloc at t={first['t']:.2f} s, free > high at "
                                     f"t={after['t']:.2f} s (samples every {SAMPLE_S} s)")


@REGISTRY.register("recovery", "memalloc scenario: writeback under the flood vs without it; reserve-to-high time",
                   needs_root=True)
def recovery_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section recovery needs root for network namespaces; run `sudo testbed bench --section recovery`")
    from testbed import scenario as scn
    try:
        sc = scn.load(SCENARIO)
    except scn.ScenarioError as e:
        raise BenchError(f"scenario {SCENARIO}: {e}") from None
    max_s = min(sc.max_duration_s, QUICK_MAX_S if ctx.quick else FULL_MAX_S)
    res = SectionResult(params={"scenario": SCENARIO, "parameters": sc.to_dict(), "sample_s": SAMPLE_S,
                                "max_s": max_s})
    repeats = QUICK_REPEATS if ctx.quick else FULL_REPEATS
    res.params["repeats"] = repeats
    runs = []
    for i in range(repeats):
        quiet = _run(sc, False, max_s, ctx.progress)
        loud = _run(sc, True, max_s, ctx.progress, profile_path("recovery-flood") if i == 0 else None)
        runs.append((quiet, loud, _rate(quiet["rows"]), _rate(loud["rows"]), _reserve_to_high(loud["rows"])))
    # the median run by its flood/quiet ratio (all figures then come from one pair of runs)
    def key(r):
        (q, _), (f, _) = r[2], r[3]
        return (f / q) if q and f else -1.0
    runs.sort(key=key)
    quiet, loud, (rq, nq), (rf, nf), (t, nt) = runs[len(runs) // 2]
    if repeats > 1:
        nf += f"; median of {repeats} pairs by ratio: " + ", ".join(f"{key(r):.2f}" for r in runs)
    ctx.progress(f"  recovery: writeback quiet {rq or 0:.2f} MiB/s, under {sc.flood_pps} pps flood {rf or 0:.2f} MiB/s")
    res.add("quiet.writeback_mib_per_s", None if rq is None else round(rq, 3), "MiB/s", notes=nq)
    last = loud["last"]["stack"]["counters"]
    fs = loud["flood"] or {}
    extra = (f"flood sent {fs.get('sent')} at {fs.get('achieved_rate_pps', 0):.0f} pps; "
             f"PFMemallocDrop {last.get('PFMemallocDrop', 0)}, rx_pfmemalloc {last.get('rx_pfmemalloc', 0)}")
    invalid = not all(r["valid"] for r in loud["rows"])
    res.add("flood.writeback_mib_per_s", None if rf is None else round(rf, 3), "MiB/s",
            None if rq is None else round(rq, 3), TARGET,
            notes=f"{nf}; {extra}" + ("; the agent reported the run invalid (tp_drops or loop lag)" if invalid else ""),
            invalid=invalid)
    res.add("flood.reserve_to_high_s", None if t is None else round(t, 2), "s", notes=nt)
    res.params["flood_duration_s"] = round(loud["rows"][-1]["t"], 2)
    res.params["quiet_duration_s"] = round(quiet["rows"][-1]["t"], 2)
    return res
