"""Section "wb_inproc": the agent's CPU per swapped-out page with no kernel and no NAS to speak of.

The ``writeback`` section measures MiB/s on real packets, where the agent's CPU per page mixes its
own Python with the kernel's work in its system calls, and the two cores are shared with the NAS.
This section prices the agent's own path alone, deterministically, without root:

- the agent is ``client_agent.host.Host`` -- the composition ``client-agent`` runs -- on one end of
  the in-memory wire (phy/wire_pair.py) with a manual clock and client-agent's default offloads
  (``tx,rx``: a checksum the stack leaves partial is the kernel's work on real packets, not
  finished here), swap over NFS/UDP (16 slots,
  FILE_SYNC, 4 KiB WRITEs) and a workload larger than its pool, so kswapd streams pages;
- the NAS is a *responder* on the other end: for the first fragment of each WRITE call it sends
  back a canned successful WRITE3res (FILE_SYNC, count 4096, no wcc attributes, UDP checksum 0 --
  RFC 768 "no checksum") with the call's xid. It stores nothing; the agent cannot tell (a reply is
  a reply), and its own CPU time (the thread's clock around each of its polls) is subtracted;
- the swap device is activated without MNT/LOOKUP (the backend gets a file handle directly): the
  measured window is writeback only.

Figures per MTU (1500: each WRITE three IP fragments the agent builds and checksums; 9000: one
datagram): ``mtuM.agent_cpu_us_per_page`` = (process CPU time over the run - the responder's) /
pages acknowledged, with ``mtuM.rpc_min_cpu_us_per_page`` as its baseline: the CPU the
*reference client* of the ``writeback`` section spends in Python per WRITE -- the page's bytes
(its ``page_data``), encode the call (``nfs3.encode_write_call``), decode the reply -- the part of
its work that is not the kernel's. The ratio says how many times the agent's whole path (kswapd,
the page, the RPC slot and task, UDP/IP, fragments, the ring, the reply's receive path) costs that
floor. No target: an explanation of the ``writeback`` figures, not a goal.
"""

from __future__ import annotations

import gc
import socket as _pysocket
import struct
import time

from client_agent.phy.device import ForwardsOnRx

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult

AGENT_IP, NAS_IP = "198.18.0.2", "198.18.0.1"
MAC_AGENT, MAC_NAS = b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01"
POOL_PAGES = 8192
MIN_FREE_KBYTES = 2048
SLOTS = 16
QUICK_PAGES = 6000
FULL_PAGES = 30000
MTUS = (1500, 9000)
_VERF = b"wbinproc"
RUN_LIMIT_S = 600.0          # virtual seconds; the run takes well under one


def _reply_template() -> bytes:
    """Ethernet + IPv4 + UDP + a successful WRITE3res, xid 0 (patched per reply)."""
    body = struct.pack("!IIIIIIIII", 0, 1, 0, 0, 0, 0, 0, 0, 0)    # xid REPLY ACCEPTED AUTH_NONE/0 SUCCESS NFS3_OK wcc: no pre, no post
    body += struct.pack("!II", 4096, 2) + _VERF                     # count, FILE_SYNC, verf
    from client_agent.wire.ipv4 import emit_header
    udp = struct.pack("!HHHH", 2049, 0, 8 + len(body), 0)
    ip = emit_header(_pysocket.inet_aton(NAS_IP), _pysocket.inet_aton(AGENT_IP), 17, len(udp) + len(body))
    return MAC_AGENT + MAC_NAS + b"\x08\x00" + ip + udp + body


