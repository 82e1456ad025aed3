"""Deterministic in-memory simulation of a swap-over-NFS scenario (no root, no sockets, no clock).

What is composed, on one ``Loop`` with a ``ManualClock``:

    [client_agent.Host]   wire.a ==== WirePair (latency ``wire_latency_s`` each way) ==== wire.b
      pool, kswapd, NFS transport,                                   |            |
      workload, noise sinks                              NAS host: a second Stack   flood source:
                                                         (big pool) on 198.18.0.1,  frames from
                                                         NasCore(MemoryStore) on     198.18.0.3
                                                         UDP 2049                   (own MAC)

The client is composed by ``client_agent.host.Host`` -- the same composition root the
``client-agent`` process uses (``add_swap`` / ``add_file`` with an NFS device spec) -- so the
simulation runs the agent's objects in the agent's order.

The flood is injected on the NAS side of the wire (``wire.b.transmit``) as ready-made Ethernet
frames from a third address and MAC, as a hub port would deliver them: the agent sees them exactly
as it would see a noise host's frames, and the NAS stack never touches them. Its timing is seeded
(``random.Random(seed)``: exponential gaps at ``flood_pps``, a random noise port per frame).

Nothing in here decides an outcome. The allocator's thresholds, the sockets' rcvbuf, the
pfmemalloc demux and the transport's timers make it; this module only watches, every
``SAMPLE_S`` of virtual time, feeding a /proc-shaped sample to ``testbed.watchdog.Watchdog`` --
the same rules a real run is judged by (docs/swap-contract.md). ``max_duration_s`` ends a run
that is none of deadlock/recovered/completed (outcome ``timeout``).

Why a reserve can be too small even with the cure (scenario memalloc-undersized): every swap
RPC in flight pins one RPC buffer page taken with __GFP_MEMALLOC (rpc_malloc for a swapper
task, client_agent/net/sunrpc/xprt.py) until its reply is read, and every reply needs one more
receive page, taken from the reserve while the flood keeps free pages at the GFP_ATOMIC floor
(3*min/8). Receive allocates per frame and demuxes that frame before the next (no NAPI batch is
held), transmit holds one fragment's page at a time. The worst case below the floor is therefore
``slots x (1 buffer + 1 reply) + 1`` = 33 pages for 16 slots (testbed/scenario.py's
reserve_covers_slot_table). With min_free_kbytes 64 (floor 6) kswapd's first 16 calls take the
whole reserve for buffers: NOMEM replies, -ENOBUFS retransmits, nothing completes. Buffers are
recycled page for page as calls complete, so the peak actually reached is lower than the bound:
floor 12 (min_free_kbytes 128) still recovers here, floor 48 (512) always does.

The noise queues must hold what the flood pins to reach the floor -- ``min - floor`` plus every
page kswapd frees meanwhile (below min readers and workload are blocked, so those pages go to the
next flood frame) -- hence 4 MiB noise sockets in the built-in scenarios (see their files).
"""

from __future__ import annotations

import ipaddress
import random
import socket as _pysocket
from collections import deque

from client_agent.host import Host, op_errors, swap_snapshot
from client_agent.loop import Loop, ManualClock
from client_agent.mm.anon import PAGE_SIZE, page_bytes
from client_agent.mm.filemap import file_page_bytes
from client_agent.mm.gfp import GFP_ATOMIC
from client_agent.mm.page_alloc import PageAllocator
from client_agent.mm.swapfile import SwapDevice

from client_agent.net.stack import Stack
from client_agent.phy.device import ForwardsOnRx
from client_agent.phy.caps import device_caps, parse_offloads
from client_agent.phy.fault import FaultInjector, parse_fault_spec
from client_agent.phy.soft_nic import SoftNic
from client_agent.phy.pcap import PcapTap
from client_agent.phy.wire_pair import WirePair
from client_agent.tasks import Scheduler
from client_agent.wire.ethernet import ETH_P_IP, emit as eth_emit
from client_agent.wire.ipv4 import IPPROTO_UDP, emit_header
from client_agent.wire.udp import emit as udp_emit
from testbed.watchdog import Watchdog
from nas_server.core import NasCore
from nas_server.iscsi_target import IscsiTarget
from nas_server.nbd_target import NbdTarget
from nas_server.store import MemoryStore

from .nas_block import ISCSI_PORT, NBD_PORT, StackBlockServer, block_device_spec
from .nas_tcp import StackRpcServer

SAMPLE_S = 0.1
AGENT_IP, NAS_IP, NOISE_IP = "198.18.0.2", "198.18.0.1", "198.18.0.3"
MAC_AGENT = b"\x02\x00\xc6\x12\x00\x02"
MAC_NAS = b"\x02\x00\xc6\x12\x00\x01"
MAC_NOISE = b"\x02\x00\xc6\x12\x00\x03"
NOISE_PORT0 = 9000
NOISE_TCP_PORT0 = 9100
NOISE_TCP_TICK_S = 0.005          # the senders' pacing period
NAS_POOL_PAGES = 1 << 15           # the NAS host's stack: big enough never to be the bottleneck

