"""`testbed stat [nstat|vmstat|zoneinfo|ss] [--report DIR [--scenario NAME]] [--live --name RUN]`.

Linux-style views (testbed.views) of an agent snapshot: the final snapshot saved in a report
(`testbed run` or `testbed demo`), or a live one from a running agent's control socket.
"""

from __future__ import annotations

import json
import os
import time

from . import add_name_arg, known_errors


def register(sub) -> None:
    from testbed.views import VIEWS
    p = sub.add_parser("stat", help="nstat / vmstat / zoneinfo / ss views of an agent snapshot (report or live)")
    p.add_argument("view", nargs="?", choices=VIEWS + ("all",), default="all", help="which view (default: all)")
    p.add_argument("--report", metavar="DIR", help="a report directory of `testbed run` or `testbed demo`")
    p.add_argument("--scenario", metavar="NAME", help="which scenario of a demo report (default: every one)")
    p.add_argument("--live", action="store_true", help="ask the running agent of run --name for a snapshot")
    add_name_arg(p)
    p.set_defaults(func=run)


def report_snapshots(d: str, scenario: str | None) -> list[tuple[str, dict]]:
    """(scenario name, final snapshot) pairs of a report directory."""
    from testbed.cli import UserError
    if not os.path.isdir(d):
        raise UserError(f"--report {d}: no such directory; give a report directory (printed by testbed run/demo)")
    found = []
    sdir = os.path.join(d, "scenarios")
    if os.path.isdir(sdir):
        for n in sorted(os.listdir(sdir)):
            p = os.path.join(sdir, n, "final_snapshot.json")
            if os.path.exists(p):
                found.append((n, p))
    elif os.path.exists(os.path.join(d, "final_snapshot.json")):
        name = "run"
        try:
            with open(os.path.join(d, "report.json")) as f:
                name = json.load(f)["scenarios"][0]["name"]
        except (OSError, KeyError, IndexError, ValueError):
            pass
        found.append((name, os.path.join(d, "final_snapshot.json")))
    if not found:
        guest = linux_client_snapshot(d)
        if guest:
            raise UserError(f"--report {d}: a Linux-client report has no agent snapshot; the guest's /proc "
                            f"figures are in {guest} (and its timeline in {os.path.join(d, 'timeline.json')})")
        raise UserError(f"--report {d}: no final_snapshot.json in it (nor in scenarios/*/); is it a testbed report directory?")
    if scenario:
        sel = [x for x in found if x[0] == scenario]
        if not sel:
            raise UserError(f"--scenario {scenario}: not in {d}; it has {', '.join(n for n, _ in found)}")
        found = sel
    out = []
    for n, p in found:
        with open(p) as f:
            out.append((n, json.load(f)))
    return out


def linux_client_snapshot(d: str) -> str | None:
    """The guest's final /proc snapshot of a `--client linux` report (testbed/linux_vm/run.py writes
    it as guest/final_snapshot.json, guest-<prefix>/ in a demo), None if ``d`` has none."""
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n, "final_snapshot.json")
        if (n == "guest" or n.startswith("guest-")) and os.path.exists(p):
            return p
    return None


def live_snapshots(name: str) -> tuple[dict, dict, float]:
    """Two snapshots 0.5 s apart from the run's agent (for nstat's rate column)."""
    from netns_setup.control import ControlClient, ControlError
    from netns_setup.state import RunState, control_socket_path

    from testbed.cli import UserError
    with known_errors():
        st = RunState.load(name)
    path = control_socket_path(st.dir, "agent")
    if not os.path.exists(path):
        raise UserError(f"run {name!r} has no agent control socket at {path}; start one (testbed run/demo) "
                        f"and pass its run name (shown as 'topology NAME up')")
    try:
        with ControlClient(path, timeout_s=5.0) as c:
            a = c.call("snapshot")
            t = time.monotonic()
            time.sleep(0.5)
            b = c.call("snapshot")
            return a, b, time.monotonic() - t
    except (ControlError, OSError, TimeoutError) as e:
        raise UserError(f"run {name!r}: agent at {path} did not answer a snapshot ({e}); is it still running?") from None


def run(args) -> int:
    from testbed import views
    from testbed.cli import UserError

    which = views.VIEWS if args.view == "all" else (args.view,)
    if args.live:
        prev, snap, dt = live_snapshots(args.name)
        items = [(args.name, snap, prev, dt)]
    elif args.report:
        items = [(n, s, None, None) for n, s in report_snapshots(args.report, args.scenario)]
    else:
        raise UserError("say where the snapshot comes from: --report DIR (a testbed run/demo report) or --live --name RUN")
    for n, snap, prev, dt in items:
        if args.view == "aoe" and not views.aoe_devices(snap):
            print(f"{n}: no AoE device in this snapshot (its swap/file storage is not AoE); "
                  f"`testbed stat` shows its other views")
            continue
        # "all" shows the aoe view only for a snapshot with an AoE swap area
        for v in [v for v in which if v != "aoe" or args.view == "aoe" or views.aoe_devices(snap)]:
            if len(items) > 1 or len(which) > 1:
                print(f"==> {n}: {v} <==")
            print(views.render(v, snap, prev, dt), end="")
            if len(items) > 1 or len(which) > 1:
                print()
    return 0
