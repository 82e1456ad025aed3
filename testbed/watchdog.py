"""The watchdog: the contract's outcome rules applied to snapshots, and the hung-task style report.

Invariants owned here (docs/swap-contract.md, "Outcome rules"):
- ``deadlock``: reclaim is needed (free < low, or kswapd wanted) and ``pswpout`` has not grown for
  ``stall_threshold_s``; the clock of the stall starts at the later of the last ``pswpout`` growth,
  the moment reclaim became needed and the end of any reconnect backoff a storage transport of the
  agent sleeps in (a task whose wait is ``Sleep(reconnect=True)``: xs_connect's delay, a block
  driver's; it waits on its own timer, not on memory or a peer, so a stall is not counted across
  it -- the attempt after it is), and the outcome is declared at the first sample at or past
  start + threshold -- never earlier.
- ``recovered``: the workload is done, free > high and no swap page is under writeback (the
  snapshot's ``swap.writeback``, 0 when absent), after a stall (free went below the GFP_ATOMIC
  floor at some sample); ``completed``: the same without a stall.
- File-backed consumers (snapshot["filemap"] active, docs/file-backed.md), as testbed.sim: progress
  is ``pswpout + nr_written``, a writer throttled in balance_dirty_pages counts as reclaim needed, and
  "done" is the file workload synced with kswapd asleep and no page under writeback (the file's pages
  stay cached, free need not exceed high).
- A real kernel (testbed.linux_vm, snapshot["proc"]: /proc-shaped) is read through ``proc_view``
  and judged by the same rules: free/min/low/high are the sums over its zones (/proc/zoneinfo), the
  atomic floor is 3·min/8 per zone (__zone_watermark_ok: ALLOC_HIGH halves min, ALLOC_HARDER takes a
  further quarter), pswpout is /proc/vmstat's, "done" is the workload's own report after it verified
  every page. What needs nothing from the guest counts too: NAS-side WRITE calls are progress, and a
  guest silent for 3 sampler periods before its workload is done counts as needing reclaim (its
  sampler needs memory to read /proc; a hung guest cannot say free < low). The evidence used is
  listed in ``evidence``.
- ``testbed_bug``: a task of the agent crashed (snapshot["sched"]: ``tasks_crashed`` > 0, the
  crash records with their tracebacks; client_agent/tasks.py). An exception in the agent is a bug
  of this program, not a finding: the run is never ``deadlock``/``recovered``/``completed``, even
  if its figures would say so (a dead writeback task or kswapd stalls reclaim exactly as the
  deadlock does). Checked first, before every other rule; ``crashes`` keeps the records.
- ``invalid``: a snapshot says it is not valid (tp_drops, loop lag) or the runner saw softnet drops.
- The first outcome is final; ``finish()`` at the end of the budget gives ``unfinished`` when none
  was reached (the run proves nothing either way, so it never equals an ``expect``).
Pure: fed ``(t, snapshot)``; no clock, no I/O, so it is tested on synthetic timelines. It is the
only place the outcome rules live: the runner feeds it the client's snapshots every 0.2 s, the
simulation (testbed/sim.py) the same shape every 0.1 s of virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EPS = 1e-9


def zone(snap: dict) -> dict:
    return snap.get("alloc", {}).get("zoneinfo", {})


def pswpout(snap: dict) -> int:
    return int(snap.get("alloc", {}).get("vmstat", {}).get("pswpout", 0))


def atomic_floor(snap: dict) -> int:
    return int(snap.get("alloc", {}).get("reserve", {}).get("atomic_floor", 0))


def filemap(snap: dict) -> dict | None:
    """snapshot["filemap"] of a file-backed consumer (fileon), None for swap."""
    fm = snap.get("filemap")
    return fm if fm and fm.get("active") else None


def progress(snap: dict) -> int:
    """Writeback progress, as testbed.sim counts it: pages submitted to swap (pswpout) + file pages
    whose writeback the NAS acknowledged (nr_written); for a real kernel also the WRITE calls the NAS
    saw (``outside``): a guest whose sampler is stuck may still be writing."""
    vm = snap.get("alloc", {}).get("vmstat", {})
    return (int(vm.get("pswpout", 0)) + int(vm.get("nr_written", 0))
            + int((snap.get("outside") or {}).get("nas_write_calls", 0)))


def progress_label(snap: dict) -> str:
    """What progress() summed, named: ``pswpout`` / ``pswpout + nr_written`` for an agent; for a
    real kernel, whose figure adds the NAS's WRITE calls, ``writeback progress (pswpout N + NAS
    WRITE calls M)`` -- the terms apart, so that no sum is called pswpout."""
    base = "pswpout + nr_written" if filemap(snap) is not None else "pswpout"
    nas = (snap.get("outside") or {}).get("nas_write_calls")
    if nas is None:
        return base
    vm = snap.get("alloc", {}).get("vmstat", {})
    terms = [f"{k} {int(vm.get(k, 0))}" for k in base.split(" + ")] + [f"NAS WRITE calls {int(nas)}"]
    return f"writeback progress ({' + '.join(terms)})"


SILENT_PERIODS = 3


def _atomic_floor_linux(wmin: int) -> int:
    """__zone_watermark_ok for GFP_ATOMIC (ALLOC_HIGH | ALLOC_HARDER), order 0: min -= min/2, then
    min -= min/4 (Linux 6.1 mm/page_alloc.c)."""
    m = wmin - wmin // 2
    return m - m // 4


def proc_view(snap: dict) -> dict:
    """A real kernel's /proc-shaped snapshot (testbed.linux_vm.LinuxVmClient.raw_snapshot: ``proc``
    holds the files as read) in the shape of testbed/clients/base.py's contract -- the keys the
    rules read (``alloc`` zoneinfo/vmstat/reserve/kswapd, ``workload``) and those the report reads
    (``stack`` counters/snmp/drop_reasons, ``nfs``, ``swap``) -- with ``evidence``: the sources this
    view was built from, one line each. The raw snapshot's keys are kept. A snapshot already in the
    contract's shape (an agent's; one this function made) is returned unchanged.

    drop_reasons: Linux 6.1 shows none in /proc (only the skb:kfree_skb tracepoint has them); the
    counters incremented at the same drop sites stand in, named by the reason: PFMEMALLOC
    (TcpExt PFMemallocDrop, sk_filter_trim_cap), SOCKET_RCVBUFF (Udp RcvbufErrors), PROTO_MEM (Udp
    MemErrors), SOCKET_BACKLOG (TcpExt TCPBacklogDrop)."""
    if "proc" not in snap or "alloc" in snap:
        return snap
    p = snap.get("proc") or {}
    zones = [z for z in (p.get("zoneinfo") or {}).values() if z.get("managed")]
    zsum = {k: sum(int(z.get(k, 0)) for z in zones) for k in ("free", "min", "low", "high", "managed")} if zones else {}
    vm = p.get("vmstat") or {}
    wl = snap.get("workload") or {}
    samp = snap.get("sample") or {}
    interval = samp.get("interval_s") or 0.5
    age = samp.get("age_s")
    silent = (age is None or age >= SILENT_PERIODS * interval) and not wl.get("done")
    ev = []
    if zones:
        ev.append(f"sampler #{samp.get('seq')} ({age if age is not None else '?'} s old): /proc/zoneinfo "
                  f"free {zsum['free']} min {zsum['min']} low {zsum['low']} high {zsum['high']} (sum of "
                  f"{len(zones)} zones), /proc/vmstat pswpout {vm.get('pswpout', 0)}")
    out = snap.get("outside") or {}
    if "nas_write_calls" in out:
        ev.append(f"NAS: {out['nas_write_calls']} WRITE calls seen")
    if silent:
        ev.append(f"guest silent: no sample for {age if age is not None else 'ever'} s "
                  f"(>= {SILENT_PERIODS} x {interval} s) before its workload finished; counted as reclaim needed")
    if wl.get("done"):
        ev.append(f"workload: {wl.get('verified')} of {wl.get('pages')} pages verified, "
                  f"{wl.get('swapped_in_verified')} of them after swap-in")
    ev += list(snap.get("evidence") or [])
    netstat, snmp = p.get("netstat") or {}, p.get("snmp") or {}
    tcp, udp = netstat.get("TcpExt") or {}, snmp.get("Udp") or {}
    rpc = (p.get("rpc_nfs") or {}).get("rpc") or {}
    stack = {"counters": {"PFMemallocDrop": int(tcp.get("PFMemallocDrop", 0))} if tcp else {},
             "snmp": {**snmp, **netstat},
             "drop_reasons": {r: int(v) for r, v in (("PFMEMALLOC", tcp.get("PFMemallocDrop")),
                                                     ("SOCKET_RCVBUFF", udp.get("RcvbufErrors")),
                                                     ("PROTO_MEM", udp.get("MemErrors")),
                                                     ("SOCKET_BACKLOG", tcp.get("TCPBacklogDrop"))) if v}}
    view = {**snap,
            "time_s": snap.get("t_s"), "valid": True, "invalid_reasons": [],
            "alloc": {"zoneinfo": zsum, "vmstat": vm,
                      "reserve": {"atomic_floor": sum(_atomic_floor_linux(int(z.get("min", 0))) for z in zones),
                                  "pfmemalloc_seen": int(tcp.get("PFMemallocDrop", 0))},
                      "kswapd": {"wanted": silent}},
            "stack": stack,
            "workload": {**wl, "done": bool(wl.get("done")), "allocated": wl.get("allocated"),
                         "target": wl.get("pages")},
            "outside": out, "evidence": ev}
    if rpc:
        view["nfs"] = {"counters": {"rpc_calls": rpc.get("calls"), "rpc_retrans": rpc.get("retrans")}}
    if "pswpout" in vm:
        view["swap"] = {"active": True, "pswpout": int(vm.get("pswpout", 0)), "pswpin": int(vm.get("pswpin", 0))}
    return view


def reclaim_needed(snap: dict) -> bool:
    z = zone(snap)
    if z.get("free", 0) < z.get("low", 0) or bool(snap.get("alloc", {}).get("kswapd", {}).get("wanted")):
        return True
    # a writer throttled in balance_dirty_pages needs writeback as much as reclaim does
    fm = filemap(snap)
    return bool(fm and fm.get("throttled_writers"))


def nfs_view(snap: dict) -> dict:
    """snapshot["nfs"] with its ``counters`` sub-dict flattened in (rpc_calls, rpc_retrans, ...);
    on a swapless client with a file (fileon), the file's transport (``file_nfs``)."""
    nfs = snap.get("nfs") or snap.get("file_nfs") or {}
    return {**nfs, **(nfs.get("counters") or {})}