DEFAULTS = {
    "name": "sim", "seed": 1, "pool_pages": 8192, "min_free_kbytes": 2048,
    "watermark_scale_factor": 10, "memalloc": True, "pfmemalloc_demux_drop": True,
    "slots": 16, "wsize": 4096, "stable": "FILE_SYNC", "timeo_s": 0.5, "timeo_max_s": 2.0,
    "retrans": 3, "noise_sockets": 4, "noise_rcvbuf_bytes": 851968, "noise_reader": "ordinary",
    "flood_pps": 4000, "flood_size": 64, "workload_pages": 10240, "workload_rate_pps": 0,
    "stall_threshold_s": 6.0, "max_duration_s": 60.0,
    # TCP noise: streams from the NAS host's stack (standing in for noise's kernel senders) into
    # agent stream sinks on NOISE_TCP_PORT0.. with the noise reader; each paced at the rate
    # (rcvbuf: 0 = tcp_rmem[1], the default of a socket without SO_RCVBUF)
    "noise_tcp_streams": 0, "noise_tcp_rate_kbps": 2000, "noise_tcp_rcvbuf_bytes": 0,
    # the NFS client's transport: udp (nas-server's one-port layout) or tcp (the NAS serves RPC
    # over its own copy of the agent's TCP, testbed/nas_tcp.py; ports from its portmapper)
    "transport": "tcp",
    # the storage protocol: nfs (over ``transport``), nbd or iscsi (the NAS serves nas-server's
    # NBD / iSCSI target cores over its own copy of the agent's TCP, testbed/nas_block.py), or
    # aoe (below)
    # simulation-only knobs
    "wire_latency_s": 0.0002,
    # The NAS as a disk: ``nas_threads`` nfsd threads, each request takes ``nas_service_s``
    # (FILE_SYNC write + fdatasync on a small NAS disk): 8 / 10 ms = 800 writes/s = 3.2 MB/s of
    # swap -- slower than the workload dirties memory and than the 4 kpps flood, as on the issue.
    "nas_threads": 8, "nas_service_s": 0.01, "image_pages": None, "max_writeback": 64,
    "crash_at_s": None,                 # MemoryStore.crash() at this virtual time (UNSTABLE tests)
    # A bug injected into the agent: [(t, task name), ...] -- at virtual time t the first live task
    # of that name (or whose name starts with it and "/") has RuntimeError raised at its yield
    # (Scheduler.throw). The run must end ``testbed_bug`` (testbed/watchdog.py), never deadlock.
    "task_fault_at_s": (),
    "swapoff_at_s": None,
    # File-backed consumers (client_agent/mm/filemap.py, docs/file-backed.md): ``consumer`` swap
    # (anon pages to swap.img), mmap (MAP_SHARED pages of file.img dirtied in place) or write
    # (write() pages under balance_dirty_pages); ``policy`` linux (only swap marks its transport
    # SOCK_MEMALLOC) or extended (the file's transport too: beyond Linux); vm.dirty_ratio and
    # vm.dirty_background_ratio.
    "consumer": "swap", "policy": "linux", "dirty_ratio": 20, "dirty_background_ratio": 10,
    # Fault injection (testbed chaos): seeded FaultInjector kwargs (loss, dup, reorder, delay_s) on
    # the client's transmit path (``fault_tx``) and on its receive path (``fault_rx``: the NAS's
    # transmissions); NAS restarts at these virtual times (a SIGKILL + restart: UNSTABLE data and
    # the DRC lost, a new verifier, requests in service dropped, nothing answered for
    # ``nas_down_s``); the flood alternating ``flood_on_off`` = (on_s, off_s).
    "fault_tx": None, "fault_rx": None, "nas_restart_at_s": (), "nas_down_s": 0.5,
    "flood_on_off": None,
    # Over TCP: the NAS resets every connection (RST, its listeners stay) at these virtual times
    # -- a middlebox or a NAS-side abort; the client reconnects (xs_connect's backoff).
    "nas_rst_at_s": (),
    # Hostile traffic (testbed.hostile): events (t, kind, frame) put on the wire -- toward the NAS
    # for the *_outside kinds, toward the agent otherwise; the export restricted to these networks
    # (None: open to all); the agent's net.ipv4.ipfrag_time.
    "hostile_events": (), "export_networks": None, "ipfrag_time_s": None,
    # A pcap of the client's side of the in-memory wire (both directions, virtual timestamps):
    # `testbed run NAME --sim` writes report/pcap/client.pcap. None: no capture.
    "pcap_path": None,
    # The agent's final snapshot in the real runs' shape (the control op ``snapshot``) as the
    # result's ``final_snapshot``: `testbed run NAME --sim` writes it to final_snapshot.json.
    "final_snapshot": False,
    # AoE (docs/aoe.md): ``storage`` nfs or aoe. With aoe the swap device is the AoE device
    # e<aoe_shelf>.<aoe_slot> served by the NAS's AoE target core (nas_server/aoe_target.py, each
    # request ``aoe_service_s``, at most ``aoe_bufcnt`` in service) on the same wire, ``policy``
    # linux (the Linux driver) or extended (beyond Linux); ``nfs_swap_pages`` > 0 adds a small
    # NFS swap device beside it (lower priority, SOCK_MEMALLOC as Linux marks it) so memalloc
    # sockets exist on the host.
    "storage": "nfs", "aoe_shelf": 1, "aoe_slot": 0, "aoe_service_s": 0.004, "aoe_bufcnt": 16,
    "nfs_swap_pages": 0,
}


