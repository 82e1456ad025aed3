"""The composition root of one userspace host: allocator, scheduler, stack, kswapd, anonymous
memory, swap devices and file mappings, wired to a ``Loop``. Used by the ``client-agent`` process
(agent.py: a host plus the control socket) and by the deterministic simulation (testbed/sim.py),
so both run the same objects in the same order.

Invariant owned here: ``Host`` is the same object on the in-memory wire (ManualClock, tests and
deterministic scenarios) and on a real veth (AF_PACKET, MonotonicClock). It only wires the
sans-I/O parts to the loop: the device's readiness triggers NAPI-style polls of at most
``budget`` frames, the stack's deadlines become loop timers, the scheduler runs tasks. Nothing
here allocates from the pool itself; services it starts (echo, sink readers, the hog) do so
through tasks, so every page is charged to a named owner.

Storage is composed from *device specs* (dicts): ``{"kind": "nfs", "server": ..., "export": ...,
"image": ..., ...}``. ``STORAGE_KINDS`` maps a kind to the function that builds its
``mm.page_io.StorageBackend`` -- the one place a storage protocol is named; adding NBD, iSCSI or
AoE is one function and one row there.
"""

from __future__ import annotations

from typing import Callable

from .mm.gfp import GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, Gfp
from .mm.page_alloc import PageAllocator
from .net.core.dev import NAPI_BUDGET
from .net.stack import Stack
from .tasks import Scheduler, WaitEvent, WaitPages

SINK_READERS = ("none", "fast", "ordinary")
SINK_KINDS = ("udp", "tcp")
HOG_GFP = {"kernel": GFP_KERNEL, "nowait": GFP_NOWAIT, "atomic": GFP_ATOMIC,
           "memalloc": GFP_ATOMIC | Gfp.MEMALLOC}
STABLE_HOWS = ("FILE_SYNC", "UNSTABLE", "DATA_SYNC")


# ------------------------------------------------------------------------------ storage kinds
NFS_SPEC_DEFAULTS = {"kind": "nfs", "server": None, "port": None, "export": "swap",
                     "image": "swap.img", "slots": 16, "wsize": 4096, "timeo_s": 0.5,
                     "timeo_max_s": 2.0, "retrans": 3, "stable": "FILE_SYNC", "xid_seed": None,
                     "mount_port": None, "proto": "udp", "auth": None}
# keys that may stay None: ports (None: 2049 over UDP, portmap GETPORT over TCP), auth (None:
# AUTH_SYS over TCP, AUTH_NONE over UDP), the xid seed (None: the host's seed)
_OPTIONAL_KEYS = ("xid_seed", "mount_port", "port", "auth")


