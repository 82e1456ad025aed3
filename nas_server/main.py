"""``nas-server``: an NFSv3 + MOUNT v3 + portmap v2 server of fixed-size images, over UDP and TCP;
with ``--nbd`` / ``--iscsi`` it also serves the same images over NBD (TCP 10809) and iSCSI (TCP 3260).

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
from .iscsi_target import DEFAULT_IQN_PREFIX, IscsiTarget, iqn_for
from .nbd_target import NbdTarget
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


def parse_aoe_disks(args, store: DirStore) -> list[tuple[int, int, str, object]]:
    """``--aoe-disk`` specs checked against the store: [(shelf, slot, label, image)]."""
    if args.aoe_disk and not args.aoe_interface:
        raise ValueError("--aoe-disk needs --aoe-interface IFNAME (the interface the AoE target answers on)")
    if args.aoe_interface and not args.aoe_disk:
        raise ValueError(f"--aoe-interface {args.aoe_interface}: name at least one --aoe-disk SHELF.SLOT=EXPORT/IMAGE")
    if not 0 <= args.aoe_service_ms <= 10_000:
        raise ValueError(f"--aoe-service-ms {args.aoe_service_ms}: expected 0..10000 ms")
    if not 1 <= args.aoe_bufcnt <= 65535:
        raise ValueError(f"--aoe-bufcnt {args.aoe_bufcnt}: expected 1..65535")
    out = []
    for spec in args.aoe_disk:
        addr, sep, path = spec.partition("=")
        shelf, dot, slot = addr.partition(".")
        if not sep or not dot or not shelf.isdigit() or not slot.isdigit():
            raise ValueError(f"--aoe-disk {spec!r}: expected SHELF.SLOT=[EXPORT/]IMAGE, e.g. 1.0=swap/img")
        exp, _, img = path.rpartition("/")
        if not exp:
            if len(store.exports) != 1:
                raise ValueError(f"--aoe-disk {spec!r}: name the export (EXPORT/IMAGE) when there are several")
            exp = next(iter(store.exports))
        image = store.exports[exp].images.get(img) if exp in store.exports else None
        if image is None:
            have = [f"{e}/{i}" for e, x in store.exports.items() for i in x.images]
            raise ValueError(f"--aoe-disk {spec!r}: no image {exp}/{img}; images: {', '.join(have) or 'none'} (see --create-image)")
        out.append((int(shelf), int(slot), f"{exp}/{img}", image))
    return out


def open_aoe_port(args, disks, server: NasServer, log):
    from .aoe_server import AoePort
    from .aoe_target import AoeTarget

    def build(mac: bytes, mtu: int) -> AoeTarget:
        t = AoeTarget(mac, mtu, bufcnt=args.aoe_bufcnt, service_time_s=args.aoe_service_ms / 1000,
                      write_cache=args.aoe_write_cache, log=log)
        for shelf, slot, label, image in disks:
            t.add_disk(shelf, slot, image, label)
        return t

    port = AoePort(args.aoe_interface, build, server.sel, log)
    port.start()
    log(f"AoE target on {args.aoe_interface}: " + ", ".join(f"e{s}.{sl}={label}" for s, sl, label, _ in disks))
    return port


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
                   help="service time of every NFS call (UDP and TCP) and NBD/iSCSI request: each reply leaves this long after its call, "
                        "without delaying other calls (models the appliance's disk; default 0)")
    p.add_argument("--aoe-interface", metavar="IFNAME",
                   help="also serve images as an ATA over Ethernet target on this interface (AF_PACKET, EtherType 0x88A2)")
    p.add_argument("--aoe-disk", action="append", default=[], metavar="SHELF.SLOT=[EXPORT/]IMAGE",
                   help="AoE address of an image (needs --aoe-interface); repeatable")
    p.add_argument("--aoe-service-ms", type=float, default=0.0,
                   help="service time of every AoE request: its reply leaves this long after it arrived (default 0)")
    p.add_argument("--aoe-bufcnt", type=int, default=16,
                   help="AoE buffer count: requests in service at once, advertised in config replies (default 16, as vblade)")
    p.add_argument("--aoe-write-cache", action="store_true",
                   help="acknowledge AoE writes before fdatasync (a volatile write cache flushed by FLUSH CACHE); "
                        "default: write-through")
    p.add_argument("--portmap-port", type=int, default=111, help="portmap v2 port (0: none)")
    p.add_argument("--nbd", action="store_true",
                   help="also serve every image over NBD (fixed newstyle) as export EXPORT/IMAGE")
    p.add_argument("--nbd-port", type=int, default=10809, help="NBD TCP port with --nbd (0: any)")
    p.add_argument("--iscsi", action="store_true",
                   help="also serve every image as an iSCSI target IQN-PREFIX:EXPORT.IMAGE, LUN 0")
    p.add_argument("--iscsi-port", type=int, default=3260, help="iSCSI TCP port with --iscsi (0: any)")
    p.add_argument("--iscsi-iqn-prefix", default=DEFAULT_IQN_PREFIX, help="IQN prefix of the iSCSI targets")
    p.add_argument("--control", metavar="PATH", help="Unix socket for the control protocol")
    p.add_argument("--ready-fd", type=int, metavar="N", help="write one byte to fd N once listening")
    p.add_argument("--max-connections", type=int, default=256,
                   help="TCP connections at most per protocol (NFS, NBD, iSCSI); a new one past it closes the oldest "
                        "of the address holding the most (Linux svc_check_conn_limits)")
    p.add_argument("--conn-age-period", type=float, default=360.0, metavar="SECONDS",
                   help="close TCP connections idle for a whole period, checked every period (Linux: 360); "
                        "an iSCSI session is pinged (NOP-In) first, an NBD session in transmission is kept")
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
        aoe_disks = parse_aoe_disks(args, store)
        server = NasServer(core, args.bind, args.port, args.portmap_port or None, args.max_connections, log,
                           write_latency_s=args.write_latency_ms / 1000, conn_age_period_s=args.conn_age_period)
        if args.aoe_interface:
            server.aoe = open_aoe_port(args, aoe_disks, server, log)
        nbd = iscsi = None
        if args.nbd:
            nbd = NbdTarget(store, log=log)
            server.add_stream_listener("nbd", args.bind, args.nbd_port, lambda peer, local: nbd.connect(peer))
        if args.iscsi:
            if not args.iscsi_iqn_prefix.startswith("iqn.") or iqn_for(args.iscsi_iqn_prefix, "a", "b") != \
                    f"{args.iscsi_iqn_prefix}:a.b":
                raise ValueError(f"--iscsi-iqn-prefix {args.iscsi_iqn_prefix!r}: expected iqn.YYYY-MM.reversed.domain "
                                 "in lower case letters, digits, '.', '-' and ':'")
            iscsi = IscsiTarget(store, iqn_prefix=args.iscsi_iqn_prefix, log=log)
            server.add_stream_listener("iscsi", args.bind, args.iscsi_port, iscsi.connect)
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
        elif key == "aoe_service_ms" and server.aoe is not None:
            if not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
                raise BadRequest(f"aoe_service_ms must be a number 0..10000, got {value!r}")
            server.aoe.core.service_time_s = value / 1000
        else:
            raise BadRequest(f"unknown key {key!r}; settable: log_rate, drc_max_entries, drc_max_age_s, "
                             "drc_max_entries_per_peer, write_latency_ms" + (", aoe_service_ms" if server.aoe is not None else ""))
        return {key: value}

    control = None
    if args.control:
        def snapshot(req):
            snap = server.snapshot()
            for name, tgt in (("nbd", nbd), ("iscsi", iscsi)):
                if tgt is not None:
                    snap.setdefault(name, {}).update(tgt.snapshot())
            return snap

        control = ControlServer(args.control, {
            "snapshot": snapshot,
            "set": on_set,
            "shutdown": snapshot,
        })
        control.attach(server.sel)

    def stop(signum, frame):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"serving exports {', '.join('/' + e for e in store.exports)} on {args.bind} port {server.port} "
        f"(portmap {args.portmap_port or 'off'}, NBD {server.stream_ports.get('nbd', 'off')}, "
        f"iSCSI {server.stream_ports.get('iscsi', 'off')}), verifier {store.verifier.hex()}")
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