class KernelSideNic(ForwardsOnRx):
    """The agent's end of the wire with client-agent's default offloads (``tx,rx``): the stack
    leaves checksums partial as it does on the ring NIC, and -- as the kernel's C would finish them
    there, outside the agent's CPU budget -- nothing here finishes them: the responder does not
    read them. Only checksum offloads: a GSO buffer would need cutting."""

    def __init__(self, inner) -> None:
        from client_agent.agent import DEFAULT_OFFLOADS
        from client_agent.phy.caps import parse_offloads
        self.inner = inner
        self.caps = parse_offloads(DEFAULT_OFFLOADS)
        if self.caps.tso or self.caps.ufo:
            raise ValueError(f"client-agent's default offloads {DEFAULT_OFFLOADS} include GSO; "
                             "this bench does not cut GSO buffers")
        self.mac, self.mtu = inner.mac, inner.mtu
        self.transmit = inner.transmit
        self.receive = inner.receive
        self.poll_at = inner.poll_at


class Responder:
    """The NAS end: one canned WRITE reply per WRITE call (its first fragment), nothing else."""

    def __init__(self, end) -> None:
        self.end = end
        self.tmpl = _reply_template()
        self.calls = 0

    def handle(self, frame: bytes, now: float) -> None:
        # IPv4, UDP, first fragment (offset 0), to port 2049: the RPC header follows the UDP header
        if frame[23] != 17 or (frame[20] & 0x1F) or frame[21] or frame[36:38] != b"\x08\x01":
            return
        t = self.tmpl
        sport = frame[34:36]
        self.end.transmit(t[:36] + sport + t[38:42] + frame[42:46] + t[46:], now)
        self.calls += 1


def measure(mtu: int, pages: int, seed: int = 1) -> dict:
    """One run: ``pages`` pages acknowledged through the agent at ``mtu``. Returns the figures."""
    from client_agent.agent import tune_gc
    from client_agent.host import Host
    from client_agent.loop import Loop, ManualClock
    from client_agent.phy.wire_pair import WirePair

    loop = Loop(ManualClock())
    wire = WirePair(loop, latency_s=0.0001, mtu=mtu, mac_a=MAC_AGENT, mac_b=MAC_NAS)
    agent = Host(loop, KernelSideNic(wire.a), ip=AGENT_IP, prefix_len=24, pool_pages=POOL_PAGES,
                 min_free_kbytes=MIN_FREE_KBYTES, seed=seed)
    agent.stack.neigh.add_permanent(_pysocket.inet_aton(NAS_IP), MAC_NAS, 0.0)
    nas = Responder(wire.b)
    state = {"scheduled": False, "nas_cpu_s": 0.0, "frames": 0}

    def nas_poll():
        t = time.thread_time()
        state["scheduled"] = False
        now = loop.time()
        for f in wire.b.receive(now, 1 << 30):
            state["frames"] += 1
            nas.handle(f, now)
        state["nas_cpu_s"] += time.thread_time() - t

    def schedule_nas():
        if not state["scheduled"]:
            state["scheduled"] = True
            loop.call_soon(nas_poll)

    wire.b.on_rx = schedule_nas
    swap, _activate = agent.add_swap({"kind": "nfs", "server": NAS_IP, "port": 2049, "export": "swap",
                                      "proto": "udp", "image": "swap.img", "slots": SLOTS,
                                      "stable": "FILE_SYNC", "wsize": 4096})
    backend = swap.backend
    image_pages = pages + POOL_PAGES + 4096

    def activate():                       # MNT + LOOKUP skipped: a file handle of the right size
        backend.fh, backend.size_bytes = b"\x01" * 32, image_pages * 4096
        return image_pages
        yield                             # a generator, as StorageBackend.activate is

    backend.activate = activate
    st = {"slots": None}

    def setup():
        st["slots"] = yield from swap.swapon(backend)
        swap.start_workload(pages + POOL_PAGES + 2048, 0)

    agent.sched.spawn("swapon", setup())
    threshold = gc.get_threshold()
    tune_gc()                             # as client-agent does once it is set up
    try:
        t0 = time.process_time()
        loop.run_until(lambda: swap.counters["acked"] >= pages, RUN_LIMIT_S)
        cpu = time.process_time() - t0
    finally:
        gc.unfreeze()                     # the bench process's own collector as it was
        gc.set_threshold(*threshold)
    acked = swap.counters["acked"]
    if acked < pages:
        raise BenchError(f"wb_inproc mtu {mtu}: {acked} of {pages} pages acknowledged within {RUN_LIMIT_S} s "
                         f"of virtual time (writeback {swap.snapshot().get('writeback')}, retransmissions "
                         f"{backend.transport.xprt.counters.get('rpc_retrans', 0)}); the agent's writeback stalled")
    nas_cpu = state["nas_cpu_s"]                 # the responder's share, timed inside it
    vm = agent.alloc.vmstat
    return {"mtu": mtu, "pages": acked, "cpu_s": cpu, "responder_cpu_s": nas_cpu,
            "us_per_page": (cpu - nas_cpu) * 1e6 / acked, "frames_to_nas": state["frames"],
            "writes": nas.calls, "virtual_s": loop.time(), "pswpout": vm["pswpout"],
            "rpc_retrans": backend.transport.xprt.counters.get("rpc_retrans", 0),
            "tasks_spawned": agent.sched.counters["tasks_spawned"], "pgalloc": vm["pgalloc_normal"]}


