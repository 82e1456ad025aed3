"""``python -m testbed.bench.bareloop``: the BARE receive baseline of the "rx" bench section.

Invariant owned here: this loop does the least a Python AF_PACKET receiver can do on the agent's
socket -- the very socket the agent opens (``client_agent.phy.afpacket.AfPacketDevice``: same
``SO_RCVBUFFORCE``, ``PACKET_AUXDATA``, ``PACKET_IGNORE_OUTGOING``, non-blocking), read the same
way (``recvmsg_into`` with ancillary space, batches of ``BUDGET`` frames after each selector
wakeup), plus the auxdata status word and a peek at the EtherType. Nothing else: no copy, no
allocation from a pool, no parsing. The agent's CPU cost per frame over this one is the price of
its stack.

Control (netns_setup.control): ``snapshot`` returns ``{"device": {"rx_packets", "rx_bytes",
"tp_packets", "tp_drops"}, "ethertypes": {hex: n}, "flow_frames": n, "rusage": {...}}`` -- the same ``device`` keys as
the agent's snapshot; ``shutdown``.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import signal
import socket
import sys

from client_agent.phy.afpacket import (_AUXDATA, _CMSG_SPACE, MAX_FRAME_BYTES, PACKET_AUXDATA, SOL_PACKET,
                                       TP_STATUS_CSUM_VALID, TP_STATUS_CSUMNOTREADY, AfPacketDevice,
                                       AfPacketError)
from netns_setup.control import BadRequest, ControlServer, signal_ready

BUDGET = 64  # frames per wakeup, as the agent's NAPI-style poll
_CSUM_OK = TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID  # what the device reports as csum_unnecessary


class BareLoop:
    def __init__(self, ifname: str):
        self.dev = AfPacketDevice(ifname)
        self.rx_packets = 0
        self.rx_bytes = 0
        self.ipv4 = 0
        self.other: dict[int, int] = {}
        self.csum_notready = 0
        self.wakeups = 0   # selector wakeups that found frames: frames/wakeup is the batching
        self._buf = bytearray(MAX_FRAME_BYTES)
        # --tcp-port: also count the IPv4/TCP frames to that destination port (one flow's segments,
        # for section rx_tcp, which reads beside an agent's stream sink); None: no look past the EtherType
        self.tcp_port: int | None = None
        self.flow_frames = 0

    def on_readable(self, _mask: int) -> None:
        recvmsg_into = self.dev.sock.recvmsg_into
        bufs = [self._buf]
        buf = self._buf
        tcp_port = self.tcp_port
        n_frames = 0
        for _ in range(BUDGET):
            try:
                n, anc, _flags, _addr = recvmsg_into(bufs, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            for level, typ, data in anc:
                if level == SOL_PACKET and typ == PACKET_AUXDATA and _AUXDATA.unpack_from(data)[0] & _CSUM_OK:
                    self.csum_notready += 1
            n_frames += 1
            self.rx_bytes += n
            if buf[12] == 0x08 and buf[13] == 0x00:
                self.ipv4 += 1
                if tcp_port is not None and buf[23] == 6:     # IPPROTO_TCP; dport after IHL words
                    d = 14 + ((buf[14] & 0x0F) << 2)
                    if n >= d + 4 and (buf[d + 2] << 8) | buf[d + 3] == tcp_port:
                        self.flow_frames += 1
            else:
                et = (buf[12] << 8) | buf[13]
                self.other[et] = self.other.get(et, 0) + 1
        self.rx_packets += n_frames
        self.wakeups += 1

    def snapshot(self) -> dict:
        st = self.dev.sample_stats()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        ets = {"0x0800": self.ipv4, **{f"0x{k:04x}": v for k, v in self.other.items()}}
        return {"device": {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes, "tp_packets": st["tp_packets"],
                           "tp_drops": st["tp_drops"], "tp_freeze_q_cnt": st.get("tp_freeze_q_cnt", 0), "rx_csum_notready": self.csum_notready,
                           "rcvbuf_bytes": getattr(self.dev, "rcvbuf_bytes", None)},
                "ethertypes": ets, "wakeups": self.wakeups, "flow_frames": self.flow_frames, "rusage": {"user_s": ru.ru_utime, "system_s": ru.ru_stime}}


class BareRingLoop(BareLoop):
    """The bare loop on the agent's ring NIC (``client_agent.phy.ring.RingDevice``: the same
    PACKET_RX_RING, TPACKET_V3 blocks or V2 slots, PACKET_IGNORE_OUTGOING): after each selector
    wakeup walk up to ``BUDGET`` frame headers in the mmap'ed ring, read the status word and peek
    at the EtherType in place, release each block/slot. No copy, no system call per frame."""

    def __init__(self, ifname: str | None = None, version: int = 3, *, dev=None):
        # ``dev``: a ring device already open (the in-process bench's ring in memory)
        if dev is None:
            from client_agent.phy.ring import RingDevice
            dev = RingDevice(ifname, version=version, tx_ring=False)
        self.dev = dev
        self.rx_packets = 0
        self.rx_bytes = 0
        self.ipv4 = 0
        self.other: dict[int, int] = {}
        self.csum_notready = 0
        self.wakeups = 0
        self.tcp_port = None
        self.flow_frames = 0

    def on_readable(self, _mask: int) -> None:
        view = self.dev._rx_view
        n_frames = 0
        for off, snap, _ln, status, mac in self.dev.rx.next_frames(BUDGET):
            n_frames += 1
            if status & _CSUM_OK:
                self.csum_notready += 1
            self.rx_bytes += snap
            a = off + mac
            if view[a + 12] == 0x08 and view[a + 13] == 0x00:
                self.ipv4 += 1
            else:
                et = (view[a + 12] << 8) | view[a + 13]
                self.other[et] = self.other.get(et, 0) + 1
        self.rx_packets += n_frames
        self.wakeups += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench.bareloop", description=__doc__.split("\n")[0])
    p.add_argument("--ifname", required=True)
    p.add_argument("--control", metavar="PATH")
    p.add_argument("--ready-fd", type=int, metavar="N")
    p.add_argument("--ring", type=int, choices=(2, 3), metavar="V",
                   help="read the mmap'ed PACKET_RX_RING (TPACKET_V2 or V3) instead of recvmsg_into")
    p.add_argument("--tcp-port", type=int, metavar="PORT",
                   help="also count IPv4/TCP frames to PORT (snapshot: flow_frames); recv_into loop only")
    args = p.parse_args(argv)
    if args.tcp_port is not None and (args.ring or not 0 < args.tcp_port < 65536):
        p.error(f"--tcp-port {args.tcp_port}: a port 1-65535, and only without --ring")
    try:
        loop = BareRingLoop(args.ifname, args.ring) if args.ring else BareLoop(args.ifname)
    except AfPacketError as e:
        print(f"bareloop: {e.strerror}", file=sys.stderr)
        return 2
    loop.tcp_port = args.tcp_port
    stop = False

    def on_signal(_s, _f):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    sel.register(loop.dev.fileno(), selectors.EVENT_READ, loop.on_readable)
    control = None
    if args.control:
        def on_set(req: dict):
            raise BadRequest("the bare loop has no settings")
        control = ControlServer(args.control, {"snapshot": lambda r: loop.snapshot(), "set": on_set,
                                               "shutdown": lambda r: loop.snapshot()})
        control.attach(sel)
    signal_ready(args.ready_fd)
    try:
        while not stop and not (control is not None and control.closing):
            for key, mask in sel.select(0.5):
                key.data(mask)
    finally:
        if control is not None:
            control.close()
        loop.dev.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
