"""Section "rx_tcp": CPU per received TCP segment -- the client agent against the bare AF_PACKET loop,
both reading the same frames at the same time.

What is measured: a kernel TCP sender in ``noise`` (``testbed.tcp_noise``, pinned to CPU
``FLOOD_CPU``, one connection paced at ``RATE_KBPS`` kB/s, seeded payload) streams into the agent's
stream sink (control op ``sink``, kind ``tcp``, reader ``fast``: it reads up to 1 MiB per call as soon
as data is queued and never blocks on an allocation). TCP is ACK-clocked, so the flow can only exist
with a receiving TCP: the agent is that receiver, and the baseline is the bare loop
(``testbed.bench.bareloop --tcp-port PORT``) running beside it in ``client`` on the same veth,
passively reading the same frames through its own AF_PACKET socket and counting that flow's
segments (``flow_frames``). Both receivers are pinned to ``RECEIVER_CPU``.

Over one window (after a warm-up, so slow start and the handshake are outside it):
- agent: its process CPU clock (``clock_getcpuclockid(pid)``, ns) / the data segments its TCP
  received (``Tcp InSegs`` of /proc/net/snmp, from its snapshot ``stack.snmp.Tcp``);
- bare: its process CPU clock / the frames it read.

Validity: a window where the kernel dropped frames (softnet_stat column 2) or either AF_PACKET
socket overflowed (``tp_drops``), or where the agent's InSegs and the bare loop's flow frames differ
by more than 1 % (they did not see the same frames), marks the CPU figures invalid.
"""

from __future__ import annotations

import os
import secrets
import sys
import time

from client_agent.phy.afpacket import softnet_drops

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult
from .rx import (AGENT_POOL_PAGES, FLOOD_CPU, RECEIVER_CPU, REPO, TARGET_AGENT_OVER_BARE, _agent_argv, _r,
                 agent_nic_params, process_cpu_ns)

SINK_PORT = 9201
RATE_KBPS = 4000            # kB/s of the one stream (1 kB = 1000 bytes)
QUICK_WARMUP_S, QUICK_WINDOW_S = 1.0, 5.0
FULL_WARMUP_S, FULL_WINDOW_S = 2.0, 15.0
SINK_READER = "fast"
MATCH_TOLERANCE = 0.01      # agent InSegs vs the bare loop's flow frames


def _in_segs(snap: dict) -> int:
    return snap["stack"]["snmp"]["Tcp"]["InSegs"]


def _sink_bytes(snap: dict) -> int:
    return snap.get("services", {}).get(f"tcp:{SINK_PORT}", {}).get("bytes", 0)


def measure(ctx: BenchContext) -> dict:
    """A fresh default topology (``bench-rxtcp-<hex>``, removed on exit); the agent and the bare
    loop in ``client``, the sender in ``noise``; one window after the warm-up. Returns its counts:
    window_s, agent_cpu_s, bare_cpu_s, in_segs, sink_bytes, bare_frames, flow_frames, bare_wakeups
    (selector wakeups that found frames), agent_tp_drops, bare_tp_drops, softnet_drops. BenchError if a process does not start."""
    from netns_setup.control import ControlClient
    from netns_setup.lifecycle import teardown, up
    from netns_setup.process import ProcessStartError, start_process
    from netns_setup.state import control_socket_path
    from netns_setup.topology import default_topology

    warm, window = (QUICK_WARMUP_S, QUICK_WINDOW_S) if ctx.quick else (FULL_WARMUP_S, FULL_WINDOW_S)
    topo = default_topology()
    client, noise = topo.host("client"), topo.host("noise")
    st = up(topo, f"bench-rxtcp-{secrets.token_hex(3)}")
    procs = []
    try:
        ifname = st.host_iface("client")
        actl, bctl = control_socket_path(st.dir, "rxtcp-agent"), control_socket_path(st.dir, "rxtcp-bare")
        try:
            agent = start_process(st, "client", [*_agent_argv(), "--ifname", ifname, "--addr", client.address_str,
                                                 "--pool-pages", str(AGENT_POOL_PAGES), "--control", actl],
                                  role="rxtcp-agent", ready=True, cpus=[RECEIVER_CPU], cwd=REPO)
            procs.append(agent)
            bare = start_process(st, "client", [sys.executable, "-m", "testbed.bench.bareloop", "--ifname", ifname,
                                                "--tcp-port", str(SINK_PORT), "--control", bctl],
                                 role="rxtcp-bare", ready=True, cpus=[RECEIVER_CPU], cwd=REPO)
            procs.append(bare)
            with ControlClient(actl) as ac, ControlClient(bctl) as bc:
                ac.call("sink", port=SINK_PORT, reader=SINK_READER, kind="tcp")
                sender = start_process(st, "noise", [sys.executable, "-m", "testbed.tcp_noise", "--dst", str(client.address.ip),
                                                     "--ports", str(SINK_PORT), "--rate-kbps", str(RATE_KBPS),
                                                     "--seed", str(ctx.seed), "--bind", str(noise.address.ip)],
                                       role="rxtcp-sender", ready=True, cpus=[FLOOD_CPU], cwd=REPO)
                procs.append(sender)
                time.sleep(warm)
                a0, b0 = ac.call("snapshot", traces=False), bc.call("snapshot")
                sn0 = softnet_drops()
                ca0, cb0 = process_cpu_ns(agent.pid), process_cpu_ns(bare.pid)
                t0 = time.monotonic()
                time.sleep(window)
                ca1, cb1 = process_cpu_ns(agent.pid), process_cpu_ns(bare.pid)
                t1 = time.monotonic()
                a1, b1 = ac.call("snapshot", traces=False), bc.call("snapshot")
                sn1 = softnet_drops()
        except ProcessStartError as e:
            raise BenchError(f"section rx_tcp: a process did not start: {str(e).splitlines()[0]}") from None
        return {"window_s": t1 - t0, "warmup_s": warm,
                "agent_cpu_s": (ca1 - ca0) / 1e9, "bare_cpu_s": (cb1 - cb0) / 1e9,
                "in_segs": _in_segs(a1) - _in_segs(a0),
                "sink_bytes": _sink_bytes(a1) - _sink_bytes(a0),
                "bare_frames": b1["device"]["rx_packets"] - b0["device"]["rx_packets"],
                "flow_frames": b1["flow_frames"] - b0["flow_frames"],
                "bare_wakeups": b1["wakeups"] - b0["wakeups"],
                "agent_tp_drops": a1["device"].get("tp_drops", 0) - a0["device"].get("tp_drops", 0),
                "bare_tp_drops": b1["device"]["tp_drops"] - b0["device"]["tp_drops"],
                "softnet_drops": sn1 - sn0}
    finally:
        for p in reversed(procs):
            p.stop()
        teardown(st)


