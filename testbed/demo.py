"""`testbed demo`: the four swap-over-NFS scenarios on real packets, side by side, in ONE report,
then file-mmap-linux (deadlock) and file-mmap-extended (recovered, beyond Linux) in a second table.

Invariants owned here:
- Every scenario passes preflight before anything is created (a failing one stops the demo with
  exit 2 and its one-line fix); the runs then go one after the other, each in its own topology
  (testbed.runner removes it whatever happens).
- The report directory holds: report.json (schema of testbed.report, one entry per scenario),
  <scenario>.png + overview.png, pcap/<scenario>-<host>.pcap, logs/<scenario>/, and per scenario
  scenarios/<scenario>/{final_snapshot.json, timeline.json, watchdog.txt, explanations.json,
  explanations.txt}.
- Exit 0 only if every outcome equals its scenario's expect.
"""

from __future__ import annotations

import os
import sys
import time

from testbed import report as rep
from testbed import scenario as scn

SCENARIOS = ("no-reserve", "reserve-no-filter", "memalloc", "memalloc-undersized")
# then the second, smaller table: a swapless client's MAP_SHARED file under the same flood, Linux's
# policy (deadlock) and the extended one (file transport SOCK_MEMALLOC too: beyond Linux)
FILE_SCENARIOS = ("file-mmap-linux", "file-mmap-extended")
FILE_TABLE_TITLE = "file-backed writeback under the same flood"
ALL_SCENARIOS = SCENARIOS + FILE_SCENARIOS
# `testbed demo --aoe` (docs/aoe.md): swap over AoE beside a protected NFS swap, Linux's driver
# (deadlock) and beyond Linux (recovered), in a table of their own until the "every storage
# protocol" table lands
AOE_SCENARIOS = ("aoe-linux", "aoe-extended")
AOE_TABLE_TITLE = "swap over AoE under the same flood"
# Wall-time caps (the scenarios' own max_duration_s is for a lone `testbed run`): a deadlock run ends
# when the watchdog decides (stall_threshold_s after the stall), a recovery in seconds; the cap only
# bounds a run that does neither, so that the four stay within ~2 minutes.
MAX_DURATION_S = 25.0
# `testbed demo --protocols`: "every storage protocol of the problem statement under the same flood".
# Data-driven: (protocol label, scenario, overrides) -- the same flood, pool and reserve in every
# row; only the storage protocol (and NFS's transport) differ. Other protocols append their rows
# (e.g. AoE). The run name of a row is ``name`` in its overrides (one scenario may appear twice).
PROTOCOL_ROWS: list[tuple[str, str, dict]] = [
    ("NFS/TCP", "no-reserve", {"transport": "tcp", "name": "nfs-tcp-no-reserve"}),
    ("NFS/TCP", "memalloc", {"transport": "tcp", "name": "nfs-tcp-memalloc"}),
    ("NFS/UDP", "no-reserve", {"transport": "udp", "name": "nfs-udp-no-reserve"}),
    ("NFS/UDP", "memalloc", {"transport": "udp", "name": "nfs-udp-memalloc"}),
    ("NBD", "nbd-no-reserve", {}),
    ("NBD", "nbd-memalloc", {}),
    ("iSCSI", "iscsi-no-reserve", {}),
    ("iSCSI", "iscsi-memalloc", {}),
    # AoE: Linux's cure does not reach it (its reserve-backed frames are dropped at
    # skb_pfmemalloc_protocol while a marked NFS area makes memalloc sockets exist); the extended
    # policy lets the marked target's frames through -- beyond Linux (docs/aoe.md)
    ("AoE", "aoe-linux", {}),
    ("AoE", "aoe-extended", {}),
]
PROTOCOL_TABLE_TITLE = "every storage protocol of the problem statement under the same flood"
QUICK_MAX_DURATION_S = 15.0


def default_out_dir() -> str:
    return rep.default_out_dir("demo")


