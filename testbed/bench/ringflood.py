"""``python -m testbed.bench.ringflood``: the flood of ``testbed.flood`` sent through a packet
socket's PACKET_TX_RING -- for section "capacity", whose receivers outrun a flood of one kernel
``sendto`` per datagram on this machine (≈ 40 kpps from Python).

Invariant: the same datagrams, schedule and control protocol as ``testbed.flood.Flood`` (it is a
subclass: the pacer, on/off, counters and the ``snapshot``/``set``/``shutdown`` ops are Flood's);
only the sending differs. Each due datagram is a prebuilt Ethernet + IPv4 (DF, ID 0) + UDP frame
per port (UDP checksum 0: "no checksum", RFC 768 -- as the receivers skip verifying the kernel
flood's CHECKSUM_PARTIAL frames, they verify nothing here either) with the payload's sequence
number, put into the next free slot of a TPACKET_V2 transmit ring; one ``send()`` per burst hands
them all to the kernel (``tpacket_snd``). A full ring counts ``ENOBUFS`` like a refused sendto.
The destination must lie in 198.18.0.0/15 (Flood checks it); its MAC is given (``--dst-mac``), as
the bench's static neighbour entry gives it to the kernel flood.
"""

from __future__ import annotations

import socket
import struct
import sys

from client_agent.phy.afpacket import _ioctl_mtu
from client_agent.phy.ring import TxSocket
from testbed import flood as _flood

SPORT = 40000
TX_SLOTS = 2048


class RingFlood(_flood.Flood):
    def __init__(self, ifname: str, dst_mac: bytes, dst: str, ports: list[int], rate_pps: float, size: int,
                 seed: int, *, bind: str, **kw) -> None:
        super().__init__(dst, ports, rate_pps, size, seed, bind=bind, **kw)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            mtu = _ioctl_mtu(probe, ifname)
        finally:
            probe.close()
        self.tx = TxSocket(ifname, mtu, vnet=False, ring=True, slots=TX_SLOTS)
        self._dst_mac = dst_mac
        self._bind = bind
        self._templates: list[tuple[bytes, bytes]] = []
        self._build()

    def _build(self) -> None:
        src, dst = socket.inet_aton(self._bind), socket.inet_aton(self.dst)
        size = self.size
        payload = bytes(self._buf[:size])
        self._templates = []
        for port in self.ports:
            tot = 20 + 8 + size
            words = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 0, 0x4000, 64, 17, 0, src, dst)
            c = sum(struct.unpack("!10H", words))
            while c >> 16:
                c = (c & 0xFFFF) + (c >> 16)
            ip = words[:10] + struct.pack("!H", ~c & 0xFFFF) + words[12:]
            head = (self._dst_mac + self.tx.mac + b"\x08\x00" + ip
                    + struct.pack("!HHHH", SPORT, port, 8 + size, 0) + payload[:4])
            self._templates.append((head, payload[12:]))

    def set(self, key, value):
        out = super().set(key, value)
        if key == "size":
            self._build()
        return out

    def send_burst(self, n: int) -> None:
        ring, tmpl, nxt = self.tx.ring, self._templates, self.chooser.next
        size = self.size
        queued = 0
        for _ in range(n):
            i = nxt()
            head, tail = tmpl[i]
            frame = head + self.sent.to_bytes(8, "big") + tail
            if not ring.put(b"", frame):
                self.tx.kick()
                if not ring.put(b"", frame):
                    self.errors["ENOBUFS"] = self.errors.get("ENOBUFS", 0) + 1
                    continue
            queued += 1
            self.sent += 1
            self.sent_bytes += size
            self.sent_per_port[i] += 1
        if queued:
            try:
                self.tx.kick()
            except OSError as e:
                import errno
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                self.errors[name] = self.errors.get(name, 0) + 1

    def close(self) -> None:
        self.tx.close()
        super().close()


def build_parser():
    p = _flood.build_parser()
    p.prog = "python -m testbed.bench.ringflood"
    p.description = __doc__.split("\n")[0]
    p.add_argument("--ifname", required=True, help="the veth to send on (in this namespace)")
    p.add_argument("--dst-mac", required=True, help="the destination's MAC, e.g. 02:00:c6:12:00:02")
    return p


def main(argv: list[str] | None = None) -> int:
    def make(args, ports, on_off):
        if not args.bind:
            raise _flood.FloodError("--bind ADDR is needed: it is the frames' source address")
        try:
            mac = bytes.fromhex(args.dst_mac.replace(":", ""))
        except ValueError:
            mac = b""
        if len(mac) != 6:
            raise _flood.FloodError(f"--dst-mac {args.dst_mac!r} is not a MAC address (e.g. 02:00:c6:12:00:02)")
        return RingFlood(args.ifname, mac, args.dst, ports, args.rate_pps, args.size, args.seed,
                         order=args.port_order, bind=args.bind, on_off=on_off, start_on=not args.start_off)
    return _flood.main(argv, parser=build_parser(), make_flood=make)


if __name__ == "__main__":
    sys.exit(main())