def invalid_reason(m: dict) -> str | None:
    """Why the window's CPU figures do not measure the receivers' own cost, or None."""
    why = []
    if m["softnet_drops"]:
        why.append(f"the kernel's backlog dropped {m['softnet_drops']} frames (softnet_stat)")
    for who in ("agent", "bare"):
        if m[f"{who}_tp_drops"]:
            why.append(f"the {who}'s socket overflowed ({m[f'{who}_tp_drops']} tp_drops)")
    if not m["in_segs"] or not m["flow_frames"]:
        why.append(f"no segments in the window (agent InSegs {m['in_segs']}, bare flow frames {m['flow_frames']})")
    elif abs(m["in_segs"] - m["flow_frames"]) > MATCH_TOLERANCE * m["flow_frames"]:
        why.append(f"agent InSegs {m['in_segs']} and bare flow frames {m['flow_frames']} differ by > 1 %")
    return "; ".join(why) or None


def figures(res: SectionResult, m: dict) -> None:
    bad = invalid_reason(m)
    w = m["window_s"]
    res.add("tcp.stream_kB_per_s", round(m["sink_bytes"] / w / 1000, 1), "kB/s", RATE_KBPS, "ratio >= 0.95",
            notes="bytes the agent's sink read; baseline: the sender's paced rate")
    res.add("tcp.agent_in_segs", m["in_segs"], "segments", m["flow_frames"], "ratio >= 0.99",
            notes="agent Tcp InSegs over the window; baseline: the bare loop's frames of that flow")
    bare_us = m["bare_cpu_s"] * 1e6 / m["bare_frames"] if m["bare_frames"] else None
    agent_us = m["agent_cpu_s"] * 1e6 / m["in_segs"] if m["in_segs"] else None
    batching = f"{m['bare_frames'] / m['bare_wakeups']:.2f} frames per wakeup" if m.get("bare_wakeups") else None
    res.add("tcp.bare_us_per_frame", _r(bare_us), "µs/frame", notes="; ".join(x for x in (bad, batching) if x) or None,
            invalid=bool(bad))
    res.add("tcp.agent_us_per_segment", _r(agent_us), "µs/segment", _r(bare_us), TARGET_AGENT_OVER_BARE,
            notes="; ".join(x for x in (bad, "baseline: the recv_into bare loop on the same veth, same window") if x),
            invalid=bool(bad))


@REGISTRY.register("rx_tcp", "CPU per received TCP segment: client agent vs the bare AF_PACKET loop, same frames (namespaces)",
                   needs_root=True)
def rx_tcp_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section rx_tcp needs root for network namespaces; run `sudo testbed bench --section rx_tcp`")
    if _agent_argv() is None:
        raise BenchError("section rx_tcp needs the client-agent command; install the project (`./test.sh` builds .venv)")
    res = SectionResult(params={"rate_kbps": RATE_KBPS, "sink_port": SINK_PORT, "sink_reader": SINK_READER,
                                "seed": ctx.seed, "receiver_cpu": RECEIVER_CPU, "sender_cpu": FLOOD_CPU,
                                "agent_pool_pages": AGENT_POOL_PAGES, "cpu_clock": "clock_getcpuclockid(pid), ns",
                                **agent_nic_params()})
    m = measure(ctx)
    res.params.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()})
    figures(res, m)
    return res