def load_all(seed: int | None, quick: bool, names=ALL_SCENARIOS, transport: str | None = None,
             clients: tuple[str, ...] = ("agent",), client_overrides: dict | None = None,
             overrides: dict | None = None) -> list[tuple[scn.Scenario, list, dict]]:
    """Load + preflight every scenario, once per client kind; raises ScenarioError.
    ``names``: scenario names, or (label, scenario, overrides) rows as in PROTOCOL_ROWS.
    ``transport`` overrides every scenario's (the built-ins say "tcp", as every Linux since 5.6
    mounts; "udp" is the pre-5.6 configuration). ``clients``: "agent", "linux"; the linux runs
    take ``client_overrides`` (guest kernel, NIC, ...); ``overrides`` (--set) apply to both. Side by
    side (both kinds), the agent speaks the guest's NFS transport (TCP unless guest_nfs_proto or
    transport says otherwise), so both clients run the same protocol."""
    out = []
    for n in names:
        row_ov: dict = {}
        if isinstance(n, tuple):
            _label, n, row_ov = n
        base = scn.load(n, row_ov)
        cap = QUICK_MAX_DURATION_S if quick else MAX_DURATION_S
        ov: dict = {**row_ov, "max_duration_s": min(base.max_duration_s, cap)}
        if transport is not None:
            ov["transport"] = transport
        if "linux" in clients and "agent" in clients and "transport" not in (overrides or {}) and transport is None:
            ov["transport"] = (overrides or {}).get("guest_nfs_proto", base.guest_nfs_proto)
        ov.update(overrides or {})
        if seed is not None:
            ov["seed"] = seed
        for client in clients:
            sc = scn.load(n, {**ov, **(client_overrides or {}), "client": client} if client == "linux" else ov)
            checks, figs = scn.preflight(sc)
            out.append((sc, checks, figs))
    return out


def run_label(sc: scn.Scenario) -> str:
    """The scenario's name, with "-linux" for a real-kernel run (its directory and pcap prefix)."""
    return sc.name + ("-linux" if sc.client == "linux" else "")


def _error_entry(sc: scn.Scenario, checks: list, msg: str, outcome: str = "invalid") -> dict:
    e = {k: None for k in rep.SCENARIO_KEYS}
    e.update(name=sc.name, client=sc.client, outcome=outcome, seed=sc.seed, expect=sc.expect, preflight=[c.to_json() for c in checks],
             counters={"PFMemallocDrop": None, "rx_nobuf": None}, watchdog=f"run failed: {msg}", error=msg)
    return e


