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
import shutil
import sys
import time
import uuid

from testbed import report as rep
from testbed import scenario as scn
from testbed.watchdog import Watchdog, proc_view

SAMPLE_S = 0.5
SETUP_TIMEOUT_S = 180.0       # boot, modules, mount, swapon under TCG on a loaded machine
EXIT_TIMEOUT_S = 30.0
SETTLE_S = 2                  # the guest samples this long after its workload before powering off
NOISE_PORT_BASE = 9001
EINVAL = 22


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


def mount_options(sc: scn.Scenario, nas_ip: str, port: int) -> str:
    """mount(2) data for NFSv3: TCP with Linux's defaults (timeo=600, retrans=2), or UDP with the
    scenario's timeo/retrans; MOUNT on the same port (nas-server runs no portmapper here); rsize/wsize
    negotiated unless guest_wsize says (the agent's ``wsize`` is its own one-page-per-call model: on
    Linux 6.1 a 4 KiB wsize turns each swapped page into its own RPC, and swap_write_unplug's batching
    is lost)."""
    proto = sc.guest_nfs_proto
    o = [f"vers=3,proto={proto},nolock,hard,addr={nas_ip},port={port},mountport={port},mountproto={proto},"
         f"mountvers=3,mountaddr={nas_ip}"]
    if sc.guest_wsize:
        o.append(f"rsize={sc.guest_wsize},wsize={sc.guest_wsize}")
    if proto == "udp":
        o.append(f"timeo={max(1, int(sc.timeo_s * 10))},retrans={sc.retrans}")
    return ",".join(o)


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
        "rpc_calls": rpc.get("calls"), "rpc_retrans": rpc.get("retrans"), "rx_nobuf": 0,
        "nas_write_calls": (snap.get("outside") or {}).get("nas_write_calls"),
        "workload_allocated": wl.get("allocated"), "workload_verified": wl.get("verified"),
        "workload_done": bool(wl.get("done")), "sample_seq": (snap.get("sample") or {}).get("seq"),
        "sample_age_s": (snap.get("sample") or {}).get("age_s"), "silent_s": snap.get("silent_s"),
        "page_allocation_failures": (snap.get("console") or {}).get("page_allocation_failure", 0),
    }


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
        out.append(f"guest: {'killed by pid' if killed.get('killed') else 'exited'} (QEMU exit {killed.get('exit')})")
    return "\n".join(out)


