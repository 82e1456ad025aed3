"""Section "scale": topology bring-up/teardown time by size, and a fleet of agents swapping to one NAS.

Topologies: ``generate_topology(H - 1, noise=False)`` = one nas + H-1 clients = H hosts, for H in
HOSTS; each ``lifecycle.up`` then ``lifecycle.down`` is timed. Leaks: namespaces (/run/netns) and
links in the root namespace counted before and after all of them. Target: 64 hosts up ≤ 10 s,
down ≤ 10 s, nothing leaked.

Fleet: ``generate_topology(N)`` (N clients, one nas, one noise host idle), one nas-server on CPU 1,
N agents on CPU 0 (the runner's placement: the host under study on one core, peers on the other --
so the fleet's aggregate is bounded by one core of agents). Every agent swaps on its own image
(16 slots, 4 KiB FILE_SYNC) with a workload larger than its pool; once all have started swapping,
over a window: aggregate acknowledged writeback (Σ ``swap.acked`` × 4 KiB / s), the NAS's RPC
requests/s (``counters.rpc_msgs`` from its snapshot) and its CPU (psutil, user + system, % of one
core). Baseline of the aggregate throughput: N = 1 in the same run (a ratio > 1 = the fleet gets
more out of the NAS than one client does).
"""

from __future__ import annotations

import os
import time

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult
from testbed.rig import PAGE, SwapRig

HOSTS = (2, 16, 64)
UP_DOWN_TARGET_S = 10.0
QUICK_FLEET = (1, 4)
FULL_FLEET = (1, 4, 16)
FLEET_POOL_PAGES = 2048          # 8 MiB each: 16 agents fit, kswapd streams soon after start
FLEET_MIN_FREE_KBYTES = 512
QUICK_WINDOW_S = 3.0
FULL_WINDOW_S = 6.0
WARMUP_S = 0.5


def _root_links() -> int:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return len(ipr.get_links())


def _topologies(res: SectionResult, say) -> None:
    from netns_setup import lifecycle, nsutil
    from netns_setup.topology import generate_topology

    ns0, links0 = set(nsutil.list_netns()), _root_links()
    for h in HOSTS:
        topo = generate_topology(h - 1, noise=False)
        name = f"bscale{h}-{os.urandom(2).hex()}"
        t0 = time.monotonic()
        lifecycle.up(topo, name)
        t1 = time.monotonic()
        lifecycle.down(name)
        t2 = time.monotonic()
        say(f"  scale: {h} hosts up {t1 - t0:.2f} s, down {t2 - t1:.2f} s")
        target = f"value <= {UP_DOWN_TARGET_S:g}" if h == max(HOSTS) else None
        res.add(f"hosts{h}.up_s", round(t1 - t0, 3), "s", target=target, notes=f"{len(topo.hosts) + 1} namespaces")
        res.add(f"hosts{h}.down_s", round(t2 - t1, 3), "s", target=target)
    ns1, links1 = set(nsutil.list_netns()), _root_links()
    leaked = sorted(ns1 - ns0)
    res.add("leaked_netns", len(leaked), "namespaces", target="value == 0",
            notes=f"left behind: {', '.join(leaked[:5])}" if leaked else None)
    res.add("leaked_root_links", links1 - links0, "links", target="value == 0",
            notes=f"root namespace links {links0} before, {links1} after")


def _fleet(n: int, window_s: float, seed: int, say) -> dict:
    import psutil
    from netns_setup.topology import generate_topology

    workload = FLEET_POOL_PAGES + int((WARMUP_S + window_s + 6) * 40 * 256 / n) + 1024
    image_mib = workload * PAGE // (1 << 20) + 4
    with SwapRig(generate_topology(n), f"fl{n}", image_mib=image_mib, say=say) as rig:
        agents = {}
        for host in rig.clients:
            agents[host] = rig.start_agent(host, pool_pages=FLEET_POOL_PAGES, min_free_kbytes=FLEET_MIN_FREE_KBYTES,
                                           seed=seed)
            rig.swapon(host)
        for a in agents.values():
            a.call("workload", pages=workload, seed=seed)
        deadline = time.monotonic() + 20
        while not all(a.call("snapshot")["alloc"]["vmstat"].get("pswpout", 0) > 0 for a in agents.values()):
            if time.monotonic() > deadline:
                raise BenchError(f"fleet of {n}: not every agent started swapping within 20 s")
            time.sleep(0.05)
        time.sleep(WARMUP_S)
        nas = psutil.Process(rig.nas_pid)

        def sample():
            acked = sum(a.call("snapshot")["swap"]["acked"] for a in agents.values())
            ct = nas.cpu_times()
            return time.monotonic(), acked, rig.nas().call("snapshot")["counters"].get("rpc_msgs", 0), ct.user + ct.system

        t0, a0, r0, c0 = sample()
        time.sleep(window_s)
        t1, a1, r1, c1 = sample()
        done = sum(bool(a.call("snapshot")["workload"]["done"]) for a in agents.values())
    dt = t1 - t0
    out = {"mib_per_s": (a1 - a0) * PAGE / dt / (1 << 20), "rps": (r1 - r0) / dt, "nas_cpu_pct": (c1 - c0) / dt * 100,
           "pages": a1 - a0, "seconds": dt, "done_early": done}
    say(f"  scale: fleet of {n}: {out['mib_per_s']:.2f} MiB/s aggregate, NAS {out['rps']:.0f} req/s, "
        f"{out['nas_cpu_pct']:.0f} % CPU")
    return out


@REGISTRY.register("scale", "topology up/down time for 2/16/64 hosts; a fleet of agents swapping to one NAS",
                   needs_root=True)
def scale_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section scale needs root for network namespaces; run `sudo testbed bench --section scale`")
    fleet = QUICK_FLEET if ctx.quick else FULL_FLEET
    window_s = QUICK_WINDOW_S if ctx.quick else FULL_WINDOW_S
    res = SectionResult(params={"hosts": list(HOSTS), "fleet": list(fleet), "fleet_pool_pages": FLEET_POOL_PAGES,
                                "window_s": window_s, "warmup_s": WARMUP_S, "agents_cpu": 0, "nas_cpu": 1})
    _topologies(res, ctx.progress)
    base = None
    for n in fleet:
        f = _fleet(n, window_s, ctx.seed, ctx.progress)
        if n == 1:
            base = f["mib_per_s"]
        note = f"{f['pages']} pages in {f['seconds']:.2f} s" + (
            f"; {f['done_early']} agent(s) finished their workload in the window" if f["done_early"] else "")
        res.add(f"fleet{n}.writeback_mib_per_s", round(f["mib_per_s"], 3), "MiB/s",
                None if n == 1 or base is None else round(base, 3), notes=note)
        res.add(f"fleet{n}.nas_requests_per_s", round(f["rps"], 1), "req/s")
        res.add(f"fleet{n}.nas_cpu_pct", round(f["nas_cpu_pct"], 1), "% of one core")
    return res
