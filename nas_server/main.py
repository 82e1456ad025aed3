"""``nas-server``: an NFSv3 + MOUNT v3 + portmap v2 server of fixed-size images, over UDP and TCP.

Invariant owned here: argparse lives only in this module; a bad option or an unusable data
directory is one line on stderr and exit status 2, and the server signals ``--ready-fd`` only once
every socket (NFS/MOUNT port, portmap port, control socket) is listening.

On SIGTERM/SIGINT or a control ``shutdown`` the server commits pending UNSTABLE data and exits 0;
SIGKILL loses it (that is the point of the write verifier).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys

from netns_setup.control import BadRequest, ControlServer, signal_ready

from .core import NasCore, parse_networks
from .server import NasServer, RateLimitedLog, new_verifier
from .store import DirStore

_SIZE = re.compile(r"^(\d+)([KMGT]i?B?|[kmgt])?$")
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T (binary) suffix")
    n = int(m.group(1))
    if m.group(2):
        n *= _UNITS[m.group(2)[0].lower()]
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nas-server", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="directory holding one sub-directory per export")
    p.add_argument("--export", action="append", default=[], metavar="NAME[:NETWORK,...]",
                   help="export data-dir/NAME to these client networks (default: any client); repeatable")
    p.add_argument("--create-image", action="append", default=[], metavar="[EXPORT/]NAME:SIZE",
                   help="make sure a fixed-size image exists (SIZE like 64M); EXPORT may be omitted with one export")
    p.add_argument("--new-image-size", default="0", metavar="SIZE",
                   help="size of images a client may CREATE under a new name (0: CREATE of new names fails NOSPC)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=2049, help="NFS and MOUNT port, UDP and TCP (0: any)")
    p.add_argument("--write-latency-ms", type=float, default=0.0,
                   help="service time of a UDP call: each reply leaves this long after its call, "
                        "without delaying other calls (models the appliance's disk; default 0)")
    p.add_argument("--portmap-port", type=int, default=111, help="portmap v2 port (0: none)")
    p.add_argument("--control", metavar="PATH", help="Unix socket for the control protocol")
    p.add_argument("--ready-fd", type=int, metavar="N", help="write one byte to fd N once listening")
    p.add_argument("--max-connections", type=int, default=256,
                   help="TCP connections at most; a new one past it closes the oldest (Linux svc_check_conn_limits)")
    p.add_argument("--conn-age-period", type=float, default=360.0, metavar="SECONDS",
                   help="close TCP connections idle for a whole period, checked every period (Linux: 360)")
    p.add_argument("--max-images", type=int, default=1024,
                   help="images the store may hold; CREATE of a new name past it answers NFS3ERR_NOSPC")
    p.add_argument("--log-rate", type=int, default=50, help="log lines per second at most")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = RateLimitedLog(args.log_rate)
    try:
        store = DirStore(args.data_dir, new_verifier())
        if not args.export:
            raise ValueError("no --export given; name at least one, e.g. --export swap:198.18.0.0/15")
        for spec in args.export:
            name, _, nets = spec.partition(":")
            store.add_export(name, parse_networks(nets))
        for spec in args.create_image:
            path, _, size = spec.rpartition(":")
            exp, _, img = path.rpartition("/")
            if not exp:
                if len(store.exports) != 1:
                    raise ValueError(f"--create-image {spec!r}: name the export (EXPORT/NAME:SIZE) when there are several")
                exp = next(iter(store.exports))
            if exp not in store.exports:
                raise ValueError(f"--create-image {spec!r}: export {exp!r} is not among --export {list(store.exports)}")
            store.create_image(exp, img, parse_size(size))
        if args.max_connections < 0 or args.conn_age_period <= 0 or args.max_images < 0:
            raise ValueError(f"--max-connections {args.max_connections}, --conn-age-period {args.conn_age_period}, "
                             f"--max-images {args.max_images}: expected >= 0, > 0 and >= 0")
        core = NasCore(store, new_image_bytes=parse_size(args.new_image_size), max_images=args.max_images, log=log)
        if not 0 <= args.write_latency_ms <= 10_000:
            raise ValueError(f"--write-latency-ms {args.write_latency_ms}: expected 0..10000 ms")
        server = NasServer(core, args.bind, args.port, args.portmap_port or None, args.max_connections, log,
                           write_latency_s=args.write_latency_ms / 1000, conn_age_period_s=args.conn_age_period)
    except (ValueError, OSError) as e:
        print(f"nas-server: {e}", file=sys.stderr)
        return 2

    def on_set(req: dict):
        key, value = req.get("key"), req.get("value")
        if key == "log_rate":
            log.per_s = int(value)
        elif key == "drc_max_entries":
            core.drc.max_entries = int(value)
        elif key == "drc_max_age_s":
            core.drc.max_age_s = float(value)
        elif key == "drc_max_entries_per_peer":
            core.drc.max_entries_per_peer = max(1, int(value))
        elif key == "write_latency_ms":
            if not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
                raise BadRequest(f"write_latency_ms must be a number 0..10000, got {value!r}")
            server.write_latency_s = value / 1000
        else:
            raise BadRequest(f"unknown key {key!r}; settable: log_rate, drc_max_entries, drc_max_age_s, "
                             "drc_max_entries_per_peer, write_latency_ms")
        return {key: value}

    control = None
    if args.control:
        control = ControlServer(args.control, {
            "snapshot": lambda req: server.snapshot(),
            "set": on_set,
            "shutdown": lambda req: server.snapshot(),
        })
        control.attach(server.sel)

    def stop(signum, frame):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"serving exports {', '.join('/' + e for e in store.exports)} on {args.bind} port {server.port} "
        f"(portmap {args.portmap_port or 'off'}), verifier {store.verifier.hex()}")
    signal_ready(args.ready_fd)
    try:
        server.run(lambda: control is not None and control.closing)
    finally:
        for exp in store.exports.values():
            for img in exp.images.values():
                img.commit()  # a clean stop keeps UNSTABLE data; only a crash loses it
        server.close()
        if control is not None:
            control.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
