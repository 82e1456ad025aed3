"""`testbed clean`: finish every recorded run (e.g. after a crash); never touches unrecorded objects."""

from __future__ import annotations

from . import known_errors


def register(sub) -> None:
    p = sub.add_parser("clean", help="remove every leftover that a run record lists (after a crash); nothing else")
    p.add_argument("--force", action="store_true",
                   help="also tear down runs whose creating process is still running")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.lifecycle import clean
    from netns_setup.state import run_root

    in_use: dict[str, int] = {}
    with known_errors():
        done = clean(force=args.force, in_use=in_use)
    for name, pid in in_use.items():
        print(f"{name}: left alone, still in use by pid {pid} (stop that command, or `testbed clean --force`)")
    if not done and not in_use:
        print(f"nothing to clean: no run records under {run_root()}")
    for name, c in done.items():
        print(f"{name}: {c['processes']} processes, {c['veths']} veths, {c['bridges']} bridges, {c['namespaces']} namespaces removed")
    return 0
