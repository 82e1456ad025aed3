"""`testbed run NAME|FILE`: one scenario on real packets (or, with ``--sim``, deterministically in
memory: no root, testbed/sim_report.py); the report directory; exit 0 iff outcome == expect.

Exit status: 0 outcome == expect; 1 outcome differs, is ``invalid``/``unfinished``/``testbed_bug``
(a task of the agent crashed: one line names the task and its exception, the traceback is in the
report's watchdog.txt), or the run failed; 2 usage, scenario file or preflight errors (nothing
was created).
"""

from __future__ import annotations

import os
import sys

from . import known_errors, sigterm_as_interrupt


def register(sub) -> None:
    p = sub.add_parser("run", help="run a swap-over-NFS scenario on real packets and write a report directory")
    p.add_argument("scenario", metavar="NAME|FILE", help="built-in scenario (scenarios/NAME.toml) or a TOML file")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--out", metavar="DIR", help="report directory (default: ./reports/<scenario>-<timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario parameter, e.g. --set max_duration_s=30 (repeatable)")
    p.add_argument("--bench", metavar="JSON", help="take agent_capacity_pps from a `testbed bench` JSON")
    p.add_argument("--preflight-only", action="store_true", help="print the preflight checks and stop")
    p.add_argument("--sim", action="store_true",
                   help="run deterministically in memory (no root, no namespaces): same report directory, "
                        "pcap of the in-memory wire, figures of testbed.sim; the agent client only")
    add_client_args(p)
    p.set_defaults(func=run)


def add_client_args(p, both: bool = False) -> None:
    """--client / --kernel / --modules / --nic: shared by run and demo (demo also takes --client both)."""
    p.add_argument("--client", choices=("agent", "linux", "both") if both else ("agent", "linux"),
                   help="the client host: the userspace agent (default) or a real Linux kernel in a QEMU VM"
                   + ("; both: each scenario on the agent, then on the kernel, same seed" if both else ""))
    p.add_argument("--kernel", metavar="PATH", help="with --client linux: a vmlinuz/bzImage/vmlinux to boot "
                   "(default: the newest /boot/vmlinuz-*)")
    p.add_argument("--modules", metavar="DIR", help="with --client linux: the kernel's modules directory "
                   "(default: /lib/modules/RELEASE of the kernel)")
    p.add_argument("--nic", metavar="MODEL", help="with --client linux: the guest's NIC model (virtio-net-pci, e1000, ...)")


def client_overrides(args) -> dict:
    """The scenario overrides --client/--kernel/--modules/--nic stand for (paths made absolute)."""
    import os
    o: dict = {}
    if args.client:
        o["client"] = args.client
    if args.nic:
        from client_agent.phy.ring import NICS
        from testbed.cli import UserError
        from testbed.scenario import GUEST_NICS
        if args.nic in NICS:
            raise UserError(f"--nic {args.nic}: --nic is the Linux guest's NIC model ({', '.join(GUEST_NICS)}); "
                            f"the agent's NIC is the scenario key nic: use --set nic={args.nic}")
        if args.nic not in GUEST_NICS:
            raise UserError(f"--nic {args.nic}: not a guest NIC model; pick one of {', '.join(GUEST_NICS)}")
    if (args.kernel or args.modules or args.nic) and o.get("client") != "both":
        if o.get("client") != "linux" and not getattr(args, "sim", False):   # --sim refuses it next
            given = next(f for f, v in (("--kernel", args.kernel), ("--modules", args.modules), ("--nic", args.nic)) if v)
            print(f"testbed run: {given} is the Linux VM client's: running with --client linux", file=sys.stderr)
        o["client"] = "linux"
    if args.kernel:
        o["guest_kernel"] = os.path.abspath(args.kernel)
    if args.modules:
        o["guest_modules"] = os.path.abspath(args.modules)
    if args.nic:
        o["guest_nic"] = args.nic
    return o


def testbed_bug_line(entry: dict, out: str) -> str | None:
    """The one line of a run in which a task of the agent crashed, or None."""
    from testbed.watchdog import crash_line
    crashes = entry.get("task_crashes") or []
    if entry.get("outcome") != "testbed_bug":
        return None
    first = crash_line(crashes[0]) if crashes else "a task crashed (no record kept)"
    more = f" (+{len(crashes) - 1} more)" if len(crashes) > 1 else ""
    return (f"testbed: {entry['name']}: testbed bug, not a result -- {first}{more}; "
            f"traceback in {out}/watchdog.txt")


def run(args) -> int:
    from testbed import report as rep
    from testbed import scenario as scn
    from testbed.cli import UserError

    try:
        overrides = dict(scn.parse_override(o) for o in args.overrides)
        if scn.check_seed(args.seed) is not None:
            overrides["seed"] = args.seed
        if args.bench:
            overrides["agent_capacity_pps"] = scn.capacity_from_bench(args.bench)
        overrides.update(client_overrides(args))
        sc = scn.load(args.scenario, overrides)
    except scn.ScenarioError as e:
        raise UserError(str(e)) from None
    if args.sim and sc.client != "agent":
        raise UserError(f"--sim runs the userspace agent only, but client={sc.client} asks for a Linux kernel in a "
                        f"QEMU VM; run without --sim for the Linux VM client, or drop --client/--kernel/--modules/--nic")
    checks, figs = scn.preflight(sc)
    bad = scn.failing(sc, checks)
    if sc.client == "linux":
        # the preflight's figures are the agent's pool; a real kernel's condition is checked instead
        from testbed.linux_vm.run import unsupported
        bad = []
        why = unsupported(sc)
        if why:
            raise UserError(why)
    if args.preflight_only:
        for c in checks:
            vals = ", ".join(f"{k}={v}" for k, v in c.values.items())
            applies = c.applies == "all" or sc.expect in c.applies.split(",")
            mark = ("ok  " if c.passed else "fail") if applies else "n/a "
            why = "" if applies else f" [only for expect={c.applies}; this one expects {sc.expect}]"
            print(f"[{mark}] {c.name}: {c.formula}; {vals}{why}", file=sys.stderr)
    if bad:
        for c in bad:
            print(f"testbed: {c.line(sc)}", file=sys.stderr)
        return 2
    if args.preflight_only:
        return 0
    out = rep.prepare(args.out or rep.default_out_dir(sc.name))
    if args.sim:
        from testbed import sim_report
        if sc.nic:
            print(f"testbed run: note: nic = {sc.nic!r} is the agent's NIC on real packets; the simulation's "
                  f"is the in-memory wire (offloads apply there, through its software NIC)", file=sys.stderr)
        try:
            entry, path = sim_report.run(sc, checks, out, extra={"figures": figs, "simulated": True})
        except ValueError as e:
            raise UserError(f"scenario {sc.name}: {e}") from None
        bug = testbed_bug_line(entry, out)
        if bug:
            print(bug, file=sys.stderr)
            return 1
        print(summary_line(entry, path))
        return 0 if entry["outcome"] == sc.expect else 1
    from testbed.runner import RunError, run_scenario
    with known_errors(), sigterm_as_interrupt():
        try:
            entry = run_scenario(sc, checks, out)
        except RunError as e:
            print(f"testbed: {e}; logs in {out}/logs", file=sys.stderr)
            return 1
    timeline = entry.pop("_timeline")
    if sc.client != "linux" and timeline:   # the agent's timeline as a picture, as the demo and --sim leave it
        try:
            from testbed import plots
            entry["png"] = os.path.relpath(plots.scenario_png(entry, timeline, os.path.join(out, f"{sc.name}.png")), out)
        except Exception as e:  # noqa: BLE001 -- a plot failure must not lose the run's report
            print(f"testbed: {sc.name}: timeline PNG not written ({type(e).__name__}: {e}); the JSON report is complete",
                  file=sys.stderr)
    path = rep.write_report(out, [entry], timeline=timeline, extra={"figures": figs})
    bug = testbed_bug_line(entry, out)
    if bug:
        print(bug, file=sys.stderr)
        return 1
    print(summary_line(entry, path))
    return 0 if entry["outcome"] == sc.expect else 1


def summary_line(entry: dict, path: str) -> str:
    """`testbed run`'s last line: the outcome and the run's figures from its report entry; the
    resend count under its protocol's own name (testbed.watchdog.retrans_text)."""
    from testbed.watchdog import retrans_text

    def v(x):
        return "n/a" if x is None else x
    where = f" [simulated, seed {entry['seed']}]" if entry.get("simulated") else ""
    # a real kernel has no reserve low-water mark in /proc: its figure is the lowest free count sampled
    low = (f"free low {v(entry['reserve_low_pages'])} pages (sampled)" if entry.get("client") == "linux"
           else f"reserve low {v(entry['reserve_low_pages'])}")
    return (f"{entry['name']}: outcome {entry['outcome']}{' (beyond Linux)' if entry.get('beyond_linux') else ''} "
            f"(expect {entry['expect']}){where} -- pages written {v(entry['pages_written'])}, "
            f"verified {v(entry['pages_verified'])}, lost {v(entry['pages_lost'])}, {low}, "
            f"{retrans_text(entry)}, PFMemallocDrop {v(entry['counters']['PFMemallocDrop'])}, "
            f"rx_nobuf {v(entry['counters']['rx_nobuf'])}{' (' + entry['client'] + ' client)' if entry.get('client') else ''}; "
            f"report {path}")
