"""`testbed demo [--out DIR] [--seed N] [--quick]`: the four swap scenarios, side by side, then the
file-backed pair (file-mmap-linux, file-mmap-extended) in a second table; one report.

Exit status: 0 every outcome == expect; 1 one differs (or a run failed); 2 usage or preflight
errors (nothing was created).
"""

from __future__ import annotations

import sys

from . import known_errors, sigterm_as_interrupt


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the four swap-over-NFS scenarios and the file-backed pair on real packets; tables, PNGs, pcaps, one report")
    p.add_argument("--out", metavar="DIR", help="report directory (default: ./reports/demo-<timestamp>)")
    p.add_argument("--seed", type=int, help="override every scenario's seed")
    p.add_argument("--quick", action="store_true", help="shorter time caps (a run that neither deadlocks nor recovers ends sooner)")
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (repeatable; default: all of the demo's)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override a scenario parameter for every run, e.g. --set guest_memory_mib=128 (repeatable)")
    from .run import add_client_args
    add_client_args(p, both=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from testbed import demo
    from testbed import report as rep
    from testbed import scenario as scn
    from testbed.cli import UserError

    from .run import client_overrides
    ov = client_overrides(args)
    clients = {"both": ("agent", "linux"), "linux": ("linux",)}.get(ov.pop("client", "agent"), ("agent",))
    try:
        sets = dict(scn.parse_override(o) for o in args.overrides)
        # the real kernel runs the swap scenarios (the file pair needs the agent's filemap)
        names = demo.SCENARIOS if "linux" in clients else demo.ALL_SCENARIOS
        for n in args.scenario or ():
            if n not in demo.ALL_SCENARIOS:
                raise UserError(f"--scenario {n}: not one of the demo's ({', '.join(demo.ALL_SCENARIOS)}); "
                                "`testbed run NAME` runs any scenario")
        loaded = demo.load_all(args.seed, args.quick, tuple(args.scenario) if args.scenario else names,
                               clients=clients, client_overrides=ov, overrides=sets)
    except scn.ScenarioError as e:
        raise UserError(str(e)) from None
    # the preflight's figures are the agent's pool: they bind the agent's runs only
    bad = [(sc, c) for sc, checks, _ in loaded if sc.client == "agent" for c in scn.failing(sc, checks)]
    for sc, c in bad:
        print(f"testbed: {sc.name}: {c.line(sc)}", file=sys.stderr)
    if bad:
        return 2
    out = rep.prepare(args.out or demo.default_out_dir())
    print(f"testbed demo: report directory {out}", file=sys.stderr, flush=True)
    with known_errors(), sigterm_as_interrupt():
        entries, wall = demo.run_demo(out, loaded)
    ok = all(e["outcome"] in (e["expect"], "n/a") for e in entries)
    print()
    print(demo.format_table(entries))
    side = demo.side_by_side_rows(entries)
    if side:
        print()
        print(demo.format_side_by_side(side))
    print()
    from testbed.explain import summary_line
    for e in entries:
        if e.get("explanations"):
            print(f"{e['name']}: {summary_line(e['explanations'])}")
    print(f"\n{sum(e['outcome'] == e['expect'] for e in entries)}/{len(entries)} as expected in {wall:.0f} s; "
          f"report {out}/report.json, pictures {out}/overview.png and {out}/<scenario>.png, "
          f"views: testbed stat --report {out} --scenario NAME")
    return 0 if ok else 1