def retransmissions(snap: dict) -> dict | None:
    """The swap/file device's own resend count, named as its driver names it, or None when the
    snapshot has none (a Linux client without /proc/net/rpc/nfs): ``{"counter", "count"}`` with
    counter ``aoe_retransmit`` (the aoe driver's rexmit of a timed-out frame, drivers/block/aoe.py
    ``counters["retransmit"]``), ``requests_requeued`` (nbd / iscsi: a request sent again, whole,
    on a new connection -- client_agent/drivers/tcp_block.py) or ``rpc_retrans`` (sunrpc's
    xprt retransmissions, /proc/net/rpc/nfs ``rpc`` line)."""
    sw = snap.get("swap") or {}
    if "aoenet" in sw:                      # aoeblk's snapshot; its counters are a Counter (absent = 0)
        return {"counter": "aoe_retransmit", "count": (sw.get("counters") or {}).get("retransmit", 0)}
    if sw.get("requests_requeued") is not None:
        return {"counter": "requests_requeued", "count": sw["requests_requeued"]}
    n = nfs_view(snap).get("rpc_retrans")
    return None if n is None else {"counter": "rpc_retrans", "count": n}


def retrans_text(d: dict) -> str:
    """``<counter> <count>`` of a report entry's or timeline sample's ``retransmissions``
    (``rpc_retrans`` as the fallback of an older entry), ``retransmissions n/a`` if it has none."""
    r = d.get("retransmissions")
    if r:
        return f"{r['counter']} {r['count']}"
    if d.get("rpc_retrans") is not None:
        return f"rpc_retrans {d['rpc_retrans']}"
    return "retransmissions n/a"


