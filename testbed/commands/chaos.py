"""`testbed chaos [--runs N] [--seed S] [--real K] [--out DIR]`: the scenarios under seeded faults.

Exit status: 0 every run kept the invariant (no lost or corrupted acknowledged page, no crash, no
leak; outcome-preserving fault sets kept their outcome); 1 a run broke it (its report is kept in
--out); 2 usage errors. See testbed/chaos.py for the fault kinds and docs/reliability.md.
"""

from __future__ import annotations

import sys

from . import known_errors, sigterm_as_interrupt


def register(sub) -> None:
    p = sub.add_parser("chaos", help="fault campaign: scenarios under seeded loss/dup/reorder/delay, NAS restarts, "
                                     "flood on/off, pool edges; fails on any lost page, crash or leak")
    p.add_argument("--runs", type=int, default=20, help="in-memory runs (default 20; each replays from --seed and its index)")
    p.add_argument("--seed", type=int, default=1, help="campaign seed (default 1)")
    p.add_argument("--real", type=int, default=0, metavar="K", help="real-packet runs in namespaces (root; default 0)")
    p.add_argument("--out", metavar="DIR", help="campaign.json and the reports of failed runs (default: ./reports/chaos-<timestamp>, "
                        "-2, -3, ... after it for another campaign started in the same second)")
    p.add_argument("--storage", choices=("nfs", "nbd", "iscsi", "aoe"), default="nfs",
                   help="the storage protocol of every run (its scenarios: nbd-memalloc, ...; default nfs); "
                        "aoe: aoe-linux and aoe-extended under loss/dup/reorder/delay, flood on/off and pool "
                        "edges, in memory only (no --real: real runs key their faults by NFS calls)")
    p.add_argument("--client", choices=("agent", "linux"), default="agent",
                   help="the client of the --real runs: the agent, or a Linux kernel in a QEMU VM (packet faults "
                        "through a relay on its tap, NAS restarts; testbed.linux_vm)")
    p.add_argument("--only", type=int, metavar="I", help="replay in-memory run I of the campaign only (0 <= I < --runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from testbed import chaos
    from testbed import report as rep
    from testbed.cli import UserError

    for flag, n in (("--runs", args.runs), ("--real", args.real)):
        if n < 0:
            raise UserError(f"{flag} {n}: a count of runs must be >= 0")
    if args.runs == 0 and args.real == 0:
        raise UserError("--runs 0 --real 0: nothing to run; give --runs N (in memory) and/or --real N (root)")
    if args.only is not None and not 0 <= args.only < args.runs:
        raise UserError(f"--only {args.only}: the campaign's in-memory runs are 0..{args.runs - 1} (--runs {args.runs}); "
                        f"give --only in that range, or a larger --runs")
    if args.storage == "aoe" and args.real:
        raise UserError(f"--storage aoe --real {args.real}: AoE campaigns run in memory only (the real runs key "
                        "their faults by the NFS transport's call count); use --real 0")
    if args.real and __import__("os").geteuid() != 0:
        raise UserError("--real needs root for namespaces: run it with sudo (see `testbed doctor`), or use --real 0")
    if args.client == "linux" and args.storage != "nfs":
        raise UserError(f"--client linux --storage {args.storage}: the Linux guest swaps over NFS only; "
                        "drop --storage or use --client agent")
    out = rep.prepare(args.out or rep.default_out_dir("chaos"))
    print(chaos.HEADER)
    if args.only is not None:
        row = chaos.run_one(args.seed, args.only, args.storage)
        row.pop("result", None)
        print(chaos.format_row(row))
        return 0 if row["ok"] else 1
    with known_errors(), sigterm_as_interrupt():
        res = chaos.campaign(args.runs, args.seed, args.real, out, log=lambda line: print(line, flush=True),
                             storage=args.storage, client=args.client)
    print(f"\n{len(res['rows']) - len(res['failed'])}/{len(res['rows'])} runs kept the invariant in {res['wall_s']:.0f} s; "
          f"fault kinds exercised: {', '.join(res['kinds_exercised']) or 'none'}"
          + (f"; not exercised: {', '.join(res['kinds_missing'])}" if res["kinds_missing"] else "")
          + f"; lost pages {res['lost_total']}; campaign {out}/campaign.json")
    if res["failed"]:
        print(f"testbed chaos: runs {res['failed']} broke the invariant; their reports are in {out}", file=sys.stderr)
    return 0 if res["ok"] else 1