class _LoopFault(ForwardsOnRx, FaultInjector):
    """A FaultInjector on the manual-clock loop: it releases its held (delayed/reordered) frames
    by its own timers, and hides them from ``poll_at`` (the agent's timer path runs stack timers,
    not device receives, so a held frame must not look like a due receive)."""

    def __init__(self, inner, seed, loop, **kw) -> None:
        super().__init__(inner, seed, **kw)
        self._loop = loop

    def transmit(self, frame: bytes, now: float) -> bool:
        super().transmit(frame, now)
        if self._held:
            self._loop.call_at(self._held[0][0], self._release)
        return True

    def _release(self) -> None:
        self.flush(self._loop.time())
        if self._held:
            self._loop.call_at(self._held[0][0], self._release)

    def poll_at(self) -> float | None:
        return self.inner.poll_at()


def _flood_frames(n_ports: int, size: int) -> list[bytes]:
    src = _pysocket.inet_aton(NOISE_IP)
    dst = _pysocket.inet_aton(AGENT_IP)
    out = []
    for i in range(n_ports):
        seg = udp_emit(src, dst, 40000 + i, NOISE_PORT0 + i, b"\xa5" * size)
        out.append(eth_emit(MAC_AGENT, MAC_NOISE, ETH_P_IP,
                            emit_header(src, dst, IPPROTO_UDP, len(seg), ident=i) + seg))
    return out


def _final_snapshot(host: Host, swap, fm, swaps) -> dict:
    """``host``'s snapshot as a real run's agent answers the control op ``snapshot``
    (client_agent.agent.Agent.snapshot, the same keys): ``swap`` the first area (an idle one for
    a file consumer, as fileon leaves it), ``transport`` the first area's NFS client, ``filemap``
    and ``file_transport`` the file consumer's. ``rusage`` is None: the process's CPU time is no
    figure of the simulation (and would make two runs of one seed differ)."""
    from client_agent.agent import Agent
    view = object.__new__(Agent)            # the Agent's snapshot over the sim's Host, read-only
    view.__dict__.update(host.__dict__)
    view.swap, view.filemap = swap, fm
    view.transport = next((d.backend.transport for d in swaps
                           if getattr(d.backend, "transport", None) is not None), None) if fm is None else None
    view.file_transport = getattr(fm.backend, "transport", None) if fm is not None else None
    return {**view.snapshot(), "rusage": None}