# The durability loop's counters (client_agent/fs/nfs/nfs3proc.py durability_counters), kept per
# consumer: snapshot["swap"] or snapshot["filemap"].
WRITEBACK_KEYS = ("writes", "commits", "resends", "verifier_changes", "shortwrite",
                  "committed_lt_stable", "delay", "rpcgarbage", "write_errors",
                  "write_error_reasons", "write_error_errnos")


def writeback_view(snap: dict) -> dict:
    """The consumer's NFS writeback counters: short writes, JUKEBOX delays, garbage replies and
    the writes that ended with an error, by name (empty for an agent without them)."""
    src = filemap(snap) or snap.get("swap") or {}
    return {k: src[k] for k in WRITEBACK_KEYS if k in src}


def task_crashes(snap: dict) -> tuple[int, list[dict]]:
    """(tasks_crashed, the crash records kept: name, pid, t_s, exception, message, traceback)
    from snapshot["sched"] (client_agent/tasks.py Scheduler.stats); (0, []) for an agent without."""
    sched = snap.get("sched") or {}
    crashes = list(sched.get("crashes") or [])
    return max(int((sched.get("counters") or {}).get("tasks_crashed", 0)), len(crashes)), crashes


def crash_line(c: dict) -> str:
    """One line naming a crashed task and its exception."""
    return (f"task {c.get('name')}:{c.get('pid')} crashed at t={c.get('t_s', 0):.3f} s: "
            f"{c.get('exception')}: {c.get('message')}")


