"""Section "rx": CPU cost of the receive path -- the client agent against a bare AF_PACKET loop.

What is measured (each rate, same flood, same seed, one receiver at a time):
- the flood (``testbed.flood`` in ``noise``, pinned to CPU ``FLOOD_CPU``) sends 64-byte UDP payloads
  to the client's address at a paced rate, over four ports;
- the receiver in ``client`` (pinned to CPU ``RECEIVER_CPU``) is first the BARE loop
  (``testbed.bench.bareloop``: the agent's own AF_PACKET socket, counting frames and peeking at the
  EtherType), then the AGENT (``client-agent``, with a UDP sink opened on every flood port so each
  frame climbs the whole stack to a socket);
- CPU per frame = the receiver process's CPU time over the window / frames it received. The CPU
  time is the process's CPU clock (``clock_gettime`` of ``clock_getcpuclockid(pid)``: nanoseconds,
  not the 10 ms ticks of /proc/PID/stat), read from outside, before the flood starts and after the
  receiver has drained its queue.

Validity: the client has no kernel address, so the flood reaches it through a static neighbour
entry on ``noise`` (198.18.0.2 -> the client's MAC), set with pyroute2 -- the bare loop answers no
ARP. A window in which the kernel dropped frames (``/proc/net/softnet_stat`` column 2 grew, or
the receiver's socket overflowed: ``tp_drops``) does not measure the receiver's own cost: its CPU
figures are marked invalid (``met: false`` with a note), never silently kept.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from client_agent.phy.afpacket import softnet_drops
from netns_setup.nsutil import add_permanent_neighbours

from . import REGISTRY
from .framework import BenchContext, BenchError, Figure, SectionResult
from testbed.rig import profile_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOOD_PORTS = (9001, 9002, 9003, 9004)
PAYLOAD_BYTES = 64          # UDP payload; 106-byte frames on the wire
QUICK_RATES_PPS = (5000, 20000)
FULL_RATES_PPS = (5000, 20000, 50000)
QUICK_WINDOW_S = 3.0
FULL_WINDOW_S = 10.0
RECEIVER_CPU = 0            # 2 cores here: receiver and flood never share one
FLOOD_CPU = 1
AGENT_POOL_PAGES = 65536
TARGET_AGENT_OVER_BARE = "ratio <= 1.4"
# The agent's sinks read each datagram without allocating ("fast"): the section prices the receive
# path up to the socket read, not a consumer's own page allocations ("ordinary" sinks).
AGENT_SINK_READER = "fast"
# After the flood stops, the receiver has drained once its count stops moving for this long.
DRAIN_QUIET_S = 0.15
DRAIN_MAX_S = 5.0
CPUCLOCK_SCHED = 2


def process_cpu_ns(pid: int) -> int:
    """CPU time (user + system, all threads) of process ``pid``, in ns: clock_getcpuclockid(pid)."""
    return time.clock_gettime_ns(((~pid) << 3) | CPUCLOCK_SCHED)


@dataclass
class Window:
    """One receiver under one flood rate."""

    receiver: str
    rate_pps: int
    sent: int = 0
    on_time_s: float = 0.0
    late_sends: int = 0
    flood_errors: int = 0
    received: int = 0
    tp_drops: int = 0
    cpu_s: float = 0.0
    softnet_drops: int = 0
    wakeups: int | None = None   # bare loop only: selector wakeups (frames per wakeup = batching)
    sink_read: int | None = None  # agent only: datagrams its UDP sinks read (the whole stack climbed)
    note: str | None = None

    @property
    def achieved_pps(self) -> float:
        return self.sent / self.on_time_s if self.on_time_s > 0 else 0.0

    @property
    def rx_pps(self) -> float:
        return self.received / self.on_time_s if self.on_time_s > 0 else 0.0

    @property
    def cpu_us_per_frame(self) -> float | None:
        return self.cpu_s * 1e6 / self.received if self.received else None


def _agent_argv() -> list[str] | None:
    """How to start the agent, or None when the `client-agent` command is not there yet."""
    if importlib.util.find_spec("client_agent.agent") is None:
        return None
    exe = os.path.join(os.path.dirname(sys.executable), "client-agent")
    return [exe] if os.path.exists(exe) else ([shutil.which("client-agent")] if shutil.which("client-agent") else None)


def _measure(st: Any, flood: Any, kind: str, rate: int, window_s: float, ifname: str, addr: str,
             say: Any) -> Window:
    from netns_setup.control import ControlClient, ControlError
    from netns_setup.process import start_process
    from netns_setup.state import control_socket_path

    ctl = control_socket_path(st.dir, f"rx-{kind}")
    if kind == "bare":
        argv = [sys.executable, "-m", "testbed.bench.bareloop", "--ifname", ifname, "--control", ctl]
    else:
        agent = _agent_argv()
        assert agent is not None
        argv = [*agent, "--ifname", ifname, "--addr", addr, "--pool-pages", str(AGENT_POOL_PAGES), "--control", ctl]
    w = Window(kind, rate)
    env = None
    prof = profile_path(f"rx-{kind}-{rate}pps") if kind == "agent" else None
    if prof:  # TESTBED_BENCH_PROFILE_DIR set: the agent writes a cProfile when stopped
        env = {**os.environ, "CLIENT_AGENT_PROFILE": prof}
    proc = start_process(st, "client", argv, role=f"rx-{kind}", ready=True, cpus=[RECEIVER_CPU], cwd=REPO, env=env)
    try:
        with ControlClient(ctl) as rc:
            notes = []
            if kind == "agent":
                for port in FLOOD_PORTS:
                    try:
                        rc.call("udp_sink", port=port, reader=AGENT_SINK_READER)
                    except ControlError as e:
                        notes.append(f"udp_sink {port} refused ({e}): frames stop at the UDP demux")
                        break
            snap0 = rc.call("snapshot")
            s0 = snap0["device"]
            f0 = flood.call("snapshot")
            sn0 = softnet_drops()
            cpu0 = process_cpu_ns(proc.pid)
            flood.call("set", key="on", value=True)
            time.sleep(window_s)
            flood.call("set", key="on", value=False)
            f1 = flood.call("snapshot")
            sent = f1["sent"] - f0["sent"]
            # drain: until the receiver has everything, or its count stops moving
            deadline = time.monotonic() + DRAIN_MAX_S
            last, last_change = -1, time.monotonic()
            while time.monotonic() < deadline:
                rx = rc.call("snapshot")["device"]["rx_packets"] - s0["rx_packets"]
                if rx >= sent:
                    break
                if rx != last:
                    last, last_change = rx, time.monotonic()
                elif time.monotonic() - last_change > DRAIN_QUIET_S:
                    break
                time.sleep(0.03)
            cpu1 = process_cpu_ns(proc.pid)
            snap1 = rc.call("snapshot")
            s1 = snap1["device"]
            sn1 = softnet_drops()
        w.sent = sent
        w.on_time_s = f1["on_time_s"] - f0["on_time_s"]
        w.late_sends = f1["late_sends"] - f0["late_sends"]
        w.flood_errors = f1["errors_total"] - f0["errors_total"]
        w.received = s1["rx_packets"] - s0["rx_packets"]
        w.tp_drops = s1.get("tp_drops", 0) - s0.get("tp_drops", 0)
        w.cpu_s = (cpu1 - cpu0) / 1e9
        w.softnet_drops = sn1 - sn0
        if kind == "agent" and isinstance(snap1.get("services"), dict):
            def read(snap: dict) -> int:
                return sum(v.get("read", 0) for k, v in snap.get("services", {}).items()
                           if k in {f"udp:{p}" for p in FLOOD_PORTS})
            w.sink_read = read(snap1) - read(snap0)
        if isinstance(snap0.get("wakeups"), int):
            w.wakeups = snap1["wakeups"] - snap0["wakeups"]
            if w.wakeups:
                notes.append(f"{w.received / w.wakeups:.1f} frames per wakeup")
        w.note = "; ".join(notes) or None
    finally:
        proc.stop()
    say(f"  rx {kind:5} @ {rate} pps: sent {w.sent} ({w.achieved_pps:.0f} pps), received {w.received}, "
        f"tp_drops {w.tp_drops}, softnet drops {w.softnet_drops}, "
        f"{(w.cpu_us_per_frame or 0):.2f} µs CPU/frame")
    return w


def _invalid_reason(w: Window) -> str | None:
    why = []
    if w.softnet_drops:
        why.append(f"the kernel's backlog dropped {w.softnet_drops} frames (softnet_stat)")
    if w.tp_drops:
        why.append(f"the receiver's socket overflowed ({w.tp_drops} tp_drops): measured at saturation")
    if w.received < w.sent * 0.99 and not w.tp_drops:
        why.append(f"received {w.received} of {w.sent} frames sent")
    return "; ".join(why) or None


def _figures(res: SectionResult, rate: int, bare: Window, agent: Window | None, agent_missing: str | None) -> None:
    tag = f"{rate // 1000}kpps" if rate % 1000 == 0 else f"{rate}pps"
    res.add(f"{tag}.flood_pps", round(bare.achieved_pps, 1), "pps", rate, "ratio >= 0.95",
            notes=f"late sends {bare.late_sends}, send errors {bare.flood_errors}" if bare.late_sends or bare.flood_errors else None)
    for w, name in ((bare, "bare"), (agent, "agent")):
        if w is None:
            for fig, unit in (("rx_pps", "pps"), ("tp_drops", "frames"), ("cpu_us_per_frame", "µs/frame")):
                res.add(f"{tag}.{name}.{fig}", None, unit,
                        bare.cpu_us_per_frame if fig == "cpu_us_per_frame" else None,
                        TARGET_AGENT_OVER_BARE if fig == "cpu_us_per_frame" else None, notes=agent_missing)
            continue
        res.add(f"{tag}.{name}.rx_pps", round(w.rx_pps, 1), "pps", round(w.achieved_pps, 1), "ratio >= 0.99",
                notes=w.note if name == "agent" else None)
        res.add(f"{tag}.{name}.tp_drops", w.tp_drops, "frames", None, "value == 0")
        if w.sink_read is not None:
            # datagrams the agent's UDP sinks read, of the frames its device received
            res.add(f"{tag}.agent.sink_read", w.sink_read, "datagrams", w.received, "ratio >= 0.99")
        bad = _invalid_reason(w)
        if name == "bare":
            note = "; ".join(x for x in (bad, w.note) if x) or None
            res.add(f"{tag}.bare.cpu_us_per_frame", _r(w.cpu_us_per_frame), "µs/frame", notes=note, invalid=bool(bad))
        else:
            bbad = _invalid_reason(bare)
            note = "; ".join(x for x in (bad, f"baseline: {bbad}" if bbad else None) if x) or None
            res.add(f"{tag}.agent.cpu_us_per_frame", _r(w.cpu_us_per_frame), "µs/frame", _r(bare.cpu_us_per_frame),
                    TARGET_AGENT_OVER_BARE, notes=note, invalid=bool(bad or bbad))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@REGISTRY.register("rx", "receive-path CPU per frame: client agent vs a bare AF_PACKET loop (namespaces)", needs_root=True)
def rx_section(ctx: BenchContext) -> SectionResult:
    if os.geteuid() != 0:
        raise BenchError("section rx needs root for network namespaces; run `sudo testbed bench --section rx`")
    from netns_setup.control import ControlClient
    from netns_setup.lifecycle import teardown, up
    from netns_setup.process import ProcessStartError, start_process
    from netns_setup.state import control_socket_path
    from netns_setup.topology import default_topology

    rates = QUICK_RATES_PPS if ctx.quick else FULL_RATES_PPS
    window_s = QUICK_WINDOW_S if ctx.quick else FULL_WINDOW_S
    topo = default_topology()
    client, noise = topo.host("client"), topo.host("noise")
    res = SectionResult(params={"rates_pps": list(rates), "window_s": window_s, "payload_bytes": PAYLOAD_BYTES,
                                "ports": list(FLOOD_PORTS), "seed": ctx.seed, "receiver_cpu": RECEIVER_CPU,
                                "flood_cpu": FLOOD_CPU, "agent_pool_pages": AGENT_POOL_PAGES,
                                "agent_sink_reader": AGENT_SINK_READER,
                                "cpu_clock": "clock_getcpuclockid(pid), ns"})
    name = f"bench-rx-{secrets.token_hex(3)}"
    st = up(topo, name)
    try:
        add_permanent_neighbours(st.host_netns("noise"), st.host_iface("noise"), [(str(client.address.ip), client.mac)])
        fctl = control_socket_path(st.dir, "flood")
        try:
            flood_proc = start_process(
                st, "noise",
                [sys.executable, "-m", "testbed.flood", "--dst", str(client.address.ip),
                 "--ports", ",".join(map(str, FLOOD_PORTS)), "--rate-pps", str(rates[0]), "--size", str(PAYLOAD_BYTES),
                 "--seed", str(ctx.seed), "--bind", str(noise.address.ip), "--start-off", "--control", fctl],
                role="flood", ready=True, cpus=[FLOOD_CPU], cwd=REPO)
        except ProcessStartError as e:
            raise BenchError(f"the flood did not start: {e}") from None
        agent_missing = None if _agent_argv() else "client-agent is not available yet (no client_agent.agent): agent figures are null"
        ifname = st.host_iface("client")
        with ControlClient(fctl) as flood:
            for rate in rates:
                flood.call("set", key="rate_pps", value=rate)
                bare = _measure(st, flood, "bare", rate, window_s, ifname, client.address_str, ctx.progress)
                agent = None
                if agent_missing is None:
                    try:
                        agent = _measure(st, flood, "agent", rate, window_s, ifname, client.address_str, ctx.progress)
                    except ProcessStartError as e:
                        agent_missing = f"client-agent did not start: {str(e).splitlines()[0]}"
                _figures(res, rate, bare, agent, agent_missing)
            flood.call("shutdown")
        flood_proc.wait(3.0)
        flood_proc.stop()
    finally:
        teardown(st)
    if agent_missing:
        res.params["agent"] = agent_missing
    return res
