"""The real-packet scenario runner: namespaces, NAS, client agent, flood, swap workload, watchdog.

Invariants owned here:
- Everything a run creates is recorded by netns_setup (namespaces, processes) under a unique run
  name and removed in ``finally`` (lifecycle.down), whatever happened; logs and pcaps are copied
  into the report directory first.
- The client agent runs alone on CPU 0, every other process of the run on CPU 1 (when the machine
  has two), so the flood and the NAS compete with each other, not with the host under study.
- The nas and noise hosts get a permanent neighbour entry for the client: an agent whose memory is
  exhausted cannot answer ARP, and a kernel peer that lost the client's MAC would stop sending --
  a second, unrelated way to stall that would hide the one under study.
- The rig (testbed/rig.py) starts everything, with the placement the benchmarks use too; the
  runner reads the client only through the client interface (testbed/clients/: ``snapshot``
  every SAMPLE_S, ``workload_map`` at the end) and the pcaps; the outcome comes from
  testbed.watchdog's rules on those samples alone.
- After the run, every slot the NAS acknowledged durably (``swap_map``) is read back by the kernel-
  socket reference client and compared with the agent's page content function.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from client_agent.phy.afpacket import softnet_drops
from netns_setup.nsutil import add_permanent_neighbours
from testbed import report as rep
from testbed import scenario as scn
from testbed.watchdog import (Watchdog, hung_task_report, nfs_view, retrans_text, retransmissions, task_crashes,
                              writeback_view)

SAMPLE_S = 0.2
NOISE_PORT_BASE = 9001
NOISE_TCP_PORT_BASE = 9201      # the stream sinks of TCP noise (scenario noise_tcp_streams)
NFS_PORT = 2049
EXPORT = "swap"
IMAGE = "swap.img"
AOE_IMAGE = "aoe.img"     # storage = "aoe" (docs/aoe.md): the AoE device's image, beside swap.img
FILE_IMAGE = "file.img"   # file-backed consumers (docs/file-backed.md): beside swap.img, sized alike
# The image: one 4 KiB slot per workload page, + 25% + 4 MiB, so the swap device never fills
# before the workload does (a full device would stall pswpout for a reason that is not the deadlock).
IMAGE_MARGIN = 1.25
IMAGE_EXTRA_MIB = 4
PROGRESS_EVERY_S = 2.0  # non-TTY progress lines


class RunError(Exception):
    """A run that could not be carried out (a service did not start or refused an op): one line."""


# ------------------------------------------------------------------ helpers run inside namespaces
def _verify_slots(nas_ip: str, acked: dict, seed: int, page_size: int, timeout_s: float = 1.0,
                  image: str | None = None, content: str = "swap", export: str | None = None) -> dict:
    """Read back every acked slot over kernel sockets and compare with page_bytes(), or for a file
    consumer (``content`` "file", image file.img) with file_page_bytes(seed, index, generation).
    ``export``: another NAS's export path -- then over TCP, NFS and MOUNT ports from its portmapper
    (nas-server: UDP, MOUNT on the NFS port, export "swap")."""
    from nas_server.refclient import RefClient, portmap_ports
    try:
        if content == "file":
            from client_agent.mm.filemap import file_page_bytes as page_bytes
        else:
            from client_agent.mm.anon import page_bytes
    except ImportError:
        return {"verified": None, "mismatched": [], "read_errors": [],
                "note": f"no page content function for {content!r}: slots read back but not compared"}
    image = image or IMAGE
    if export is None:
        rc = RefClient(nas_ip, NFS_PORT, "udp", timeout_s=timeout_s)
    else:
        nfs_port, mount_port = portmap_ports(nas_ip, "tcp", timeout_s)
        rc = RefClient(nas_ip, nfs_port, "tcp", timeout_s=timeout_s, mount_port=mount_port)
    with rc:
        root = rc.mount(export or "/" + EXPORT)
        fh, _ = rc.lookup(root, image)
        return _compare_slots(acked, lambda off, n: rc.read(fh, off, n), seed, page_size, page_bytes)


def _compare_slots(acked: dict, read, seed: int, page_size: int, page_bytes) -> dict:
    """Read runs of up to 8 consecutive acked slots with ``read(offset, length)`` and compare each
    page with ``page_bytes(seed, page_id, generation)``; a read error is recorded per run."""
    slots = sorted((int(s), int(v[0]), int(v[1])) for s, v in acked.items())
    verified, mismatched, errors = 0, [], []
    i = 0
    while i < len(slots):
        j = i + 1
        while j < len(slots) and j - i < 8 and slots[j][0] == slots[j - 1][0] + 1:
            j += 1
        first = slots[i][0]
        try:
            data = read(first * page_size, (j - i) * page_size)
        except Exception as e:  # noqa: BLE001 -- recorded per slot, the run goes on
            errors.append(f"slot {first}: {e}")
            i = j
            continue
        for k in range(i, j):
            slot, pid, gen = slots[k]
            off = (slot - first) * page_size
            if data[off:off + page_size] == page_bytes(seed, pid, gen):
                verified += 1
            elif len(mismatched) < 32:
                mismatched.append({"slot": slot, "page_id": pid, "generation": gen})
        i = j
    return {"verified": verified, "mismatched": mismatched, "read_errors": errors[:32]}


def _verify_block(storage: str, nas_ip: str, acked: dict, seed: int, page_size: int, device: dict,
                  sock_timeout_s: float = 20.0) -> dict:
    """Read every acked slot back through a client that is not the agent: nas_server.blockrefclient
    (the protocol's state machine on kernel sockets) from the device's target (NBD export or
    iSCSI target + LUN of the device spec), 8 consecutive slots per request, and compare with
    page_bytes()."""
    from client_agent.mm.anon import page_bytes
    from nas_server.blockrefclient import IscsiRefClient, NbdRefClient
    if storage == "nbd":
        c = NbdRefClient(nas_ip, device["port"], device["export"].encode(), structured=False,
                         timeout_s=sock_timeout_s)
        read = c.read
    else:
        c = IscsiRefClient(nas_ip, device["port"], device["target"], lun=device.get("lun", 0),
                           timeout_s=sock_timeout_s)
        bs = c.capacity()[1]
        read = lambda off, n: c.read(off // bs, n // bs, block_bytes=bs)  # noqa: E731
    try:
        out = _compare_slots(acked, read, seed, page_size, page_bytes)
    finally:
        if storage == "nbd":
            c.close()
        else:
            c.logout()
    return {**out, "reader": f"nas_server.blockrefclient over {storage}"}


BLOCK_STORAGES = ("nbd", "iscsi")      # block devices over TCP (docs/block.md)
BLOCK_VIEW_KEYS = {
    "nbd": ("NBD_CMD_WRITE", "NBD_CMD_FLAG_FUA", "NBD_CMD_FLUSH", "NBD_CMD_READ", "via"),
    "iscsi": ("scsicmd_pdus", "scsirsp_pdus", "dataout_pdus", "r2t_pdus", "datain_pdus", "noptx_pdus",
              "noprx_pdus", "timeout_err", "WRITE_10"),
}
BLOCK_COMMON_KEYS = ("connect_count", "reconnects", "requests_requeued", "request_timeouts", "protocol_errors")


def block_view(snap: dict, storage: str) -> dict:
    """The block device's counters from an agent snapshot's swap device (``snap["swap"]`` merges
    the backend's snapshot): the protocol's own names plus the reconnect/requeue figures."""
    sw = snap.get("swap") or {}
    return {k: sw.get(k) for k in BLOCK_VIEW_KEYS.get(storage, ()) + BLOCK_COMMON_KEYS if k in sw}


def verify_image(path: str, acked: dict, seed: int, page_size: int) -> dict:
    """Read every acked slot of an AoE swap area straight from its image file (independently of
    AoE, after the target stopped) and compare with page_bytes()."""
    from client_agent.mm.anon import page_bytes
    verified, mismatched = 0, []
    with open(path, "rb") as f:
        for s, (pid, gen) in sorted((int(s), v) for s, v in acked.items()):
            f.seek(s * page_size)
            if f.read(page_size) == page_bytes(seed, int(pid), int(gen)):
                verified += 1
            elif len(mismatched) < 32:
                mismatched.append({"slot": s, "page_id": pid, "generation": gen})
    return {"verified": verified, "mismatched": mismatched, "read_errors": [],
            "method": f"read from the image file {os.path.basename(path)} after the target stopped"}


def aoe_counters(snap: dict) -> dict:
    """The AoE figures of an agent snapshot: the area's driver view (aoe_* counters as the Linux
    driver names them), responses dropped at the protocol filter, their fates by name."""
    from collections import Counter
    c = snap.get("stack", {}).get("counters", {})
    sw = snap.get("swap") or {}
    return {"rx_pfmemalloc_proto_drop": c.get("rx_pfmemalloc_proto_drop", 0),
            "aoe_rsp_fates": dict(Counter(f for _t, f in snap.get("aoe_rsp_fates") or ())),
            "device": {k: sw.get(k) for k in ("device", "state", "policy", "memalloc", "flush", "payload", "rttavg",
                                          "rttdev", "rto_us", "kicked", "counters", "drops", "aoenet", "target")
                       if k in sw}}


def aoe_explain(pcap: str, final: dict, hosts: dict, t0_wall: float | None) -> dict | None:
    from testbed.explain import aoe_responses, explain_aoe
    try:
        rsp = aoe_responses(pcap, hosts["nas"].mac, hosts["client"].mac)
    except OSError:
        return None
    return explain_aoe(rsp, final, t0_wall=t0_wall or 0.0)


# ------------------------------------------------------------------ pcap: NAS replies by xid
def nfs_reply_xids(pcap_path: str, nas_ip: str, client_ip: str, port: int = NFS_PORT) -> list[int]:
    """xids of ONC RPC replies from nas_ip:port to client_ip in a classic pcap (Ethernet), fragments
    reassembled (testbed.explain's struct reader: scapy costs ~200 us a frame, the pcap holds the flood)."""
    from testbed.explain import nfs_replies
    try:
        return [r["xid"] for r in nfs_replies(pcap_path, nas_ip, client_ip, port)]
    except OSError:
        return []


# ------------------------------------------------------------------ timeline sample
def compact(t: float, s: dict) -> dict:
    a = s.get("alloc", {})
    z, vm, res = a.get("zoneinfo", {}), a.get("vmstat", {}), a.get("reserve", {})
    st = s.get("stack", {})
    c = st.get("counters", {})
    nfs, wl, sw = nfs_view(s), s.get("workload", {}), s.get("swap", {})
    return {
        "t": round(t, 3), "agent_time_s": s.get("time_s"),
        "free": z.get("free"), "min": z.get("min"), "low": z.get("low"), "high": z.get("high"),
        "atomic_floor": res.get("atomic_floor"), "reserve_in_use": res.get("reserve_in_use"),
        "nr_free_lowwater": res.get("nr_free_lowwater"), "kswapd_wanted": a.get("kswapd", {}).get("wanted"),
        **{k: vm.get(k, 0) for k in ("pswpout", "pgscan_kswapd", "pgsteal_kswapd", "nr_writeback",
                                     "nr_anon_pages", "pgscan_direct_throttle", "allocstall")},
        "rx_packets": c.get("rx_packets"), "rx_nobuf": c.get("rx_nobuf", 0),
        "PFMemallocDrop": c.get("PFMemallocDrop", 0), "rx_pfmemalloc": c.get("rx_pfmemalloc", 0),
        "drop_reasons": st.get("drop_reasons", {}),
        "rpc_calls": nfs.get("rpc_calls"), "rpc_retrans": nfs.get("rpc_retrans"),
        "retransmissions": retransmissions(s),
        "rpc_replies": nfs.get("rpc_replies"), "not_responding": nfs.get("not_responding"),
        "workload_allocated": wl.get("allocated"), "workload_done": wl.get("done"),
        "swap_acked": sw.get("acked"), "tp_drops": s.get("device", {}).get("tp_drops", 0),
        "nfs_sock_drops": ((s.get("nfs") or s.get("file_nfs") or {}).get("socket") or {}).get("drops", 0),
        "nfs_memalloc": ((s.get("nfs") or s.get("file_nfs") or {}).get("socket") or {}).get("memalloc"),
        "reserve_in_use_max": res.get("reserve_in_use_max"),
        "loop_lag_max_s": s.get("loop", {}).get("lag_max_s"), "valid": s.get("valid"),
        **_file_sample(s, vm),
    }


def _file_sample(s: dict, vm: dict) -> dict:
    """A file consumer's sample (docs/file-backed.md): its progress is nr_written, not pswpout."""
    fm = s.get("filemap")
    if not fm:
        return {}
    wl = fm.get("workload") or {}
    return {"nr_written": vm.get("nr_written", 0), "nr_dirty": fm.get("nr_dirty"),
            "file_writeback": fm.get("nr_writeback"), "nr_file_pages": fm.get("nr_file_pages"),
            "file_acked": fm.get("acked"), "throttled_writers": len(fm.get("throttled_writers") or []),
            "nr_dirty_threshold": fm.get("nr_dirty_threshold"),
            "workload_allocated": wl.get("allocated"), "workload_done": wl.get("done")}


class Progress:
    def __init__(self, stream=sys.stderr, prefix: str = ""):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = -PROGRESS_EVERY_S
        self.prefix = prefix

    def show(self, t: float, c: dict, force: bool = False) -> None:
        line = (f"{self.prefix}t={t:5.1f}s free {c['free']} (min {c['min']} low {c['low']} high {c['high']} floor {c['atomic_floor']}) "
                f"{'nr_written ' + str(c['nr_written']) if 'nr_written' in c else 'pswpout ' + str(c['pswpout'])} {'rx_nobuf ' + str(c['rx_nobuf']) + ' ' if c.get('rx_nobuf') is not None else ''}PFMemallocDrop {c['PFMemallocDrop']} "
                f"{retrans_text(c)} workload {c['workload_allocated']}")
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
        elif (force and t != self.last) or t - self.last >= PROGRESS_EVERY_S:
            self.last = t
            print(line, file=self.stream, flush=True)

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------ the run
def _tcp_noise_summary(log_path: str) -> dict | None:
    """The senders' own summary line (testbed/tcp_noise.py), None if it is not in their log."""
    try:
        with open(log_path) as f:
            for line in f:
                if line.startswith('{"tcp_noise_summary"'):
                    return json.loads(line)["tcp_noise_summary"]
    except (OSError, ValueError):
        pass
    return None


def run_scenario(sc: scn.Scenario, checks: list, out: str, *, log=None, pcap_dir: str | None = None,
                 pcap_prefix: str = "", logs_dir: str | None = None, progress_prefix: str = "",
                 print_watchdog: bool = True, export_networks: str | None = None, during=None) -> dict:
    """Run one scenario on real packets; write the report into ``out``; return its entry.

    ``testbed run`` keeps the defaults (out/pcap/<host>.pcap, out/logs/); ``testbed demo`` runs four
    scenarios into one report: pcaps as <pcap_dir>/<scenario>-<host>.pcap, logs in a per-scenario dir.

    ``export_networks``: the NAS's export ACL (default 198.18.0.0/24, the whole test net; the hostile
    runs restrict it to the client's and the NAS's own /32; slots are then read back from the NAS host).
    ``during(ctx)``: called at every sample once the workload
    started (testbed chaos/hostile): ctx has ``t``, ``snapshot`` (the agent's, at t), ``st``, ``procs``, ``ctl``, ``hosts``,
    ``restart_nas()`` (SIGKILL + restart on the same data dir) and ``record`` (a dict kept in the entry);
    setting ``ctx["hold"]`` keeps the run sampling past the watchdog's decision until it is cleared
    (or max_duration_s), the outcome staying the one decided.
    """
    if getattr(sc, "client", "agent") == "linux":       # a real kernel in a QEMU VM (testbed.linux_vm)
        from testbed.linux_vm.run import run_linux
        return run_linux(sc, checks, out, log=log, pcap_dir=pcap_dir, pcap_prefix=pcap_prefix, logs_dir=logs_dir,
                         progress_prefix=progress_prefix, print_watchdog=print_watchdog,
                         export_networks=export_networks, during=during)
    from netns_setup.control import ControlClient, ControlError
    from netns_setup.process import ProcessStartError, run_in_netns
    from netns_setup.topology import default_topology
    from testbed.clients import ClientError
    from testbed.rig import Rig, RigError

    say = log or (lambda m: print(f"testbed run: {m}", file=sys.stderr, flush=True))
    aoe = getattr(sc, "storage", "nfs") == "aoe"
    topo = default_topology()
    hosts = {h.name: h for h in topo.hosts}
    nas_ip, cli_ip, noise_ip = (str(hosts[n].address.ip) for n in ("nas", "client", "noise"))
    name = "r" + uuid.uuid4().hex[:6]
    ports = list(range(NOISE_PORT_BASE, NOISE_PORT_BASE + sc.noise_sockets))
    image_mib = int(sc.workload_pages * 4096 * IMAGE_MARGIN) // (1 << 20) + IMAGE_EXTRA_MIB
    consumer = getattr(sc, "consumer", "swap")
    file_consumer = consumer != "swap"
    beyond_linux = file_consumer and getattr(sc, "policy", "linux") == "extended"
    storage = getattr(sc, "storage", "nfs")
    third_party = None if getattr(sc, "target", "nas-server") == "nas-server" else sc.target

    agent = None
    timeline: list[dict] = []
    wd = Watchdog(sc.stall_threshold_s)
    entry_extra: dict = {}
    last_snap: dict = {}
    deadlock_snap = None
    missing_xids = None
    rig = None
    try:
        # -- the rig: topology, the NAS (kernel sockets) with its data on tmpfs -- the NAS's speed
        # is the scenario's stated nas_write_latency_ms, not the host disk's fdatasync -- and the
        # permanent neighbour entries for the client on the nas and noise hosts
        images = [(IMAGE, image_mib)] + ([(FILE_IMAGE, image_mib)] if file_consumer else [])
        if aoe:
            # docs/aoe.md: the AoE device on aoe.img, a small NFS swap area (swap.img) beside it
            images = [(AOE_IMAGE, image_mib)] + ([(IMAGE, f"{sc.nfs_swap_pages * 4}K")] if sc.nfs_swap_pages else [])
        rig = Rig(topo, "r", name=name, images=images, nas_on_tmpfs=True,
                  nas_write_latency_ms=sc.nas_write_latency_ms,
                  export_networks=export_networks or "198.18.0.0/24", say=say,
                  block_targets=(storage,) if storage in BLOCK_STORAGES and third_party is None else (),
                  aoe={"image": AOE_IMAGE, "shelf": sc.aoe_shelf, "slot": sc.aoe_slot, "target": sc.aoe_target,
                       "service_ms": sc.aoe_service_ms, "bufcnt": sc.aoe_bufcnt} if aoe else None,
                  nas_command=getattr(sc, "nas_command", "") or None)
        other_nas = rig.nas_command is not None
        nas_export = (getattr(sc, "nas_export", "") or rig.nas_export_dir) if other_nas else None
        st = rig.st
        say(f"topology {name} up (run dir {st.dir}); scenario {sc.name}, expect {sc.expect}, seed {sc.seed}")
        ctl = {"nas": rig.control_path("nas"), "agent": rig.control_path("agent-client"),
               "flood": rig.control_path("flood")}
        # -- captures on every host's NIC (client, nas, noise)
        for h in ("client", "nas", "noise"):
            rig.capture(h, os.path.join(pcap_dir or os.path.join(out, "pcap"), f"{pcap_prefix}{h}.pcap"))
        caps = rig.caps
        # -- the client agent, alone on CPU 0
        if sc.client_faults and {"tso", "ufo"} & {o.strip() for o in sc.offloads.split(",")}:
            say("note: client_faults act per wire frame, so the agent runs without tso/ufo "
                "(the snapshot's nic.offloads says what it ran with)")
        agent = rig.start_agent(
            "client", pool_pages=sc.pool_pages, min_free_kbytes=sc.min_free_kbytes, budget=sc.budget,
            seed=sc.seed, ctl_timeout_s=10.0,
            extra=["--watermark-scale-factor", str(sc.watermark_scale_factor)]
                  + (["--fault", sc.client_faults] if sc.client_faults else [])
                  + (["--nic", sc.nic] if sc.nic else [])
                  + (["--offload", sc.offloads] if sc.offloads else []))
        agent.sinks(ports, sc.noise_reader, sc.noise_rcvbuf_bytes)
        tcp_ports = list(range(NOISE_TCP_PORT_BASE, NOISE_TCP_PORT_BASE + getattr(sc, "noise_tcp_streams", 0)))
        for p in tcp_ports:
            agent.call("sink", kind="tcp", port=p, reader=sc.noise_reader,
                       rcvbuf=sc.noise_tcp_rcvbuf_bytes or None)
        # nas-server: its one-port layout (no portmap); another NAS: both ports from its portmapper
        device = {"kind": "nfs", "server": nas_ip, "port": None if other_nas else NFS_PORT,
                  "export": nas_export or EXPORT,
                  "image": FILE_IMAGE if file_consumer else IMAGE, "slots": sc.slots, "wsize": sc.wsize,
                  "timeo_s": sc.timeo_s, "timeo_max_s": sc.timeo_max_s, "retrans": sc.retrans,
                  "stable": sc.stable, "proto": sc.transport, "mount_port": None if other_nas else NFS_PORT}
        if storage in BLOCK_STORAGES:
            from testbed.nas_block import block_device_spec
            device = block_device_spec(storage, nas_ip, EXPORT, IMAGE, queue_depth=sc.slots)
            if third_party is not None:
                # the same image file served by nbdkit / qemu-nbd / tgtd instead of nas-server
                device.update(rig.start_block_target(third_party, IMAGE, latency_ms=sc.nas_write_latency_ms))
                say(f"{third_party} serves {EXPORT}/{IMAGE}: {rep.kv_text(device)}")
        # file consumers: a swapless client with one file on its own transport; the policy marks
        # it or not
        if aoe:
            # the AoE area first (priority -1: kswapd's first choice), then the marked NFS area
            # (priority -2), as testbed/sim.py composes them
            sw = agent.attach("swap", {"kind": "aoe", "shelf": sc.aoe_shelf, "slot": sc.aoe_slot,
                                       "policy": sc.policy}, memalloc=sc.memalloc)
            if sc.nfs_swap_pages:
                entry_extra["nfs_swapon"] = agent.call("swapon", device=device, memalloc=True)
                say(f"swapon (NFS, beside the AoE area): {rep.kv_text(entry_extra['nfs_swapon'])}")
        else:
            sw = agent.attach(consumer, device, memalloc=sc.memalloc, policy=getattr(sc, "policy", "linux"),
                              dirty_ratio=sc.dirty_ratio, dirty_background_ratio=sc.dirty_background_ratio)
        say(f"{'fileon' if file_consumer else 'swapon'}: {rep.kv_text(sw)}")
        agent.set("pfmemalloc_demux_drop", sc.pfmemalloc_demux_drop)

        def procs_view() -> dict:
            return {"nas": rig.procs["nas"], "agent": rig.procs["agent:client"],
                    **({"flood": rig.procs["flood"]} if "flood" in rig.procs else {})}
        # -- the flood from noise, toward the noise ports
        port_spec = f"{ports[0]}-{ports[-1]}" if ports else "9001"
        if getattr(sc, "flood_command", ""):
            rig.start_flood_command(sc.flood_command, cli_ip, port_spec, sc.flood_pps, size=sc.flood_size)
            say(f"flood_command in noise: {sc.flood_command!r} (DST={cli_ip} PORTS={port_spec} "
                f"RATE_PPS={sc.flood_pps} SIZE={sc.flood_size})")
        else:
            rig.start_flood(cli_ip, port_spec, sc.flood_pps, size=sc.flood_size, seed=sc.seed)
        if tcp_ports:
            rig.start_tcp_noise(cli_ip, tcp_ports, sc.noise_tcp_rate_kbps, seed=sc.seed)
            say(f"TCP noise: {len(tcp_ports)} kernel stream(s) from noise at {sc.noise_tcp_rate_kbps} kB/s each "
                f"into ports {tcp_ports[0]}-{tcp_ports[-1]}")
        softnet0 = softnet_drops()
        agent.start_workload(consumer, sc.workload_pages, sc.seed, sc.workload_rate_pps)
        # -- sample, watch
        t0 = time.monotonic()
        entry_extra["t0_wall"] = time.time()  # runner t=0 on the pcaps' (wall) clock
        prog = Progress(prefix=progress_prefix)
        dctx = {"t": 0.0, "st": st, "procs": procs_view(), "ctl": ctl, "hosts": hosts,
                "restart_nas": rig.restart_nas, "record": {}}
        nxt = t0
        decided = False
        while True:
            nxt += SAMPLE_S
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            t = time.monotonic() - t0
            s = agent.snapshot(traces=False)            # the xid/fate records only at the end
            last_snap = s
            c = compact(t, s)
            sn = softnet_drops() - softnet0
            c["softnet_dropped"] = sn
            timeline.append(c)
            prog.show(t, c)
            extra = [f"softnet_stat: the kernel dropped {sn} frames at a backlog"] if sn else []
            if during is not None:
                dctx["t"], dctx["snapshot"], dctx["procs"] = t, s, procs_view()
                during(dctx)
            if not decided and wd.feed(t, s, extra):
                decided = True
            # a ``during`` hook may hold the run open past the watchdog's decision (``ctx["hold"]``:
            # e.g. a hostile sender still sending); the outcome stays the one decided
            if decided and not dctx.get("hold"):
                break
            if t >= sc.max_duration_s:
                if not decided:
                    wd.finish()
                break
        prog.show(t, timeline[-1], force=True)
        prog.end()
        if wd.outcome == "deadlock":
            deadlock_snap = agent.snapshot(traces=True)  # with the xid and frame-fate records
        say(f"outcome {wd.outcome} at t={wd.decided_at:.1f}s: {'; '.join(wd.reasons)}")
        # -- stop the flood, get the swap map, stop the agent
        if rig.flood_command:
            entry_extra["flood"] = {"command": rig.flood_command, "exited": rig.procs["flood"].poll()}
        else:
            try:
                with ControlClient(ctl["flood"]) as fc:
                    entry_extra["flood"] = fc.call("shutdown")
            except ControlError as e:
                entry_extra["flood"] = {"error": str(e)}
        rig.stop("flood")
        if tcp_ports:
            held = {k: v for k, v in (deadlock_snap or last_snap).get("services", {}).items() if k.startswith("tcp:")}
            log = rig.procs["tcp-noise"].log_path
            rig.stop("tcp-noise")
            entry_extra["tcp_noise"] = {"sinks": held, "senders": _tcp_noise_summary(log)}
            for k, v in held.items():
                m = v.get("held_max", {})
                say(f"TCP noise {k}: read {v.get('bytes', 0)} B; held at most skmem r {m.get('rmem_alloc', 0)} B, "
                    f"{m.get('receive_queue_pages', 0)} receive-queue + {m.get('ofo_queue_pages', 0)} OFO pages, "
                    f"zero window {'yes' if m.get('zero_window') else 'no'}; now {v.get('held')}")
        final = agent.snapshot(traces=True)
        entry_extra["final_t"] = round(time.monotonic() - t0, 3)
        swap_map = agent.workload_map()
        nfs_swap_map = agent.call("swap_map", device=entry_extra["nfs_swapon"]["device"]) \
            if "nfs_swapon" in entry_extra else None
        entry_extra["agent_shutdown"] = agent.stop()
        rig.stop("agent:client")
        for cap in caps.values():
            cap.stop()
        # -- NAS replies the client's wire saw but the NFS socket never received
        nfs = (deadlock_snap or final).get("nfs") or (deadlock_snap or final).get("file_nfs") or {}
        if "xids_replied" in nfs:
            sent, replied = set(nfs.get("xids_sent", [])), set(nfs["xids_replied"])
            wire = nfs_reply_xids(caps["client"].path, nas_ip, cli_ip)
            missing_xids = sorted({x for x in wire if x in sent and x not in replied})
            entry_extra["wire_replies"] = len(wire)
        # -- read every acked slot back over kernel sockets. The run is over: the NAS's stated service
        # time per call (nas_write_latency_ms) would only make ~1300 sequential READs take 20 s
        try:
            if not other_nas:
                with ControlClient(ctl["nas"]) as nc:
                    nc.call("set", key="write_latency_ms", value=0)
        except ControlError:
            pass
        t_ver = time.monotonic()
        acked = swap_map.get("acked", {})
        # read back from noise; with a restricted export (hostile runs keep noise outside it) from the
        # NAS host itself, whose own address the caller includes in export_networks
        reader_ns = st.host_netns("noise" if export_networks is None else "nas")
        if storage in BLOCK_STORAGES:
            ver = run_in_netns(reader_ns, _verify_block, storage, nas_ip, acked, swap_map.get("seed", sc.seed),
                               swap_map.get("page_size", 4096), device, timeout_s=max(60.0, len(acked) / 200))
        elif not aoe:
            ver = run_in_netns(reader_ns, _verify_slots, nas_ip, acked,
                               swap_map.get("seed", sc.seed), swap_map.get("page_size", 4096),
                               timeout_s=max(60.0, len(acked) / 200), image=FILE_IMAGE if file_consumer else IMAGE,
                               content="file" if file_consumer else "swap", export=nas_export)
        elif nfs_swap_map is not None:
            nacked = nfs_swap_map.get("acked", {})
            nver = run_in_netns(reader_ns, _verify_slots, nas_ip,
                                nacked, nfs_swap_map.get("seed", sc.seed), nfs_swap_map.get("page_size", 4096),
                                timeout_s=60.0, image=IMAGE)
            entry_extra["nfs_swap"] = {"pages_written": len(nacked), "pages_verified": nver.get("verified"),
                                       "verification": nver}
        if other_nas:
            entry_extra["nas"] = {"command": rig.nas_command, "export": nas_export,
                                  "ports_from_portmap": {"nfs": rig.nas_ports[0], "mount": rig.nas_ports[1]}}
        else:
            with ControlClient(ctl["nas"]) as nc:
                entry_extra["nas"] = nc.call("snapshot")
                try:
                    nc.call("shutdown")
                except ControlError:
                    pass
        rig.stop("nas")
        if aoe:
            # the AoE target is down (nas-server or vblade): read its image file, not the protocol
            aoe_view = {"aoe_target": sc.aoe_target}
            if "vblade" in rig.procs:
                aoe_view["vblade_argv"] = rig.procs["vblade"].record["argv"]
                rig.stop("vblade")
            else:
                aoe_view["target"] = (entry_extra["nas"].get("aoe") or {})
            ver = verify_image(rig.aoe_image_path, acked, swap_map.get("seed", sc.seed), swap_map.get("page_size", 4096))
            aoe_view.update(aoe_counters(final))
            entry_extra["aoe"] = aoe_view
            ex = aoe_explain(caps["client"].path, final, rig.hosts, entry_extra.get("t0_wall"))
            if ex is not None:
                rep.write_json(os.path.join(out, "aoe_explanations.json"), ex)
                from testbed.explain import aoe_text_table
                with open(os.path.join(out, "aoe_explanations.txt"), "w") as f:
                    f.write(aoe_text_table(sc.name, ex))
                entry_extra["explanations"] = {k: v for k, v in ex.items() if k != "rows"}
        ver["wall_s"] = round(time.monotonic() - t_ver, 2)
        wnote = None if missing_xids is not None else \
            "NAS replies by xid: snapshot()['nfs'] has no xids_replied (agent predates the contract field)"
        text = "\n".join([f"outcome: {wd.outcome} ({'; '.join(wd.reasons)})", "evidence used:",
                          *[f"  {ev}" for ev in wd.evidence],
                          hung_task_report(deadlock_snap or final, sc.stall_threshold_s, missing_xids, wnote)])
        if print_watchdog and wd.outcome in ("deadlock", "unfinished", "testbed_bug"):
            print(text, file=sys.stderr, flush=True)
        rep.write_json(os.path.join(out, "final_snapshot.json"), final)
        with open(os.path.join(out, "watchdog.txt"), "w") as f:
            f.write(text + "\n")
        if deadlock_snap is not None:
            rep.write_json(os.path.join(out, "deadlock_snapshot.json"), deadlock_snap)
        written = len(acked)
        verified = ver.get("verified")
        c = final.get("stack", {}).get("counters", {})
        counters = {"PFMemallocDrop": c.get("PFMemallocDrop", 0), "rx_nobuf": c.get("rx_nobuf", 0),
                    "rx_pfmemalloc": c.get("rx_pfmemalloc", 0), "rx_packets": c.get("rx_packets", 0),
                    **final.get("alloc", {}).get("vmstat", {}),
                    "drop_reasons": final.get("stack", {}).get("drop_reasons", {}),
                    "nfs": {k: v for k, v in nfs_view(final).items() if not k.startswith("xids_") and k != "counters"},
                    "tp_drops": final.get("device", {}).get("tp_drops", 0),
                    "softnet_dropped": timeline[-1].get("softnet_dropped", 0) if timeline else 0}
        if file_consumer and final.get("filemap"):
            counters["filemap"] = {k: v for k, v in final["filemap"].items() if k != "workload"}
        # short writes, JUKEBOX delays, garbage replies, write errors by name (issue 12 kind A)
        counters["nfs_writeback"] = writeback_view(final)
        if storage in BLOCK_STORAGES:
            # the block device's counters as the protocol's tools name them (nbd: NBD_CMD_*;
            # iscsi: struct iscsi_stats, SCSI opcodes), from the swap device's snapshot
            counters[storage] = block_view(final, storage)
        return {
            "name": sc.name, "outcome": wd.outcome, "seed": sc.seed, "expect": sc.expect,
            "time_to_stall_s": wd.time_to_stall_s, "time_to_recover_s": wd.time_to_recover_s,
            "pages_written": written, "pages_verified": verified,
            "pages_lost": None if verified is None else written - verified,
            "reserve_low_pages": wd.reserve_low_pages,
            "rpc_retrans": nfs_view(final).get("rpc_retrans"), "retransmissions": retransmissions(final),
            "preflight": [ch.to_json() for ch in checks], "counters": counters, "watchdog": text,
            "decided_at_s": wd.decided_at, "evidence": wd.evidence, "missing_reply_xids": missing_xids, "verification": ver,
            "parameters": sc.to_dict(), "run_name": name, ("fileon" if file_consumer else "swapon"): sw,
            "consumer": consumer, "policy": getattr(sc, "policy", "linux"), "storage": storage,
            "target": getattr(sc, "target", "nas-server"),
            # extended policy: file writeback's transport SOCK_MEMALLOC, which Linux does not do;
            # for AoE: the marked target's frames pass skb_pfmemalloc_protocol
            "beyond_linux": beyond_linux or (aoe and sc.policy == "extended"),
            "pcaps": {h: cap.path for h, cap in caps.items()}, **entry_extra,
            **({"during": dctx["record"]} if during is not None else {}),
            # a task of the agent crashed: outcome testbed_bug, the records with their tracebacks
            "task_crashes": task_crashes(final)[1] or wd.crashes,
            "_timeline": timeline,
        }
    except (ControlError, ClientError, RigError, ProcessStartError, TimeoutError) as e:
        raise RunError(f"scenario {sc.name}: {e}") from None
    finally:
        if agent is not None:
            agent.close()
        if rig is not None:
            for cap in rig.caps.values():
                try:
                    cap.stop()
                except Exception:  # noqa: BLE001 -- teardown goes on
                    pass
            for k in list(rig.procs):
                try:
                    rig.procs[k].stop()
                except Exception:  # noqa: BLE001
                    pass
            try:
                rep.copy_logs(rig.st.dir, out, logs_dir)
            except OSError as e:
                say(f"could not copy logs: {e}")
            rig.close()
