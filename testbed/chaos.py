"""Fault campaigns: the scenarios under seeded faults, checked for the one invariant that must hold.

Invariant checked for every run (a violation fails the campaign, exit 1, and keeps that run's report):
- every page the NAS acknowledged durably reads back intact (no lost or corrupted acked page);
- the run did not crash (an exception anywhere is a failed run, with its traceback kept) -- in the
  runner or inside the agent: a task of the agent that raised (outcome ``testbed_bug``,
  testbed/watchdog.py) fails the run with the task, its exception and traceback;
- nothing leaked: no page left in the agent's pool after teardown, no task, no socket, no
  SOCK_MEMALLOC count (real runs: no namespace, process or run directory left).

Outcomes under faults may legitimately differ from the fault-free expectation (a deadlock scenario
stays a deadlock; memalloc under 20 % loss recovers more slowly, or not within the scaled
``max_duration_s`` -- outcome ``timeout``), so an outcome is recorded, not required -- except for
an *outcome-preserving* fault set: only ``dup``, ``reorder`` and ``delay`` (<= 5 %, <= 5 %, <= 2 ms)
on an otherwise unchanged scenario. Those change no reply's fate for long (the DRC answers a
duplicate, a reordered or 2 ms late frame is still far inside ``timeo_s`` = 0.5 s), so the run must
end with the same outcome as its fault-free twin (same scenario, same seed), which is run as well.

Fault kinds (in-memory runs, testbed.sim; each run gets ``FAULT_KINDS[i % n]`` plus each other kind
with probability ``EXTRA_P``, all drawn from ``random.Random(f"chaos:{seed}:{i}")``, so a run
replays exactly from (campaign seed, index)):
  loss / dup / reorder / delay   FaultInjector on the client's transmit path and on its receive path
                                 (the NAS's transmissions): up to 20 % loss, 5 % dup/reorder, 2 ms
  nas_restart                    MemoryStore.crash() + DRC lost + requests in service dropped + down
                                 0.2-0.6 s, 1-2 times; half of these runs write UNSTABLE (COMMIT with a
                                 changed verifier must resend); over TCP every connection is reset
                                 and nothing listens while down (reconnect under memory pressure)
  rst                            the NAS resets every TCP connection (RST) 1-3 times, listening on:
                                 the client reconnects with xs_connect's backoff and resends
  flood_toggle                   the flood alternates on/off
  pool_edge                      pool/reserve at an edge: tiny pool, min_free_kbytes 64 or 1/4 of the
                                 pool, 1 or 64 RPC slots
  wsize8k                        wsize 8192 (each WRITE is six IP fragments: loss hits whole calls)
Real runs (``--real K``, root): the memalloc scenario (scaled; NFS over TCP), faults keyed by packet
counts the agent reports: NAS SIGKILL + restart on the same data dir once the transport sent N calls
(every connection gone: reconnect under memory pressure), the NAS kernel's RST of its NFS
connections (``ss -K``) once it sent M more, flood off/on when the agent received K frames; pcaps
kept for a failed run.
Real runs on a Linux guest (``--real K --client linux``, testbed.linux_vm): memalloc with a small
guest and no flood (a flooded guest deadlocks on Debian's 6.1: docs/linux-client.md), seeded
loss/dup/reorder/delay on both directions of the guest's wire (its tap is relayed through the
agent's FaultInjector, testbed/linux_vm/relay.py, instead of bridged), NAS SIGKILL + restart once
it saw N WRITE calls, FILE_SYNC/UNSTABLE alternating. The invariant is the guest's own: its
workload verified every page after swap-in (a real kernel's swap slots cannot be read back from
outside), nas-server ended clean, nothing left behind. A workload the kernel's OOM killer took
(seen after a NAS restart under swap pressure) is outcome ``oom-killed`` with the console's line:
the kernel's decision, no acknowledged page lost, so not a broken invariant.
In-memory runs are scaled (``SCALE``): a run costs well under a second.
"""

from __future__ import annotations

import json
import os
import random
import time
import tomllib
import traceback

from testbed.scenario import SCENARIO_DIR

