"""The client agent: composition of allocator, tasks, stack and device, and the `client-agent` command.

Invariant owned here: ``Agent`` is the same object on the in-memory wire (ManualClock, tests and
deterministic scenarios) and on a real veth (AF_PACKET, MonotonicClock). It only wires the
sans-I/O parts to a ``Loop``: the device's readiness triggers NAPI-style polls of at most
``budget`` frames, the stack's deadlines become loop timers, the scheduler runs tasks. Nothing
here allocates from the pool itself; services it starts (echo, sink readers, the hog) do so
through tasks, so every page is charged to a named owner.

Control protocol ops (newline-delimited JSON, see netns_setup/control.py): ``snapshot``, ``set``,
``shutdown``, plus test services ``udp_echo``, ``udp_sink``, ``hog``, ``hog_free``,
``memalloc`` and ``ping``; swap over NFS (docs/swap-contract.md): ``swapon``, ``swapoff``,
``workload``, ``swap_map``; file-backed consumers (docs/file-backed.md): ``fileon``,
``file_workload``, ``file_map``.
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

from .loop import Loop, MonotonicClock
from .mm.gfp import GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, Gfp
from .mm.page_alloc import PageAllocator
from .net.stack import NAPI_BUDGET, Stack
from .phy.ring import NICS
from .tasks import Scheduler, WaitPages

TESTBED_NET = ipaddress.ip_network("198.18.0.0/15")
# The NIC and its offloads when the command line names none (benchmarks/README.md, "nic").
DEFAULT_NIC = "ring-v2"
DEFAULT_OFFLOADS = "tx,rx"
SINK_READERS = ("none", "fast", "ordinary")
HOG_GFP = {"kernel": GFP_KERNEL, "nowait": GFP_NOWAIT, "atomic": GFP_ATOMIC,
           "memalloc": GFP_ATOMIC | Gfp.MEMALLOC}
# A run is invalid when the loop was this late for a timer: the agent, not its memory, was the
# bottleneck, and its drops would not be the ones under study.
LAG_INVALID_S = 0.25


class Agent:
    def __init__(self, loop: Loop, dev, *, ip: str, prefix_len: int, pool_pages: int,
                 min_free_kbytes: int | None = None, watermark_scale_factor: int = 10,
                 gateway: str | None = None, budget: int = NAPI_BUDGET, seed: int = 0):
        self.loop = loop
        self.dev = dev
        self.seed = seed
        self.budget = budget
        self.alloc = PageAllocator(pool_pages, min_free_kbytes, watermark_scale_factor)
        self.sched = Scheduler(self.alloc)
        self.stack = Stack(self.alloc, dev, dev.mac, ip, prefix_len, self.sched, gateway=gateway)
        self.services: dict[str, dict] = {}
        self._hogs: list = []
        self._timer = None
        self._timer_at = None
        self.polls = 0
        self._repoll_pending = False
        self.started_at = loop.time()
        self.transport = None
        self.swap = None
        self.kswapd = None
        self.nfs_log: list = []
        self.filemap = None             # file-backed consumer (fileon), docs/file-backed.md
        self.file_transport = None
        self.sched.attach_loop(loop)
        flush_tx = getattr(dev, "flush_tx", None)
        if flush_tx is not None:
            loop.before_wait.append(flush_tx)
        if hasattr(dev, "fileno"):
            loop.add_reader(dev, self._on_readable)
        elif hasattr(dev, "on_rx"):
            dev.on_rx = lambda: loop.call_soon(self._on_readable)

    # -- NAPI-style receive ------------------------------------------------------------------
    def _on_readable(self) -> None:
        # NAPI: while a repoll is scheduled the device's "interrupt" stays masked -- a readiness
        # event then adds nothing (the repoll will read the frames). Without this, every
        # readiness event during a backlog started one more self-perpetuating repoll chain, so
        # one loop turn ran N polls for each run of the reader tasks and starved them (sockets
        # overflowing at 20-50 kpps).
        if self._repoll_pending:
            return
        self._napi_poll()

    def _napi_poll(self) -> None:
        self._repoll_pending = False
        now = self.loop.time()
        self.polls += 1
        sched = self.sched
        held = sched.hold_kicks()
        try:
            nd = self.stack.poll(now, self.budget)
        finally:
            if held:
                # The readers the poll woke run now, in this loop callback (as softirq work
                # runs the woken tasks' wakeups on return), not one loop tick later.
                sched.release_kicks()
        if nd is not None and nd <= now:
            # Budget exhausted: repoll after timers and tasks had their turn (napi_schedule).
            self._repoll_pending = True
            self.loop.call_soon(self._napi_poll)
            nd = self.stack.next_deadline()
        self._arm(nd)

    def _arm(self, deadline: float | None) -> None:
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self.loop.time()
        pa = self.dev.poll_at()
        if pa is not None and pa <= now and not self._repoll_pending:
            # The device holds frames that are now due (a fault wrapper's delay or reordering):
            # no fd readiness will announce them, so poll as NAPI would on a timer.
            self._napi_poll()
            return
        self.stack.run_timers(now)
        self._arm(self.stack.next_deadline())

    def kick(self) -> None:
        """After an out-of-band send (control op), rearm the stack's timers."""
        self._arm(self.stack.next_deadline())

    # -- services --------------------------------------------------------------------------
    def _socket(self, port: int, rcvbuf: int | None):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise BadRequest(f"port must be an integer 1..65535, got {port!r}")
        if f"udp:{port}" in self.services:
            raise BadRequest(f"UDP port {port} already has a service; pick another port")
        sk = self.stack.udp_socket()
        sk.bind(("0.0.0.0", port))
        if rcvbuf is not None:
            if not isinstance(rcvbuf, int) or rcvbuf < 1024:
                raise BadRequest(f"rcvbuf must be an integer >= 1024 bytes, got {rcvbuf!r}")
            sk.rcvbuf = rcvbuf
        return sk

    def udp_echo(self, port: int, rcvbuf: int | None = None) -> dict:
        sk = self._socket(port, rcvbuf)
        stats = {"kind": "echo", "port": port, "echoed": 0, "send_errors": 0}
        self.services[f"udp:{port}"] = {"sock": sk, "stats": stats}

        def echo():
            while True:
                got = yield from sk.recvfrom_wait()
                if got is None:
                    return
                data, addr = got
                rc = sk.sendto(data, addr, self.loop.time())
                stats["echoed" if rc >= 0 else "send_errors"] += 1
                self.kick()

        self.sched.spawn(f"udp-echo/{port}", echo())
        return stats

    def udp_sink(self, port: int, reader: str = "ordinary", rcvbuf: int | None = None) -> dict:
        """A service socket. ``reader``: ``none`` (nobody reads: the queue fills to rcvbuf),
        ``fast`` (reads without allocating), ``ordinary`` (each datagram needs one ordinary
        GFP_KERNEL page to be processed -- under pressure the reader blocks and the queue fills,
        holding its receive buffers, as the problem statement's 'other connections' do)."""
        if reader not in SINK_READERS:
            raise BadRequest(f"reader must be one of {', '.join(SINK_READERS)}, got {reader!r}")
        sk = self._socket(port, rcvbuf)
        stats = {"kind": "sink", "port": port, "reader": reader, "read": 0, "bytes": 0}
        self.services[f"udp:{port}"] = {"sock": sk, "stats": stats}
        owner = f"sink:{port}"

        def sink():
            while True:
                got = yield from sk.recvfrom_wait()
                while got is not None:
                    if reader == "ordinary":
                        pages = yield WaitPages(1, GFP_KERNEL, owner, reason=f"page to process a datagram on :{port}")
                        self.alloc.free(pages)
                    stats["read"] += 1
                    stats["bytes"] += len(got[0])
                    # Drain what is queued before sleeping again: one wakeup per batch, not per datagram.
                    got = sk.recvfrom()
                if sk.closed:
                    return

        if reader != "none":
            self.sched.spawn(f"udp-sink/{port}", sink())
        return stats

    def hog(self, pages: int, gfp: str = "kernel") -> dict:
        """Take ``pages`` pages in context ``gfp`` and hold them (an allocation hog)."""
        if gfp not in HOG_GFP:
            raise BadRequest(f"gfp must be one of {', '.join(HOG_GFP)}, got {gfp!r}")
        if not isinstance(pages, int) or pages < 0:
            raise BadRequest(f"pages must be a non-negative integer, got {pages!r}")
        mask = HOG_GFP[gfp]
        if gfp == "kernel":
            held: list = []
            self._hogs.append(held)

            def hogger():
                for _ in range(pages):
                    held.extend((yield WaitPages(1, mask, "hog")))
            self.sched.spawn(f"hog/{len(self._hogs)}", hogger())
            return {"requested": pages, "gfp": gfp, "held": "in progress"}
        held = []
        for _ in range(pages):
            got = self.alloc.alloc(1, mask, "hog")
            if got is None:
                break
            held.extend(got)
        self._hogs.append(held)
        return {"requested": pages, "gfp": gfp, "held": len(held), "nr_free": self.alloc.nr_free}

    def hog_free(self) -> dict:
        n = 0
        for task in list(self.sched.tasks.values()):
            if task.name.startswith("hog/"):
                self.sched.kill(task)
        for held in self._hogs:
            n += len(held)
            self.alloc.free(held)
            held.clear()
        self._hogs.clear()
        return {"freed": n, "nr_free": self.alloc.nr_free}

    def memalloc(self, port: int, on: bool = True) -> dict:
        svc = self.services.get(f"udp:{port}")
        if svc is None:
            raise BadRequest(f"no service on UDP port {port}; start one with udp_echo or udp_sink first")
        sk = svc["sock"]
        if on and not sk.memalloc:
            sk.sk_set_memalloc()
        elif not on and sk.memalloc:
            sk.sk_clear_memalloc()
        return {"port": port, "memalloc": sk.memalloc, "memalloc_socks": self.alloc.memalloc_socks}

    # -- swap over NFS (docs/swap-contract.md) -----------------------------------------------
    def swapon(self, server: str, port: int = 2049, export: str = "swap", image: str = "swap.img",
               slots: int = 16, wsize: int = 4096, timeo_s: float = 0.5, timeo_max_s: float = 2.0,
               retrans: int = 3, memalloc: bool = True, stable: str = "FILE_SYNC",
               timeout_s: float = 30.0) -> dict:
        from .mm.vmscan import Kswapd
        from .nfs.transport import NfsTransport
        from .swap import SwapDevice
        if self.swap is not None and self.swap.active:
            raise BadRequest("swap is already on; swapoff first")
        if stable not in ("FILE_SYNC", "UNSTABLE", "DATA_SYNC"):
            raise BadRequest(f"stable must be FILE_SYNC, UNSTABLE or DATA_SYNC, got {stable!r}")
        log = lambda line: self.nfs_log.append((self.loop.time(), line))
        self.stack.fate_port = port        # record what becomes of every frame from the NFS server
        self.transport = NfsTransport(self.stack, self.sched, server, port, slots=slots,
                                      timeo_s=timeo_s, retrans=retrans, timeo_max_s=timeo_max_s,
                                      wsize=wsize, log=log, on_tx=self.kick, seed=self.seed)
        self.swap = SwapDevice(self.alloc, self.sched, seed=self.seed, log=log)
        if self.kswapd is None:
            self.kswapd = Kswapd(self.alloc, self.sched, self.swap)
        else:
            self.kswapd.swap = self.swap
        task = self.sched.spawn("swapon", self.swap.swapon(self.transport, export, image,
                                                           memalloc=bool(memalloc), stable=stable))
        # The control op answers once mount and lookup are done: run the loop meanwhile.
        self.loop.run_until(lambda: task.state in ("done", "crashed", "killed"), timeout_s)
        if task.state != "done":
            raise BadRequest(f"swapon {server}:/{export}/{image} did not finish: {task.state} "
                             f"{task.error or ''} (is the NAS up and exporting it?)")
        return {"nr_slots": task.result, "fh": self.swap.fh.hex()}

    def swapoff(self) -> dict:
        if self.swap is None:
            raise BadRequest("swap is not on")
        return {"memalloc_socks": self.swap.swapoff()}

    def workload(self, pages: int, seed: int | None = None, rate_pps: float = 0) -> dict:
        if self.swap is None:
            raise BadRequest("swapon first: the workload's pages need a swap device")
        if seed is not None:
            self.swap.seed = seed
            self.swap.workload["seed"] = seed
        self.swap.start_workload(int(pages), float(rate_pps or 0))
        return {"started": True}

    # -- file-backed consumers (docs/file-backed.md) -----------------------------------------
    def fileon(self, server: str, port: int = 2049, export: str = "swap", image: str = "file.img",
               slots: int = 16, wsize: int = 4096, timeo_s: float = 0.5, timeo_max_s: float = 2.0,
               retrans: int = 3, memalloc: bool = False, stable: str = "FILE_SYNC",
               dirty_ratio: int = 20, dirty_background_ratio: int = 10,
               timeout_s: float = 30.0) -> dict:
        """Mount the file's export on its own transport; ``memalloc`` true = policy extended
        (beyond Linux: the file transport SOCK_MEMALLOC), false = Linux's policy."""
        from .mm.filemap import FileMapping
        from .mm.vmscan import Kswapd
        from .nfs.transport import NfsTransport
        from .swap import SwapDevice
        if getattr(self, "filemap", None) is not None and self.filemap.active:
            raise BadRequest("a file is already mounted")
        log = lambda line: self.nfs_log.append((self.loop.time(), line))
        self.stack.fate_port = port        # record what becomes of every frame from the NFS server
        self.file_transport = NfsTransport(self.stack, self.sched, server, port, slots=slots,
                                           timeo_s=timeo_s, retrans=retrans,
                                           timeo_max_s=timeo_max_s, wsize=wsize, log=log,
                                           on_tx=self.kick, seed=self.seed + 1)
        try:
            self.filemap = FileMapping(self.alloc, self.sched, seed=self.seed, log=log,
                                       dirty_ratio=int(dirty_ratio),
                                       dirty_background_ratio=int(dirty_background_ratio))
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if self.kswapd is None:
            self.swap = self.swap or SwapDevice(self.alloc, self.sched, seed=self.seed, log=log)
            self.kswapd = Kswapd(self.alloc, self.sched, self.swap)
        self.kswapd.filemap = self.filemap
        task = self.sched.spawn("fileon", self.filemap.attach(
            self.file_transport, export, image, policy="extended" if memalloc else "linux",
            stable=stable))
        self.loop.run_until(lambda: task.state in ("done", "crashed", "killed"), timeout_s)
        if task.state != "done":
            raise BadRequest(f"fileon {server}:/{export}/{image} did not finish: {task.state} "
                             f"{task.error or ''} (is the NAS up and exporting it?)")
        return {"nr_pages": task.result, "fh": self.filemap.fh.hex(),
                "policy": self.filemap.policy}

    def file_workload(self, kind: str, pages: int, seed: int | None = None,
                      rate_pps: float = 0) -> dict:
        if getattr(self, "filemap", None) is None:
            raise BadRequest("fileon first: the workload's pages need a file")
        if seed is not None:
            self.filemap.seed = seed
            self.filemap.workload["seed"] = seed
        try:
            self.filemap.start_workload(kind, int(pages), float(rate_pps or 0))
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return {"started": True}

    def file_map(self) -> dict:
        if getattr(self, "filemap", None) is None:
            raise BadRequest("no file mounted")
        return self.filemap.map_json()

    def swap_map(self) -> dict:
        if self.swap is None:
            raise BadRequest("swap is not on")
        return self.swap.map_json()

    # -- observation -----------------------------------------------------------------------
    def snapshot(self, traces: bool = True) -> dict:
        """Everything observable. ``traces=False`` leaves out the per-xid and per-frame records
        (tens of thousands of entries): the runner's 0.2 s samples do not need them, and encoding
        them five times a second would cost the agent the very CPU under study."""
        snap = self._snapshot()
        if not traces:
            snap.pop("nfs_frame_fates", None)
            for k in ("nfs", "file_nfs"):
                if snap.get(k):
                    snap[k] = {f: v for f, v in snap[k].items() if f not in ("xids_sent", "xids_replied")}
        return snap

    def _snapshot(self) -> dict:
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
            "stack": self.stack.snapshot(),
            "nfs_frame_fates": [list(f) for f in self.stack.fates],   # [ip_id, xid, fate]
            "alloc": self.alloc.snapshot(),
            "tasks": self.sched.snapshot(),
            "services": {k: v["stats"] for k, v in self.services.items()},
            "loop": loop,
            "polls": self.polls,
            "rusage": {"utime_s": ru.ru_utime, "stime_s": ru.ru_stime, "maxrss_kb": ru.ru_maxrss},
            "valid": not validity,
            "invalid_reasons": validity,
            "swap": self.swap.snapshot() if self.swap is not None else None,
            "nfs": (self.transport.snapshot() | {"log": self.nfs_log[-64:]})
                   if self.transport is not None else None,
            "filemap": (self.filemap.snapshot() | {"workload": dict(self.filemap.workload)}
                        if getattr(self, "filemap", None) is not None else None),
            # the file's own transport (fileon): same fields as "nfs"
            "file_nfs": (self.file_transport.snapshot() | {"log": self.nfs_log[-64:]})
                        if getattr(self, "file_transport", None) is not None else None,
            "workload": ({k: self.swap.workload[k] for k in ("allocated", "target", "done")}
                         if self.swap is not None else None),
        }

    def set(self, key: str, value) -> dict:
        if key == "pfmemalloc_demux_drop":
            self.stack.policy.pfmemalloc_demux_drop = bool(value)
        elif key == "min_free_kbytes":
            try:
                self.alloc.set_watermarks(min_free_kbytes=int(value))
            except ValueError as e:
                raise BadRequest(str(e)) from None
        elif key == "watermark_scale_factor":
            try:
                self.alloc.set_watermarks(watermark_scale_factor=int(value))
            except ValueError as e:
                raise BadRequest(str(e)) from None
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
        return {
            "snapshot": lambda r: self.snapshot(traces=bool(r.get("traces", True))),
            "set": lambda r: self.set(need(r, "key"), need(r, "value")),
            "udp_echo": lambda r: self.udp_echo(need(r, "port"), r.get("rcvbuf")),
            "udp_sink": lambda r: self.udp_sink(need(r, "port"), r.get("reader", "ordinary"), r.get("rcvbuf")),
            "hog": lambda r: self.hog(need(r, "pages"), r.get("gfp", "kernel")),
            "hog_free": lambda r: self.hog_free(),
            "memalloc": lambda r: self.memalloc(need(r, "port"), bool(r.get("on", True))),
            "swapon": lambda r: self.swapon(**{k: v for k, v in r.items() if k != "op"}),
            "swapoff": lambda r: self.swapoff(),
            "workload": lambda r: self.workload(need(r, "pages"), r.get("seed"), r.get("rate_pps", 0)),
            "swap_map": lambda r: self.swap_map(),
            "fileon": lambda r: self.fileon(**{k: v for k, v in r.items() if k != "op"}),
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
                   help="what the NIC does for the stack, ethtool -K names: tx (UDP checksum on transmit), rx (trust "
                        "the kernel's checksum-valid reports), gro (accept merged frames; ring-v3), or none "
                        f"(default $CLIENT_AGENT_OFFLOAD or {DEFAULT_OFFLOADS})")
    p.add_argument("--fault", metavar="SPEC", help="seeded faults on both directions of the NIC "
                   "(netem is not in this kernel), e.g. loss=0.05,dup=0.01,reorder=0.02,delay_ms=1,seed=7")
    return p


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
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        if ctl is not None:
            ctl.close()
        if pcap is not None:
            pcap.close()
        dev.close()
    snap = summary or agent.snapshot()
    c = snap["stack"]["counters"]
    print(f"client-agent: rx {c['rx_packets']} frames, rx_nobuf {c['rx_nobuf']}, PFMemallocDrop {c['PFMemallocDrop']}, "
          f"tp_drops {snap['device'].get('tp_drops', 0)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