def run_sim(params: dict, seed: int | None = None) -> dict:
    p = dict(DEFAULTS)
    p.update(params)
    if seed is not None:
        p["seed"] = seed
    seed = p["seed"]
    if p["stall_threshold_s"] < 3 * p["timeo_max_s"]:
        raise ValueError(f"stall_threshold_s={p['stall_threshold_s']} must be >= 3 x timeo_max_s "
                         f"({3 * p['timeo_max_s']}): a slow server is not a deadlock")
    fault_seed = seed
    if p.get("client_faults") and not (p["fault_tx"] or p["fault_rx"]):
        # the scenario's faults on the client's NIC, both ways, as client-agent --fault applies
        # them on real packets (phy/fault.py BothWays), seeded by the spec's seed if it has one
        spec = parse_fault_spec(p["client_faults"])
        kw = {"loss": spec.get("loss", 0.0), "dup": spec.get("dup", 0.0), "reorder": spec.get("reorder", 0.0),
              "delay_s": spec.get("delay_ms", 0.0) / 1000}
        p["fault_tx"], p["fault_rx"] = kw, dict(kw)
        fault_seed = spec.get("seed", seed)
    rng = random.Random(f"flood:{seed}")
    loop = Loop(ManualClock())
    wire = WirePair(loop, latency_s=p["wire_latency_s"], mac_a=MAC_AGENT, mac_b=MAC_NAS)
    agent_dev = wire.a
    if p["fault_tx"]:
        agent_dev = _LoopFault(wire.a, f"fault_tx:{fault_seed}", loop, **p["fault_tx"])
    faulty_dev = agent_dev
    if p["pcap_path"]:
        agent_dev = PcapTap(agent_dev, p["pcap_path"])
    if p.get("offloads"):
        # the scenario's NIC offloads, done as the kernel behind a packet socket does them
        agent_dev = SoftNic(agent_dev, parse_offloads(p["offloads"]))
    # what the snapshot's "nic" says (the scenario's ``nic`` is the agent's on real packets only)
    agent_dev.nic_kind = "in-memory wire (soft NIC)" if p.get("offloads") else "in-memory wire"
    logs: list[tuple[float, str]] = []
    agent = Host(loop, agent_dev, ip=AGENT_IP, prefix_len=24, pool_pages=p["pool_pages"],
                 min_free_kbytes=p["min_free_kbytes"],
                 watermark_scale_factor=p["watermark_scale_factor"], seed=seed,
                 log=lambda line: logs.append((round(loop.time(), 6), line)),
                 trace_replies=p["storage"] == "aoe")
    alloc = agent.alloc
    agent.stack.policy.pfmemalloc_demux_drop = bool(p["pfmemalloc_demux_drop"])
    agent.stack.neigh.add_permanent(_pysocket.inet_aton(NAS_IP), MAC_NAS, 0.0)

    # -- the NAS host ---------------------------------------------------------------------------
    image_pages = p["image_pages"] or p["workload_pages"] + 64
    store = MemoryStore()
    store.add_export("swap", [ipaddress.ip_network(n) for n in p["export_networks"] or ()])
    if p.get("aoe_service_ms") is not None:
        p["aoe_service_s"] = p["aoe_service_ms"] / 1000.0
    if p["storage"] not in ("nfs", "nbd", "iscsi", "aoe"):
        raise ValueError(f"storage={p['storage']!r}: nfs, nbd, iscsi or aoe")
    aoe = p["storage"] == "aoe"
    block = p["storage"] in ("nbd", "iscsi")
    if aoe and p["consumer"] != "swap":
        raise ValueError("storage=aoe: the AoE device is a swap device; use consumer=swap")
    img = store.create_image("swap", "swap.img", (p["nfs_swap_pages"] if aoe else image_pages) * PAGE_SIZE
                             ) if not aoe or p["nfs_swap_pages"] else None
    nfs_img = img
    if aoe:
        img = store.create_image("swap", "aoe.img", image_pages * PAGE_SIZE)
    consumer = p["consumer"]
    if consumer not in ("swap", "mmap", "write") or p["policy"] not in ("linux", "extended"):
        raise ValueError(f"consumer={consumer!r} policy={p['policy']!r}: consumer is swap, mmap "
                         f"or write; policy is linux or extended")
    file_img = (store.create_image("swap", "file.img", image_pages * PAGE_SIZE)
                if consumer != "swap" else None)
    core = NasCore(store)
    nas_alloc = PageAllocator(NAS_POOL_PAGES, 128)
    nas_sched = Scheduler(nas_alloc)
    nas_dev = wire.b
    if p["fault_rx"]:
        nas_dev = _LoopFault(wire.b, f"fault_rx:{fault_seed}", loop, **p["fault_rx"])
    if p["transport"] not in ("udp", "tcp"):
        raise ValueError(f"transport={p['transport']!r}: udp or tcp")
    storage = p["storage"]
    if block and consumer != "swap":
        raise ValueError(f"storage={storage!r} serves swap only; consumer={consumer!r} needs nfs")
    nas = Stack(nas_alloc, nas_dev, MAC_NAS, NAS_IP, 24, nas_sched, seed=seed + 1)
    nas.neigh.add_permanent(_pysocket.inet_aton(AGENT_IP), MAC_AGENT, 0.0)
    nas.neigh.add_permanent(_pysocket.inet_aton(NOISE_IP), MAC_NOISE, 0.0)
    if p["ipfrag_time_s"] is not None:
        agent.stack.reasm.time_s = p["ipfrag_time_s"]
    nsk = nas.udp_socket()
    nsk.bind(("0.0.0.0", 2049))
    nsk.rcvbuf = 64 << 20
    nas_tcp = StackRpcServer(nas) if p["transport"] == "tcp" and not block else None
    nas_blk = block_target = None
    if storage == "nbd":
        block_target = NbdTarget(store)
        nas_blk = StackBlockServer(nas, block_target, NBD_PORT, "nbd", service_s=p["nas_service_s"],
                                   threads=p["nas_threads"])
    elif storage == "iscsi":
        block_target = IscsiTarget(store)
        nas_blk = StackBlockServer(nas, block_target, ISCSI_PORT, "iscsi",
                                   service_s=p["nas_service_s"], threads=p["nas_threads"])
    nas_state = {"scheduled": False, "busy": 0, "epoch": 0, "down_until": -1.0, "restarts": 0,
                 "dropped_down": 0, "timer_at": None}
    nas_queue: deque = deque()
    threads, service_s = p["nas_threads"], p["nas_service_s"]

    def nas_done(data, addr, epoch=0, conn=None):
        if epoch != nas_state["epoch"]:
            return                      # accepted by a NAS process that was killed since
        now = loop.time()
        if conn is None:
            for reply in core.handle(data, addr, now, "udp"):
                nsk.sendto(reply, addr, now)
        else:
            for reply in core.handle(data, addr, now, "tcp"):
                nas_tcp.reply(conn, reply, now)
            nas_arm()
        nas_state["busy"] -= 1
        nas_dispatch()

    def nas_dispatch():
        while nas_queue and nas_state["busy"] < threads:
            data, addr, *conn = nas_queue.popleft()
            conn = conn[0] if conn else None
            nas_state["busy"] += 1
            if service_s > 0:
                loop.call_at(loop.time() + service_s, nas_done, data, addr, nas_state["epoch"],
                             conn)
            else:
                nas_done(data, addr, nas_state["epoch"], conn)

    def nas_poll():
        nas_state["scheduled"] = False
        now = loop.time()
        more = nas.poll(now, 4096)
        while True:
            got = nsk.recvfrom()
            if got is None:
                break
            if now < nas_state["down_until"]:
                nas_state["dropped_down"] += 1      # no process bound to 2049: ICMP-less loss
                continue
            nas_queue.append(got)
        if nas_tcp is not None:
            nas_queue.extend(nas_tcp.pump(now))
            nas_arm()
        if nas_blk is not None:
            nas_blk.pump(now)
            nas_arm()
        nas_dispatch()
        if more is not None and more <= now:
            schedule_nas()

    def nas_timer():
        nas_state["timer_at"] = None
        nas_poll()

    def nas_arm():
        """The NAS stack's TCP timers (retransmit, delayed ACK) as a loop timer."""
        d = nas.next_deadline()
        if nas_blk is not None and nas_blk.next_due() is not None:
            d = nas_blk.next_due() if d is None else min(d, nas_blk.next_due())
        at = nas_state["timer_at"]
        if d is not None and (at is None or d < at):
            nas_state["timer_at"] = d
            loop.call_at(d, nas_timer)

    def schedule_nas():
        if not nas_state["scheduled"]:
            nas_state["scheduled"] = True
            loop.call_soon(nas_poll)

    wire.b.on_rx = schedule_nas
    aoe_target = None
    if aoe:
        from nas_server.aoe_target import AoeTarget
        from protocols.aoe import ETH_P_AOE
        aoe_target = AoeTarget(MAC_NAS, 1500, bufcnt=p["aoe_bufcnt"], service_time_s=p["aoe_service_s"])
        aoe_target.add_disk(p["aoe_shelf"], p["aoe_slot"], img, "swap/aoe.img")

        def nas_aoe_rcv(skb, payload, pkt_type, now):
            replies = aoe_target.handle(skb.data, now)
            nas.consume_skb(skb, "aoe_target")
            for at, fr in replies:
                loop.call_at(at, lambda f=fr: nas_dev.transmit(f, loop.time()))

        nas.dev_add_pack(ETH_P_AOE, nas_aoe_rcv)

    # -- the agent's services -------------------------------------------------------------------
    for i in range(p["noise_sockets"]):
        agent.sink(NOISE_PORT0 + i, p["noise_reader"], p["noise_rcvbuf_bytes"])
    device = {"kind": "nfs", "server": NAS_IP, "port": 2049, "export": "swap",
              "proto": p["transport"],
              "image": "swap.img", "slots": p["slots"], "timeo_s": p["timeo_s"],
              "retrans": p["retrans"], "timeo_max_s": p["timeo_max_s"], "wsize": p["wsize"],
              "stable": p["stable"]}
    if block:
        device = block_device_spec(storage, NAS_IP, "swap", "swap.img", queue_depth=p["slots"])
    setup = {"nr_slots": None}
    fm = None
    nfs_swap = nfs_activate = None
    if aoe:
        swap, activate = agent.add_swap({"kind": "aoe", "shelf": p["aoe_shelf"], "slot": p["aoe_slot"],
                                         "policy": p["policy"]}, memalloc=bool(p["memalloc"]),
                                        max_writeback=p["max_writeback"])
        if p["nfs_swap_pages"]:
            nfs_swap, nfs_activate = agent.add_swap(device, memalloc=True,
                                                    max_writeback=p["max_writeback"])
    elif consumer == "swap":
        swap, activate = agent.add_swap(device, memalloc=bool(p["memalloc"]),
                                        max_writeback=p["max_writeback"])
    else:
        # A swapless client writing a file on the NAS: the one transport is the file mount's, and
        # only policy "extended" marks it SOCK_MEMALLOC (Linux marks swap transports only).
        fm, activate = agent.add_file({**device, "image": "file.img"}, policy=p["policy"],
                                      dirty_ratio=p["dirty_ratio"],
                                      dirty_background_ratio=p["dirty_background_ratio"],
                                      max_writeback=p["max_writeback"])
        # no swap device: an idle one (never swapped on, not kswapd's) stands in for the report's
        # "swap" fields and the timeline's swap columns, as before file consumers existed
        swap = SwapDevice(agent.alloc, agent.sched, seed=seed)
    backend = (fm or swap).backend
    if aoe:
        transport = nfs_swap.backend.transport if nfs_swap is not None else None
    else:
        transport = backend if block else backend.transport    # a block device is its own transport
    swaps = [d for d in (swap, nfs_swap) if d is not None]
    kswapd = agent.kswapd

    def setup_task():
        if fm is not None:
            setup["file_pages"] = yield from activate
            fm.start_workload(consumer, p["workload_pages"], p["workload_rate_pps"])
            return
        if nfs_activate is not None:
            setup["nfs_slots"] = yield from nfs_activate
        setup["nr_slots"] = yield from activate
        swap.start_workload(p["workload_pages"], p["workload_rate_pps"])

    agent.sched.spawn("swapon", setup_task(), errors=op_errors())

    # -- the flood ------------------------------------------------------------------------------
    frames = _flood_frames(p["noise_sockets"], p["flood_size"])
    pps = p["flood_pps"]

    on_off = p["flood_on_off"]
    flood_state = {"toggles": 0, "on": True}

    def flood():
        now = loop.time()
        if on_off:
            on = (now % (on_off[0] + on_off[1])) < on_off[0]
            if on != flood_state["on"]:
                flood_state["on"] = on
                flood_state["toggles"] += 1
            if not on:
                loop.call_at(now + rng.expovariate(pps), flood)
                return
        wire.b.transmit(frames[rng.randrange(len(frames))], now)
        loop.call_at(now + rng.expovariate(pps), flood)

    if pps > 0 and frames:
        loop.call_at(rng.expovariate(pps), flood)

    # -- TCP noise: the NAS stack's TCP streaming into the agent's stream sinks -------------------
    tcp_noise = []
    if p["noise_tcp_streams"]:
        chunk = max(1, int(p["noise_tcp_rate_kbps"] * 1000 * NOISE_TCP_TICK_S))
        payload = bytes(rng.getrandbits(8) for _ in range(chunk))

        def tcp_noise_tick():
            now = loop.time()
            for sk in tcp_noise:
                sk.send(payload, now)           # -EAGAIN while the window and sndbuf are full
            nas_arm()
            loop.call_at(now + NOISE_TCP_TICK_S, tcp_noise_tick)

        for i in range(p["noise_tcp_streams"]):
            agent.sink(NOISE_TCP_PORT0 + i, p["noise_reader"], p["noise_tcp_rcvbuf_bytes"] or None,
                       kind="tcp")
            sk = nas.tcp_socket()
            sk.connect((AGENT_IP, NOISE_TCP_PORT0 + i), 0.0)
            tcp_noise.append(sk)
        nas_arm()
        loop.call_at(NOISE_TCP_TICK_S, tcp_noise_tick)

    # -- faults on the NAS ----------------------------------------------------------------------
    if p["crash_at_s"] is not None:
        loop.call_at(p["crash_at_s"], lambda: store.crash(b"crashed1"))
    def nas_restart(i):
        now = loop.time()
        store.crash(f"restart{i % 10}".encode()[:8].ljust(8, b"-"))
        core.drc = type(core.drc)()
        nas_queue.clear()
        nas_state["busy"] = 0
        nas_state["epoch"] += 1
        nas_state["restarts"] += 1
        nas_state["down_until"] = now + p["nas_down_s"]
        if nas_tcp is not None:
            # the process dies: its connections reset, no listener while it is down
            nas_tcp.restart(now)
            # back at the end of the LAST restart's down time (restarts may overlap)
            loop.call_at(nas_state["down_until"],
                         lambda: nas_tcp.listen() if loop.time() >= nas_state["down_until"] else None)
            nas_arm()
        if nas_blk is not None:
            nas_blk.restart(now)
            loop.call_at(nas_state["down_until"], nas_blk.listen)
            nas_arm()

    for t, kind, frame in p["hostile_events"] or ():
        end = wire.a if kind.endswith("_outside") else wire.b     # wire.a.transmit reaches the NAS
        loop.call_at(t, lambda e=end, f=frame: e.transmit(f, loop.time()))
    for i, t in enumerate(p["nas_restart_at_s"] or ()):
        loop.call_at(t, nas_restart, i)

    def nas_rst():
        if nas_tcp is not None:
            nas_state["rsts"] = nas_state.get("rsts", 0) + nas_tcp.reset_connections(loop.time())
            nas_arm()
    for t in p["nas_rst_at_s"] or ():
        loop.call_at(t, nas_rst)
    if p["swapoff_at_s"] is not None:
        loop.call_at(p["swapoff_at_s"], swap.swapoff)

    def task_fault(t, name):
        sched = agent.sched
        task = next((k for k in sched.tasks.values()
                     if k.name == name or k.name.startswith(name + "/")), None)
        if task is None:
            injected.append({"t": t, "task": name, "thrown": False})
            return
        injected.append({"t": t, "task": task.name, "thrown": True})
        sched.throw(task, RuntimeError(f"fault injected into {task.name} at t={t} s (sim)"))
    injected: list[dict] = []
    for t, name in p["task_fault_at_s"] or ():
        loop.call_at(t, task_fault, t, name)

    # -- the watchdog: testbed.watchdog's rules, fed a /proc-shaped sample every SAMPLE_S -------
    atomic_floor = alloc.watermark_floor(GFP_ATOMIC)
    wd = Watchdog(p["stall_threshold_s"])
    st = {"stop": False}
    timeline: list[dict] = []
    stack = agent.stack
    vm = alloc.vmstat

    def sample():
        now = round(loop.time(), 6)
        if tcp_noise:
            agent.service_stats()               # the stream sinks' held_max, per sample
        free = alloc.nr_free
        v = alloc.vmstat
        low_point = alloc.nr_free_lowwater
        alloc.reset_lowwater()
        timeline.append({
            "t": now, "free": free, "free_low_point": low_point, "min": alloc.wmark_min,
            "low": alloc.wmark_low, "high": alloc.wmark_high,
            "reserve_in_use": max(0, alloc.wmark_min - low_point),
            "nr_writeback": v["nr_writeback"], "pswpout": v["pswpout"],
            "acked": sum(len(d.swap_map) for d in swaps), "workload_allocated": swap.workload["allocated"],
            "drops": {k: n for k, n in stack.drop_reasons.items() if n},
        })
        snap = {"alloc": {"zoneinfo": {"free": free, "low": alloc.wmark_low, "high": alloc.wmark_high},
                          "vmstat": v, "kswapd": {"wanted": alloc.kswapd_wanted},
                          "reserve": {"atomic_floor": atomic_floor, "nr_free_lowwater": low_point}},
                "workload": swap.workload,
                "swap": {"writeback": sum(len(d.writeback) for d in swaps)},
                "sched": agent.sched.stats()}
        if fm is not None:
            snap["filemap"] = {"active": True, "throttled_writers": fm.throttled_writers,
                               "nr_writeback": len(fm.writeback), "workload": fm.workload}
        if wd.feed(now, snap):
            st["stop"] = True
        else:
            loop.call_at(now + SAMPLE_S, sample)

    loop.call_at(SAMPLE_S, sample)
    loop.run_until(lambda: st["stop"], p["max_duration_s"])
    duration = round(loop.time(), 6)
    outcome = wd.outcome or "timeout"
    t_below = wd.first_below_floor_s
    t_stall = wd.time_to_stall_s if outcome == "deadlock" else None
    t_recover = wd.decided_at if outcome == "recovered" else None

    # -- verification: read every acked slot back from the NAS's store ---------------------------
    verified = failures = 0
    for slot, (page_id, gen) in swap.swap_map.items():
        if img.read(slot * PAGE_SIZE, PAGE_SIZE) == page_bytes(seed, page_id, gen):
            verified += 1
        else:
            failures += 1

    nfs_verified = nfs_failures = 0
    if nfs_swap is not None:
        for slot, (page_id, gen) in nfs_swap.swap_map.items():
            if nfs_img.read(slot * PAGE_SIZE, PAGE_SIZE) == page_bytes(seed, page_id, gen):
                nfs_verified += 1
            else:
                nfs_failures += 1

    fverified = ffailures = 0
    if fm is not None:
        for index, gen in fm.acked.items():
            if file_img.read(index * PAGE_SIZE, PAGE_SIZE) == file_page_bytes(seed, index, gen):
                fverified += 1
            else:
                ffailures += 1

    # the lowest free count seen (between samples too); the pool's size if nothing was sampled
    reserve_low = min(alloc.nr_pages if wd.reserve_low_pages is None else wd.reserve_low_pages,
                      alloc.nr_pages)
    final_snap = _final_snapshot(agent, swap, fm, swaps) if p["final_snapshot"] else None
    snap_alloc = alloc.snapshot()
    # a block device (nbd/iscsi) is no RPC client: no RPC counters, rpc_retrans None; its own
    # resend count is ``retransmissions`` (requests_requeued), an AoE device's aoe_retransmit
    tsnap = transport.snapshot() if transport is not None and not block else {"counters": {}}
    rpc_retrans = tsnap["counters"].get("rpc_retrans")
    c = stack.counters
    result = {
        "name": p["name"], "seed": seed, "outcome": outcome,
        "duration_s": duration,
        "t_below_atomic_floor_s": t_below,
        "t_stall_s": t_stall,
        "time_to_stall_s": t_stall,
        "t_recover_s": t_recover,
        "time_to_recover_s": (round(t_recover - t_below, 6)
                              if t_recover is not None and t_below is not None else None),
        "pswpout": vm["pswpout"], "pgscan_kswapd": vm["pgscan_kswapd"],
        "pgsteal_kswapd": vm["pgsteal_kswapd"], "allocstall": vm["allocstall"],
        "pgscan_direct_throttle": vm["pgscan_direct_throttle"],
        "nr_writeback": vm["nr_writeback"],
        "acked_pages": len(swap.swap_map), "pages_verified": verified,
        "verify_failures": failures,
        "PFMemallocDrop": c["PFMemallocDrop"], "rx_nobuf": c["rx_nobuf"],
        "tx_nobuf": c["tx_nobuf"], "rx_pfmemalloc": c["rx_pfmemalloc"],
        "drop_reasons": {k: n for k, n in stack.drop_reasons.items() if n},
        "reserve_low_point": reserve_low,
        "reserve_in_use_max": max(0, alloc.wmark_min - reserve_low),
        "zoneinfo": alloc.zoneinfo(), "atomic_floor": atomic_floor,
        "rpc": tsnap["counters"], "rpc_retrans": rpc_retrans,
        "retransmissions": ({"counter": "requests_requeued", "count": transport.counters["requests_requeued"]}
                            if block else None if rpc_retrans is None
                            else {"counter": "rpc_retrans", "count": rpc_retrans}),
        "swap": swap_snapshot(swap),
        "workload": dict(swap.workload),
        "nr_slots": setup["nr_slots"],
        "pgalloc_pfmemalloc": snap_alloc["reserve"]["pgalloc_pfmemalloc"],
        "nic": {"kind": agent_dev.nic_kind, "offloads": device_caps(agent_dev).names(),
                **getattr(agent_dev, "soft_counters", {}),
                **({"ignored": {"nic": p["nic"]}} if p.get("nic") else {})},
        "nas": {"writes": core.proc_calls.get("NFS3_WRITE", 0),
                "commits": core.proc_calls.get("NFS3_COMMIT", 0),
                "drc_hits": core.counters.get("drc_hits", 0)},
        "storage": storage,
        **({"tcp_noise": {k: v for k, v in agent.service_stats().items() if k.startswith("tcp:")},
            "tcp_noise_sent": sum(sk.counters["bytes_acked"] for sk in tcp_noise)}
           if tcp_noise else {}),
        "logs": logs,
        "timeline": timeline,
        # a task that raised: a testbed bug (outcome testbed_bug), with its traceback
        "tasks_crashed": agent.sched.counters["tasks_crashed"],
        "task_crashes": [dict(c) for c in agent.sched.crashes],
        "task_faults_injected": injected,
        "watchdog_reasons": list(wd.reasons),
    }

    if final_snap is not None:
        result["final_snapshot"] = final_snap
    if aoe:
        d = swap.backend.dev
        aoe_trace = agent.aoe_trace.fates if agent.aoe_trace is not None else ()
        result.update({
            "storage": "aoe", "policy": p["policy"], "beyond_linux": p["policy"] == "extended",
            "memalloc_socks": alloc.memalloc_socks,
            "aoe": swap.backend.snapshot(), "aoe_target": aoe_target.snapshot(),
            "rx_pfmemalloc_proto_drop": c["rx_pfmemalloc_proto_drop"],
            "aoe_rsp_fates": dict(__import__("collections").Counter(f for _t, f in aoe_trace)),
            "nfs_swap": ({"acked_pages": len(nfs_swap.swap_map), "pages_verified": nfs_verified,
                          "verify_failures": nfs_failures, "nr_slots": setup.get("nfs_slots")}
                         if nfs_swap is not None else None),
            "aoe_retransmit": d.counters.get("retransmit", 0),
            "retransmissions": {"counter": "aoe_retransmit", "count": d.counters.get("retransmit", 0)},
        })
    if fm is not None:
        result.update({
            "consumer": consumer, "policy": p["policy"],
            "beyond_linux": p["policy"] == "extended",
            "acked_pages": len(fm.acked), "pages_verified": fverified,
            "verify_failures": ffailures, "workload": dict(fm.workload),
            "filemap": fm.snapshot(), "nr_dirty": len(fm.dirty),
            "nr_written": vm.get("nr_written", 0), "nr_dirtied": vm.get("nr_dirtied", 0),
            "pgpgout": vm.get("pgpgout", 0),
        })

    # -- teardown and leak check -----------------------------------------------------------------
    for d in swaps:
        d.swapoff()
    kswapd.stop()
    for d in swaps:
        d.release()
    if aoe:
        swap.backend.close()
    if fm is not None:
        fm.detach()
        fm.release()
    if transport is not None:
        transport.close()
    for task in list(agent.sched.tasks.values()):
        agent.sched.kill(task)
    agent.close_services()
    result["faults"] = {
        "tx": dict(faulty_dev.counters) if p["fault_tx"] else None,
        "rx": dict(nas_dev.counters) if p["fault_rx"] else None,
        "nas_restarts": nas_state["restarts"], "nas_rsts": nas_state.get("rsts", 0), "nas_dropped_while_down": nas_state["dropped_down"],
        "flood_toggles": flood_state["toggles"],
    }
    ip = stack.snmp["Ip"]
    result["hostile"] = {
        "agent": {"Ip": {k: ip[k] for k in ("InHdrErrors", "InCsumErrors", "ReasmTimeout", "ReasmFails")},
                  "drop_reasons": {k: n for k, n in stack.drop_reasons.items() if n},
                  "ipfrag_queued": stack.reasm.queued(),
                  "ArpCache": dict(stack.snmp["ArpCache"])},
        "nas": {"counters": dict(core.counters), "nfs_status": dict(core.nfs_status)},
    }
    if block:
        # the block device's own counters (nbd: NBD_CMD_*; iscsi: iscsi_stats) and the target's
        result["block"] = {"agent": {k: v for k, v in transport.snapshot().items() if k != "socket"},
                           "nas_server": nas_blk.snapshot()}
    if nas_tcp is not None or nas_blk is not None:
        ext = stack.snmp["TcpExt"]
        result["tcp"] = {
            "agent": {"Tcp": {k: v for k, v in stack.snmp["Tcp"].items() if v},
                      "TcpExt": {k: v for k, v in ext.items() if v}},
            # (no RPC transport: an AoE run with no NFS swap area beside it)
            # (a block device has only connect_count/connect_fails of these: the others are not made up)
            "rpc": {k: transport.counters[k] for k in
                    ("connect_count", "connect_fails", "rpc_reconnects", "record_errors",
                     "rpc_retrans", "rpc_major_timeouts") if transport is not None and k in transport.counters},
            "nas_server": {k: v for k, v in (nas_tcp or nas_blk).snapshot().items()
                           if k not in ("connections", "target")},
            "nas": {"Tcp": {k: v for k, v in nas.snmp["Tcp"].items() if v}},
        }
    # netns exit frees every reassembly queue (inet_frags_fini), every TCP socket still
    # closing (orphans in FIN_WAIT/LAST_ACK: their pages are not a leak) and every TIME_WAIT
    # record (inet_twsk_purge; they hold no pages)
    stack.reasm.run_timers(float("inf"))
    for sk in stack.tcp.sockets:
        sk.abort(loop.time())
    stack.tcp.inet_twsk_purge()
    if p["pcap_path"]:
        agent_dev.close()
    result["leaked_tasks"] = sorted(t.name for t in agent.sched.tasks.values())
    result["leaked_sockets"] = len(stack.sockets) + len(stack.udp_ports)
    result["memalloc_socks_after_swapoff"] = alloc.memalloc_socks
    result["leaked_pages"] = alloc.nr_pages - alloc.nr_free
    result["leaked_owners"] = alloc.owner_pages()
    return result
