"""The client agent: a ``Host`` (host.py) behind a control socket, and the `client-agent` command.

Invariant owned here: every control op is a thin translation of a request into the host's own
calls -- validation errors become ``BadRequest`` with a sentence saying what to do -- and no op
or method is named after a protocol: storage is named by a *device spec* (``{"kind": "nfs",
...}``, host.py ``STORAGE_KINDS``), so a new protocol adds no op.

Control protocol ops (newline-delimited JSON, see netns_setup/control.py): ``snapshot``, ``set``,
``shutdown``; test services ``udp_echo``, ``udp_sink``, ``sink`` (``kind`` udp or tcp), ``hog``, ``hog_free``, ``memalloc``;
swap (docs/swap-contract.md): ``swapon`` (today's NFS arguments -- ``server``,
``port``, ``export``, ``image``, ``slots``, ``wsize``, ``timeo_s``, ``timeo_max_s``,
``retrans``, ``stable`` -- or ``device``: a device spec; ``priority``: a further area beside
those on), ``swapoff``, ``workload``, ``swap_map`` (both take an area's ``device`` index); file-backed consumers (docs/file-backed.md): ``fileon`` (the same two forms),
``file_workload``, ``file_map``. The ops' names and arguments are those of the first releases:
users' setup scripts call them.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import signal
import sys
import time

from netns_setup.control import BadRequest, ControlServer, signal_ready

from .host import STABLE_HOWS, Host, swap_snapshot
from .loop import Loop, MonotonicClock
from .net.core.dev import NAPI_BUDGET
from .phy.caps import device_caps
from .phy.ring import DEFAULT_NIC, NICS

TESTBED_NET = ipaddress.ip_network("198.18.0.0/15")
# The NIC (phy/ring.py DEFAULT_NIC) and its offloads when the command line names none.
# tso/ufo are not defaults: a GSO buffer is one allocation of several pages, so a transmit in
# kswapd's PF_MEMALLOC context dips that much further into the reserve than a one-page frame
# (the no-reserve scenario's "never below the floor" holds for one-page buffers only); a scenario
# (its `offloads` key) or a bench run asks for them (--offload tx,rx,tso,ufo / $CLIENT_AGENT_OFFLOAD).
DEFAULT_OFFLOADS = "tx,rx"
# A run is invalid when the loop was this late for a timer: the agent, not its memory, was the
# bottleneck, and its drops would not be the ones under study.
LAG_INVALID_S = 0.25
# The NFS arguments swapon/fileon took before device specs (kept: setup scripts pass them).
_NFS_ARGS = ("server", "port", "export", "image", "slots", "wsize", "timeo_s", "timeo_max_s",
             "retrans", "stable", "proto", "mount_port")


def _device_spec(req: dict, op: str, image: str) -> dict:
    """The device spec of a swapon/fileon request: ``device`` as given, or today's arguments."""
    if "device" in req:
        dev = req["device"]
        if not isinstance(dev, dict):
            raise BadRequest(f"{op}: device must be an object such as "
                             f'{{"kind": "nfs", "server": "198.18.0.1", "image": "{image}"}}')
        return dict(dev)
    if "server" not in req:
        raise BadRequest(f"{op} needs 'server' (or 'device', a device spec)")
    stable = req.get("stable", "FILE_SYNC")
    if stable not in STABLE_HOWS:
        raise BadRequest(f"stable must be FILE_SYNC, UNSTABLE or DATA_SYNC, got {stable!r}")
    return {"kind": "nfs", "image": image, **{k: req[k] for k in _NFS_ARGS if k in req}}


def _area(spec: dict) -> str:
    """The swap area a device spec names, as its backend's ``describe()`` reads (swapon(2)
    answers EBUSY for an area already on)."""
    if spec.get("kind", "nfs") == "aoe":
        return f"e{spec.get('shelf')}.{spec.get('slot')}"
    return f"{spec.get('server')}:/{spec.get('export', 'swap')}/{spec.get('image')}"


