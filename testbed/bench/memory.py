"""Section "memory": the agent's resident memory beside its configured pool, before and after a flood,
and whether scapy got imported into it.

One topology, one agent (pool POOL_PAGES, swap on the nas-server so the NFS modules are loaded,
``fast`` UDP sinks on the flood ports), RSS read from outside with psutil:
- ``start.rss_mib``: after start-up, swapon and the sinks; target RSS ≤ pool + 40 MiB (the pool is
  the only memory the scenarios are meant to exhaust; the interpreter and code are the 40 MiB);
- ``after_flood.rss_mib``: after FLOOD_PPS for the window (quick 5 s, full 10 s); baseline the
  start figure, target growth ≤ 5 % (ratio ≤ 1.05) -- a leak per frame would show here;
- ``after_flood.rss_over_pool_mib``: despite its name, the RSS after the flood (as first published;
  baseline the pool, target ≤ pool + 40 MiB); ``after_flood.rss_minus_pool_mib``: RSS − pool after
  the flood, target ≤ 40 MiB;
- ``scapy_imported``: the agent is started through a tiny wrapper (runpy of client_agent.agent in
  the same interpreter) that, at exit, writes which ``scapy`` modules are in ``sys.modules``; no
  ``--pcap`` is given, so the target is 0. This is the agent's real process after the flood, not an
  import of its modules in another interpreter.
"""

from __future__ import annotations

import json
import os
import sys
import time

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult
from testbed.rig import PAGE, SwapRig

POOL_PAGES = 8192
HEADROOM_MIB = 40
FLOOD_PPS = 20000
FLOOD_PORTS = [9001, 9002, 9003, 9004]
QUICK_WINDOW_S = 5.0
FULL_WINDOW_S = 10.0
SETTLE_S = 0.5

_WRAPPER = ("import atexit, json, runpy, sys\n"
            "out = sys.argv.pop(1)\n"
            "def dump():\n"
            "    with open(out, 'w') as f:\n"
            "        json.dump(sorted(m for m in sys.modules if m == 'scapy' or m.startswith('scapy.')), f)\n"
            "atexit.register(dump)\n"
            "sys.argv[0] = 'client-agent'\n"
            "runpy.run_module('client_agent.agent', run_name='__main__')\n")


@REGISTRY.register("memory", "agent RSS vs its pool, before/after a 20 kpps flood; scapy not imported", needs_root=True)
def memory_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section memory needs root for network namespaces; run `sudo testbed bench --section memory`")
    import psutil
    from netns_setup.topology import default_topology

    window_s = QUICK_WINDOW_S if ctx.quick else FULL_WINDOW_S
    pool_mib = POOL_PAGES * PAGE / (1 << 20)
    res = SectionResult(params={"pool_pages": POOL_PAGES, "pool_mib": pool_mib, "headroom_mib": HEADROOM_MIB,
                                "flood_pps": FLOOD_PPS, "window_s": window_s, "sink_reader": "fast",
                                "rss": "psutil memory_info().rss of the agent process"})
    with SwapRig(default_topology(), "mem", image_mib=16, say=ctx.progress) as rig:
        modules_file = os.path.join(rig.st.dir, "agent-modules.json")
        agent = rig.start_agent("client", pool_pages=POOL_PAGES, seed=ctx.seed,
                                python_argv=[sys.executable, "-c", _WRAPPER, modules_file])
        pid = rig.procs["agent:client"].pid
        rig.swapon("client")
        for p in FLOOD_PORTS:
            agent.call("udp_sink", port=p, reader="fast")
        time.sleep(SETTLE_S)
        rss0 = psutil.Process(pid).memory_info().rss
        fl = rig.start_flood(str(rig.hosts["client"].address.ip), FLOOD_PORTS, FLOOD_PPS, seed=ctx.seed)
        time.sleep(window_s)
        fl.call("set", key="on", value=False)
        fsum = fl.call("snapshot")
        time.sleep(SETTLE_S)
        rss1 = psutil.Process(pid).memory_info().rss
        snap = agent.call("snapshot")
        rig.stop("agent:client")   # SIGTERM: the wrapper's atexit writes the module list
        try:
            with open(modules_file) as f:
                scapy_mods = json.load(f)
        except (OSError, ValueError) as e:
            raise BenchError(f"the agent wrapper wrote no module list ({e}); see the agent log in {rig.st.dir}") from None
    mib0, mib1 = rss0 / (1 << 20), rss1 / (1 << 20)
    rx = snap["stack"]["counters"].get("rx_packets", 0)
    ctx.progress(f"  memory: rss {mib0:.1f} MiB at start, {mib1:.1f} MiB after {fsum.get('sent')} frames "
                 f"(agent rx {rx}); pool {pool_mib:.0f} MiB; scapy modules {len(scapy_mods)}")
    bound = pool_mib + HEADROOM_MIB
    res.add("start.rss_mib", round(mib0, 2), "MiB", round(pool_mib, 2), f"value <= {bound:g}",
            notes="baseline: the configured pool (pool_pages × 4 KiB)")
    res.add("after_flood.rss_mib", round(mib1, 2), "MiB", round(mib0, 2), "ratio <= 1.05",
            notes=f"{fsum.get('sent')} frames flooded at {fsum.get('achieved_rate_pps', 0):.0f} pps; agent rx {rx}; "
                  f"tp_drops {snap['device'].get('tp_drops', 0)}; baseline: RSS at start")
    # the published name says "over pool" but the figure has always been the plain RSS (kept: figures are
    # only added); RSS - pool is the next one
    res.add("after_flood.rss_over_pool_mib", round(mib1, 2), "MiB", round(pool_mib, 2), f"value <= {bound:g}",
            notes="the RSS after the flood (not RSS - pool, despite the name: that is after_flood.rss_minus_pool_mib); "
                  "baseline: the pool")
    res.add("after_flood.rss_minus_pool_mib", round(mib1 - pool_mib, 2), "MiB", None, f"value <= {HEADROOM_MIB}",
            notes="RSS after the flood minus the pool (negative while the pool's pages are not all touched: the pool "
                  "is page accounting, not a preallocated arena)")
    res.add("scapy_imported", int(bool(scapy_mods)), "bool", None, "value == 0",
            notes=(f"modules: {', '.join(scapy_mods[:5])}" if scapy_mods else "no scapy module in the agent's sys.modules at exit"))
    return res