def _nas_writes(ctl_path: str) -> tuple[int | None, dict | None]:
    from netns_setup.control import ControlClient, ControlError
    try:
        with ControlClient(ctl_path, timeout_s=2.0) as nc:
            snap = nc.call("snapshot")
    except (ControlError, OSError, TimeoutError):
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
              print_watchdog: bool = True) -> dict:
    """testbed.runner.run_scenario for ``client = "linux"``: the same entry shape, plus ``client``,
    ``guest`` (kernel, accelerator and why, NIC, memory), ``evidence`` and ``nas_clean``."""
    from netns_setup import lifecycle
    from netns_setup.capture import start_capture
    from netns_setup.control import ControlClient, ControlError
    from netns_setup.nsutil import add_permanent_neighbours
    from netns_setup.process import ProcessStartError, start_process
    from netns_setup.state import control_socket_path
    from netns_setup.topology import default_topology
    from testbed.runner import EXPORT, FILE_IMAGE, IMAGE, IMAGE_EXTRA_MIB, IMAGE_MARGIN, NFS_PORT, Progress, \
        RunError, flood_argv, nas_server_argv

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
    guest_cpu, other_cpu = ([0], [1]) if (os.cpu_count() or 1) > 1 else (None, None)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    ports = list(range(NOISE_PORT_BASE, NOISE_PORT_BASE + sc.noise_sockets))
    pages = guest_workload_pages(sc)
    file_consumer = sc.consumer != "swap"
    image_mib = int(pages * 4096 * IMAGE_MARGIN) // (1 << 20) + IMAGE_EXTRA_MIB
    procs, caps = {}, {}
    timeline: list[dict] = []
    wd = Watchdog(sc.stall_threshold_s)
    client = None
    data_dir = None
    extra: dict = {}
    st = lifecycle.up(topo, name)
    say(f"topology {name} up (run dir {st.dir}); scenario {sc.name} on a Linux guest, expect {sc.expect}, seed {sc.seed}")
    try:
        data_dir = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else st.dir, f"nsdt-nasdata-{name}")
        ctl = {k: control_socket_path(st.dir, k) for k in ("nas", "flood")}
        procs["nas"] = start_process(st, "nas", nas_server_argv(sc, data_dir, nas_ip, ctl["nas"], image_mib,
                                                                file_consumer=file_consumer),
                                     role="nas-server", ready=True, cpus=other_cpu, env=env)
        for h in ("nas", "noise"):
            add_permanent_neighbours(st.host_netns(h), st.host_iface(h), [(cli_ip, hosts["client"].mac)])
        config = {
            "NSDT_ADDR": f"{cli_ip}/{prefix}", "NSDT_NAS": nas_ip, "NSDT_NAS_MAC": hosts["nas"].mac,
            "NSDT_NOISE": noise_ip, "NSDT_NOISE_MAC": hosts["noise"].mac, "NSDT_EXPORT": "/" + EXPORT,
            "NSDT_IMAGE": FILE_IMAGE if file_consumer else IMAGE, "NSDT_CONSUMER": sc.consumer,
            "NSDT_MOUNT_OPTS": mount_options(sc, nas_ip, NFS_PORT),
            "NSDT_MIN_FREE_KBYTES": sc.min_free_kbytes, "NSDT_WATERMARK_SCALE_FACTOR": sc.watermark_scale_factor,
            "NSDT_UDP_MEM": udp_mem(sc), "NSDT_NOISE_RCVBUF": sc.noise_rcvbuf_bytes,
            "NSDT_NOISE_SOCKETS": sc.noise_sockets, "NSDT_NOISE_PORT_BASE": NOISE_PORT_BASE,
            "NSDT_HUNG_TASK_S": sc.guest_hung_task_s, "NSDT_WORKLOAD_PAGES": pages, "NSDT_SEED": sc.seed,
            "NSDT_SETTLE_S": SETTLE_S,
        }
        spec = GuestSpec(kernel=sc.guest_kernel, modules=sc.guest_modules, memory_mib=sc.guest_memory_mib,
                         nic_model=sc.guest_nic, cmdline=sc.guest_cmdline, accel=sc.guest_accel,
                         sample_ms=sc.guest_sample_ms, config=config)
        guest_dir = os.path.join(out, "guest" if not pcap_prefix else f"guest-{pcap_prefix.rstrip('-')}")
        client = LinuxVmClient(st, "client", spec, hosts["client"].mac, guest_dir, cpus=guest_cpu, log=say)
        try:
            info = client.prepare()
        except LinuxVmError as e:
            raise RunError(str(e)) from None
        client.start()
        for h in ("client", "nas", "noise"):
            caps[h] = start_capture(st, h, iface=client.tap if h == "client" else None,
                                    path=os.path.join(pcap_dir or os.path.join(out, "pcap"), f"{pcap_prefix}{h}.pcap"))
        # -- boot, modules, mount, swapon: until the workload starts
        t_boot = time.monotonic()
        while "workload" not in client.steps:
            client.poll()
            if "fail" in client.steps or not client.running() or time.monotonic() - t_boot > SETUP_TIMEOUT_S:
                mnt = client.steps.get("mount")
                tail = [ln for ln in client.console.lines if ln.strip()][-3:]
                if mnt is not None and mnt.get("errno") == EINVAL and sc.guest_nfs_proto == "udp":
                    raise RunError(f"scenario {sc.name}: the guest kernel refuses NFS over UDP (mount(2) EINVAL): "
                                   f"it is built with CONFIG_NFS_DISABLE_UDP_SUPPORT=y (Debian's is); use "
                                   f"guest_nfs_proto = \"tcp\" or pass --kernel with one built with it =n")
                what = (client.steps.get("fail") or {}).get("line") or ("QEMU exited" if not client.running()
                                                                        else f"no workload after {SETUP_TIMEOUT_S:.0f} s")
                raise RunError(f"scenario {sc.name}: guest setup failed: {what}; console ends: {' | '.join(tail)}")
            time.sleep(0.1)
        extra["guest_setup_s"] = round(time.monotonic() - t_boot, 2)
        say(f"guest ready in {extra['guest_setup_s']} s: {client.steps.get('mounted', {}).get('line', '')[:120]}")
        if sc.flood_pps > 0:
            procs["flood"] = start_process(st, "noise", flood_argv(sc, cli_ip, noise_ip, ports, ctl["flood"]),
                                           role="flood", ready=True, cpus=other_cpu, env=env)
        # -- sample, watch
        t0 = time.monotonic()
        extra["t0_wall"] = time.time()
        prog = Progress(prefix=progress_prefix)
        nxt, t, snap = t0, 0.0, {}
        while True:
            nxt += SAMPLE_S
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            t = time.monotonic() - t0
            writes, _ = _nas_writes(ctl["nas"])
            if writes is not None:
                client.outside["nas_write_calls"] = writes
            snap = client.snapshot()
            c = compact(t, snap)
            timeline.append(c)
            if c["free"] is not None:
                prog.show(t, c)
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
        if "flood" in procs:
            try:
                with ControlClient(ctl["flood"]) as fc:
                    extra["flood"] = fc.call("shutdown")
            except ControlError as e:
                extra["flood"] = {"error": str(e)}
            procs["flood"].stop()
        if wd.outcome in ("deadlock", "unfinished", "invalid"):
            stopped = client.stop(kill=True)
        else:
            client.wait_exit(EXIT_TIMEOUT_S)
            stopped = client.stop(kill=True)
        final = client.snapshot() if client.last else snap
        final["outside"] = dict(client.outside)
        extra["final_t"] = round(time.monotonic() - t0, 3)
        for cap in caps.values():
            cap.stop()
        _w, nas = _nas_writes(ctl["nas"])
        try:
            with ControlClient(ctl["nas"]) as nc:
                nc.call("shutdown")
        except ControlError:
            pass
        procs["nas"].stop()
        ver = client.verify()
        text = report_text(wd, final, client, sysrq, stopped)
        if print_watchdog and wd.outcome in ("deadlock", "unfinished"):
            print(text, file=sys.stderr, flush=True)
        with open(os.path.join(out, "watchdog.txt" if not pcap_prefix else f"watchdog-{pcap_prefix.rstrip('-')}.txt"), "w") as f:
            f.write(text + "\n")
        rep.write_json(os.path.join(guest_dir, "final_snapshot.json"), final)
        v = proc_view(final)
        vm = v["alloc"]["vmstat"]
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
                    "drop_reasons": {}, "nfs": {"rpc_calls": rpc.get("calls"), "rpc_retrans": rpc.get("retrans")},
                    "console": dict(client.console.counts)}
        lows = [s["free"] for s in timeline if s.get("free") is not None]
        return {
            "name": sc.name, "client": "linux", "outcome": wd.outcome, "seed": sc.seed, "expect": sc.expect,
            "time_to_stall_s": wd.time_to_stall_s, "time_to_recover_s": wd.time_to_recover_s,
            "pages_written": vm.get("pswpout", 0), "pages_verified": verified,
            "pages_lost": None if verified is None else (ver.get("pages") or 0) - verified,
            "reserve_low_pages": min(lows) if lows else None, "rpc_retrans": rpc.get("retrans"),
            "preflight": [ch.to_json() for ch in checks], "counters": counters, "watchdog": text,
            "evidence": wd.evidence, "decided_at_s": wd.decided_at, "verification": ver,
            "nas": nas, "nas_clean": nas_clean(nas), "guest": {k: v for k, v in info.items() if k != "argv"},
            "guest_steps": {k: e.get("line") for k, e in client.steps.items()}, "guest_stop": stopped,
            "parameters": sc.to_dict(), "run_name": name, "consumer": sc.consumer, "policy": sc.policy,
            "beyond_linux": False, "workload_pages": pages,
            "pcaps": {h: cap.path for h, cap in caps.items()}, **extra, "_timeline": timeline,
        }
    except (ControlError, ProcessStartError, TimeoutError, LinuxVmError) as e:
        raise RunError(f"scenario {sc.name}: {e}") from None
    finally:
        if client is not None:
            try:
                client.stop(kill=True)
            except Exception:  # noqa: BLE001 -- teardown goes on
                pass
        for cap in caps.values():
            try:
                cap.stop()
            except Exception:  # noqa: BLE001
                pass
        for pr in procs.values():
            try:
                pr.stop()
            except Exception:  # noqa: BLE001
                pass
        try:
            rep.copy_logs(st.dir, out, logs_dir)
        except OSError as e:
            say(f"could not copy logs: {e}")
        if data_dir and os.path.isdir(data_dir):
            shutil.rmtree(data_dir, ignore_errors=True)
        lifecycle.down(name)
