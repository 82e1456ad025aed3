"""``client = "linux"``: one scenario with a real kernel in a QEMU VM as the client host.

Same topology, NAS (nas-server on kernel sockets), flood and captures as testbed.runner; the client
host's NIC is bridged to the guest's tap (LinuxVmClient). The guest's init script does the scenario's
physics (guest_init.sh): mount the NAS's export over NFSv3 (TCP; UDP only on a kernel that allows
it), mkswap + swapon on swap.img (or MAP_SHARED writeback to file.img), never-read noise sockets with
the scenario's rcvbuf and udp_mem, min_free_kbytes and watermark_scale_factor, the stamped and
verified anonymous workload. The flood starts when the workload does (t = 0 of the timeline).

Outcome: testbed.watchdog's rules on LinuxVmClient.snapshot() every SAMPLE_S, with the NAS's WRITE
calls as the outside view of progress. A deadlocked guest is asked for its blocked tasks (SysRq-w on
the console), then killed by pid; console and sampler logs stay in the report directory.

Conditions a real kernel cannot be put in are refused before anything is created (``unsupported``).
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from testbed import report as rep
from testbed import scenario as scn
from testbed.watchdog import Watchdog, proc_view

from .client import mount_options  # noqa: F401 -- re-exported

SAMPLE_S = 0.5
EXIT_TIMEOUT_S = 30.0
SETTLE_S = 2                  # the guest samples this long after its workload before powering off
NOISE_PORT_BASE = 9001


def unsupported(sc: scn.Scenario) -> str | None:
    """Why a real kernel cannot be put in this scenario's condition (one line), or None."""
    if sc.consumer == "swap" and not sc.memalloc:
        return (f"scenario {sc.name}: memalloc = false cannot be run on a real kernel: sunrpc marks every swap "
                "transport SOCK_MEMALLOC itself (xs_set_memalloc at swapon) -- there is no swap over NFS "
                "without the reserve; file-mmap-linux shows Linux's own unmarked transport")
    if not sc.pfmemalloc_demux_drop:
        return (f"scenario {sc.name}: pfmemalloc_demux_drop = false cannot be run on a real kernel: "
                "sk_filter_trim_cap drops pfmemalloc skbs for every socket without SOCK_MEMALLOC, with no knob")
    if sc.consumer == "write":
        return f"scenario {sc.name}: consumer = write is not implemented in the guest helper; use mmap or swap"
    if sc.policy == "extended":
        return (f"scenario {sc.name}: policy = extended marks a file transport SOCK_MEMALLOC, which Linux "
                "never does: it is beyond Linux by definition")
    return None


def guest_workload_pages(sc: scn.Scenario) -> int:
    """guest_workload_pages, or the agent's workload_pages/pool_pages ratio of the guest's memory."""
    if sc.guest_workload_pages:
        return sc.guest_workload_pages
    return int(sc.guest_memory_mib * 256 * sc.workload_pages / sc.pool_pages)


def udp_mem(sc: scn.Scenario) -> str:
    """net.ipv4.udp_mem for the guest: the scenario's; "" means as the agent models UDP -- no
    protocol-wide cap, only each socket's rcvbuf -- i.e. every limit at the guest's page count;
    "kernel" keeps the kernel's own (≈ 1/32 of memory: it would cap the flood's pinned pages)."""
    if sc.guest_udp_mem == "kernel":
        return ""
    if sc.guest_udp_mem:
        return sc.guest_udp_mem
    pages = sc.guest_memory_mib * 256
    return f"{pages} {pages} {pages}"