def _spec(spec: dict, defaults: dict) -> dict:
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise ValueError(f"{spec.get('kind', '?')} device spec: unknown key(s) "
                         f"{', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    out = {**defaults, **spec}
    missing = [k for k, v in out.items() if v is None and k not in _OPTIONAL_KEYS]
    if missing:
        raise ValueError(f"{out['kind']} device spec needs {', '.join(missing)}")
    return out


def nfs_backend(host: "Host", spec: dict):
    """An ``fs.nfs.file.NfsFile`` on its own NFS client (own RPC transport and socket)."""
    from .fs.nfs.file import NfsFile
    from .fs.nfs.nfs3proc import NfsTransport
    s = _spec(spec, NFS_SPEC_DEFAULTS)
    if s["stable"] not in STABLE_HOWS:
        raise ValueError(f"stable must be FILE_SYNC, UNSTABLE or DATA_SYNC, got {s['stable']!r}")
    if s["proto"] not in ("udp", "tcp"):
        raise ValueError(f"proto must be udp or tcp, got {s['proto']!r}")
    if host.trace_replies:
        host.trace_server_replies(s["port"] or 2049)
    t = NfsTransport(host.stack, host.sched, s["server"], s["port"], slots=s["slots"],
                     timeo_s=s["timeo_s"], retrans=s["retrans"], timeo_max_s=s["timeo_max_s"],
                     wsize=s["wsize"], log=host.log, on_tx=host.kick, mount_port=s["mount_port"],
                     seed=host.seed if s["xid_seed"] is None else s["xid_seed"],
                     proto=s["proto"], auth=s["auth"])
    return NfsFile(t, s["export"], s["image"], s["stable"])


# Block devices over TCP (drivers/block/nbd.py, drivers/scsi/iscsi_tcp.py). ``queue_depth``: the
# requests in flight (the blk-mq tag set; nbd's default is 128, 16 here as NFS's slots);
# ``timeout_s``: a request unanswered this long resets the connection and is sent again (nbd's
# default 30 s, iSCSI's replacement is through the NOP ping).
NBD_SPEC_DEFAULTS = {"kind": "nbd", "server": None, "port": 10809, "export": "",
                     "queue_depth": 16, "timeout_s": 30.0, "durability": "fua", "use_go": True}
ISCSI_SPEC_DEFAULTS = {"kind": "iscsi", "server": None, "port": 3260, "target": None, "lun": 0,
                       "initiator": "iqn.2025-01.org.nsdeadlock:client-agent",
                       "queue_depth": 16, "timeout_s": 30.0, "durability": "fua",
                       "header_digest": "None", "data_digest": "None", "initial_r2t": False,
                       "immediate_data": True, "max_recv_data_segment_length": 262144,
                       "first_burst_length": 262144, "max_burst_length": 16776192,
                       "noop_out_interval_s": 5.0, "noop_out_timeout_s": 5.0}


def nbd_backend(host: "Host", spec: dict):
    """A ``drivers.block.nbd.NbdDevice`` on its own TCP connection."""
    from .drivers.block.nbd import NbdDevice
    s = _spec(spec, NBD_SPEC_DEFAULTS)
    return NbdDevice(host.stack, host.sched, s["server"], int(s["port"]), str(s["export"]),
                     durability=s["durability"], use_go=bool(s["use_go"]),
                     queue_depth=int(s["queue_depth"]), timeout_s=float(s["timeout_s"]),
                     log=host.log, on_tx=host.kick)


def iscsi_backend(host: "Host", spec: dict):
    """A ``drivers.scsi.iscsi_tcp.IscsiDevice`` (one session, one connection)."""
    from .drivers.scsi.iscsi_tcp import IscsiDevice
    s = _spec(spec, ISCSI_SPEC_DEFAULTS)
    return IscsiDevice(host.stack, host.sched, s["server"], int(s["port"]), str(s["target"]),
                       lun=int(s["lun"]), initiator=s["initiator"], durability=s["durability"],
                       header_digest=s["header_digest"], data_digest=s["data_digest"],
                       initial_r2t=bool(s["initial_r2t"]), immediate_data=bool(s["immediate_data"]),
                       max_recv_data_segment_length=int(s["max_recv_data_segment_length"]),
                       first_burst_length=int(s["first_burst_length"]),
                       max_burst_length=int(s["max_burst_length"]),
                       noop_out_interval_s=float(s["noop_out_interval_s"]),
                       noop_out_timeout_s=float(s["noop_out_timeout_s"]), seed=host.seed,
                       queue_depth=int(s["queue_depth"]), timeout_s=float(s["timeout_s"]),
                       log=host.log, on_tx=host.kick)


AOE_SPEC_DEFAULTS = {"kind": "aoe", "shelf": None, "slot": None, "policy": "linux", "mtu": 1500,
                     "flush": True, "aoe_deadsecs": 180, "aoe_maxout": 64,
                     "activate_timeout_s": 10.0}


def aoe_backend(host: "Host", spec: dict):
    """A ``drivers.block.aoeblk.AoeBlk``: the AoE device ``e<shelf>.<slot>`` on the host's stack
    (its frames through the EtherType table). ``policy`` linux (as the Linux driver: nothing
    marked) or extended (beyond Linux: the target's reserve-backed frames pass the protocol
    filter, its frames may use the reserve)."""
    from .drivers.block.aoeblk import POLICIES, AoeBlk
    s = _spec(spec, AOE_SPEC_DEFAULTS)
    for k, hi in (("shelf", 65534), ("slot", 254)):
        if isinstance(s[k], bool) or not isinstance(s[k], int) or not 0 <= s[k] <= hi:
            raise ValueError(f"aoe device spec: {k} must be an integer 0..{hi}, got {s[k]!r}")
    if s["policy"] not in POLICIES:
        raise ValueError(f"aoe device spec: policy must be linux or extended, got {s['policy']!r}")
    if host.trace_replies:
        from .drivers.block.aoenet import aoe_rsp_trace
        host.aoe_trace = aoe_rsp_trace(host.stack)
    return AoeBlk(host.stack, host.sched, host.loop.time, s["shelf"], s["slot"], mtu=int(s["mtu"]),
                  policy=s["policy"], flush_writes=bool(s["flush"]),
                  aoe_deadsecs=int(s["aoe_deadsecs"]), aoe_maxout=int(s["aoe_maxout"]),
                  activate_timeout_s=float(s["activate_timeout_s"]), on_tx=host.kick)


STORAGE_KINDS: dict[str, Callable] = {"nfs": nfs_backend, "nbd": nbd_backend,
                                      "iscsi": iscsi_backend, "aoe": aoe_backend}


def swap_snapshot(dev) -> dict:
    """``dev.snapshot()``; a device never swapped on (a file consumer's host has one idle, as
    before device specs) reports the NFS writeback counters at zero, the fields it always had."""
    if dev.backend is not None:
        return dev.snapshot()
    from .fs.nfs.nfs3proc import durability_counters
    return {**durability_counters(), **dev.snapshot()}


def op_errors() -> tuple:
    """The exceptions a storage activation (swapon/fileon) raises as its answer -- a refused
    mount, an absent target -- as opposed to a bug (client_agent/tasks.py ``errors``)."""
    from .fs.nfs.nfs3proc import NfsError
    from .mm.page_io import ActivateError
    from .net.sunrpc.clnt import RpcSoftError
    return (ActivateError, NfsError, RpcSoftError, TimeoutError)


class Host:
    def __init__(self, loop, dev, *, ip: str, prefix_len: int, pool_pages: int,
                 min_free_kbytes: int | None = None, watermark_scale_factor: int = 10,
                 gateway: str | None = None, budget: int = NAPI_BUDGET, seed: int = 0,
                 log: Callable[[str], None] | None = None, trace_replies: bool = False):
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
        self.nfs_log: list = []             # (time, line): the kernel log lines of storage clients
        self.log = log or (lambda line: self.nfs_log.append((self.loop.time(), line)))
        self.sched.log = lambda line: self.log(line)     # "BUG: task ... crashed" (tasks.py)
        self.sched.epoch = self.started_at               # crash records' t_s: since the host started
        self.trace_replies = trace_replies
        self.reply_trace = None
        self.aoe_trace = None               # drivers.block.aoenet.AoeRspTrace, with an AoE device
        self.anon = None                    # mm.anon.AnonMemory, created with the first swap device
        self.kswapd = None
        self.swap_devices: list = []
        self.filemaps: list = []
        self.sched.attach_loop(loop)
        flush_tx = getattr(dev, "flush_tx", None)
        if flush_tx is not None:
            # a TX ring's doorbell: one send() per loop turn for every frame queued (xmit_more)
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
        loop = self.loop
        now = loop.time()
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
        if nd is None:
            return
        if nd <= now:
            # Budget exhausted: repoll after timers and tasks had their turn (napi_schedule).
            self._repoll_pending = True
            loop.call_soon(self._napi_poll)
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
        """After an out-of-band send (control op, RPC transmit), rearm the stack's timers."""
        self._arm(self.stack.next_deadline())

    # -- observation hooks ---------------------------------------------------------------------
    def trace_server_replies(self, port: int) -> None:
        """Record what becomes of every frame from an RPC server's port (net/sunrpc/trace.py);
        one record per host, following the last port asked for."""
        from .net.sunrpc.trace import RpcReplyTrace
        if self.reply_trace is None:
            self.reply_trace = RpcReplyTrace(port)
            self.stack.rx_trace_hooks.append(self.reply_trace)
        self.reply_trace.port = port

    # -- socket services (test traffic) ----------------------------------------------------------
    def _check_service(self, proto: str, port: int, rcvbuf: int | None) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an integer 1..65535, got {port!r}")
        if f"{proto}:{port}" in self.services:
            raise ValueError(f"{proto.upper()} port {port} already has a service; pick another port")
        if rcvbuf is not None and (not isinstance(rcvbuf, int) or rcvbuf < 1024):
            raise ValueError(f"rcvbuf must be an integer >= 1024 bytes, got {rcvbuf!r}")

    def _socket(self, port: int, rcvbuf: int | None):
        self._check_service("udp", port, rcvbuf)
        sk = self.stack.udp_socket()
        sk.bind(("0.0.0.0", port))
        if rcvbuf is not None:
            sk.rcvbuf = rcvbuf
        return sk

    def echo(self, port: int, rcvbuf: int | None = None) -> dict:
        """A datagram echo service on ``port``."""
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

    def sink(self, port: int, reader: str = "ordinary", rcvbuf: int | None = None,
             kind: str = "udp") -> dict:
        """A sink on ``port``: ``kind`` ``udp`` (a datagram socket) or ``tcp`` (a listener that
        accepts every connection; each accepted stream gets the same reader). ``reader``:
        ``none`` (nobody reads: the queue fills to rcvbuf -- for TCP the window closes),
        ``fast`` (reads without allocating), ``ordinary`` (each datagram, or each read of up to
        one page of a stream, needs one ordinary GFP_KERNEL page to be processed -- under
        pressure the reader blocks and the queue fills, holding its receive buffers, as the
        problem statement's 'other connections' do). Returns the live stats dict."""
        if reader not in SINK_READERS:
            raise ValueError(f"reader must be one of {', '.join(SINK_READERS)}, got {reader!r}")
        if kind not in SINK_KINDS:
            raise ValueError(f"sink kind must be one of {', '.join(SINK_KINDS)}, got {kind!r}")
        if kind == "tcp":
            return self._stream_sink(port, reader, rcvbuf)
        sk = self._socket(port, rcvbuf)
        stats = {"kind": "sink", "port": port, "reader": reader, "read": 0, "bytes": 0}
        self.services[f"udp:{port}"] = {"sock": sk, "stats": stats}
        owner = f"sink:{port}"

        def sink():
            recv = sk.recv                  # the sink needs no sender address (recv(2))
            ordinary = reader == "ordinary"
            while True:
                # Drain what is queued before sleeping again: one wakeup per batch.
                data = recv()
                while data is not None:
                    if ordinary:
                        pages = yield WaitPages(1, GFP_KERNEL, owner,
                                                reason=f"page to process a datagram on :{port}")
                        self.alloc.free(pages)
                    stats["read"] += 1
                    stats["bytes"] += len(data)
                    data = recv()
                if sk.closed:
                    return
                yield from sk.wait_data()

        if reader != "none":
            self.sched.spawn(f"udp-sink/{port}", sink())
        return stats

    def _stream_sink(self, port: int, reader: str, rcvbuf: int | None) -> dict:
        """The stream form of ``sink``: listen on ``port`` (rcvbuf set on the listener, so every
        child inherits it, as SO_RCVBUF before listen() does), accept in a task, one reader task
        per connection, owner ``sink:<port>``."""
        self._check_service("tcp", port, rcvbuf)
        ln = self.stack.tcp_socket()
        ln.bind(("0.0.0.0", port))
        if rcvbuf is not None:
            ln.rcvbuf = rcvbuf
        ln.listen()
        stats = {"kind": "sink", "proto": "tcp", "port": port, "reader": reader, "accepted": 0,
                 "read": 0, "bytes": 0}
        conns: list = []
        self.services[f"tcp:{port}"] = {"sock": ln, "stats": stats, "conns": conns}
        owner = f"sink:{port}"
        sched = self.sched

        def stream(sk):
            while True:
                if reader == "ordinary":
                    # one page to process each read, taken before reading: under pressure the
                    # reader blocks here and the stream's receive queue (and window) fills
                    pages = yield WaitPages(1, GFP_KERNEL, owner,
                                            reason=f"page to process a stream read on :{port}")
                    self.alloc.free(pages)
                got = sk.recv(self.loop.time(), 4096 if reader == "ordinary" else 1 << 20)
                if isinstance(got, bytes) and got:
                    stats["read"] += 1
                    stats["bytes"] += len(got)
                    self.kick()                 # a window update may be due (tcp_cleanup_rbuf)
                    continue
                if got == b"" or isinstance(got, int):
                    sk.close(self.loop.time())
                    self.kick()
                    return
                yield WaitEvent(sk.wait_key, reason=f"stream data on :{port}")

        def acceptor():
            while True:
                while (child := ln.accept()) is not None:
                    conns.append(child)
                    stats["accepted"] += 1
                    if reader != "none":
                        sched.spawn(f"tcp-sink/{port}/{stats['accepted']}", stream(child))
                yield WaitEvent(ln.wait_key, reason=f"accept on :{port}")

        sched.spawn(f"tcp-accept/{port}", acceptor())
        return stats

    def service_stats(self) -> dict:
        """Every service's stats; a stream sink's also give what its accepted connections hold
        now (``held``: ss's skmem ``r`` summed, receive- and out-of-order-queue segments and
        pages, connections advertising a zero window, the smallest ``rcv_wnd``), the most
        seen at any call so far (``held_max``: each field's own maximum) and, counted at the event
        rather than sampled, ``to_zero_window``: how often its connections' advertised window
        went to zero (their share of TcpExt TCPToZeroWindowAdv, closed connections included) and
        ``ack_nomem``: their ACKs that found no memory and were not sent (__tcp_send_ack's failed
        allocation: the window they would have closed stays closed unannounced)."""
        out = {}
        for key, svc in self.services.items():
            conns = svc.get("conns")
            if conns is None:
                out[key] = svc["stats"]
                continue
            live = [c for c in conns if not c.dead]
            rq = [r for c in live for r in c.receive_queue]
            ofo = [r for c in live for r in c.ofo]
            held = {
                "conns": len(live), "rmem_alloc": sum(c.rmem_alloc for c in live),
                "recv_q_bytes": sum(len(r.data) for r in rq),
                "receive_queue": len(rq), "receive_queue_pages": sum(len(r.skb.pages) for r in rq),
                "ofo_queue": len(ofo), "ofo_queue_pages": sum(len(r.skb.pages) for r in ofo),
                "zero_window": sum(1 for c in live if c.rcv_wnd == 0),
                "min_rcv_wnd": min((c.rcv_wnd for c in live), default=None)}
            peak = svc["stats"].setdefault("held_max", {})
            for k in ("rmem_alloc", "receive_queue_pages", "ofo_queue_pages", "zero_window"):
                peak[k] = max(peak.get(k, 0), held[k])
            out[key] = {**svc["stats"], "held": held,
                        "to_zero_window": sum(c.zero_window_advs for c in conns),
                        "ack_nomem": sum(c.counters["ack_nomem"] for c in conns)}
        return out

    def close_services(self) -> None:
        """Close every service socket (a stream sink: its connections, then its listener)."""
        now = self.loop.time()
        for svc in self.services.values():
            for c in svc.get("conns", ()):
                c.close(now)
            sk = svc["sock"]
            sk.close(now) if svc.get("conns") is not None else sk.close()

    def hog(self, pages: int, gfp: str = "kernel") -> dict:
        """Take ``pages`` pages in context ``gfp`` and hold them (an allocation hog)."""
        if gfp not in HOG_GFP:
            raise ValueError(f"gfp must be one of {', '.join(HOG_GFP)}, got {gfp!r}")
        if not isinstance(pages, int) or pages < 0:
            raise ValueError(f"pages must be a non-negative integer, got {pages!r}")
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

    def set_sock_memalloc(self, port: int, on: bool = True) -> dict:
        """SOCK_MEMALLOC on (off) the service socket on ``port``."""
        svc = self.services.get(f"udp:{port}")
        if svc is None:
            raise ValueError(f"no service on UDP port {port}; start one with udp_echo or "
                             f"udp_sink first")
        sk = svc["sock"]
        if on and not sk.memalloc:
            sk.sk_set_memalloc()
        elif not on and sk.memalloc:
            sk.sk_clear_memalloc()
        return {"port": port, "memalloc": sk.memalloc, "memalloc_socks": self.alloc.memalloc_socks}

    # -- storage ----------------------------------------------------------------------------------
    def storage(self, spec: dict):
        """The ``StorageBackend`` a device spec describes (not yet activated)."""
        kind = spec.get("kind", "nfs")
        make = STORAGE_KINDS.get(kind)
        if make is None:
            raise ValueError(f"device kind {kind!r} unknown; known: {', '.join(STORAGE_KINDS)}")
        return make(self, {**spec, "kind": kind})

    def _ensure_kswapd(self, max_writeback: int = 64):
        from .mm.vmscan import Kswapd
        if self.kswapd is None:
            self.kswapd = Kswapd(self.alloc, self.sched, self.anon, max_writeback=max_writeback)
        return self.kswapd

    def add_swap(self, spec: dict, *, memalloc: bool = True, max_writeback: int = 64,
                 priority: int | None = None):
        """A swap device on the backend ``spec`` describes; kswapd started if it was not.
        ``priority``: as ``swapon -p`` (kswapd writes to the highest first); default -1, -2, ...
        in swapon order, as Linux numbers areas swapped on without one.
        Returns ``(device, activation)``: run ``activation`` (a generator, ``swapon``) in a task;
        it returns the number of slots."""
        from .mm.anon import AnonMemory
        from .mm.swapfile import SwapDevice
        backend = self.storage(spec)
        if self.anon is None:
            self.anon = AnonMemory(self.alloc, self.sched, self.seed)
        if priority is None:
            priority = -1 - sum(d.priority < 0 for d in self.swap_devices)
        dev = SwapDevice(self.alloc, self.sched, log=self.log, anon=self.anon, priority=priority)
        dev.backend = backend
        self.swap_devices.append(dev)
        ks = self._ensure_kswapd(max_writeback)
        ks.add_swap(dev)
        return dev, dev.swapon(backend, memalloc=memalloc)

    def remove_swap(self, dev) -> None:
        """Forget a swap device whose activation failed (swapon(2) returned an error)."""
        dev.swapoff()
        if dev in self.swap_devices:
            self.swap_devices.remove(dev)
        if self.kswapd is not None and dev in self.kswapd.swap_devices:
            self.kswapd.swap_devices.remove(dev)
        close = getattr(dev.backend, "close", None)
        if close is not None:
            close()

    def add_file(self, spec: dict, *, policy: str = "linux", dirty_ratio: int = 20,
                 dirty_background_ratio: int = 10, max_writeback: int = 64, log=None):
        """A page-cache mapping of the file ``spec`` describes (its own client and socket);
        kswapd started if it was not. Returns ``(mapping, activation)``: run ``activation`` in a
        task; it returns the file's size in pages."""
        from .mm.filemap import FileMapping
        backend = self.storage({"image": "file.img", **spec})
        fm = FileMapping(self.alloc, self.sched, seed=self.seed, log=log or self.log,
                         dirty_ratio=int(dirty_ratio),
                         dirty_background_ratio=int(dirty_background_ratio))
        fm.backend = backend
        self.filemaps.append(fm)
        self._ensure_kswapd(max_writeback).add_filemap(fm)
        return fm, fm.attach(backend, policy=policy)

    def run_task(self, name: str, gen, timeout_s: float):
        """Spawn ``gen`` and run the loop until it ends (control ops that answer when done). A
        storage error it raises (``OP_ERRORS``) is its answer: state "failed", not a crash."""
        task = self.sched.spawn(name, gen, errors=op_errors())
        self.loop.run_until(lambda: task.exited, timeout_s)
        return task
