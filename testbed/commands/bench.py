"""`testbed bench`: run the benchmark sections, print a table of figures, optionally write JSON.
With ``--repeat N`` the sections run N times in a row and the table and JSON give each figure's
median with its range (testbed.bench.framework.summarize_runs).

Exit 0 whenever every section measured, even if targets were missed (figures are measurements);
exit 1 if a section could not measure (its entry in the JSON carries "error"); 2 for a bad option,
including a ``--json`` path that cannot be written (checked before measuring; if writing still
fails at the end, the table is printed, the document goes to a fallback file and the exit is 2).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure figures against baselines (receive-path CPU, NAS throughput, ...)")
    p.add_argument("--quick", action="store_true", help="fewer rates, shorter windows (about a minute)")
    p.add_argument("--json", metavar="FILE", help="write the whole result as JSON to FILE ('-' for stdout)")
    p.add_argument("--section", action="append", metavar="NAME",
                   help="run only this section (repeatable); default: all. `--section list` lists them")
    p.add_argument("--seed", type=int, default=1, help="seed for the traffic (default 1)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run the sections N times in a row and report each figure's median and range "
                        "(the JSON keeps every run under \"runs\"); default 1")
    p.set_defaults(func=run)


def run(args) -> int:
    from testbed.bench import format_table, has_errors, load_sections, run_sections, summarize_runs
    from testbed.cli import UserError

    from . import sigterm_as_interrupt

    registry = load_sections()
    names = args.section or None
    if names == ["list"]:
        width = max(map(len, registry.names()), default=0)
        for n in registry.names():
            print(f"{n:{width}}  {registry.get(n).help}")
        return 0
    unknown = [n for n in names or [] if n not in registry.names()]
    if unknown:
        from testbed.scenario import did_you_mean
        hints = "".join(did_you_mean(n, registry.names()) for n in unknown)
        raise UserError(f"unknown bench section(s) {', '.join(unknown)}{hints or ';'} "
                        f"sections: {', '.join(registry.names())}")
    if not 1 <= args.repeat <= 20:
        raise UserError(f"--repeat {args.repeat}: give a number of runs from 1 to 20 (3 for a median with its spread)")
    if args.json and args.json != "-":
        problem = json_path_problem(args.json)
        if problem:
            raise UserError(f"--json {args.json}: {problem}; nothing was measured")
    docs = []
    with sigterm_as_interrupt():
        for k in range(args.repeat):
            prefix = f"[run {k + 1}/{args.repeat}] " if args.repeat > 1 else ""
            docs.append(run_sections(registry, names, quick=args.quick, seed=args.seed,
                                     progress=lambda m, prefix=prefix: print(prefix + m, file=sys.stderr, flush=True)))
    doc = docs[0] if args.repeat == 1 else summarize_runs(docs)
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    if args.json == "-":
        print(text)
    else:
        print(format_table(doc))
        if args.json:
            try:
                with open(args.json, "w") as f:
                    f.write(text + "\n")
            except OSError as e:
                fallback = write_fallback(text)
                kept = f"the results are in {fallback}" if fallback else "the results are only in the table above"
                print(f"testbed: --json {args.json}: cannot write it ({e.strerror or e}); {kept}", file=sys.stderr)
                return 2
            print(f"\nwrote {args.json}")
    return 1 if has_errors(doc) else 0


def json_path_problem(path: str) -> str | None:
    """Why ``path`` cannot take the JSON document (a directory, a missing or read-only parent
    directory, a read-only file), or None. Checked before the bench runs, so no results are lost."""
    if os.path.isdir(path):
        return "is a directory; give a file name, e.g. --json bench.json"
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return f"directory {parent} does not exist; create it or give another path"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the file is not writable; give another path"
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable; give another path"
    return None


def write_fallback(text: str) -> str | None:
    """Write the document to a new ``testbed-bench-*.json`` in the current directory, else in the
    temporary directory; returns its path, or None if neither could be written."""
    for d in (os.getcwd(), tempfile.gettempdir()):
        try:
            fd, path = tempfile.mkstemp(prefix="testbed-bench-", suffix=".json", dir=d)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            return path
        except OSError:
            os.unlink(path)
    return None
