"""The report directory of a run: report.json, timeline.json, pcap/, logs/.

Invariant owned here: ``report.json`` follows ``SCHEMA_VERSION``; later features add fields and
never rename or remove one (architecture.md). Every scenario entry carries at least ``SCENARIO_KEYS``.
"""

from __future__ import annotations

import json
import os
import shutil
import time

SCHEMA_VERSION = 1
SCENARIO_KEYS = ("name", "outcome", "seed", "expect", "time_to_stall_s", "time_to_recover_s",
                 "pages_written", "pages_verified", "pages_lost", "reserve_low_pages", "rpc_retrans",
                 "preflight", "counters", "watchdog")


def kv_text(d: dict) -> str:
    """A dict as one progress line's ``key=value key=value`` (a nested dict in parentheses)."""
    return " ".join(f"{k}=({kv_text(v)})" if isinstance(v, dict) else f"{k}={v}" for k, v in d.items())


def default_out_dir(scenario_name: str) -> str:
    """./reports/<label>-<timestamp>, made here (empty) so that it is this command's alone: two
    commands started in the same second get <label>-<timestamp> and <label>-<timestamp>-2
    (os.mkdir is atomic; prepare() accepts the empty directory)."""
    base = os.path.join("reports", f"{scenario_name}-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.makedirs("reports", mode=0o755, exist_ok=True)
    except OSError:
        return base                                   # prepare() says what is wrong with it
    n = 1
    while True:
        d = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(d, 0o700)
            return d
        except FileExistsError:
            n += 1
        except OSError:
            return d


def prepare(out: str) -> str:
    if ".." in out.split(os.sep) or "\0" in out:
        from testbed.cli import UserError
        raise UserError(f"--out {out!r}: '..' components and NUL bytes are not allowed; give a plain directory path")
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        from testbed.cli import UserError
        raise UserError(f"--out {out}: exists and is not a directory; give a directory path (new or empty)")
    if os.path.exists(out) and os.listdir(out):
        from testbed.cli import UserError
        raise UserError(f"--out {out}: directory exists and is not empty; pick a new directory or remove it")
    try:
        os.makedirs(out, mode=0o700, exist_ok=True)          # pcaps and logs: owner only
        os.makedirs(os.path.join(out, "pcap"), mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(out, "logs"), mode=0o700, exist_ok=True)
    except OSError as e:
        from testbed.cli import UserError
        raise UserError(f"--out {out}: cannot create the report directory ({e.strerror}); "
                        f"give a path in a writable directory") from None
    return out


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_report(out: str, entries: list[dict], *, timeline: list[dict] | None = None, extra: dict | None = None) -> str:
    for e in entries:
        missing = [k for k in SCENARIO_KEYS if k not in e]
        if missing:
            raise AssertionError(f"report entry {e.get('name')!r} lacks {missing}")
    doc = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "scenarios": entries}
    if extra:
        doc.update(extra)
    path = os.path.join(out, "report.json")
    write_json(path, doc)
    if timeline is not None:
        write_json(os.path.join(out, "timeline.json"), {"schema_version": SCHEMA_VERSION, "interval_s": 0.2,
                                                        "samples": timeline})
    return path


def copy_logs(run_dir: str, out: str, dest: str | None = None) -> list[str]:
    """Copy every log of the run (agent, NAS, flood, tcpdump) into ``dest`` (default ``out/logs``)."""
    src = os.path.join(run_dir, "logs")
    dest = dest or os.path.join(out, "logs")
    os.makedirs(dest, exist_ok=True)
    copied = []
    if os.path.isdir(src):
        for name in sorted(os.listdir(src)):
            shutil.copy2(os.path.join(src, name), os.path.join(dest, name))
            copied.append(name)
    return copied
