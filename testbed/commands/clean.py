"""`testbed clean`: finish every recorded run (e.g. after a crash); never touches unrecorded objects."""

from __future__ import annotations

from . import known_errors


def register(sub) -> None:
    p = sub.add_parser("clean", help="remove every leftover that a run record lists (after a crash); nothing else")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.lifecycle import clean
    from netns_setup.state import run_root

    with known_errors():
        done = clean()
    if not done:
        print(f"nothing to clean: no run records under {run_root()}")
    for name, c in done.items():
        print(f"{name}: {c['processes']} processes, {c['veths']} veths, {c['bridges']} bridges, {c['namespaces']} namespaces removed")
    return 0