def rpc_floor_us(n: int = 3000, seed: int = 1) -> float:
    """The reference client's Python per WRITE (nas_server/refclient.py write_pages): the page's
    bytes (its ``page_data``), encode the call, decode a reply -- CPU µs per page."""
    from nas_server.refclient import page_data
    from protocols import nfs3, rpc
    reply = _reply_template()[42:]
    fh = b"\x01" * 32
    cred = rpc.auth_sys_cred(0, 0, b"refclient")          # the reference client's credential
    t = time.process_time()
    for i in range(n):
        nfs3.encode_write_call(i, fh, i * 4096, page_data(seed, i * 4096, 4096), nfs3.FILE_SYNC, cred)
        nfs3.decode_write_reply(reply)
    return (time.process_time() - t) * 1e6 / n


@REGISTRY.register("wb_inproc", "agent CPU per swapped-out page, in process (no kernel, canned NAS replies)")
def wb_inproc_section(ctx: BenchContext) -> SectionResult:
    pages = QUICK_PAGES if ctx.quick else FULL_PAGES
    res = SectionResult(params={"pool_pages": POOL_PAGES, "min_free_kbytes": MIN_FREE_KBYTES, "slots": SLOTS,
                                "pages": pages, "transport": "udp", "stable": "FILE_SYNC", "mtus": list(MTUS)})
    floor = round(rpc_floor_us(2000 if ctx.quick else 6000, ctx.seed), 2)
    # one measurement, reported once; it is the baseline of each MTU's agent figure
    res.add("rpc_min_cpu_us_per_page", floor, "µs/page",
            notes="the reference client's Python per WRITE: page_data + encode_write_call + decode")
    for mtu in MTUS:
        m = measure(mtu, pages, ctx.seed)
        ctx.progress(f"  wb_inproc mtu {mtu}: {m['pages']} pages, {m['us_per_page']:.1f} µs/page "
                     f"(responder {m['responder_cpu_s'] * 1e6 / m['pages']:.1f} µs/page subtracted)")
        res.add(f"mtu{mtu}.agent_cpu_us_per_page", round(m["us_per_page"], 2), "µs/page", floor,
                notes=(f"{m['pages']} pages in {m['cpu_s']:.2f} s CPU ({m['virtual_s']:.2f} s virtual), "
                       f"{m['frames_to_nas'] / max(m['writes'], 1):.2f} frames a WRITE, "
                       f"{m['pgalloc'] / max(m['pages'], 1):.1f} page allocations a page, "
                       f"{m['rpc_retrans']} retransmissions; responder "
                       f"{m['responder_cpu_s'] * 1e6 / m['pages']:.1f} µs/page subtracted"))
    return res
