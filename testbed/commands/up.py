"""`testbed up`: create a topology (namespaces, bridge, veths) and record it in its run directory."""

from __future__ import annotations

import os
import sys
import time

from . import add_name_arg, known_errors, sigterm_as_interrupt

# The default topology file ships with the repository; without it the built-in equal default is used.
DEFAULT_TOPOLOGY_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "topologies", "default.toml")


def register(sub) -> None:
    p = sub.add_parser("up", help="create a topology: client, nas, noise on one switch (or --topology/--clients)")
    add_name_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--topology", metavar="FILE", help="topology TOML file (default: topologies/default.toml)")
    g.add_argument("--clients", type=int, metavar="N", help="generate N clients on one NAS (scale tests)")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.lifecycle import up
    from netns_setup.topology import default_topology, generate_topology, load_topology

    with known_errors():
        if args.clients is not None:
            topo = generate_topology(args.clients)
        elif args.topology:
            topo = load_topology(args.topology)
        elif os.path.exists(DEFAULT_TOPOLOGY_FILE):
            topo = load_topology(os.path.normpath(DEFAULT_TOPOLOGY_FILE))
        else:
            topo = default_topology()
        t0 = time.monotonic()
        with sigterm_as_interrupt():
            st = up(topo, args.name, progress=lambda m: print(f"  {m}", file=sys.stderr))
        took_s = time.monotonic() - t0
    print(f"topology {args.name!r} is up in {took_s:.2f} s; run dir {st.dir}")
    for h in topo.hosts:
        addr = h.address_str + ("" if h.kernel_addr else " (no kernel address: userspace-owned)")
        print(f"  {h.name:<10} netns {st.host_netns(h.name):<32} iface {st.host_iface(h.name):<15} {addr}")
    print(f"remove it with: testbed down --name {args.name}")
    return 0