def compact(t: float, snap: dict) -> dict:
    """One timeline sample, named like testbed.runner.compact's where the quantity is the same."""
    v = proc_view(snap)
    z, vm = v["alloc"]["zoneinfo"], v["alloc"]["vmstat"]
    p = snap.get("proc") or {}
    tcp = (p.get("netstat") or {}).get("TcpExt") or {}
    udp = (p.get("snmp") or {}).get("Udp") or {}
    rpc = (p.get("rpc_nfs") or {}).get("rpc") or {}
    wl = snap.get("workload") or {}
    return {
        "t": round(t, 3), "free": z.get("free"), "min": z.get("min"), "low": z.get("low"), "high": z.get("high"),
        "atomic_floor": v["alloc"]["reserve"]["atomic_floor"],
        **{k: vm.get(k, 0) for k in ("pswpout", "pswpin", "pgscan_kswapd", "pgsteal_kswapd", "nr_writeback",
                                     "nr_anon_pages", "pgscan_direct_throttle")},
        "allocstall": sum(int(x) for k, x in vm.items() if k.startswith("allocstall_")),
        "PFMemallocDrop": tcp.get("PFMemallocDrop", 0), "TCPBacklogDrop": tcp.get("TCPBacklogDrop", 0),
        "udp_RcvbufErrors": udp.get("RcvbufErrors", 0), "udp_InErrors": udp.get("InErrors", 0),
        "udp_MemErrors": udp.get("MemErrors", 0),
        "udp_mem_pages": ((p.get("sockstat") or {}).get("UDP") or {}).get("mem"),
        "rpc_calls": rpc.get("calls"), "rpc_retrans": rpc.get("retrans"), "rx_nobuf": None,   # no such /proc figure
        "nas_write_calls": (snap.get("outside") or {}).get("nas_write_calls"),
        "workload_allocated": wl.get("allocated"), "workload_verified": wl.get("verified"),
        "workload_done": bool(wl.get("done")), "sample_seq": (snap.get("sample") or {}).get("seq"),
        "sample_age_s": (snap.get("sample") or {}).get("age_s"), "silent_s": snap.get("silent_s"),
        "page_allocation_failures": (snap.get("console") or {}).get("page_allocation_failure", 0),
    }


def guest_stop_text(stopped: dict) -> str:
    """How the guest ended, from LinuxVmClient.stop()'s {"exit", "killed"}: killed by pid or exited
    by itself, with QEMU's exit status (a negative one is the signal that ended it)."""
    import signal
    code = stopped.get("exit")
    if code is None:
        status = "exit status not collected"
    elif code < 0:
        try:
            status = f"ended by {signal.Signals(-code).name}"
        except ValueError:
            status = f"ended by signal {-code}"
    else:
        status = f"QEMU exit status {code}"
    return f"guest: {'killed by pid' if stopped.get('killed') else 'QEMU exited by itself'} ({status})"


def report_text(wd: Watchdog, snap: dict, client, sysrq_lines: list[str], killed: dict | None) -> str:
    """The hung-task style report for a real kernel: what the watchdog used, the console's own
    reports, memory against the watermarks, the counters that tell where packets were dropped."""
    v = proc_view(snap)
    z, vm = v["alloc"]["zoneinfo"], v["alloc"]["vmstat"]
    p = snap.get("proc") or {}
    out = [f"outcome: {wd.outcome} ({'; '.join(wd.reasons)})", "evidence used:"]
    out += [f"  {e}" for e in (wd.evidence or v.get("evidence") or [])]
    for kind in ("page_allocation_failure", "hung_task", "nfs_not_responding", "nfs_ok", "oom", "panic",
                 "soft_lockup", "rcu_stall"):
        evs = client.console_events((kind,))
        if evs:
            out.append(f"console {kind}: {client.console.counts.get(kind)} (first {min(3, len(evs))} shown)")
            out += [f"  {e['line'].strip()[:240]}" for e in evs[:3]]
    zi = p.get("zoneinfo") or {}
    out.append(f"Mem-Info (sum of zones): free:{z.get('free')} min:{z.get('min')} low:{z.get('low')} "
               f"high:{z.get('high')} atomic_floor:{v['alloc']['reserve']['atomic_floor']} managed:{z.get('managed')} "
               f"zones: " + " ".join(f"{n}(free {d.get('free')} min {d.get('min')})" for n, d in zi.items() if d.get('managed')))
    keys = ("pswpout", "pswpin", "pgscan_kswapd", "pgsteal_kswapd", "pgscan_direct", "pgscan_direct_throttle",
            "nr_writeback", "nr_anon_pages", "nr_free_pages")
    out.append("vmstat: " + " ".join(f"{k}:{vm.get(k, 0)}" for k in keys)
               + " allocstall:" + str(sum(int(x) for k, x in vm.items() if k.startswith("allocstall_"))))
    tcp = (p.get("netstat") or {}).get("TcpExt") or {}
    out.append("TcpExt: " + " ".join(f"{k}:{tcp.get(k, 0)}" for k in ("PFMemallocDrop", "TCPBacklogDrop", "PruneCalled",
                                                                    "RcvPruned", "TCPRcvQDrop", "TCPOFODrop",
                                                                    "TCPTimeouts", "TCPLossProbes")))
    snmp = p.get("snmp") or {}
    out.append("Udp: " + " ".join(f"{k}:{(snmp.get('Udp') or {}).get(k, 0)}" for k in ("InDatagrams", "InErrors", "RcvbufErrors", "MemErrors"))
               + " Tcp: " + " ".join(f"{k}:{(snmp.get('Tcp') or {}).get(k, 0)}" for k in ("RetransSegs", "InErrs", "OutRsts")))
    ss = p.get("sockstat") or {}
    out.append("sockstat: " + " ".join(f"{k} {' '.join(f'{a}:{b}' for a, b in d.items())};" for k, d in ss.items()))
    rpc = (p.get("rpc_nfs") or {}).get("rpc") or {}
    out.append(f"rpc (guest /proc/net/rpc/nfs): calls:{rpc.get('calls')} retrans:{rpc.get('retrans')}; "
               f"NAS WRITE calls:{(snap.get('outside') or {}).get('nas_write_calls')}")
    if sysrq_lines:
        out.append(f"SysRq-w (blocked tasks, {len(sysrq_lines)} console lines):")
        out += [f"  {ln}" for ln in sysrq_lines[:200]]
    if killed is not None:
        out.append(guest_stop_text(killed))
    return "\n".join(out)


