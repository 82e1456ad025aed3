"""`testbed status`: what a run has, as the kernel sees it (and the addresses the topology gives)."""

from __future__ import annotations

import json

from . import add_name_arg, known_errors


def register(sub) -> None:
    p = sub.add_parser("status", help="show a topology's hosts, namespaces, interfaces and processes")
    add_name_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.lifecycle import status

    with known_errors():
        s = status(args.name)
    if args.json:
        print(json.dumps(s, indent=2, sort_keys=True))
        return 0 if not s["problems"] else 1
    print(f"topology {s['name']!r} ({s['phase']}), run dir {s['run_dir']}")
    print(f"  switch {s['switch']['name']}: netns {s['switch']['netns']}, bridge {s['switch']['bridge']}, "
          f"{len(s['switch'].get('ports', []))} ports")
    for host, h in s["hosts"].items():
        for i in h["interfaces"]:
            owner = "kernel" if i["kernel_addresses"] else "userspace"
            print(f"  {host:<10} {h['netns']:<32} {i['name']:<15} {i['mac']} mtu {i['mtu']} {i['state']:<5} "
                  f"{', '.join(i['addresses'])} ({owner})")
    for p in s["processes"]:
        print(f"  process {p['pid']} in {p['host']}: {' '.join(p['argv'])} [{'alive' if p['alive'] else 'gone'}] log {p['log']}")
    for problem in s["problems"]:
        print(f"  PROBLEM: {problem}")
    return 0 if not s["problems"] else 1