class Agent(Host):
    """A host driven through control ops. ``swap``/``transport``/``filemap``/``file_transport``
    name the last swap device and file mapping and their NFS clients (snapshot keys)."""

    def __init__(self, loop: Loop, dev, **kw) -> None:
        super().__init__(loop, dev, trace_replies=True, **kw)
        self.transport = None
        self.swap = None
        self.filemap = None             # file-backed consumer (fileon), docs/file-backed.md
        self.file_transport = None

    # -- services (op names kept) -----------------------------------------------------------
    def _bad(self, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def memalloc(self, port: int, on: bool = True) -> dict:
        return self._bad(self.set_sock_memalloc, port, on)

    # -- swap (docs/swap-contract.md) ----------------------------------------------------------
    def swapon(self, device: dict, memalloc: bool = True, timeout_s: float = 30.0,
               priority: int | None = None) -> dict:
        """swapon(2) on the device ``device`` describes (a device spec, host.py). Linux allows
        many swap areas: a swapon while one is on adds another (``priority`` as ``swapon -p``;
        default -1, -2, ... in swapon order, so the first is used first). ``self.swap`` stays the
        first active area (the workload's and ``swap_map``'s default); ``self.transport`` is the
        first area's with an NFS client. Returns ``nr_slots``, ``device`` (the area's index in
        swapon order, for ``swap_map``/``swapoff``), ``priority`` (and ``fh`` for NFS)."""
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)
                                     or not -1 <= priority <= 32767):
            raise BadRequest(f"priority must be an integer -1..32767 (swapon -p), got {priority!r}")
        area = _area(device)
        for i, d in enumerate(self.swap_devices):
            if d.active and d.backend is not None and d.backend.describe() == area:
                raise BadRequest(f"swapon: {d.backend.describe()} is already on (device {i}); "
                                 f"swapoff first")
        swap, act = self._bad(self.add_swap, device, memalloc=bool(memalloc), priority=priority)
        task = self.run_task("swapon", act, timeout_s)
        if task.state != "done":
            self.remove_swap(swap)
            raise BadRequest(f"swapon {swap.backend.describe()} did not finish: {task.state} "
                             f"{task.error or ''} (is the NAS up and exporting it?)")
        if self.swap is None or not self.swap.active:
            self.swap = swap
        if self.transport is None and getattr(swap.backend, "transport", None) is not None:
            self.transport = swap.backend.transport
        out = {"nr_slots": task.result, "device": self.swap_devices.index(swap),
               "priority": swap.priority}
        fh = getattr(swap.backend, "fh", None)
        if fh is not None:
            out["fh"] = fh.hex()
        return out

    def _swap_device(self, device):
        if device is None:
            if self.swap is None:
                raise BadRequest("swap is not on")
            return self.swap
        if not isinstance(device, int) or isinstance(device, bool) or not 0 <= device < len(self.swap_devices):
            raise BadRequest(f"device must be a swap area index 0..{len(self.swap_devices) - 1} "
                             f"(swapon's answer), got {device!r}")
        return self.swap_devices[device]

    def swapoff(self, device: int | None = None) -> dict:
        """swapoff one area (``device``, swapon's index) or, without it, every area."""
        if self.swap is None:
            raise BadRequest("swap is not on")
        for d in ([self._swap_device(device)] if device is not None else self.swap_devices):
            d.swapoff()
        return {"memalloc_socks": self.alloc.memalloc_socks}

    def workload(self, pages: int, seed: int | None = None, rate_pps: float = 0) -> dict:
        if self.swap is None:
            raise BadRequest("swapon first: the workload's pages need a swap device")
        if seed is not None:
            self.swap.anon.seed = seed
        self.swap.anon.start_workload(int(pages), float(rate_pps or 0))
        return {"started": True}

    def swap_map(self, device: int | None = None) -> dict:
        """Every durably acknowledged slot of one area (default: the first), with its backend."""
        d = self._swap_device(device)
        return {**d.map_json(), "backend": d.backend.describe() if d.backend is not None else None,
                "kind": getattr(d.backend, "kind", None)}

    # -- file-backed consumers (docs/file-backed.md) -------------------------------------------
    def fileon(self, device: dict, memalloc: bool = False, dirty_ratio: int = 20,
               dirty_background_ratio: int = 10, timeout_s: float = 30.0) -> dict:
        """Map the file ``device`` describes on its own client; ``memalloc`` true = policy
        extended (beyond Linux: the file's transport SOCK_MEMALLOC), false = Linux's policy."""
        if self.filemap is not None and self.filemap.active:
            raise BadRequest("a file is already mounted")
        device = {"xid_seed": self.seed + 1, **device} if device.get("kind", "nfs") == "nfs" else device
        fm, act = self._bad(lambda: self.add_file(
            device, policy="extended" if memalloc else "linux", dirty_ratio=dirty_ratio,
            dirty_background_ratio=dirty_background_ratio))
        self.filemap = fm
        self.file_transport = getattr(fm.backend, "transport", None)
        if self.swap is None:
            # an idle swap device, never swapped on: the snapshot's "swap" and "workload" keep
            # the shape they had for file consumers
            from .mm.swapfile import SwapDevice
            self.swap = SwapDevice(self.alloc, self.sched, seed=self.seed, log=self.log)
        task = self.run_task("fileon", act, timeout_s)
        if task.state != "done":
            raise BadRequest(f"fileon {fm.backend.describe()} did not finish: {task.state} "
                             f"{task.error or ''} (is the NAS up and exporting it?)")
        out = {"nr_pages": task.result}
        fh = getattr(fm.backend, "fh", None)
        if fh is not None:
            out["fh"] = fh.hex()
        out["policy"] = fm.policy
        return out

    def file_workload(self, kind: str, pages: int, seed: int | None = None,
                      rate_pps: float = 0) -> dict:
        if self.filemap is None:
            raise BadRequest("fileon first: the workload's pages need a file")
        if seed is not None:
            self.filemap.seed = seed
            self.filemap.workload["seed"] = seed
        self._bad(self.filemap.start_workload, kind, int(pages), float(rate_pps or 0))
        return {"started": True}

    def file_map(self) -> dict:
        if self.filemap is None:
            raise BadRequest("no file mounted")
        return self.filemap.map_json()

    # -- observation -----------------------------------------------------------------------
    def snapshot(self, traces: bool = True) -> dict:
        """Everything observable. ``traces=False`` leaves out the per-xid and per-frame records
        (tens of thousands of entries): the runner's 0.2 s samples do not need them, and encoding
        them five times a second would cost the agent the very CPU under study."""
        snap = self._snapshot(traces)
        if not traces:
            for k in ("nfs", "file_nfs"):
                if snap.get(k):
                    snap[k] = {f: v for f, v in snap[k].items() if f not in ("xids_sent", "xids_replied")}
        return snap

    def _snapshot(self, traces: bool = True) -> dict:
        dev = self.dev
        if hasattr(dev, "sample_stats"):
            dev.sample_stats()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        loop = self.loop.snapshot()
        dev_counters = dict(getattr(dev, "counters", {}))
        validity = []
        if dev_counters.get("tp_drops", 0):
            validity.append(f"kernel dropped {dev_counters['tp_drops']} frames before the agent read them (tp_drops)")
        if loop.get("lag_max_s", 0) > LAG_INVALID_S:
            validity.append(f"event loop lagged {loop['lag_max_s']:.3f} s (> {LAG_INVALID_S} s)")
        return {
            "time_s": self.loop.time() - self.started_at,
            "device": dev_counters,
            # the NIC kind (--nic) and the offloads the stack honours (a fault injector takes
            # tso/ufo away: it acts per wire frame)
            "nic": {"kind": getattr(getattr(dev, "real", dev), "nic_kind", type(dev).__name__),
                    "offloads": device_caps(dev).names()},
            "stack": self.stack.snapshot(),
            **({"nfs_frame_fates": ([list(f) for f in self.reply_trace.fates]   # [ip_id, xid, fate]
                                    if self.reply_trace is not None else []),
                # every AoE response's fate by tag (drivers/block/aoenet.py AoeRspTrace): [tag, fate]
                "aoe_rsp_fates": ([list(f) for f in self.aoe_trace.fates]
                                  if self.aoe_trace is not None else [])} if traces else {}),
            "alloc": self.alloc.snapshot(),
            "tasks": self.sched.snapshot(),
            # the scheduler's counters (tasks_crashed, ...) and crash records with tracebacks:
            # any crash makes the run a testbed bug (testbed/watchdog.py)
            "sched": self.sched.stats(),
            "services": self.service_stats(),
            "loop": loop,
            "polls": self.polls,
            "rusage": {"utime_s": ru.ru_utime, "stime_s": ru.ru_stime, "maxrss_kb": ru.ru_maxrss},
            "valid": not validity,
            "invalid_reasons": validity,
            "swap": swap_snapshot(self.swap) if self.swap is not None else None,
            "nfs": (self.transport.snapshot() | {"log": self.nfs_log[-64:]})
                   if self.transport is not None else None,
            "filemap": (self.filemap.snapshot() | {"workload": dict(self.filemap.workload)}
                        if self.filemap is not None else None),
            # the file's own transport (fileon): same fields as "nfs"
            "file_nfs": (self.file_transport.snapshot() | {"log": self.nfs_log[-64:]})
                        if self.file_transport is not None else None,
            "workload": ({k: self.swap.workload[k] for k in ("allocated", "target", "done")}
                         if self.swap is not None else None),
            # every swap device (swapon order) and file mapping, whatever their protocol
            "swap_devices": [d.snapshot() for d in self.swap_devices],
            "filemaps": [fm.snapshot() for fm in self.filemaps],
        }

    def set(self, key: str, value) -> dict:
        if key == "pfmemalloc_demux_drop":
            self.stack.policy.pfmemalloc_demux_drop = bool(value)
        elif key == "min_free_kbytes":
            self._bad(lambda: self.alloc.set_watermarks(min_free_kbytes=int(value)))
        elif key == "watermark_scale_factor":
            self._bad(lambda: self.alloc.set_watermarks(watermark_scale_factor=int(value)))
        elif key == "budget":
            if not isinstance(value, int) or value < 1:
                raise BadRequest(f"budget must be a positive integer, got {value!r}")
            self.budget = value
        else:
            raise BadRequest(f"unknown key {key!r}; known: pfmemalloc_demux_drop, min_free_kbytes, "
                             f"watermark_scale_factor, budget")
        return {"key": key, "value": value}

    def handlers(self, on_shutdown) -> dict:
        def need(req, name, kind=None):
            if name not in req:
                raise BadRequest(f"{req['op']} needs {name!r}")
            return req[name]

        def opts(req, *names):
            return {k: req[k] for k in names if k in req}

        return {
            "snapshot": lambda r: self.snapshot(traces=bool(r.get("traces", True))),
            "set": lambda r: self.set(need(r, "key"), need(r, "value")),
            "udp_echo": lambda r: self._bad(self.echo, need(r, "port"), r.get("rcvbuf")),
            "udp_sink": lambda r: self._bad(self.sink, need(r, "port"), r.get("reader", "ordinary"),
                                            r.get("rcvbuf")),
            "sink": lambda r: self._bad(self.sink, need(r, "port"), r.get("reader", "ordinary"),
                                        r.get("rcvbuf"), r.get("kind", "udp")),
            "hog": lambda r: self._bad(self.hog, need(r, "pages"), r.get("gfp", "kernel")),
            "hog_free": lambda r: self.hog_free(),
            "memalloc": lambda r: self.memalloc(need(r, "port"), bool(r.get("on", True))),
            "swapon": lambda r: self.swapon(_device_spec(r, "swapon", "swap.img"),
                                            bool(r.get("memalloc", True)),
                                            r.get("timeout_s", 30.0), r.get("priority")),
            "swapoff": lambda r: self.swapoff(r.get("device")),
            "workload": lambda r: self.workload(need(r, "pages"), r.get("seed"), r.get("rate_pps", 0)),
            "swap_map": lambda r: self.swap_map(r.get("device")),
            "fileon": lambda r: self.fileon(_device_spec(r, "fileon", "file.img"),
                                            bool(r.get("memalloc", False)),
                                            **opts(r, "dirty_ratio", "dirty_background_ratio",
                                                   "timeout_s")),
            "file_workload": lambda r: self.file_workload(need(r, "kind"), need(r, "pages"),
                                                          r.get("seed"), r.get("rate_pps", 0)),
            "file_map": lambda r: self.file_map(),
            "shutdown": lambda r: on_shutdown(),
        }