def workload_done(snap: dict) -> bool:
    fm = filemap(snap)
    if fm is not None:
        return bool((fm.get("workload") or {}).get("done"))
    return bool((snap.get("workload") or {}).get("done"))


def settled(snap: dict) -> bool:
    """Swap: free > high and no swap page under writeback on any area. A file's pages stay cached after
    fsync/msync, so for a file consumer settled = kswapd asleep (no reclaim needed) and no file
    page under writeback."""
    z = zone(snap)
    fm = filemap(snap)
    if fm is not None:
        return not reclaim_needed(snap) and not fm.get("nr_writeback")
    areas = snap.get("swap_devices") or [snap.get("swap") or {}]    # every swap area (AoE + NFS)
    return (z.get("free") is not None and z.get("free") > z.get("high", 0)
            and not any(a.get("writeback") for a in areas))


@dataclass
class Watchdog:
    stall_threshold_s: float
    outcome: str | None = None
    decided_at: float | None = None
    reasons: list = field(default_factory=list)
    time_to_stall_s: float | None = None
    time_to_recover_s: float | None = None
    reserve_low_pages: int | None = None
    evidence: list = field(default_factory=list)
    reserve_evidence: str | None = None
    stalled: bool = False
    crashes: list = field(default_factory=list)
    _first_below_floor: float | None = None
    _last_pswpout: int | None = None
    _last_growth: float | None = None
    _reclaim_since: float | None = None
    _last_t: float | None = None
    _backoff_until: float | None = None

    @property
    def first_below_floor_s(self) -> float | None:
        """When free (or its low-water mark) first went below the atomic floor, if it did."""
        return self._first_below_floor

    def stall_start(self) -> float | None:
        if self._reclaim_since is None:
            return None
        return max(self._reclaim_since, self._last_growth if self._last_growth is not None else self._reclaim_since,
                   self._backoff_until if self._backoff_until is not None else self._reclaim_since)

    def feed(self, t: float, snap: dict, extra_invalid: list[str] | tuple = ()) -> str | None:
        """One sample at runner time ``t`` (s since start). Returns the outcome once decided."""
        if self.outcome is not None:
            return self.outcome
        snap = proc_view(snap)
        self.evidence = list(snap.get("evidence") or []) + ([self.reserve_evidence] if self.reserve_evidence else [])
        self._last_t = t
        z = zone(snap)
        free = z.get("free")
        lw = snap.get("alloc", {}).get("reserve", {}).get("nr_free_lowwater")
        for v in (free, lw):
            if v is not None:
                self.reserve_low_pages = v if self.reserve_low_pages is None else min(self.reserve_low_pages, v)
        n, crashes = task_crashes(snap)
        if n:
            self.crashes = crashes
            return self._decide("testbed_bug", t, [
                f"{n} task(s) of the agent crashed -- a bug in the testbed, not a result: "
                + "; ".join(crash_line(c) for c in crashes)])
        bad = list(snap.get("invalid_reasons", [])) if snap.get("valid") is False else []
        bad += list(extra_invalid)
        if bad:
            return self._decide("invalid", t, bad)
        p = progress(snap)
        if not self.evidence:       # an agent's snapshot: the figures read, from its own allocator
            self.evidence = [f"client snapshot at t={t:.1f}s: zoneinfo free {free} min {z.get('min')} low {z.get('low')} "
                             f"high {z.get('high')}, reserve nr_free_lowwater {lw}, atomic floor {atomic_floor(snap)}, "
                             f"progress (pswpout + nr_written) {p}, kswapd wanted "
                             f"{bool(snap.get('alloc', {}).get('kswapd', {}).get('wanted'))}"]
        if self._last_pswpout is None or p > self._last_pswpout:
            self._last_growth = t
            self._last_pswpout = p
        for task in snap.get("tasks") or ():
            if task.get("reconnect") and task.get("until_s") is not None:
                end = t + max(task["until_s"], 0.0)
                self._backoff_until = end if self._backoff_until is None else max(self._backoff_until, end)
        floor = atomic_floor(snap)
        # The allocator's low-water mark catches a dip between two samples (0.2 s is long).
        lowest = min(v for v in (free, lw) if v is not None) if (free is not None or lw is not None) else None
        # A real kernel has no low-water mark in /proc, but a receive buffer from the reserve is
        # proof of a dip below the floor: page->pfmemalloc is set only for an ALLOC_NO_WATERMARKS
        # allocation, made after the atomic watermark check failed (__alloc_pages_slowpath), and
        # TcpExt PFMemallocDrop counts those refused at sk_filter (proc_view: pfmemalloc_seen).
        pf = snap.get("alloc", {}).get("reserve", {}).get("pfmemalloc_seen")
        if (lowest is not None and lowest < floor) or pf:
            self.stalled = True
            if self._first_below_floor is None:
                self._first_below_floor = t
                if pf and not (lowest is not None and lowest < floor):
                    self.evidence.append(f"below the atomic floor at t={t:.1f}s by a buffer from the reserve: "
                                         f"TcpExt PFMemallocDrop {pf} (free {free} in the sample)")
                    self.reserve_evidence = self.evidence[-1]
        if workload_done(snap) and free is not None and settled(snap):
            how = (f"free {free} > high {z.get('high')}" if filemap(snap) is None else
                   f"file synced, kswapd asleep (free {free}, low {z.get('low')}), no page under writeback")
            if self.stalled:
                self.time_to_stall_s = self._first_below_floor
                self.time_to_recover_s = t - self._first_below_floor
                return self._decide("recovered", t, [f"workload done, {how} "
                                                     f"{t - self._first_below_floor:.1f} s after free went below the atomic floor {floor}"
                                                     + (" (a reserve buffer seen: TcpExt PFMemallocDrop)" if self.reserve_evidence else "")])
            return self._decide("completed", t, [f"workload done, {how}, free never below the atomic floor {floor}"])
        if reclaim_needed(snap):
            if self._reclaim_since is None:
                self._reclaim_since = t
            start = self.stall_start()
            if t - start + EPS >= self.stall_threshold_s:
                self.time_to_stall_s = start
                why = [w for w, on in ((f"free {free} < low {z.get('low')}", free is not None and free < z.get("low", 0)),
                                       ("kswapd wanted", bool(snap.get("alloc", {}).get("kswapd", {}).get("wanted"))),
                                       ("a writer throttled", filemap(snap) is not None and reclaim_needed(snap)))
                       if on] or ["reclaim needed"]
                return self._decide("deadlock", t, [
                    f"reclaim needed ({', '.join(why)}{' -- a silent guest' if snap.get('evidence') and snap['alloc']['kswapd'].get('wanted') else ''}) and "
                    f"{progress_label(snap)} stuck at {p} for {t - start:.1f} s >= stall_threshold_s {self.stall_threshold_s}"
                    + (f" (counted from the end of a reconnect backoff at t={start:.1f}s)"
                       if self._backoff_until is not None and start == self._backoff_until else "")])
        else:
            self._reclaim_since = None
        return None

    def _decide(self, outcome: str, t: float, reasons: list[str]) -> str:
        self.outcome, self.decided_at, self.reasons = outcome, t, reasons
        return outcome

    def finish(self) -> str:
        if self.outcome is None:
            start = self.stall_start()
            why = (f"pswpout stalled for {self._last_t - start:.1f} s only" if start is not None and self._last_t is not None
                   else "workload not done")
            self._decide("unfinished", self._last_t or 0.0, [f"no outcome within the time budget ({why})"])
        return self.outcome