def _fmt(v, nd=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


COLUMNS = ("scenario", "expect", "outcome", "stall s", "recover s", "written/verified", "PFMemallocDrop",
           "rx_nobuf", "reserve low", "RPC retrans", "replies dropped")


def table_rows(entries: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for e in entries:
        ok = e["outcome"] == e["expect"]
        ex = e.get("explanations") or {}
        beyond = " (beyond Linux)" if e.get("beyond_linux") else ""
        verdict = "" if e["outcome"] == "n/a" else " ok" if ok else " MISMATCH"
        name = e["name"] + (" [linux]" if e.get("client") == "linux" else "")
        rows.append((name, e["expect"], f"{e['outcome']}{beyond}{verdict}",
                     _fmt(e["time_to_stall_s"]), _fmt(e["time_to_recover_s"]),
                     f"{_fmt(e['pages_written'])}/{_fmt(e['pages_verified'])}",
                     _fmt(e["counters"].get("PFMemallocDrop")), _fmt(e["counters"].get("rx_nobuf")),
                     _fmt(e["reserve_low_pages"]), _fmt(e["rpc_retrans"]),
                     f"{ex.get('fates', {}).get('dropped', 0)}/{ex.get('replies_on_wire', ex.get('responses_on_wire', 0))}"
                     if ex else "-"))
    return rows


SIDE_COLUMNS = ("scenario", "client", "outcome", "stall s", "recover s", "pswpout", "PFMemallocDrop",
                "drops by reason", "reserve low", "pages verified")


def side_by_side_rows(entries: list[dict]) -> list[dict]:
    """Agent vs Linux on the same scenario and seed: one row per (scenario, client) of the scenarios
    that ran on both, in report order. ``drops``: drop_reasons (the agent's SKB_DROP_REASON counts;
    the kernel's /proc counters named by the reason they stand for: testbed.watchdog.proc_view)."""
    by = {}
    for e in entries:
        by.setdefault(e["name"], {})[e.get("client") or "agent"] = e
    rows = []
    for name, d in by.items():
        if not {"agent", "linux"} <= set(d):
            continue
        for client in ("agent", "linux"):
            e = d[client]
            c = e.get("counters") or {}
            verified = e.get("pages_verified")
            total = (e.get("verification") or {}).get("pages") if client == "linux" else e.get("pages_written")
            rows.append({"scenario": name, "client": client, "outcome": e["outcome"], "seed": e.get("seed"),
                         "time_to_stall_s": e.get("time_to_stall_s"), "time_to_recover_s": e.get("time_to_recover_s"),
                         "pswpout": c.get("pswpout"), "PFMemallocDrop": c.get("PFMemallocDrop"),
                         "drop_reasons": dict(sorted((c.get("drop_reasons") or {}).items(), key=lambda kv: -kv[1])),
                         "reserve_low_pages": e.get("reserve_low_pages"), "pages_verified": verified,
                         "pages_total": total, "transport": (e.get("parameters") or {}).get(
                             "guest_nfs_proto" if client == "linux" else "transport")})
    return rows


def format_side_by_side(rows: list[dict]) -> str:
    if not rows:
        return ""
    table = [SIDE_COLUMNS]
    for r in rows:
        drops = ", ".join(f"{k}:{v}" for k, v in list(r["drop_reasons"].items())[:3]) or "-"
        table.append((r["scenario"], r["client"] + (f" ({r['transport']})" if r["transport"] else ""), r["outcome"], _fmt(r["time_to_stall_s"]),
                      _fmt(r["time_to_recover_s"]), _fmt(r["pswpout"]), _fmt(r["PFMemallocDrop"]), drops,
                      _fmt(r["reserve_low_pages"]), f"{_fmt(r['pages_verified'])}/{_fmt(r['pages_total'])}"))
    w = [max(len(t[i]) for t in table) for i in range(len(SIDE_COLUMNS))]
    lines = ["agent vs Linux, same scenario and seed"]
    for i, t in enumerate(table):
        lines.append("  ".join(c.ljust(w[j]) if j < 3 or j == 7 else c.rjust(w[j]) for j, c in enumerate(t)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def is_file(e: dict) -> bool:
    return e.get("consumer", "swap") != "swap" or e["name"] in FILE_SCENARIOS


PROTOCOL_COLUMNS = ("protocol", "scenario", "expect", "outcome", "stall s", "recover s", "written/verified",
                    "PFMemallocDrop", "rx_nobuf", "reserve low", "resent", "requests")


def protocol_label(e: dict) -> str:
    st = e.get("storage") or (e.get("parameters") or {}).get("storage", "nfs")
    if st == "nfs":
        return "NFS/" + (e.get("parameters") or {}).get("transport", "udp").upper()
    return {"nbd": "NBD", "iscsi": "iSCSI", "aoe": "AoE"}.get(st, st)


def _requests(e: dict) -> tuple[str, str]:
    """(resent, requests) named as the protocol's tools name them: RPC retransmissions / calls
    (nfsstat, mountstats), requests requeued after a reconnect / NBD_CMD_WRITE, scsicmd_pdus."""
    c = e.get("counters") or {}
    st = e.get("storage") or "nfs"
    if st == "nfs":
        n = c.get("nfs") or {}
        return f"rpc_retrans {_fmt(e.get('rpc_retrans'))}", f"rpc_calls {_fmt(n.get('rpc_calls'))}"
    if st == "aoe":   # the aoe driver's own counters (drivers/block/aoe.py AoeDev)
        d = ((e.get("aoe") or {}).get("device") or {}).get("counters") or {}
        return f"retransmit {_fmt(d.get('retransmit'))}", f"write_ok {_fmt(d.get('write_ok'))}"
    b = c.get(st) or {}
    key = {"nbd": "NBD_CMD_WRITE", "iscsi": "scsicmd_pdus"}.get(st)
    return f"requeued {_fmt(b.get('requests_requeued'))}", f"{key} {_fmt(b.get(key))}" if key else "-"


def format_protocol_table(entries: list[dict]) -> str:
    rows = [PROTOCOL_COLUMNS]
    for e, r in zip(entries, table_rows(entries)):
        rows.append((protocol_label(e),) + r[:-2] + _requests(e))
    w = [max(len(r[i]) for r in rows) for i in range(len(PROTOCOL_COLUMNS))]
    lines = [PROTOCOL_TABLE_TITLE]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w[j]) if j < 4 else c.rjust(w[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def transports(entries: list[dict]) -> str:
    """"NFS over TCP" / "NFS over UDP" (or both) for the entries' scenarios, for table titles."""
    ts = sorted({(e.get("parameters") or {}).get("transport") or "?" for e in entries})
    return "NFS over " + "+".join(t.upper() for t in ts)


def is_aoe(e: dict) -> bool:
    return e.get("storage") == "aoe" or e["name"] in AOE_SCENARIOS


def format_table(entries: list[dict]) -> str:
    """The swap scenarios' table, then (when the demo ran them) the file-backed one and the AoE one
    under their titles (for AoE, "replies dropped" counts AoE responses, by tag); the NFS tables'
    titles name their transport."""
    swap = [e for e in entries if not is_file(e) and not is_aoe(e)]
    text = (f"swap over NFS under a flood ({transports(swap)})\n" + _table(swap)) if swap else ""
    files = [e for e in entries if is_file(e)]
    for title, part in ((f"{FILE_TABLE_TITLE} ({transports(files)})" if files else FILE_TABLE_TITLE, files),
                        (AOE_TABLE_TITLE, [e for e in entries if is_aoe(e)])):
        if part:
            text += ("\n\n" if text else "") + title + "\n" + _table(part)
    return text


def _table(entries: list[dict]) -> str:
    rows = [COLUMNS] + table_rows(entries)
    w = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w[j]) if j < 3 else c.rjust(w[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def postprocess(out: str, entry: dict, timeline: list[dict], say=print) -> dict:
    """PNG, explanations and file list of one finished scenario (also usable on a re-read report)."""
    from testbed import explain, plots
    from netns_setup.topology import default_topology

    name = entry["name"]
    sdir = os.path.join(out, "scenarios", name)
    files = entry.setdefault("files", {})
    try:
        files["png"] = os.path.relpath(plots.scenario_png(entry, timeline, os.path.join(out, f"{name}.png")), out)
    except Exception as e:  # noqa: BLE001 -- a plot failure must not lose the run's report
        say(f"{name}: timeline PNG failed: {type(e).__name__}: {e}")
    hosts = {h.name: h for h in default_topology().hosts}
    nas_ip, cli_ip = str(hosts["nas"].address.ip), str(hosts["client"].address.ip)
    pc = (entry.get("pcaps") or {}).get("client")
    snap_path = os.path.join(sdir, "final_snapshot.json")
    if entry.get("storage") == "aoe":
        # the runner explained the AoE responses by tag (testbed/explain.py explain_aoe)
        if os.path.exists(os.path.join(sdir, "aoe_explanations.txt")):
            files["explanations"] = os.path.relpath(os.path.join(sdir, "aoe_explanations.txt"), out)
    # the reply-fate explanations read NFS replies off the pcap: for NFS runs only
    elif (pc and os.path.exists(pc) and os.path.exists(snap_path) and entry.get("t0_wall") is not None
            and entry.get("storage", "nfs") == "nfs"):
        import json
        with open(snap_path) as f:
            final = json.load(f)
        if not final.get("nfs") and final.get("file_nfs"):   # a swapless client: the file's transport
            final = {**final, "nfs": final["file_nfs"]}
        ex = explain.explain(explain.nfs_replies(pc, nas_ip, cli_ip), final, timeline,
                             t0_wall=entry["t0_wall"], final_t=entry.get("final_t"))
        rep.write_json(os.path.join(sdir, "explanations.json"), ex)
        with open(os.path.join(sdir, "explanations.txt"), "w") as f:
            f.write(explain.text_table(name, ex))
        entry["explanations"] = {k: v for k, v in ex.items() if k != "rows"}
        files["explanations"] = os.path.relpath(os.path.join(sdir, "explanations.txt"), out)
    for key, fn in (("final_snapshot", "final_snapshot.json"), ("timeline", "timeline.json"),
                    ("watchdog", "watchdog.txt")):
        if os.path.exists(os.path.join(sdir, fn)):
            files[key] = os.path.relpath(os.path.join(sdir, fn), out)
    files["pcap"] = {h: os.path.relpath(p, out) for h, p in (entry.get("pcaps") or {}).items()}
    files["logs"] = os.path.relpath(os.path.join(out, "logs", name), out)
    return entry


def _tables(entries: list[dict]) -> dict:
    """report.json's demo.tables: which entries form which table (scenarios[] keeps every entry)."""
    return {"tables": [
        {"title": "swap over NFS under a flood", "scenarios": [e["name"] for e in entries
                                                               if not is_file(e) and not is_aoe(e)]},
        {"title": FILE_TABLE_TITLE, "scenarios": [e["name"] for e in entries if is_file(e)],
         "beyond_linux": [e["name"] for e in entries if is_file(e) and e.get("beyond_linux")]}]
        + ([{"title": AOE_TABLE_TITLE, "scenarios": [e["name"] for e in entries if is_aoe(e)],
             "beyond_linux": [e["name"] for e in entries if is_aoe(e) and e.get("beyond_linux")]}]
           if any(is_aoe(e) for e in entries) else [])}


def run_demo(out: str, loaded: list, *, say=None, protocols: bool = False) -> tuple[list[dict], float]:
    """Run every loaded scenario into ``out``; returns (entries, wall seconds). ``protocols``: the
    rows are PROTOCOL_ROWS (one table by protocol)."""
    fmt = format_protocol_table if protocols else format_table
    tables = (lambda es: {"tables": [{"title": PROTOCOL_TABLE_TITLE, "scenarios": [e["name"] for e in es]}]}) \
        if protocols else _tables
    from testbed.runner import RunError, run_scenario

    say = say or (lambda m: print(f"testbed demo: {m}", file=sys.stderr, flush=True))
    t_start = time.monotonic()
    entries, items = [], []
    n = len(loaded)
    for i, (sc, checks, figs) in enumerate(loaded, 1):
        label = run_label(sc)
        sdir = os.path.join(out, "scenarios", label)
        os.makedirs(sdir, exist_ok=True)
        say(f"[{i}/{n}] {label}: expect {sc.expect} -- {sc.description}")
        t1 = time.monotonic()
        na = None
        if sc.client == "linux":
            from testbed.linux_vm.run import unsupported
            na = unsupported(sc)
        try:
            if na:
                raise RunError(na)
            # the runner's swapon line is a dict only `testbed run` readers want; the rest (run name,
            # outcome) is what a demo viewer needs: `testbed stat --live --name RUN` takes that name
            log = lambda m, _n=sc.name: None if m.startswith(("swapon:", "fileon:")) else say(f"[{i}/{n}] {_n}: {m}")  # noqa: E731
            entry = run_scenario(sc, checks, sdir, log=log,
                                 pcap_dir=os.path.join(out, "pcap"), pcap_prefix=f"{label}-",
                                 logs_dir=os.path.join(out, "logs", label), progress_prefix=f"[{i}/{n}] {label:<19} ",
                                 print_watchdog=False)
        except RunError as e:
            if na:
                say(f"[{i}/{n}] {label}: n/a: {na}")
            else:
                say(f"[{i}/{n}] {label}: run failed: {e}; logs in {out}/logs/{label}")
            entry = _error_entry(sc, checks, str(e), outcome="n/a" if na else "invalid")
            entry["_timeline"] = []
        timeline = entry.pop("_timeline")
        entry["figures"] = figs
        entry["wall_s"] = round(time.monotonic() - t1, 1)
        rep.write_json(os.path.join(sdir, "timeline.json"), {"schema_version": rep.SCHEMA_VERSION, "interval_s": 0.2,
                                                            "samples": timeline})
        if "error" not in entry and sc.client != "linux":    # explanations read the agent's xid records
            postprocess(out, entry, timeline, say)
        ok = entry["outcome"] == entry["expect"]
        summary = (entry.get("explanations") or {})
        say(f"[{i}/{n}] {sc.name}: {entry['outcome']} ({'as expected' if ok else 'EXPECTED ' + sc.expect}) in {entry['wall_s']} s"
            + (f"; {__import__('testbed.explain', fromlist=['x']).summary_line(summary)}" if summary else ""))
        entries.append(entry)
        items.append((entry, timeline))
        # report.json after every scenario: an interrupted demo still leaves what it did
        rep.write_report(out, entries, extra={"demo": {"scenarios": [s.name for s, _, _ in loaded], "complete": False,
                                                       **tables(entries)}})
    from testbed import plots
    try:
        plots.overview_png(items, os.path.join(out, "overview.png"))
    except Exception as e:  # noqa: BLE001
        say(f"overview PNG failed: {type(e).__name__}: {e}")
    wall = time.monotonic() - t_start
    side = side_by_side_rows(entries)
    rep.write_report(out, entries, extra={"demo": {"scenarios": [s.name for s, _, _ in loaded], "complete": True,
                                                   "wall_s": round(wall, 1), "overview_png": "overview.png",
                                                   **tables(entries), "side_by_side": side}})
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(fmt(entries) + "\n" + (f"\n{format_side_by_side(side)}\n" if side else ""))
    with open(os.path.join(out, "explanations.txt"), "w") as f:
        for e in entries:
            rel = (e.get("files") or {}).get("explanations")     # NFS replies by xid, AoE responses by tag
            p = os.path.join(out, rel) if rel else os.path.join(out, "scenarios", e["name"], "explanations.txt")
            if os.path.exists(p):
                with open(p) as g:
                    f.write(g.read() + "\n")
    return entries, wall
