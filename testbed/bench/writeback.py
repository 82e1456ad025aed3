"""Section "writeback": swap writeback through the agent's own stack vs the kernel-socket reference client.

What is measured, per MTU (1500: the default topology; 9000: topologies/jumbo.toml), in one
topology with one nas-server (CPU 1):
- AGENT: ``client-agent`` on ``client`` (CPU 0) swaps on ``swap/client.img`` (16 slots, 4 KiB
  FILE_SYNC WRITEs over its own UDP/IP/Ethernet on AF_PACKET), runs a workload larger than its
  pool and no flood: kswapd streams pages out. Rate = pages the NAS acknowledged (``swap.acked``
  from ``snapshot``) over a window after ``pswpout`` started, × 4 KiB.
- BASELINE: ``nas_server.refclient`` on ``noise`` (kernel UDP socket, pinned to CPU 0 like the
  agent), the same 4 KiB FILE_SYNC WRITEs, window 16, to ``swap/ref.img`` on the same nas-server.
- The same pair over TCP (``tcp.mtu1500.*``): the agent's NFS over its own TCP, the reference
  client over a kernel TCP socket (nas-server's one-port layout, MOUNT on 2049, as both use).

Target: agent ≥ 0.9 × reference. The agent's figure includes its own page-table bookkeeping
(reclaim, swap map) -- that is what swap writeback costs it; the reference client only writes.
"""

from __future__ import annotations

import os

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult
from testbed.rig import NFS_PORT, PAGE, SwapRig, profile_path, refclient_write, stream_rate

TARGET = "ratio >= 0.9"
POOL_PAGES = 8192              # 32 MiB, the scenarios' pool; min_free_kbytes 2048 as they have
MIN_FREE_KBYTES = 2048
SLOTS = 16
# UDP (the pre-5.6 form) at both MTUs, TCP (every Linux since 5.6) at 1500 -- and 9000 in full runs
QUICK = {"window_s": 3.0, "warmup_s": 0.5, "ref_bytes": 8 << 20, "mtus": (1500, 9000), "tcp_mtus": (1500,)}
FULL = {"window_s": 8.0, "warmup_s": 1.0, "ref_bytes": 32 << 20, "mtus": (1500, 9000), "tcp_mtus": (1500, 9000)}
REF_CPU = 0


def _topology(mtu: int):
    from netns_setup.topology import generate_topology, load_topology
    if mtu == 9000:
        path = os.path.join(os.path.dirname(__file__), "..", "..", "topologies", "jumbo.toml")
        if os.path.exists(path):
            return load_topology(path)
    return generate_topology(1, mtu=mtu)


def measure_mtu(mtu: int, p: dict, seed: int, say, profile: str | None = None, transport: str = "udp") -> dict:
    from netns_setup.process import run_in_netns
    # enough pages that the workload outlasts warm-up + window at a few tens of MiB/s
    workload_pages = POOL_PAGES + int((p["warmup_s"] + p["window_s"] + 4) * 40 * 256)
    image_mib = workload_pages * PAGE // (1 << 20) + 8
    with SwapRig(_topology(mtu), "wb", image_mib=image_mib, ref_image_mib=(p["ref_bytes"] >> 20) + 1, say=say) as rig:
        agent = rig.start_agent("client", pool_pages=POOL_PAGES, min_free_kbytes=MIN_FREE_KBYTES, seed=seed,
                                profile=profile)
        rig.swapon("client", slots=SLOTS, proto=transport,
                   **({"mount_port": NFS_PORT} if transport == "tcp" else {}))
        agent.call("workload", pages=workload_pages, seed=seed)
        ag = stream_rate(agent, window_s=p["window_s"], warmup_s=p["warmup_s"], pid=rig.procs["agent:client"].pid)
        rig.stop("agent:client")
        ref = run_in_netns(rig.st.host_netns("noise"), refclient_write, rig.nas_ip, "ref.img", p["ref_bytes"],
                           SLOTS, seed, REF_CPU if (os.cpu_count() or 1) > 1 else None, transport, timeout_s=300)
    say(f"  writeback {transport} mtu {mtu}: agent {ag['mib_per_s']:.2f} MiB/s ({ag['pages']} pages, {ag['retrans']} retrans), "
        f"refclient {ref['mib_per_s']:.2f} MiB/s")
    return {"agent": ag, "ref": ref}


