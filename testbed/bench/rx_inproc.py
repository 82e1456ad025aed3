"""Section "rx_inproc": the receive path's Python cost per frame, in-process, with no system call.

What is measured: the agent's own ``Host`` (client_agent/host.py, as ``client-agent`` builds it)
on a manual clock, its NIC the ring device's receive path (``phy.ring.RingDevice.receive_v2``, what
the default ``ring-v2`` NIC receives with) reading a TPACKET_V2 ring laid out in process memory,
with a ``fast`` UDP sink and its reader task on each of the rx section's four flood ports. The
bench plays the kernel: it hands the ring ``batch`` frames at a time (each slot's status word set
to ``TP_STATUS_USER | TP_STATUS_CSUM_VALID``, as ``tpacket_rcv`` does), tells the host (the
device's ``on_rx``: the readiness event) and runs the loop until nothing is ready. Every frame
climbs the whole stack (device copy, buffer allocation, IPv4/UDP, socket queue, sk_filter and
rmem charge) and is read by a sink task -- the same objects and calls as in the real agent's
receive path, minus epoll.

Baseline: the rx section's bare ring loop (``bareloop.BareRingLoop.on_readable``: walk up to 64
frame headers, read the status word, peek at the EtherType, give the slot back) over the same
ring and the same batches.

CPU time: ``time.thread_time_ns`` around the consumer only (the bench's own filling of the ring
is the kernel's work and is not counted), minus the clock's own cost per interval (calibrated in
the same run, ``params.clock_pair_ns``), summed over chunks of N/15 frames; a figure is the
median chunk's cost per frame (the mean is in ``params.runs``: ``*_cpu_ns`` / ``frames``). Figures per batch size B (frames per poll):
``batchB.agent.cpu_us_per_frame`` (baseline: ``batchB.bare_ring.cpu_us_per_frame``),
``batchB.agent.sink_read`` (datagrams the sinks read, baseline frames handed to the ring: ratio
1.0 means every frame was read), ``batchB.agent.polls_per_batch``. A run in which a frame was
not read, a drop was counted or a pool page was not returned raises BenchError: it would not
measure the path.
"""

from __future__ import annotations

import gc
import statistics
import struct
import time
from typing import Any

from . import REGISTRY
from .framework import BenchContext, BenchError, SectionResult

FLOOD_PORTS = (9001, 9002, 9003, 9004)   # as section rx
PAYLOAD_BYTES = 64                       # as section rx: 106-byte frames
BATCHES = (1, 8, 64)
FULL_FRAMES = 60_000
QUICK_FRAMES = 20_000
WARMUP_FRAMES = 2_000
CHUNKS = 15                              # the figure is the median chunk's cost
RATE_PPS = 50_000                        # the manual clock advances batch / RATE_PPS per batch
POOL_PAGES = 65536                       # as section rx's agent
CLIENT_IP, NOISE_IP, PREFIX = "198.18.0.2", "198.18.0.3", 24
CLIENT_MAC, NOISE_MAC = b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x03"
SLOT_BYTES = 256                         # TPACKET_V2 slot: header, sockaddr_ll, a 106-byte frame
SLOTS = 256
SLOT_MAC = 80                            # tp_mac: frame offset in its slot
_V2_HDR = struct.Struct("=IIIHH")        # tp_status, tp_len, tp_snaplen, tp_mac, tp_net
_U32 = struct.Struct("=I")


def udp_frames(n: int, seed: int) -> list[bytes]:
    """``n`` flood frames noise -> client, round-robin over FLOOD_PORTS, valid checksums."""
    import socket

    from client_agent.wire import ethernet, ipv4, udp
    from testbed.flood import FLOOD_HEADER, FLOOD_MAGIC, payload_template
    body = payload_template(seed, PAYLOAD_BYTES)[:PAYLOAD_BYTES]
    src, dst = socket.inet_aton(NOISE_IP), socket.inet_aton(CLIENT_IP)
    out = []
    for i in range(n):
        FLOOD_HEADER.pack_into(body, 0, FLOOD_MAGIC, i)
        seg = udp.emit(src, dst, 40000, FLOOD_PORTS[i % len(FLOOD_PORTS)], bytes(body))
        out.append(ethernet.emit(CLIENT_MAC, NOISE_MAC, ethernet.ETH_P_IP,
                                 ipv4.emit_header(src, dst, 17, len(seg), ident=i & 0xFFFF) + seg))
    return out


