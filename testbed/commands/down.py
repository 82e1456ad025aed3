"""`testbed down`: remove exactly what a run's record lists (processes, veths, bridge, namespaces)."""

from __future__ import annotations

import time

from . import add_name_arg, known_errors


def register(sub) -> None:
    p = sub.add_parser("down", help="remove a topology and its processes (only what its record lists)")
    add_name_arg(p)
    p.add_argument("--keep-logs", action="store_true", help="keep the run directory's logs and pcaps")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.lifecycle import down

    t0 = time.monotonic()
    with known_errors():
        counts = down(args.name, keep_logs=args.keep_logs)
    print(f"topology {args.name!r} is down in {time.monotonic() - t0:.2f} s: "
          f"{counts['processes']} processes, {counts['veths']} veths, {counts['bridges']} bridges, "
          f"{counts['namespaces']} namespaces removed")
    return 0