@REGISTRY.register("writeback", "swap writeback MiB/s: agent's stack vs kernel-socket reference client, MTU 1500/9000",
                   needs_root=True)
def writeback_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section writeback needs root for network namespaces; run `sudo testbed bench --section writeback`")
    p = QUICK if ctx.quick else FULL
    res = SectionResult(params={"pool_pages": POOL_PAGES, "min_free_kbytes": MIN_FREE_KBYTES, "slots": SLOTS,
                                "window": SLOTS, "io_bytes": PAGE, "stable": "FILE_SYNC", "window_s": p["window_s"],
                                "warmup_s": p["warmup_s"], "ref_bytes": p["ref_bytes"], "mtus": list(p["mtus"]),
                                "tcp_mtus": list(p["tcp_mtus"]),
                                "agent_cpu": 0, "nas_cpu": 1, "ref_cpu": REF_CPU, "ref_host": "noise"})
    cases = [("udp", mtu) for mtu in p["mtus"]] + [("tcp", mtu) for mtu in p["tcp_mtus"]]
    for transport, mtu in cases:
        m = measure_mtu(mtu, p, ctx.seed, ctx.progress,
                        profile_path(f"writeback-{transport}-mtu{mtu}" if transport == "tcp" else f"writeback-mtu{mtu}"),
                        transport)
        pre = f"tcp.mtu{mtu}" if transport == "tcp" else f"mtu{mtu}"
        ag, ref = m["agent"], m["ref"]
        notes = [f"{ag['pages']} pages acked in {ag['seconds']:.2f} s; agent CPU {ag['cpu_pct']:.0f} % of one core"]
        if ag["retrans"]:
            notes.append(f"{ag['retrans']} RPC retransmissions in the window")
        if ag["workload_done_early"]:
            notes.append("workload finished inside the window (window shortened)")
        res.add(f"{pre}.refclient_mib_per_s", round(ref["mib_per_s"], 3), "MiB/s",
                notes=f"{ref['calls']} calls, {ref['client']['retransmits']} retransmits, kernel {transport.upper()} socket")
        res.add(f"{pre}.agent_mib_per_s", round(ag["mib_per_s"], 3), "MiB/s", round(ref["mib_per_s"], 3), TARGET,
                notes="; ".join(notes + [f"NFS over {transport.upper()}"]))
        if ag.get("cpu_user_s") is not None and ref.get("cpu_user_s") is not None:
            # CPU per page, user and system apart: what each client pays for one acknowledged
            # page, independent of how the two cores were shared (no target: an explanation).
            a_us = (ag["cpu_user_s"] * 1e6 / ag["pages"], ag["cpu_sys_s"] * 1e6 / ag["pages"])
            r_us = (ref["cpu_user_s"] * 1e6 / ref["calls"], ref["cpu_sys_s"] * 1e6 / ref["calls"])
            res.add(f"{pre}.refclient_cpu_us_per_page", round(sum(r_us), 1), "µs/page",
                    notes=f"user {r_us[0]:.1f} µs + system {r_us[1]:.1f} µs per WRITE (getrusage)")
            res.add(f"{pre}.agent_cpu_us_per_page", round(sum(a_us), 1), "µs/page", round(sum(r_us), 1),
                    notes=f"user {a_us[0]:.1f} µs + system {a_us[1]:.1f} µs per acked page "
                          f"(/proc/PID/stat, 10 ms ticks)")
    return res