# ------------------------------------------------------------------------------ command
def _parse_neigh(text: str) -> tuple[str, bytes]:
    try:
        ip, mac = text.split("=", 1)
        ipaddress.ip_address(ip)
        raw = bytes.fromhex(mac.replace(":", ""))
        if len(raw) != 6:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--neigh {text!r}: expected IP=MAC, e.g. 198.18.0.1=02:00:c6:12:00:01") from None
    return ip, raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client-agent", description="The userspace host under memory pressure, on an AF_PACKET veth.")
    p.add_argument("--ifname", required=True, help="the veth to own (inside this namespace)")
    p.add_argument("--addr", required=True, help="ADDR/PREFIX the agent answers for, inside 198.18.0.0/15")
    p.add_argument("--gateway", help="next hop for addresses outside the prefix")
    p.add_argument("--neigh", action="append", type=_parse_neigh, default=[], metavar="IP=MAC",
                   help="permanent neighbour entry (repeatable)")
    p.add_argument("--pool-pages", type=int, default=8192, help="pages of 4 KiB in the agent's pool (default 8192 = 32 MiB)")
    p.add_argument("--min-free-kbytes", type=int, help="vm.min_free_kbytes (default: Linux's formula for the pool)")
    p.add_argument("--watermark-scale-factor", type=int, default=10)
    p.add_argument("--budget", type=int, default=NAPI_BUDGET, help="frames per NAPI poll (net.core.dev_weight)")
    p.add_argument("--control", help="Unix socket path for the control protocol")
    p.add_argument("--ready-fd", type=int, help="write one byte here once ready")
    p.add_argument("--pcap", help="write what the stack's taps saw (pfmemalloc frames excluded, as in Linux)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", type=int, help="pin the agent to this CPU")
    p.add_argument("--nic", default=os.environ.get("CLIENT_AGENT_NIC", DEFAULT_NIC), choices=NICS,
                   help=f"how the veth is read and written (default $CLIENT_AGENT_NIC or {DEFAULT_NIC}): socket = recvmsg/send per frame, "
                        "ring-v3 / ring-v2 = mmap'ed PACKET_RX_RING (TPACKET_V3 blocks / V2 slots) + PACKET_TX_RING, "
                        "ring-v3-send = receive ring, one send() per frame")
    p.add_argument("--offload", metavar="LIST", default=os.environ.get("CLIENT_AGENT_OFFLOAD"),
                   help="what the NIC does for the stack, ethtool -K names: tx (UDP and TCP checksums on transmit), "
                        "rx (trust the kernel's checksum-valid reports), gro (accept merged frames; ring-v3), "
                        "tso (TCP segmentation, needs tx), ufo (the kernel fragments UDP datagrams, needs tx), or none "
                        f"(default $CLIENT_AGENT_OFFLOAD or {DEFAULT_OFFLOADS})")
    p.add_argument("--fault", metavar="SPEC", help="seeded faults on both directions of the NIC "
                   "(netem is not in this kernel), e.g. loss=0.05,dup=0.01,reorder=0.02,delay_ms=1,seed=7")
    return p


