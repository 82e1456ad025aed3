"""`testbed demo [--out DIR] [--seed N] [--quick] [--aoe | --protocols]`: the four swap scenarios, side by
side, then the file-backed pair (file-mmap-linux, file-mmap-extended) in a second table; one report.
``--aoe``: only the swap-over-AoE pair (aoe-linux, aoe-extended), in a table of its own.
``--protocols``: instead, every storage protocol under the same flood (testbed.demo.PROTOCOL_ROWS).

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
    p.add_argument("--transport", choices=("tcp", "udp"),
                   help="every scenario's NFS transport (default: the scenarios' own, tcp; udp is the Linux-before-5.6 configuration)")
    p.add_argument("--aoe", action="store_true",
                   help="run only the swap-over-AoE pair (aoe-linux, aoe-extended) into an AoE table (docs/aoe.md)")
    p.add_argument("--protocols", action="store_true",
                   help="instead: every storage protocol under the same flood (NFS/TCP, NFS/UDP, NBD, iSCSI; "
                        "no-reserve and memalloc rows), one table")
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
        scn.check_seed(args.seed)
        if args.aoe and args.protocols:
            raise UserError("--aoe and --protocols each choose the demo's scenarios; give one of them")
        if (args.aoe or args.protocols) and (clients != ("agent",) or args.scenario):
            raise UserError("--aoe and --protocols run the agent on their own scenarios; "
                            "--client and --scenario go with the main demo")
        # the real kernel runs the swap scenarios (the file pair needs the agent's filemap)
        names = (demo.PROTOCOL_ROWS if args.protocols else demo.AOE_SCENARIOS if args.aoe
                 else demo.SCENARIOS if "linux" in clients else demo.ALL_SCENARIOS)
        for n in args.scenario or ():
            if n not in demo.ALL_SCENARIOS:
                raise UserError(f"--scenario {n}: not one of the demo's ({', '.join(demo.ALL_SCENARIOS)})"
                                f"{scn.did_you_mean(n, demo.ALL_SCENARIOS) or ';'} `testbed run NAME` runs any scenario")
        # --protocols rows name their own transport; --transport applies to the other demos
        loaded = demo.load_all(args.seed, args.quick, tuple(args.scenario) if args.scenario else names,
                               transport=None if args.protocols else args.transport,
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
        entries, wall = demo.run_demo(out, loaded, protocols=args.protocols)
    ok = all(e["outcome"] in (e["expect"], "n/a") for e in entries)
    print()
    print(demo.format_protocol_table(entries) if args.protocols else demo.format_table(entries))
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