# ------------------------------------------------------------------------------ report text
def crash_report(snap: dict) -> list[str]:
    """The BUG lines of the agent's crashed tasks, each with its traceback; [] if none crashed."""
    n, crashes = task_crashes(snap)
    if not n:
        return []
    out = [f"BUG: {n} task(s) of the agent crashed: this run is a testbed bug, not a result"
           + (f" ({n - len(crashes)} record(s) not kept)" if n > len(crashes) else "")]
    for c in crashes:
        out.append("BUG: " + crash_line(c) + (" [kthread]" if c.get("kthread") else ""))
        if c.get("on_crash"):
            out.append(f"      on_crash: {c['on_crash']}")
        out.extend("      " + line for line in (c.get("traceback") or "").rstrip().splitlines())
    return out


def hung_task_report(snap: dict, stall_threshold_s: float, missing_xids: list[int] | None = None,
                     wire_note: str | None = None) -> str:
    """What a kernel engineer would want to see: blocked tasks, memory against the watermarks,
    receive drops by reason, and the NAS replies that reached the wire but not the NFS socket.
    Crashed tasks (a testbed bug) come first, each with its traceback."""
    out = crash_report(snap)
    for task in snap.get("tasks", []):
        if task.get("state") in ("done", "exited", "failed", "crashed", "killed") or task.get("wait") is None:
            continue  # exited tasks keep their last wait in the snapshot; only live waiters hang
        waited = task.get("waited_s")
        hung = waited is not None and waited >= stall_threshold_s
        head = "INFO: task" if hung else "      task"
        line = (f"{head} {task.get('name')}:{task.get('pid')} {'blocked for more than ' + format(stall_threshold_s, 'g') + ' seconds' if hung else 'waiting'}"
                f" ({waited:.1f} s)" if waited is not None else f"{head} {task.get('name')}:{task.get('pid')}")
        out.append(line)
        detail = f"      state {task.get('state')}{' kthread' if task.get('kthread') else ''}, waits on {task.get('wait')}: {task.get('reason')}"
        if task.get("pages"):
            pg = task["pages"]
            detail += f" [{pg.get('n')} page(s), gfp {pg.get('gfp'):#x}, owner {pg.get('owner')}]"
        out.append(detail)
    if not out:
        out.append("no task is waiting")
    z = zone(snap)
    res = snap.get("alloc", {}).get("reserve", {})
    out.append(f"Mem-Info: free:{z.get('free')} min:{z.get('min')} low:{z.get('low')} high:{z.get('high')} "
               f"atomic_floor:{res.get('atomic_floor')} managed:{z.get('managed')} "
               f"min_free_kbytes:{z.get('min_free_kbytes')} reserve_in_use:{res.get('reserve_in_use')} "
               f"nr_free_lowwater:{res.get('nr_free_lowwater')} memalloc_socks:{res.get('memalloc_socks')}")
    vm = snap.get("alloc", {}).get("vmstat", {})
    keys = ("pswpout", "pgscan_kswapd", "pgsteal_kswapd", "nr_writeback", "nr_anon_pages",
            "pgscan_direct_throttle", "allocstall")
    out.append("vmstat: " + " ".join(f"{k}:{vm.get(k, 0)}" for k in keys))
    fm = filemap(snap)
    if fm is not None:
        out.append(f"filemap ({fm.get('policy')}{', beyond Linux: file transport SOCK_MEMALLOC' if fm.get('memalloc') else ''}): "
                   + " ".join(f"{k}:{fm.get(k)}" for k in ("nr_file_pages", "nr_dirty", "nr_writeback", "nr_mapped",
                                                          "nr_dirty_threshold", "nr_dirty_background_threshold", "acked",
                                                          "pageout", "balance_dirty_pages"))
                   + f" nr_written:{vm.get('nr_written', 0)} throttled_writers:{fm.get('throttled_writers')}")
    owners = snap.get("alloc", {}).get("owners", {})
    if owners:
        out.append("pages by owner: " + " ".join(f"{k}:{v}" for k, v in sorted(owners.items(), key=lambda kv: -kv[1])))
    st = snap.get("stack", {})
    c = st.get("counters", {})
    drops = st.get("drop_reasons", {})
    out.append("receive drops by reason: " + (" ".join(f"{k}:{v}" for k, v in sorted(drops.items())) or "none")
               + f"; rx_nobuf:{c.get('rx_nobuf', 0)} PFMemallocDrop:{c.get('PFMemallocDrop', 0)}")
    nfs = nfs_view(snap)
    if nfs:
        keys = ("rpc_calls", "rpc_retrans", "rpc_major_timeouts", "rpc_replies", "rpc_bad_xid", "backlog")
        out.append("nfs: " + " ".join(f"{k}:{nfs.get(k)}" for k in keys if k in nfs)
                   + (" -- server not responding, still trying" if nfs.get("not_responding") else ""))
    wb = writeback_view(snap)
    if wb.get("write_errors") or wb.get("shortwrite") or wb.get("delay") or wb.get("rpcgarbage"):
        reasons = " ".join(f"{k}:{v}" for k, v in sorted((wb.get("write_error_reasons") or {}).items()))
        out.append("nfs writeback: " + " ".join(f"{k}:{wb.get(k, 0)}" for k in
                                                 ("shortwrite", "delay", "rpcgarbage", "write_errors"))
                   + (f" -- pages whose writeback ended with an error, by reason: {reasons}" if reasons else ""))
    if missing_xids is not None:
        shown = " ".join(f"{x:#010x}" for x in missing_xids[:32])
        more = f" (+{len(missing_xids) - 32} more)" if len(missing_xids) > 32 else ""
        out.append(f"NAS replies on the client's wire never received by the NFS socket: {len(missing_xids)}"
                   + (f": xid {shown}{more}" if missing_xids else ""))
    if wire_note:
        out.append(wire_note)
    return "\n".join(out)