class MemoryRingNic:
    """The ring NIC's receive path (``RingDevice.receive_v2``, TPACKET_V2 slots, ``rx`` offload) over
    a ring in a bytearray; ``hand(k)`` is the kernel's side: the next ``k`` slots become the
    user's. No file descriptor: readiness is ``on_rx`` (set by ``Host``, as for the in-memory
    wire). Transmits nothing (a frame given to ``transmit`` is counted and refused)."""

    def __init__(self, frames: list[bytes]) -> None:
        from client_agent.phy.caps import parse_offloads
        from client_agent.phy.ring import (TP_STATUS_CSUM_VALID, TP_STATUS_CSUMNOTREADY, TP_STATUS_USER,
                                           RxRingV2)
        if len(frames) != SLOTS:
            raise ValueError(f"MemoryRingNic needs {SLOTS} frames (one per slot), got {len(frames)}")
        self.mac, self.mtu, self.version = CLIENT_MAC, 1500, 2
        self.caps = parse_offloads("rx")
        self.on_rx = None
        self.buf = bytearray(SLOT_BYTES * SLOTS)
        for i, f in enumerate(frames):
            if SLOT_MAC + len(f) > SLOT_BYTES:
                raise ValueError(f"frame of {len(f)} bytes does not fit a {SLOT_BYTES}-byte slot")
            _V2_HDR.pack_into(self.buf, i * SLOT_BYTES, 0, len(f), len(f), SLOT_MAC, SLOT_MAC + 14)
            self.buf[i * SLOT_BYTES + SLOT_MAC:i * SLOT_BYTES + SLOT_MAC + len(f)] = f
        self._rx_view = memoryview(self.buf)
        self.rx = RxRingV2(self._rx_view, SLOT_BYTES * SLOTS, SLOT_BYTES, SLOTS)
        self._filter_outgoing = False            # PACKET_IGNORE_OUTGOING
        self._rx_vnet = False
        self._max_plain = self.mtu + 14 + 4
        self._csum_ok_mask = TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID
        self._user = TP_STATUS_USER | TP_STATUS_CSUM_VALID
        self._next = 0                           # the slot the kernel fills next
        self.counters = {k: 0 for k in ("rx_packets", "rx_bytes", "rx_csum_notready", "rx_ring_truncated",
                                        "rx_gso_frames", "rx_gso_dropped", "rx_blocks", "tx_refused")}

    from client_agent.phy.ring import RingDevice as _RingDevice
    receive = _RingDevice.receive_v2             # the agent's own receive path (ring-v2)
    del _RingDevice

    def hand(self, k: int) -> None:
        buf, i, user, pack = self._rx_view, self._next, self._user, _U32.pack_into
        for _ in range(k):
            pack(buf, i * SLOT_BYTES, user)
            i = i + 1 if i + 1 < SLOTS else 0
        self._next = i

    def transmit(self, frame, now: float, gso_size: int = 0) -> bool:
        self.counters["tx_refused"] += 1
        return False

    def poll_at(self) -> float | None:
        return None


def clock_pair_ns(n: int = 2000) -> int:
    """The median cost of two back-to-back ``thread_time_ns`` reads (what each timed interval
    carries on top of its work)."""
    tt = time.thread_time_ns
    xs = []
    for _ in range(n):
        a = tt()
        xs.append(tt() - a)
    return int(statistics.median(xs))