SCENARIOS = ("memalloc", "no-reserve", "reserve-no-filter", "memalloc-undersized")
FAULT_KINDS = ("loss", "dup", "reorder", "delay", "nas_restart", "rst", "flood_toggle", "pool_edge", "wsize8k")
# AoE (in-memory runs only): its two scenarios, and the kinds that apply to it -- not nas_restart
# (the sim's restart is the NFS/TCP servers' and would leave the AoE target untouched), rst (no
# TCP) nor wsize8k (no NFS WRITE); real runs key their faults by the NFS transport's call count.
AOE_SCENARIOS = ("aoe-linux", "aoe-extended")
AOE_KINDS = ("loss", "dup", "reorder", "delay", "flood_toggle", "pool_edge")
PRESERVING = frozenset({"dup", "reorder", "delay"})
EXTRA_P = 0.25
# A quarter of the pool and of the workload, half the flood and the reserve: the same physics
# (sim tests show the four outcomes unchanged at this scale), a run in ~0.3-1 s of CPU.
SCALE = {"pool_pages": 2048, "workload_pages": 2560, "flood_pps": 2000, "max_duration_s": 20.0}


def load_scenario(name: str) -> dict:
    with open(os.path.join(SCENARIO_DIR, f"{name}.toml"), "rb") as f:
        return tomllib.load(f)["scenario"]


