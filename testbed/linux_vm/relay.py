"""A seeded fault relay between a Linux guest's tap and the client host's NIC (testbed chaos).

The agent takes packet faults on its own NIC (client-agent --fault, client_agent/phy/fault.py);
a kernel in a VM cannot. With ``faults`` the guest's tap is not bridged to the host's NIC: this
process relays frames between them over two AF_PACKET sockets, each direction through the agent's
``FaultInjector`` (the same seeded loss/dup/reorder/delay, ``parse_fault_spec`` syntax), so the
guest sees the faults on both directions of its wire, keyed by packet index as the agent's are.

Invariant: every frame read from one side is counted in exactly one of that direction's
``lost`` or ``passed`` (FaultInjector's own invariant), and ``tx_errors`` counts frames the other
side's socket refused. Counters: the control socket's ``snapshot`` and, at exit, one JSON line
``{"relay_summary": ...}`` on stdout. QEMU's tap runs without vnet_hdr here (guest_nic
offloads are then segmented and checksummed by QEMU), so every frame fits the NIC's MTU.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import sys
import time

from client_agent.phy.afpacket import AfPacketDevice
from client_agent.phy.fault import FaultInjector, parse_fault_spec
from client_agent.wire.checksum import fold, ones_sum, pseudo_header_sum
from netns_setup.control import ControlServer, signal_ready

BUDGET = 64
CSUM_OFFSET = {6: 16, 17: 6}     # TCP, UDP: the checksum field's offset in the L4 header


def complete_checksum(frame: bytes) -> bytes:
    """A frame the host's kernel left CHECKSUM_PARTIAL (AF_PACKET's TP_STATUS_CSUMNOTREADY: a veth
    peer's TCP/UDP, the L4 checksum field holding only the pseudo-header sum) with its L4 checksum
    filled in, as the NIC would (RFC 1071 over the pseudo-header and the segment), so the guest's
    stack does not drop it as bad. IPv4 TCP/UDP, not fragmented; anything else unchanged."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    if proto not in CSUM_OFFSET or int.from_bytes(frame[20:22], "big") & 0x3FFF:
        return frame
    total = int.from_bytes(frame[16:18], "big")
    l4 = 14 + ihl
    end = 14 + total
    off = l4 + CSUM_OFFSET[proto]
    if end > len(frame) or off + 2 > end:
        return frame
    b = bytearray(frame)
    b[off:off + 2] = b"\x00\x00"
    seg = b[l4:end]
    c = ~fold(pseudo_header_sum(bytes(b[26:30]), bytes(b[30:34]), proto, len(seg)) + ones_sum(seg)) & 0xFFFF
    if proto == 17 and c == 0:
        c = 0xFFFF
    b[off:off + 2] = c.to_bytes(2, "big")
    return bytes(b)


class Relay:
    """host NIC ``a`` <-> guest tap ``b``; ``to_guest`` / ``from_guest``: FaultInjectors on the
    transmit side of each direction (seeds 2·seed and 2·seed + 1, as BothWays)."""

    def __init__(self, a, b, spec: dict):
        seed = spec.get("seed", 0)
        kw = dict(loss=spec.get("loss", 0.0), dup=spec.get("dup", 0.0), reorder=spec.get("reorder", 0.0),
                  delay_s=spec.get("delay_ms", 0.0) / 1000)
        self.a, self.b = a, b
        self.to_guest = FaultInjector(b, seed * 2, **kw)
        self.from_guest = FaultInjector(a, seed * 2 + 1, **kw)

    def pump(self, now: float) -> int:
        n = 0
        for src, dst in ((self.a, self.to_guest), (self.b, self.from_guest)):
            for frame, partial in src.receive(now, BUDGET):
                dst.transmit(complete_checksum(frame) if partial else frame, now)
                n += 1
        self.to_guest.flush(now)
        self.from_guest.flush(now)
        return n

    def poll_at(self) -> float | None:
        due = [d for d in (self.to_guest.poll_at(), self.from_guest.poll_at()) if d is not None]
        return min(due) if due else None

    def snapshot(self) -> dict:
        return {"to_guest": dict(self.to_guest.counters), "from_guest": dict(self.from_guest.counters),
                "nic": dict(getattr(self.a, "counters", {})), "tap": dict(getattr(self.b, "counters", {}))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.linux_vm.relay", description=__doc__.splitlines()[0])
    p.add_argument("--nic", required=True, help="the host's NIC (toward the switch)")
    p.add_argument("--tap", required=True, help="the guest's tap")
    p.add_argument("--fault", required=True, metavar="SPEC", help="loss=0.05,dup=0.01,reorder=0.02,delay_ms=1,seed=7")
    p.add_argument("--control", metavar="PATH", help="Unix socket for snapshot/shutdown")
    p.add_argument("--ready-fd", type=int, metavar="N")
    args = p.parse_args(argv)
    try:
        spec = parse_fault_spec(args.fault)
    except ValueError as e:
        print(f"relay: --fault: {e}", file=sys.stderr)
        return 2
    relay = Relay(AfPacketDevice(args.nic), AfPacketDevice(args.tap), spec)
    stop = False

    def on_term(_sig, _frm):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    sel = selectors.DefaultSelector()
    sel.register(relay.a.fileno(), selectors.EVENT_READ)
    sel.register(relay.b.fileno(), selectors.EVENT_READ)
    control = None
    if args.control:
        control = ControlServer(args.control, {"snapshot": lambda req: relay.snapshot(),
                                               "shutdown": lambda req: relay.snapshot()})
        control.attach(sel)
    signal_ready(args.ready_fd)
    try:
        while not stop and not (control is not None and control.closing):
            now = time.monotonic()
            due = relay.poll_at()
            timeout = 0.5 if due is None else max(0.0, due - now)
            for key, mask in sel.select(timeout):
                if key.data is not None:       # the control socket's handlers
                    key.data(mask)
            relay.pump(time.monotonic())
    finally:
        print(json.dumps({"relay_summary": relay.snapshot()}, sort_keys=True), flush=True)
        if control is not None:
            control.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