def _timed(hand, consume, frames: int, batch: int, pair_ns: int, advance=None) -> list[int]:
    """CPU ns of ``consume()`` over ``frames`` frames handed ``batch`` at a time (clock cost
    removed), summed per chunk of ``frames // CHUNKS`` frames (whole batches): one entry a chunk."""
    tt = time.thread_time_ns
    per_chunk = max(frames // CHUNKS // batch, 1)
    chunks = []
    left = frames // batch
    while left:
        k = min(per_chunk, left)
        left -= k
        total = 0
        for _ in range(k):
            hand(batch)
            if advance is not None:
                advance()
            t0 = tt()
            consume()
            total += tt() - t0 - pair_ns
        chunks.append((total, k * batch))
    return chunks


def _us_per_frame(chunks: list) -> float:
    """The median chunk's µs per frame: a burst of other work on the shared cores moves one
    chunk, not the figure."""
    return statistics.median(ns / n for ns, n in chunks) / 1e3


def _warmup(frames: int, batch: int) -> int:
    w = min(WARMUP_FRAMES, frames)
    return w - w % batch


def measure_agent(frames: int, batch: int, pair_ns: int, seed: int = 1) -> dict[str, Any]:
    """One agent run: ``frames`` frames (a multiple of ``batch``) through a fresh Host."""
    from client_agent.host import Host
    from client_agent.loop import Loop, ManualClock

    clock = ManualClock()
    loop = Loop(clock)
    nic = MemoryRingNic(udp_frames(SLOTS, seed))
    host = Host(loop, nic, ip=CLIENT_IP, prefix_len=PREFIX, pool_pages=POOL_PAGES, seed=seed)
    sinks = [host.sink(p, reader="fast") for p in FLOOD_PORTS]
    loop.run_until(lambda: not loop.has_ready(), None)         # the sink tasks park on their sockets

    def consume() -> None:
        nic.on_rx()                                              # the readiness event
        while loop.has_ready():
            loop.run_once()

    step = batch / RATE_PPS

    def advance() -> None:
        clock.advance(step)

    warm = _warmup(frames, batch)
    _timed(nic.hand, consume, warm, batch, pair_ns, advance)
    read0, polls0 = sum(s["read"] for s in sinks), host.polls
    gc.collect()
    chunks = _timed(nic.hand, consume, frames, batch, pair_ns, advance)
    cpu_ns = sum(ns for ns, _n in chunks)
    read = sum(s["read"] for s in sinks) - read0
    st, alloc = host.stack, host.alloc
    dropped = {k: v for k, v in st.drop_reasons.items() if v}
    held = sum(svc["sock"].rmem_alloc for svc in host.services.values())
    return {"cpu_ns": cpu_ns, "us_per_frame": _us_per_frame(chunks), "frames": frames, "read": read, "polls": host.polls - polls0,
            "rx_packets": st.counters["rx_packets"], "handed": frames + warm, "dropped": dropped,
            "nr_free": alloc.nr_free, "nr_pages": alloc.nr_pages, "rmem_held": held,
            "udp_read_fate": st.rx_fate.get("udp_read", 0), "ring_left": nic.rx.ready()}


def measure_bare(frames: int, batch: int, pair_ns: int, seed: int = 1) -> dict[str, Any]:
    """The bare ring loop over the same ring and batches."""
    from .bareloop import BareRingLoop
    nic = MemoryRingNic(udp_frames(SLOTS, seed))
    bare = BareRingLoop(dev=nic)
    warm = _warmup(frames, batch)

    def consume() -> None:
        bare.on_readable(1)

    _timed(nic.hand, consume, warm, batch, pair_ns)
    n0, w0 = bare.rx_packets, bare.wakeups
    gc.collect()
    chunks = _timed(nic.hand, consume, frames, batch, pair_ns)
    cpu_ns = sum(ns for ns, _n in chunks)
    return {"cpu_ns": cpu_ns, "us_per_frame": _us_per_frame(chunks), "frames": frames, "read": bare.rx_packets - n0, "ipv4": bare.ipv4,
            "wakeups": bare.wakeups - w0}


def _check(tag: str, a: dict[str, Any]) -> None:
    bad = []
    if a["read"] != a["frames"] or a["udp_read_fate"] != a["handed"] or a["rx_packets"] != a["handed"]:
        bad.append(f"sinks read {a['read']} of {a['frames']} frames (rx_packets {a['rx_packets']}, "
                   f"udp_read {a['udp_read_fate']} of {a['handed']} handed)")
    if a["dropped"]:
        bad.append(f"drops {a['dropped']}")
    if a["nr_free"] != a["nr_pages"] or a["rmem_held"]:
        bad.append(f"{a['nr_pages'] - a['nr_free']} pool pages not returned, rmem {a['rmem_held']}")
    if a["ring_left"]:
        bad.append("frames left in the ring")
    if bad:
        raise BenchError(f"rx_inproc {tag}: " + "; ".join(bad) + ": the run did not measure the receive path")


@REGISTRY.register("rx_inproc", "receive-path Python CPU per frame in-process (Host on an in-memory ring, "
                                "no system call) vs the bare ring loop, at 1, 8 and 64 frames per poll")
def rx_inproc_section(ctx: BenchContext, frames: int | None = None) -> SectionResult:
    n = frames or (QUICK_FRAMES if ctx.quick else FULL_FRAMES)
    pair_ns = clock_pair_ns()
    res = SectionResult(params={"frames": n, "batches": list(BATCHES), "ports": list(FLOOD_PORTS),
                                "payload_bytes": PAYLOAD_BYTES, "sink_reader": "fast", "nic": "ring-v2 (in memory)",
                                "offload": "rx", "pool_pages": POOL_PAGES, "seed": ctx.seed,
                                "cpu_clock": "time.thread_time_ns around the consumer, minus clock_pair_ns",
                                "clock_pair_ns": pair_ns, "runs": {}})
    for batch in BATCHES:
        m = n - n % batch
        tag = f"batch{batch}"
        bare = measure_bare(m, batch, pair_ns, ctx.seed)
        agent = measure_agent(m, batch, pair_ns, ctx.seed)
        _check(tag, agent)
        if bare["read"] != m:
            raise BenchError(f"rx_inproc {tag}: the bare loop read {bare['read']} of {m} frames")
        bare_us = round(bare["us_per_frame"], 3)
        agent_us = round(agent["us_per_frame"], 3)
        res.add(f"{tag}.bare_ring.cpu_us_per_frame", bare_us, "µs/frame",
                notes=f"{bare['wakeups']} wakeups")
        res.add(f"{tag}.agent.cpu_us_per_frame", agent_us, "µs/frame", bare_us,
                notes="baseline: bare_ring (the bare ring loop over the same in-memory ring)")
        res.add(f"{tag}.agent.sink_read", agent["read"], "datagrams", m, "ratio == 1")
        res.add(f"{tag}.agent.polls_per_batch", round(agent["polls"] / (m // batch), 3), "polls")
        res.params["runs"][tag] = {"agent_cpu_ns": agent["cpu_ns"], "bare_cpu_ns": bare["cpu_ns"],
                                   "polls": agent["polls"], "frames": m}
        ctx.progress(f"  rx_inproc batch {batch:2}: agent {agent_us:.2f} µs/frame, bare ring {bare_us:.2f}, "
                     f"{agent['polls']} polls")
    return res
