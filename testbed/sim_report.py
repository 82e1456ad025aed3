"""`testbed run NAME --sim`: the deterministic in-memory run (testbed/sim.py) written into the same
report directory a real run writes -- report.json (the same scenario entry keys, plus ``simulated``
and the full simulation result under ``sim``), timeline.json, <scenario>.png, pcap/client.pcap (the
client's side of the in-memory wire, virtual timestamps), final_snapshot.json (the agent's
snapshot at the run's end, the real runs' shape: `testbed stat --report` reads it), logs/sim.log -- with no root, no
namespaces and no clock.

Invariants owned here:
- The figures are the simulation's, unchanged: this module only renames them into the report's
  vocabulary (``acked_pages`` -> ``pages_written``, ``reserve_low_point`` -> ``reserve_low_pages``;
  the sim's ``timeout`` is the runner's ``unfinished``) and keeps the whole result beside them.
- Same scenario + same seed = the same report figures (the run is deterministic), and
  ``sim_result.json`` holds exactly what ``testbed.sim.run_sim`` returned (the timeline included),
  but its ``final_snapshot``, which is final_snapshot.json.
"""

from __future__ import annotations

import os

from testbed import plots
from testbed import report as rep
from testbed.sim import run_sim
from testbed.watchdog import crash_report

SIM_SAMPLE_S = 0.1


def _timeline(result: dict) -> list[dict]:
    """The sim's samples with the runner's timeline keys added (plots read those)."""
    out = []
    floor = result["atomic_floor"]
    for s in result["timeline"]:
        out.append({**s, "nr_free_lowwater": s["free_low_point"], "atomic_floor": floor,
                    "swap_acked": s["acked"], "drop_reasons": s["drops"]})
    return out


def watchdog_text(outcome: str, reasons: str, result: dict) -> str:
    """The report's ``watchdog`` text (and watchdog.txt): the outcome line; for a testbed bug
    the crashed tasks with their tracebacks (testbed.watchdog.crash_report)."""
    text = f"outcome: {outcome} ({reasons}) [simulation]"
    bug = crash_report({"sched": {"counters": {"tasks_crashed": result.get("tasks_crashed", 0)},
                                  "crashes": result.get("task_crashes") or []}})
    if bug:
        text += "\n" + "\n".join(bug)
    return text


def entry_from(sc, checks, result: dict) -> dict:
    """The report entry (report.SCENARIO_KEYS and the runner's usual extras) of one sim result."""
    outcome = "unfinished" if result["outcome"] == "timeout" else result["outcome"]
    written, verified = result["acked_pages"], result["pages_verified"]
    reasons = {
        "deadlock": f"reclaim needed and pswpout (+ nr_written) stuck since t={result['t_stall_s']} s "
                    f"for >= stall_threshold_s {sc.stall_threshold_s}",
        "recovered": f"workload done and settled at t={result['t_recover_s']} s, "
                     f"{result['time_to_recover_s']} s after free went below the atomic floor "
                     f"{result['atomic_floor']}",
        "completed": "workload done and settled; free never below the atomic floor "
                     f"{result['atomic_floor']}",
        "unfinished": f"no outcome within max_duration_s {sc.max_duration_s}",
        "testbed_bug": "; ".join(result.get("watchdog_reasons") or ["a task of the agent crashed"]),
    }[outcome]
    counters = {"PFMemallocDrop": result["PFMemallocDrop"], "rx_nobuf": result["rx_nobuf"],
                "rx_pfmemalloc": result["rx_pfmemalloc"], "tx_nobuf": result["tx_nobuf"],
                "pswpout": result["pswpout"], "pgscan_kswapd": result["pgscan_kswapd"],
                "pgsteal_kswapd": result["pgsteal_kswapd"], "allocstall": result["allocstall"],
                "nr_writeback": result["nr_writeback"], "drop_reasons": result["drop_reasons"],
                "nfs": result["rpc"]}
    return {
        "name": sc.name, "outcome": outcome, "seed": result["seed"], "expect": sc.expect,
        # as the watchdog reports it: a recovered run's stall is when free went below the floor
        "time_to_stall_s": (result["t_below_atomic_floor_s"] if outcome == "recovered"
                            else result["time_to_stall_s"]),
        "time_to_recover_s": result["time_to_recover_s"],
        "pages_written": written, "pages_verified": verified, "pages_lost": written - verified,
        "reserve_low_pages": result["reserve_low_point"], "rpc_retrans": result["rpc_retrans"],
        "retransmissions": result.get("retransmissions"),
        "preflight": [ch.to_json() for ch in checks], "counters": counters,
        "watchdog": watchdog_text(outcome, reasons, result),
        "decided_at_s": result["duration_s"] if outcome != "unfinished" else None,
        "parameters": sc.to_dict(), "consumer": result.get("consumer", "swap"),
        "policy": result.get("policy", "linux"), "beyond_linux": result.get("beyond_linux", False),
        "simulated": True, "pcaps": {"client": os.path.join("pcap", "client.pcap")},
        "sim": {k: v for k, v in result.items() if k not in ("timeline", "logs")},
        "task_crashes": result.get("task_crashes", []),
    }


def run(sc, checks, out: str, extra: dict | None = None) -> tuple[dict, str]:
    """Run ``sc`` in memory, write the report directory ``out`` (already prepared); returns
    (entry, path of report.json)."""
    pcap = os.path.join(out, "pcap", "client.pcap")
    result = run_sim({**sc.to_dict(), "pcap_path": pcap, "final_snapshot": True}, sc.seed)
    rep.write_json(os.path.join(out, "final_snapshot.json"), result.pop("final_snapshot"))
    entry = entry_from(sc, checks, result)
    timeline = _timeline(result)
    rep.write_json(os.path.join(out, "sim_result.json"), result)
    with open(os.path.join(out, "watchdog.txt"), "w") as f:
        f.write(entry["watchdog"] + "\n")
    with open(os.path.join(out, "logs", "sim.log"), "w") as f:
        for t, line in result["logs"]:
            f.write(f"[{t:12.6f}] {line}\n")
    entry["png"] = os.path.relpath(plots.scenario_png(entry, timeline,
                                                      os.path.join(out, f"{sc.name}.png")), out)
    path = rep.write_report(out, [entry], timeline=timeline, extra=extra)
    return entry, path