def scaled(name: str) -> dict:
    p = dict(load_scenario(name))
    p.update(SCALE)
    p["min_free_kbytes"] = max(64, p["min_free_kbytes"] // 2)
    p["noise_rcvbuf_bytes"] = p["noise_rcvbuf_bytes"] // 4
    return p


def scenario_name(name: str, storage: str = "nfs") -> str:
    """The built-in scenario of ``name``'s condition over ``storage`` (nbd-memalloc, ...)."""
    return name if storage == "nfs" else f"{storage}-{name}"


def plan(campaign_seed: int, i: int, storage: str = "nfs") -> dict:
    """Run ``i`` of a campaign: scenario, run seed, the sim parameters and the fault kinds drawn.
    ``storage``: the campaign's storage protocol (nfs, nbd, iscsi): the same draws, its scenarios;
    aoe: AOE_SCENARIOS under AOE_KINDS."""
    rng = random.Random(f"chaos:{campaign_seed}:{i}")
    names, all_kinds = (AOE_SCENARIOS, AOE_KINDS) if storage == "aoe" else (SCENARIOS, FAULT_KINDS)
    name = names[i % len(names)] if storage == "aoe" else scenario_name(names[i % len(names)], storage)
    run_seed = rng.randrange(1, 1 << 31)
    kinds = {all_kinds[i % len(all_kinds)]}
    kinds |= {k for k in all_kinds if rng.random() < EXTRA_P}
    p = scaled(name)
    tx: dict = {}
    rx: dict = {}
    for side in (tx, rx):
        if "loss" in kinds:
            side["loss"] = rng.choice((0.01, 0.05, 0.1, 0.2))
        if "dup" in kinds:
            side["dup"] = rng.choice((0.01, 0.02, 0.05))
        if "reorder" in kinds:
            side["reorder"] = rng.choice((0.01, 0.02, 0.05))
        if "delay" in kinds:
            side["delay_s"] = rng.choice((0.0005, 0.001, 0.002))
    if tx:
        p["fault_tx"], p["fault_rx"] = tx, rx
    if "nas_restart" in kinds:
        p["nas_restart_at_s"] = sorted(round(rng.uniform(0.2, 3.0), 3) for _ in range(rng.randint(1, 2)))
        p["nas_down_s"] = rng.choice((0.2, 0.4, 0.6))
        if rng.random() < 0.5:
            p["stable"] = "UNSTABLE"
    if "rst" in kinds:
        p["nas_rst_at_s"] = sorted(round(rng.uniform(0.2, 3.0), 3) for _ in range(rng.randint(1, 3)))
    if "flood_toggle" in kinds:
        p["flood_on_off"] = (rng.choice((0.2, 0.5, 1.0)), rng.choice((0.1, 0.3, 0.5)))
    if "pool_edge" in kinds:
        edge = rng.choice(("tiny_pool", "min_reserve", "big_reserve", "one_slot", "many_slots"))
        if edge == "tiny_pool":
            p.update(pool_pages=512, workload_pages=640, min_free_kbytes=256)
        elif edge == "min_reserve":
            p["min_free_kbytes"] = 64
        elif edge == "big_reserve":
            p["min_free_kbytes"] = p["pool_pages"]          # KiB: a quarter of the pool
        elif edge == "one_slot":
            p["slots"] = 1
        else:
            p["slots"] = 64
        p["_edge"] = edge
    if "wsize8k" in kinds:
        p["wsize"] = 8192
    p["name"] = f"{name}#{i}"
    return {"run": i, "scenario": name, "seed": run_seed, "kinds": sorted(kinds, key=FAULT_KINDS.index),
            "params": p, "preserving": kinds <= PRESERVING}


def _fault_counts(r: dict, kinds: list[str], params: dict) -> dict:
    f = r.get("faults") or {}
    tx, rx = f.get("tx") or {}, f.get("rx") or {}
    out = {}
    for k in kinds:
        if k == "loss":
            out[k] = tx.get("lost", 0) + rx.get("lost", 0)
        elif k == "dup":
            out[k] = tx.get("duplicated", 0) + rx.get("duplicated", 0)
        elif k == "reorder":
            out[k] = tx.get("reordered", 0) + rx.get("reordered", 0)
        elif k == "delay":
            out[k] = tx.get("passed", 0) + rx.get("passed", 0)      # every frame that passed waited
        elif k == "nas_restart":
            out[k] = f.get("nas_restarts", 0)
        elif k == "rst":
            out[k] = f.get("nas_rsts", 0)
        elif k == "flood_toggle":
            out[k] = f.get("flood_toggles", 0)
        else:
            out[k] = 1
    return out


def crash_problems(crashes: list[dict], n: int = 0) -> list[str]:
    """A violation per crashed task of the agent (a testbed bug), with its traceback."""
    from testbed.watchdog import crash_line
    bad = [f"testbed bug: {crash_line(c)}\n{c.get('traceback', '')}" for c in crashes]
    if n > len(crashes):
        bad.append(f"testbed bug: {n - len(crashes)} more task(s) crashed (records not kept)")
    return bad


def check(r: dict) -> list[str]:
    """The campaign's invariant on one in-memory result: the list of violations (empty = ok)."""
    bad = crash_problems(r.get("task_crashes") or [], r.get("tasks_crashed", 0))
    if r["verify_failures"] or r["pages_verified"] != r["acked_pages"]:
        bad.append(f"acked pages lost/corrupted: written {r['acked_pages']}, verified {r['pages_verified']}, "
                   f"failures {r['verify_failures']}")
    if r["leaked_pages"]:
        bad.append(f"{r['leaked_pages']} pages left in the pool after teardown: {r['leaked_owners']}")
    if r.get("leaked_tasks"):
        bad.append(f"tasks left after teardown: {r['leaked_tasks']}")
    if r.get("leaked_sockets"):
        bad.append(f"{r['leaked_sockets']} sockets left after teardown")
    if r.get("memalloc_socks_after_swapoff"):
        bad.append(f"memalloc_socks {r['memalloc_socks_after_swapoff']} after swapoff")
    return bad


def run_one(campaign_seed: int, i: int, storage: str = "nfs") -> dict:
    """Plan and run in-memory run ``i``; a row of the table plus the full result under ``result``."""
    from testbed.sim import run_sim
    pl = plan(campaign_seed, i, storage)
    row = {"run": i, "kind": "sim", "scenario": pl["scenario"], "seed": pl["seed"], "campaign_seed": campaign_seed}
    params = {k: v for k, v in pl["params"].items() if not k.startswith("_")}
    try:
        r = run_sim(params, seed=pl["seed"])
    except Exception:  # noqa: BLE001 -- a crash is a finding: kept with its traceback
        row.update(faults={k: None for k in pl["kinds"]}, outcome="crash", written=None, verified=None,
                   lost=None, problems=["crash: " + traceback.format_exc()], ok=False, params=params)
        return row
    row["faults"] = _fault_counts(r, pl["kinds"], params)
    if "_edge" in pl["params"]:
        row["edge"] = pl["params"]["_edge"]
    row.update(outcome=r["outcome"], written=r["acked_pages"], verified=r["pages_verified"],
               lost=r["acked_pages"] - r["pages_verified"], duration_s=r["duration_s"],
               rpc_retrans=r["rpc_retrans"], resends=r["swap"].get("resends"))
    problems = check(r)
    if pl["preserving"]:
        base = run_sim({k: v for k, v in params.items() if k not in ("fault_tx", "fault_rx")}, seed=pl["seed"])
        row["baseline_outcome"] = base["outcome"]
        if base["outcome"] != r["outcome"]:
            problems.append(f"outcome-preserving faults {pl['kinds']} changed the outcome: "
                            f"{base['outcome']} without them, {r['outcome']} with them")
    row["problems"] = problems
    row["ok"] = not problems
    row["params"] = params
    row["result"] = r
    return row


# ------------------------------------------------------------------ real runs
def plan_real(campaign_seed: int, k: int, storage: str = "nfs") -> dict:
    """Real run ``k``: memalloc, scaled for time; faults keyed by the agent's packet counts."""
    rng = random.Random(f"chaos-real:{campaign_seed}:{k}")
    seed = rng.randrange(1, 1 << 31)
    # packet faults on both directions of the client's NIC (client-agent --fault), seeded: the
    # RNG decides per frame in arrival/transmit order, i.e. keyed by packet index
    faults = (f"loss={rng.choice((0.01, 0.02, 0.05))},dup={rng.choice((0.01, 0.03))},"
              f"reorder={rng.choice((0.01, 0.03))},delay_ms={rng.choice((0.5, 2.0))},seed={seed % 100000}")
    return {"run": f"real{k}", "scenario": scenario_name("memalloc", storage), "seed": seed,
            "overrides": {"max_duration_s": 30.0, "client_faults": faults},
            "nas_restart_after_rpc_calls": rng.choice((200, 400, 800)),
            # RST: the NAS host's kernel aborts its NFS connections (ss -K, SOCK_DESTROY: an
            # active reset) once the transport sent this many calls -- after the restart
            "rst_after_rpc_calls": rng.choice((1000, 1400)),
            "flood_off_at_rx_packets": rng.choice((1000, 3000)), "flood_off_for_rx_packets": 2000,
            "stable": "UNSTABLE" if k % 2 else "FILE_SYNC"}


def _kill_nfs_connections(netns: str) -> int:
    """``ss -K`` in the NAS's namespace: the kernel aborts every established TCP socket on port
    2049 there (tcp_abort: an RST to the client). How many it killed (ss lists them), -1 when
    the kernel cannot (no CONFIG_INET_DIAG_DESTROY: ss -K kills nothing and says nothing)."""
    import subprocess
    p = subprocess.run(["ip", "netns", "exec", netns, "ss", "-K", "-t", "-n", "-H", "state", "established",
                        "( sport = :2049 )"], capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        return -1
    return len([ln for ln in p.stdout.splitlines() if ln.strip()])


def plan_real_linux(campaign_seed: int, k: int) -> dict:
    """Real run ``k`` on a Linux guest: memalloc, 128 MiB guest, no flood; packet faults through the
    relay, a NAS restart keyed by the NAS's WRITE calls."""
    rng = random.Random(f"chaos-linux:{campaign_seed}:{k}")
    seed = rng.randrange(1, 1 << 31)
    # lighter than the agent's: a kernel's TCP under 5 % loss and 2 ms each way swaps ~10x slower
    # under TCG here (measured: 20000 pages unfinished in 120 s), and the run must finish to verify
    faults = (f"loss={rng.choice((0.005, 0.01, 0.02))},dup={rng.choice((0.01, 0.03))},"
              f"reorder={rng.choice((0.01, 0.03))},delay_ms={rng.choice((0.2, 0.5))},seed={seed % 100000}")
    return {"run": f"linux{k}", "scenario": "memalloc", "seed": seed,
            "overrides": {"client": "linux", "max_duration_s": 150.0, "client_faults": faults, "flood_pps": 0,
                          "noise_sockets": 0, "guest_memory_mib": 128, "guest_workload_pages": 16000},
            "nas_restart_after_write_calls": rng.choice((50, 150, 300)),    # of ~600 for 16000 pages
            "stable": "UNSTABLE" if k % 2 else "FILE_SYNC"}


def _real_during(pl: dict):
    from netns_setup.control import ControlClient

    def during(ctx: dict) -> None:
        rec = ctx["record"]
        rec.setdefault("nas_restart", 0)
        rec.setdefault("flood_toggle", 0)
        s = ctx.get("snapshot") or {}
        if "nas_restart_after_write_calls" in pl:       # a Linux guest: the NAS's own count
            calls = (s.get("outside") or {}).get("nas_write_calls", 0)
            limit, counted = pl["nas_restart_after_write_calls"], "nas_write_calls"
        else:
            # requests sent so far: RPC calls (NFS), NBD_CMD_WRITE / scsicmd_pdus (the swap device's)
            sw = s.get("swap") or {}
            calls = (((s.get("nfs") or {}).get("counters") or {}).get("rpc_calls", 0)
                     or sw.get("NBD_CMD_WRITE", 0) or sw.get("scsicmd_pdus", 0))
            limit, counted = pl["nas_restart_after_rpc_calls"], "rpc_calls"
        rxp = ((s.get("stack") or {}).get("counters") or {}).get("rx_packets", 0)
        if rec["nas_restart"] == 0 and calls >= limit:
            ctx["restart_nas"]()
            rec["nas_restart"] = 1
            rec["nas_restart_at"] = {"t": round(ctx["t"], 2), counted: calls}
        if "rst_after_rpc_calls" in pl:
            rec.setdefault("rst", 0)
            if rec["rst"] == 0 and calls >= pl["rst_after_rpc_calls"]:
                rec["rst"] = _kill_nfs_connections(ctx["st"].host_netns("nas"))
                rec["rst_at"] = {"t": round(ctx["t"], 2), "rpc_calls": calls, "sockets": rec["rst"]}
        if "flood_off_at_rx_packets" not in pl:
            return
        off_at = pl["flood_off_at_rx_packets"]
        # back on after flood_off_for_rx_packets more frames, or after FLOOD_OFF_MAX_S without them
        # (with the flood off, the replies alone may never bring that many)
        off_t = rec.get("flood_off_t")
        want_on = (not (off_at <= rxp < off_at + pl["flood_off_for_rx_packets"])
                   or (off_t is not None and ctx["t"] - off_t >= FLOOD_OFF_MAX_S) or rec["flood_toggle"] >= 2)
        state = rec.get("flood_on", True)
        if want_on != state and rec["flood_toggle"] < 2:
            try:
                with ControlClient(ctx["ctl"]["flood"]) as fc:
                    fc.call("set", key="on", value=want_on)
                rec["flood_on"] = want_on
                rec["flood_toggle"] += 1
                if not want_on:
                    rec["flood_off_t"] = round(ctx["t"], 2)
            except Exception as e:  # noqa: BLE001 -- recorded; the run goes on
                rec["flood_error"] = str(e)
        # a run the flood's absence let finish stays open until the flood is back on (runner hold)
        ctx["hold"] = rec["flood_toggle"] == 1
    return during


FLOOD_OFF_MAX_S = 1.0


def _run_planned(pl: dict, out: str, row: dict):
    """Run a real plan into out/<run>: (report dir, run records before, scenario, entry or None
    after a crash -- ``row`` then says so)."""
    from netns_setup.state import list_runs
    from testbed import scenario as scn
    from testbed.runner import RunError, run_scenario
    rdir = os.path.join(out, pl["run"])
    for d in (rdir, os.path.join(rdir, "pcap"), os.path.join(rdir, "logs")):
        os.makedirs(d, mode=0o700, exist_ok=True)
    runs_before = set(list_runs())
    sc = scn.load(pl["scenario"], {**pl["overrides"], "seed": pl["seed"], "stable": pl["stable"]})
    checks, _ = scn.preflight(sc)
    try:
        e = run_scenario(sc, checks, rdir, log=lambda m: None, print_watchdog=False, during=_real_during(pl))
    except (RunError, Exception) as ex:  # noqa: BLE001
        row.update(faults={}, outcome="crash", written=None, verified=None, lost=None,
                   problems=[f"crash: {ex}"], ok=False, report=rdir)
        return rdir, runs_before, sc, None
    e.pop("_timeline", None)
    return rdir, runs_before, sc, e


def run_real(campaign_seed: int, k: int, out: str, storage: str = "nfs", client: str = "agent") -> dict:
    if client == "linux":
        if storage != "nfs":
            raise ValueError(f"--client linux with --storage {storage}: the Linux guest swaps over NFS only")
        return run_real_linux(campaign_seed, k, out)
    pl = plan_real(campaign_seed, k, storage)
    row = {"run": pl["run"], "kind": "real", "scenario": pl["scenario"], "seed": pl["seed"],
           "campaign_seed": campaign_seed}
    problems: list[str] = []
    rdir, runs_before, sc, e = _run_planned(pl, out, row)
    if e is None:
        return row
    rec = e.get("during", {})
    row["faults"] = {"nas_restart": rec.get("nas_restart", 0), "flood_toggle": rec.get("flood_toggle", 0),
                     "rst": max(rec.get("rst", 0), 0)}
    if rec.get("rst_at"):
        row["rst_at"] = rec["rst_at"]
    try:   # the packet faults the agent's fault wrapper actually injected (final snapshot's device)
        with open(os.path.join(rdir, "final_snapshot.json")) as f:
            dc = json.load(f).get("device", {})
        delayed = "delay_ms=0," not in pl["overrides"]["client_faults"]
        row["faults"].update(
            loss=dc.get("fault_tx_lost", 0) + dc.get("fault_rx_lost", 0),
            dup=dc.get("fault_tx_duplicated", 0) + dc.get("fault_rx_duplicated", 0),
            reorder=dc.get("fault_tx_reordered", 0) + dc.get("fault_rx_reordered", 0),
            delay=(dc.get("fault_tx_passed", 0) + dc.get("fault_rx_passed", 0)) if delayed else 0)
        row["client_faults"] = pl["overrides"]["client_faults"]
    except (OSError, ValueError) as ex:
        problems.append(f"no final snapshot to count the packet faults: {ex}")
    row.update(outcome=e["outcome"], written=e["pages_written"], verified=e["pages_verified"],
               lost=e["pages_lost"], rpc_retrans=e["rpc_retrans"], stable=pl["stable"], run_name=e.get("run_name"),
               nas_restart_at=rec.get("nas_restart_at"))
    problems += crash_problems(e.get("task_crashes") or [])
    if e["outcome"] == "testbed_bug" and not e.get("task_crashes"):
        problems.append("testbed bug: a task of the agent crashed (no record kept)")
    if e["pages_lost"] != 0 or e["pages_verified"] is None:
        problems.append(f"acked pages lost/corrupted: written {e['pages_written']}, verified {e['pages_verified']}, "
                        f"mismatched {e['verification'].get('mismatched')}, read errors {e['verification'].get('read_errors')}")
    shut = (e.get("agent_shutdown") or {})
    if "error" in shut:
        problems.append(f"agent shutdown failed: {shut['error']}")
    if rec.get("flood_error"):
        problems.append(f"flood control failed: {rec['flood_error']}")
    return _finish_row(row, problems, e, rdir, runs_before)


def _finish_row(row: dict, problems: list[str], e: dict, rdir: str, runs_before: set) -> dict:
    """A real run's verdict: ``problems`` plus a run record left behind (only this run's: other
    runs on the machine may come and go meanwhile); the entry kept as rdir/entry.json."""
    from netns_setup.state import list_runs
    if e.get("run_name") in set(list_runs()) - runs_before:
        problems.append(f"run record {e['run_name']} left after teardown")
    row["problems"] = problems
    row["ok"] = not problems
    row["report"] = rdir
    with open(os.path.join(rdir, "entry.json"), "w") as f:
        json.dump(e, f, indent=1, default=str)
    return row


def run_real_linux(campaign_seed: int, k: int, out: str) -> dict:
    pl = plan_real_linux(campaign_seed, k)
    row = {"run": pl["run"], "kind": "real-linux", "scenario": pl["scenario"], "seed": pl["seed"],
           "campaign_seed": campaign_seed}
    rdir, runs_before, sc, e = _run_planned(pl, out, row)
    if e is None:
        return row
    rec = e.get("during", {})
    relay = e.get("relay") or {}
    tg, fg = relay.get("to_guest") or {}, relay.get("from_guest") or {}
    row["faults"] = {"nas_restart": rec.get("nas_restart", 0),
                     **{k: tg.get(c, 0) + fg.get(c, 0) for k, c in (("loss", "lost"), ("dup", "duplicated"),
                                                                   ("reorder", "reordered"))},
                     "delay": (tg.get("passed", 0) + fg.get("passed", 0)) if "delay_ms=0," not in sc.client_faults else 0}
    row.update(outcome=e["outcome"], written=e["pages_written"], verified=e["pages_verified"],
               lost=e["pages_lost"], rpc_retrans=e["rpc_retrans"], stable=pl["stable"], run_name=e.get("run_name"),
               nas_restart_at=rec.get("nas_restart_at"), client_faults=sc.client_faults)
    problems = []
    ver = e.get("verification") or {}
    oom = [ln for ln in (e.get("evidence") or []) if " x oom," in ln]
    if e["outcome"] == "unfinished" and oom and not ver.get("bad"):
        # the kernel's own way out: its OOM killer took the workload (no acked page is lost --
        # the process's pages went with it); recorded as such, with the console's line
        row["outcome"] = "oom-killed"
        row["oom"] = oom[0]
    elif e["outcome"] not in ("completed", "recovered") or e["pages_lost"] != 0 or ver.get("bad"):
        problems.append(f"the guest's workload did not verify every page: outcome {e['outcome']}, verified "
                        f"{e['pages_verified']} of {ver.get('pages')}, bad {ver.get('bad')}; {ver.get('note', '')}")
    if not relay:
        problems.append("no fault counters from the relay")
    if not (e.get("nas_clean") or {}).get("clean"):
        problems.append(f"nas-server not clean: {e.get('nas_clean')}")
    return _finish_row(row, problems, e, rdir, runs_before)


# ------------------------------------------------------------------ the campaign
def campaign(runs: int = 20, seed: int = 1, real: int = 0, out: str | None = None, log=None,
             storage: str = "nfs", client: str = "agent") -> dict:
    """Run ``runs`` in-memory runs and ``real`` real ones; returns {rows, ok, kinds_exercised, ...}.
    With ``out``: campaign.json there, and each failed run's full report (``run-<i>.json``; real runs
    keep their report directory with pcaps; passing real runs drop their pcaps)."""
    say = log or (lambda m: None)
    if out:
        os.makedirs(out, mode=0o700, exist_ok=True)
    rows = []
    t0 = time.monotonic()
    for i in range(runs):
        row = run_one(seed, i) if storage == "nfs" else run_one(seed, i, storage)
        full = row.pop("result", None)
        if not row["ok"] and out:
            with open(os.path.join(out, f"run-{i}.json"), "w") as f:
                json.dump({"row": row, "result": full}, f, indent=1, default=str)
        rows.append(row)
        say(format_row(row))
    for k in range(real):
        row = run_real(seed, k, out or os.path.join("reports", f"chaos-{seed}"), storage, client=client)
        if row["ok"]:
            _drop_pcaps(row.get("report"))
        rows.append(row)
        say(format_row(row))
    exercised = sorted({k for r in rows for k, n in (r.get("faults") or {}).items() if n},
                       key=lambda k: FAULT_KINDS.index(k) if k in FAULT_KINDS else 99)
    res = {"seed": seed, "runs": runs, "real": real, "storage": storage, "ok": all(r["ok"] for r in rows),
           "kinds_exercised": exercised,
           "kinds_missing": [k for k in (AOE_KINDS if storage == "aoe" else FAULT_KINDS) if k not in exercised],
           "lost_total": sum(r["lost"] or 0 for r in rows),
           "failed": [r["run"] for r in rows if not r["ok"]], "wall_s": round(time.monotonic() - t0, 2),
           "rows": [{k: v for k, v in r.items() if k != "params"} for r in rows]}
    if out:
        with open(os.path.join(out, "campaign.json"), "w") as f:
            json.dump(res | {"rows": rows}, f, indent=1, default=str)
    return res


def _drop_pcaps(rdir: str | None) -> None:
    if not rdir:
        return
    pdir = os.path.join(rdir, "pcap")
    for n in os.listdir(pdir) if os.path.isdir(pdir) else ():
        os.unlink(os.path.join(pdir, n))


HEADER = f"{'run':>6} {'scenario':<20} {'seed':>10}  {'faults':<44} {'outcome':<10} {'written':>7} {'verified':>8} {'lost':>4}  status"


def format_row(r: dict) -> str:
    faults = ", ".join(f"{k}: {n}" for k, n in (r.get("faults") or {}).items()) or "-"
    extra = f" (edge {r['edge']})" if r.get("edge") else ""
    base = f" [baseline {r['baseline_outcome']}]" if "baseline_outcome" in r else ""
    status = "ok" if r["ok"] else "FAIL: " + "; ".join(p.splitlines()[0] for p in r["problems"])
    return (f"{r['run']!s:>6} {r['scenario']:<20} {r['seed']:>10}  {faults + extra:<44} {r['outcome'] + base:<10} "
            f"{r['written']!s:>7} {r['verified']!s:>8} {r['lost']!s:>4}  {status}")