# Python's cyclic garbage collector, tuned for a long-lived process that allocates many short-lived
# containers (tasks' generators, buffers, tuples) and holds a large, fixed pool (one Page object
# per pool page): after set-up everything alive is frozen out of the collector's generations
# (gc.freeze: never traversed again), and the youngest generation is collected every 20000
# allocations instead of 700 (most garbage here is freed by reference counting anyway).
# Measured with testbed/bench/wb_inproc.py under cachegrind: 777k -> 742k instructions per
# swapped-out page (-4.5 %), no change in behaviour.
GC_THRESHOLD = (20000, 50, 50)


def tune_gc() -> None:
    """Freeze what set-up built and raise the young generation's threshold (above)."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        iface = ipaddress.ip_interface(args.addr)
    except ValueError:
        print(f"client-agent: --addr {args.addr!r} is not ADDR/PREFIX (e.g. 198.18.0.2/24)", file=sys.stderr)
        return 2
    if iface.ip not in TESTBED_NET:
        print(f"client-agent: --addr {iface.ip} is outside 198.18.0.0/15, the only range the testbed may use", file=sys.stderr)
        return 2
    if args.pool_pages < 16:
        print(f"client-agent: --pool-pages {args.pool_pages} is too small (need >= 16)", file=sys.stderr)
        return 2
    from .phy.afpacket import AfPacketError
    from .phy.caps import parse_offloads
    from .phy.ring import open_device
    try:
        offloads = parse_offloads(args.offload if args.offload is not None else DEFAULT_OFFLOADS)
    except ValueError as e:
        print(f"client-agent: --offload {args.offload!r}: {e}", file=sys.stderr)
        return 2
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        dev = open_device(args.ifname, args.nic, offloads)
    except AfPacketError as e:
        print(f"client-agent: {e.strerror}", file=sys.stderr)
        return 1
    if args.fault:
        from .phy.fault import BothWays, parse_fault_spec
        try:
            dev = BothWays(dev, parse_fault_spec(args.fault))
        except ValueError as e:
            print(f"client-agent: --fault: {e}", file=sys.stderr)
            return 2
    loop = Loop(MonotonicClock())
    try:
        agent = Agent(loop, dev, ip=str(iface.ip), prefix_len=iface.network.prefixlen,
                      pool_pages=args.pool_pages, min_free_kbytes=args.min_free_kbytes,
                      watermark_scale_factor=args.watermark_scale_factor,
                      gateway=args.gateway, budget=args.budget, seed=args.seed)
    except ValueError as e:
        print(f"client-agent: {e}", file=sys.stderr)
        return 2
    for ip, mac in args.neigh:
        agent.stack.neigh.add_permanent(ipaddress.ip_address(ip).packed, mac, loop.time())
    pcap = None
    if args.pcap:
        from .phy.pcap import PcapWriter
        pcap = PcapWriter(args.pcap)
        agent.stack.taps.append(lambda f, now: pcap.write(f, time.time()))
    summary: dict = {}

    def on_shutdown():
        summary.update(agent.snapshot())
        loop.call_soon(loop.stop)
        return {k: summary[k] for k in ("time_s", "device", "valid", "invalid_reasons")} | {
            "counters": summary["stack"]["counters"], "drop_reasons": summary["stack"]["drop_reasons"]}

    ctl = None
    if args.control:
        ctl = ControlServer(args.control, agent.handlers(on_shutdown))
        ctl.attach(loop.selector)
    def on_sigterm(*_):
        raise KeyboardInterrupt  # leaves run_forever at once, even from a blocking select()
    signal.signal(signal.SIGTERM, on_sigterm)
    tune_gc()
    signal_ready(args.ready_fd)
    profile_path = os.environ.get("CLIENT_AGENT_PROFILE")  # cProfile the run (benchmarks' profiles)
    profiler = None
    if profile_path:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # a second SIGTERM (a supervisor repeating itself) must not cut the cleanup short with a
        # traceback: the device's rings are being unmapped and the summary written
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        if ctl is not None:
            ctl.close()
        if pcap is not None:
            pcap.close()
        if not summary:                  # SIGTERM: the last snapshot before the device goes
            try:
                summary.update(agent.snapshot())
            except Exception as e:  # noqa: BLE001 -- the device must still be closed
                print(f"client-agent: final snapshot failed: {type(e).__name__}: {e}", file=sys.stderr)
        dev.close()
    snap = summary or agent.snapshot()
    c = snap["stack"]["counters"]
    print(f"client-agent: rx {c['rx_packets']} frames, rx_nobuf {c['rx_nobuf']}, PFMemallocDrop {c['PFMemallocDrop']}, "
          f"tp_drops {snap['device'].get('tp_drops', 0)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
