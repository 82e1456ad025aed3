"""`testbed capture`: a pcap of one host's interface, taken inside its namespace; live on return."""

from __future__ import annotations

import sys
import time

from . import add_name_arg, known_errors, sigterm_as_interrupt


def register(sub) -> None:
    p = sub.add_parser("capture", help="capture a host's interface to a pcap (tcpdump in the host's namespace)")
    p.add_argument("host", help="host name, e.g. client, nas, noise")
    add_name_arg(p)
    p.add_argument("--iface", help="interface inside the host (default: the host's NIC)")
    p.add_argument("-w", dest="file", help="pcap file (default: <run dir>/pcap/<host>-<iface>-<time>.pcap)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--count", type=int, metavar="N", help="stop after N packets")
    g.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.capture import start_capture

    with known_errors(), sigterm_as_interrupt():
        cap = start_capture(args.name, args.host, iface=args.iface, path=args.file, count=args.count)
        try:
            print(f"capturing {cap.iface} in host {args.host} to {cap.path} "
                  f"({'until ' + str(args.count) + ' packets, or Ctrl-C' if args.count else str(args.duration) + ' s' if args.duration else 'until Ctrl-C'})",
                  file=sys.stderr, flush=True)
            if args.count is not None:
                cap.wait()
            elif args.duration is not None:
                deadline = time.monotonic() + args.duration
                while cap.proc.poll() is None and time.monotonic() < deadline:
                    cap.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            else:
                cap.wait()
        finally:
            n = cap.stop()
    print(f"{n} packets captured in {cap.path}")
    return 0