def _nas_writes(rig) -> tuple[int | None, dict | None]:
    """NFS3 WRITE calls nas-server has seen (its control snapshot), and the snapshot."""
    from netns_setup.control import ControlError
    try:
        snap = rig.nas().call("snapshot")
    except (ControlError, OSError, TimeoutError, KeyError):
        return None, None
    return int(((snap.get("procedures") or {}).get("NFS3_WRITE") or {}).get("calls", 0)), snap


def nas_clean(nas: dict | None) -> dict:
    """nas-server's verdict on the run: no drop_* counter and no procedure error."""
    if not nas:
        return {"clean": None, "why": "no NAS snapshot"}
    drops = {k: v for k, v in (nas.get("counters") or {}).items() if k.startswith("drop_") and v}
    errors = {k: e["errors"] for k, e in (nas.get("procedures") or {}).items() if e.get("errors")}
    return {"clean": not drops and not errors, "drops": drops, "procedure_errors": errors}


def run_linux(sc: scn.Scenario, checks: list, out: str, *, log=None, pcap_dir: str | None = None,
              pcap_prefix: str = "", logs_dir: str | None = None, progress_prefix: str = "",
              print_watchdog: bool = True, export_networks: str | None = None, during=None) -> dict:
    """testbed.runner.run_scenario for ``client = "linux"``: the same rig (testbed/rig.py: topology,
    NAS, flood, captures), the client through the Client interface (LinuxVmClient), the same
    watchdog; the same entry shape plus ``client``, ``guest`` (kernel, accelerator and why, NIC,
    memory), ``evidence`` and ``nas_clean``. ``during(ctx)`` as for the agent (testbed chaos):
    ``ctx`` has t, snapshot (the client's, contract-shaped), st, procs, ctl, hosts, restart_nas,
    record."""
    from netns_setup.control import ControlClient, ControlError
    from netns_setup.process import ProcessStartError
    from netns_setup.topology import default_topology
    from testbed.clients import ClientError
    from testbed.rig import Rig, RigError
    from testbed.runner import EXPORT, FILE_IMAGE, IMAGE, IMAGE_EXTRA_MIB, IMAGE_MARGIN, NFS_PORT, Progress, RunError

    from .client import GuestSpec, LinuxVmClient, LinuxVmError

    why = unsupported(sc)
    if why:
        raise RunError(why)
    say = log or (lambda m: print(f"testbed run: {m}", file=sys.stderr, flush=True))
    topo = default_topology()
    hosts = {h.name: h for h in topo.hosts}
    nas_ip, cli_ip, noise_ip = (str(hosts[n].address.ip) for n in ("nas", "client", "noise"))
    prefix = hosts["client"].address.network.prefixlen
    name = "l" + uuid.uuid4().hex[:6]
    ports = list(range(NOISE_PORT_BASE, NOISE_PORT_BASE + sc.noise_sockets))
    pages = guest_workload_pages(sc)
    file_consumer = sc.consumer != "swap"
    image = FILE_IMAGE if file_consumer else IMAGE
    image_mib = int(pages * 4096 * IMAGE_MARGIN) // (1 << 20) + IMAGE_EXTRA_MIB
    timeline: list[dict] = []
    wd = Watchdog(sc.stall_threshold_s)
    client = None
    rig = None
    extra: dict = {}
    try:
        rig = Rig(topo, "l", name=name, images=[(image, image_mib)], nas_on_tmpfs=True,
                  nas_write_latency_ms=sc.nas_write_latency_ms,
                  export_networks=export_networks or "198.18.0.0/24", say=say)
        st = rig.st
        say(f"topology {name} up (run dir {st.dir}); scenario {sc.name} on a Linux guest, expect {sc.expect}, seed {sc.seed}")
        ctl = {"nas": rig.control_path("nas"), "flood": rig.control_path("flood")}
        config = {
            "NSDT_ADDR": f"{cli_ip}/{prefix}", "NSDT_NAS": nas_ip, "NSDT_NAS_MAC": hosts["nas"].mac,
            "NSDT_NOISE": noise_ip, "NSDT_NOISE_MAC": hosts["noise"].mac, "NSDT_UDP_MEM": udp_mem(sc),
            "NSDT_HUNG_TASK_S": sc.guest_hung_task_s, "NSDT_SETTLE_S": SETTLE_S,
        }
        spec = GuestSpec(kernel=sc.guest_kernel, modules=sc.guest_modules, memory_mib=sc.guest_memory_mib,
                         nic_model=sc.guest_nic, cmdline=sc.guest_cmdline, accel=sc.guest_accel,
                         sample_ms=sc.guest_sample_ms, config=config, faults=sc.client_faults)
        guest_dir = os.path.join(out, "guest" if not pcap_prefix else f"guest-{pcap_prefix.rstrip('-')}")
        client = LinuxVmClient(spec, guest_dir, log=say)
        client.start(rig, "client")
        info = client.info
        # -- the client's pcap is the guest's tap; nas and noise their NICs
        for h in ("client", "nas", "noise"):
            rig.capture(h, os.path.join(pcap_dir or os.path.join(out, "pcap"), f"{pcap_prefix}{h}.pcap"),
                        iface=client.tap if h == "client" else None)
        client.sinks(ports, "none", sc.noise_rcvbuf_bytes)
        device = {"kind": "nfs", "server": nas_ip, "port": NFS_PORT, "mount_port": NFS_PORT, "export": EXPORT,
                  "image": image, "proto": sc.guest_nfs_proto, "wsize": sc.guest_wsize or None,
                  "timeo_s": sc.timeo_s, "retrans": sc.retrans}
        extra["attach"] = client.attach(sc.consumer, device, memalloc=sc.memalloc, policy=sc.policy)
        for k in ("min_free_kbytes", "watermark_scale_factor", "budget", "pfmemalloc_demux_drop"):
            client.set(k, getattr(sc, k))
        # -- boot, modules, mount, swapon: until the workload starts
        wl = client.start_workload(sc.consumer, pages, sc.seed)
        extra["guest_setup_s"] = wl["setup_s"]
        say(f"guest ready in {wl['setup_s']} s: {wl['mounted'][:120]}")
        if sc.flood_pps > 0:
            rig.start_flood(cli_ip, ports, sc.flood_pps, size=sc.flood_size, seed=sc.seed)

        def procs_view() -> dict:
            return {k: rig.procs[k] for k in ("nas", "flood", "qemu:client") if k in rig.procs}
        # -- sample, watch
        t0 = time.monotonic()
        extra["t0_wall"] = time.time()
        prog = Progress(prefix=progress_prefix)
        dctx = {"t": 0.0, "st": st, "procs": procs_view(), "ctl": ctl, "hosts": hosts,
                "restart_nas": rig.restart_nas, "record": {}}
        nxt, t, snap = t0, 0.0, {}
        while True:
            nxt += SAMPLE_S
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            t = time.monotonic() - t0
            writes, _ = _nas_writes(rig)
            if writes is not None:
                client.outside["nas_write_calls"] = client.outside.get("nas_write_base", 0) + writes
            snap = client.snapshot()
            c = compact(t, snap)
            timeline.append(c)
            if c["free"] is not None:
                prog.show(t, c)
            if during is not None:
                dctx["t"], dctx["snapshot"], dctx["procs"] = t, snap, procs_view()
                n_nas = rig.procs["nas"]
                during(dctx)
                if rig.procs["nas"] is not n_nas:      # a restarted NAS counts its calls from 0 again
                    client.outside["nas_write_base"] = client.outside.get("nas_write_calls", 0)
            if wd.feed(t, snap):
                break
            if not client.running() and not snap["workload"].get("done"):
                wd.finish()     # the guest is gone without finishing: unfinished, with its console
                break
            if t >= sc.max_duration_s:
                wd.finish()
                break
        prog.end()
        say(f"outcome {wd.outcome} at t={wd.decided_at:.1f}s: {'; '.join(wd.reasons)}")
        sysrq = []
        if wd.outcome in ("deadlock", "unfinished") and client.running():
            sysrq = client.sysrq("w")
        if "flood" in rig.procs:
            try:
                with ControlClient(ctl["flood"]) as fc:
                    extra["flood"] = fc.call("shutdown")
            except ControlError as e:
                extra["flood"] = {"error": str(e)}
            rig.stop("flood")
        if wd.outcome not in ("deadlock", "unfinished", "invalid"):
            client.wait_exit(EXIT_TIMEOUT_S)
        stopped = client.stop()
        if sc.client_faults:
            extra["relay"] = client.relay_counters()
        final = client.snapshot() if client.last else snap
        extra["final_t"] = round(time.monotonic() - t0, 3)
        for cap in rig.caps.values():
            cap.stop()
        _w, nas = _nas_writes(rig)
        try:
            rig.nas().call("shutdown")
        except (ControlError, OSError):
            pass
        rig.stop("nas")
        ver = client.verify()
        text = report_text(wd, final, client, sysrq, stopped)
        if print_watchdog and wd.outcome in ("deadlock", "unfinished"):
            print(text, file=sys.stderr, flush=True)
        with open(os.path.join(out, "watchdog.txt" if not pcap_prefix else f"watchdog-{pcap_prefix.rstrip('-')}.txt"), "w") as f:
            f.write(text + "\n")
        rep.write_json(os.path.join(guest_dir, "final_snapshot.json"), final)
        vm = final["alloc"]["vmstat"]
        p = final.get("proc") or {}
        tcp = (p.get("netstat") or {}).get("TcpExt") or {}
        udp = (p.get("snmp") or {}).get("Udp") or {}
        rpc = (p.get("rpc_nfs") or {}).get("rpc") or {}
        verified = ver.get("verified")
        counters = {"PFMemallocDrop": tcp.get("PFMemallocDrop", 0), "TCPBacklogDrop": tcp.get("TCPBacklogDrop", 0),
                    "rx_nobuf": None, "udp": {k: udp.get(k, 0) for k in ("InDatagrams", "InErrors", "RcvbufErrors", "MemErrors")},
                    **{k: vm.get(k, 0) for k in ("pswpout", "pswpin", "pgscan_kswapd", "pgsteal_kswapd",
                                                 "pgscan_direct", "pgscan_direct_throttle", "nr_writeback")},
                    "allocstall": sum(int(x) for k, x in vm.items() if k.startswith("allocstall_")),
                    "drop_reasons": final["stack"]["drop_reasons"],
                    "nfs": {"rpc_calls": rpc.get("calls"), "rpc_retrans": rpc.get("retrans")},
                    "console": dict(client.console.counts)}
        return {
            "name": sc.name, "client": "linux", "outcome": wd.outcome, "seed": sc.seed, "expect": sc.expect,
            "time_to_stall_s": wd.time_to_stall_s, "time_to_recover_s": wd.time_to_recover_s,
            "pages_written": vm.get("pswpout", 0), "pages_verified": verified,
            "pages_lost": None if verified is None else (ver.get("pages") or 0) - verified,
            "reserve_low_pages": wd.reserve_low_pages, "rpc_retrans": rpc.get("retrans"),
            "preflight": [ch.to_json() for ch in checks], "counters": counters, "watchdog": text,
            "evidence": wd.evidence, "decided_at_s": wd.decided_at, "verification": ver,
            "nas": nas, "nas_clean": nas_clean(nas), "guest": {k: v for k, v in info.items() if k != "argv"},
            "guest_steps": {k: e.get("line") for k, e in client.steps.items()}, "guest_stop": stopped,
            "parameters": sc.to_dict(), "run_name": name, "consumer": sc.consumer, "policy": sc.policy,
            "beyond_linux": False, "workload_pages": pages,
            "noise_reader": "none" + ("" if sc.noise_reader == "none" else
                                      f" (the guest's noise sockets are never read; the scenario says {sc.noise_reader})"),
            "pcaps": {h: cap.path for h, cap in rig.caps.items()}, **extra,
            **({"during": dctx["record"]} if during is not None else {}), "_timeline": timeline,
        }
    except (ControlError, ClientError, RigError, ProcessStartError, TimeoutError, LinuxVmError) as e:
        raise RunError(f"scenario {sc.name}: {e}") from None
    finally:
        if client is not None:
            try:
                client.stop()
            except Exception:  # noqa: BLE001 -- teardown goes on
                pass
        if rig is not None:
            try:
                rep.copy_logs(rig.st.dir, out, logs_dir)
            except OSError as e:
                say(f"could not copy logs: {e}")
            rig.close()
