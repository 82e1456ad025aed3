"""`testbed soak [--duration-s N]`: a long memalloc run (flood on, paced swap workload) sampling RSS,
open fds, pool pages and the NAS's DRC of every process; exit 1 on growth beyond the bounds it prints.
Not part of CI (minutes); root."""

from __future__ import annotations

from . import known_errors, sigterm_as_interrupt


def register(sub) -> None:
    p = sub.add_parser("soak", help="long memalloc run under flood; fails on RSS/fd/pool/DRC growth beyond stated bounds")
    p.add_argument("--duration-s", type=float, default=300.0, help="length of the run (default 300 s)")
    p.add_argument("--rate-pps", type=int, default=150, help="workload pages per second (default 150)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", metavar="DIR", help="report directory (default: ./reports/soak-<timestamp>)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    from testbed import report as rep
    from testbed import soak
    from testbed.cli import UserError

    if args.duration_s < 10 or args.rate_pps < 1:
        raise UserError(f"--duration-s {args.duration_s} / --rate-pps {args.rate_pps}: need >= 10 s and >= 1 page/s")
    if os.geteuid() != 0:
        raise UserError("soak runs on real packets in namespaces: run it as root (see `testbed doctor`)")
    out = rep.prepare(args.out or rep.default_out_dir("soak"))
    with known_errors(), sigterm_as_interrupt():
        res = soak.run_soak(args.duration_s, out, rate_pps=args.rate_pps, seed=args.seed)
    print(json.dumps({k: res[k] for k in ("duration_s", "outcome", "pages_written", "pages_verified", "figures", "bounds")}, indent=1))
    for p in res["problems"]:
        print(f"testbed soak: {p}")
    print(f"soak {'ok' if res['ok'] else 'FAILED'}; samples in {out}/soak.json")
    return 0 if res["ok"] else 1
