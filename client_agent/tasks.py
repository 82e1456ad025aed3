"""Tasks: generators that say what they wait for, so a blocked allocation blocks only its task.

Invariant owned here: every live task is in exactly one state, and every task that is not
runnable is parked on exactly one wait that names its reason and since when it has waited --
so ``snapshot()`` (and the hung-task report built on it) can list every task and its wait.

A task yields a ``Wait`` and is resumed with its result:

    WaitPages(n, gfp, owner)  -> list[Page]; None if the context cannot block (no
                                 __GFP_DIRECT_RECLAIM) or runs under PF_MEMALLOC (Linux's
                                 "nopage": no recursive reclaim) and the allocator refused
    WaitEvent(key, until=None)-> the value given to ``wake(key, value)``; TIMEOUT at ``until``
    Sleep(until)              -> the ``now`` at which it ran again

The allocation slow path, as in __alloc_pages_slowpath() + try_to_free_pages():
  1. ``alloc()`` at the context's floor (the allocator itself retries with NO_WATERMARKS);
  2. a blocking allocation that failed: a non-kthread finding free pages <= min/2 is throttled
     (``pgscan_direct_throttle``, state "throttled", on pfmemalloc_wait) until
     ``allow_direct_reclaim()`` holds again -- or at most 1 s without __GFP_FS;
  3. then it stalls (``allocstall``, state "blocked") until pages are freed and its own floor
     can be met; it is retried whenever the allocator frees pages (``on_pages_freed``).
  Each counter counts once per event (a throttle, an allocation that had to wait), not per
  re-check, so the report can compare them with Linux's.

PF_MEMALLOC is per task, as in Linux (``current->flags``): the scheduler swaps the allocator's
``pf_memalloc_depth`` in and out around each step, so a task that yields inside
``with alloc.pf_memalloc():`` keeps its scope and lends it to nobody.

A task that raises is a bug of this program, never a modelled event, and is never silent (the
testbed must not turn its own bug into a "deadlock"):
- the task ends "crashed"; the scheduler keeps a crash record (``crashes``: pid, name, kthread,
  ``t_s`` since ``epoch``, exception type, message and traceback text), counts it
  (``counters["tasks_crashed"]``), logs one line ``BUG: task NAME:PID crashed: Type: message``
  (the oops line) and calls the task's ``on_crash(task)`` hook, given at ``spawn``: the owner wakes
  with an error whatever waited on the dead task (net/sunrpc: every call on its transport fails
  with -EIO; mm: the page under writeback ends its writeback with EIO). What Linux does and where
  this differs is said by each owner; in short: an oops kills the task (do_exit) and what waited
  on it waits for ever -- here waiters fail with an error so the run ends, and the watchdog
  (testbed/watchdog.py) classifies any run with a crash as ``testbed_bug``, never as a result.
- ``stats()`` (the agent's ``snapshot()["sched"]``) carries the counters and the crash records.
- Exceptions a task raises *as its answer* (``spawn(..., errors=(ActivateError, ...))``: a
  control operation that failed, as a syscall returns -errno) end it "failed", counted
  ``tasks_failed``: not a crash.
- ``throw(task, exc)`` resumes a parked task by raising ``exc`` at its yield, as if the code it
  was running had raised there (fault injection for tests and testbed.sim).
The scheduler reads no clock: ``run(now)`` is given the time and returns the next deadline.
"""

from __future__ import annotations

import heapq
import itertools
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Hashable

from .mm.gfp import Gfp

# Throttled callers without __GFP_FS wait at most this long (throttle_direct_reclaim: HZ).
THROTTLE_NOFS_TIMEOUT_S = 1.0
# Steps one task may take inside one run() when its allocations succeed at once, before it is
# put back at the tail of the run queue: a task allocating in a loop cannot starve the others.
INLINE_STEPS = 64
# Passes over the run queue in one run(): enough for a wake chain (A frees, B allocates and
# wakes C, ...) to settle within one call in practice; the loop runs again at once if not.
RUN_PASSES = 8
# Finished tasks (done, failed, crashed, killed) kept for snapshots; older ones are forgotten.
EXITED_KEPT = 64
# Crash records kept (with their tracebacks); ``tasks_crashed`` counts every one.
CRASHES_KEPT = 16

_DIRECT_RECLAIM = int(Gfp.DIRECT_RECLAIM)
_FS = int(Gfp.FS)


class _Timeout:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TIMEOUT"


TIMEOUT = _Timeout()  # what a WaitEvent is resumed with when its ``until`` passes first


@dataclass(slots=True)
class Wait:
    """Base: ``reason`` is what snapshots and the hung-task report show."""
    reason: str = field(default="", kw_only=True)


@dataclass(slots=True)
class WaitPages(Wait):
    n: int
    gfp: int
    owner: str

    def __post_init__(self):
        if not self.reason:
            self.reason = f"alloc {self.n} page(s) for {self.owner}"


@dataclass(slots=True)
class WaitEvent(Wait):
    key: Hashable
    until: float | None = None

    def __post_init__(self):
        if not self.reason:
            self.reason = f"event {self.key!r}"


@dataclass(slots=True)
class Sleep(Wait):
    until: float
    # a transport's reconnect backoff (xs_connect's delay, a block driver's): the task waits on
    # its own timer, not on memory or a peer -- the watchdog does not count a stall across it
    reconnect: bool = False

    def __post_init__(self):
        if not self.reason:
            self.reason = f"sleep until {self.until:.6f}"


# Task states. "blocked" and "throttled" are Linux's D state (uninterruptible: what the hung-task
# detector reports); "waiting" and "sleeping" are S.
RUNNABLE, RUNNING = "runnable", "running"
BLOCKED, THROTTLED = "blocked", "throttled"
WAITING, SLEEPING = "waiting", "sleeping"
DONE, FAILED, CRASHED, KILLED = "done", "failed", "crashed", "killed"
EXITED = _EXITED = (DONE, FAILED, CRASHED, KILLED)

# What a runnable task does when it next runs.
_SEND, _RETRY_AFTER_THROTTLE, _THROW = 0, 1, 2


class Task:
    __slots__ = ("name", "gen", "kthread", "state", "wait", "since", "state_since", "result",
                 "error", "traceback", "pf_memalloc_depth", "_value", "_action", "_token",
                 "_kill_pending", "pid", "on_crash", "errors")

    def __init__(self, pid: int, name: str, gen: Generator, kthread: bool, now: float,
                 on_crash: Callable[["Task"], None] | None = None, errors: tuple = ()):
        self.pid = pid
        self.name = name
        self.gen = gen
        self.kthread = kthread          # PF_KTHREAD: exempt from direct-reclaim throttling
        self.state = RUNNABLE
        self.wait: Wait | None = None
        self.since: float | None = None         # when the current Wait was yielded
        self.state_since = now
        self.result: Any = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.pf_memalloc_depth = 0
        self._value: Any = None
        self._action = _SEND
        self._token = 0                 # bumped on every park: stale timers/wakeups are ignored
        self._kill_pending = False
        self.on_crash = on_crash        # the owner's hook: wake what waited on this task
        self.errors = errors            # exception types that are the task's answer ("failed")

    @property
    def exited(self) -> bool:
        return self.state in _EXITED

    def __repr__(self) -> str:
        return f"<Task {self.pid}:{self.name} {self.state}>"

    def snapshot(self, now: float) -> dict:
        w = self.wait
        d = {
            "pid": self.pid,
            "name": self.name,
            "state": self.state,
            "kthread": self.kthread,
            "wait": None if w is None else type(w).__name__,
            "reason": None if w is None else w.reason,
            "since": self.since,
            "waited_s": None if self.since is None else now - self.since,
            "state_since": self.state_since,
        }
        if isinstance(w, WaitPages):
            d["pages"] = {"n": w.n, "gfp": int(w.gfp), "owner": w.owner}
        elif isinstance(w, Sleep):
            d["until_s"] = w.until - now                # time left (s)
            if w.reconnect:
                d["reconnect"] = True
        if self.error is not None:
            d["error"] = self.error
        return d


class Scheduler:
    """Runs tasks; owns their waits. ``alloc`` is needed only by tasks that yield WaitPages.

    ``on_runnable`` (optional) is called, at most once between two ``run()`` calls, when
    something outside ``run()`` (a wake, freed pages, a spawn) made a task runnable: the event
    loop uses it to schedule a ``run()`` soon (see ``attach_loop``).
    """

    def __init__(self, alloc=None, on_runnable: Callable[[], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.alloc = alloc
        self.on_runnable = on_runnable
        self.log = log or (lambda line: None)
        self.now = 0.0
        self.epoch = 0.0                          # crash records' t_s = now - epoch
        self.tasks: dict[int, Task] = {}          # live tasks by pid, in spawn order
        self.exited: deque[Task] = deque(maxlen=EXITED_KEPT)
        self.crashes: deque[dict] = deque(maxlen=CRASHES_KEPT)
        self.counters = {"tasks_spawned": 0, "tasks_exited": 0, "tasks_failed": 0,
                         "tasks_crashed": 0, "tasks_killed": 0}
        self._pids = itertools.count(1)
        self._seq = itertools.count()
        self._runq: deque[Task] = deque()
        self._timers: list[tuple[float, int, Task, int]] = []
        self._events: dict[Hashable, list[tuple[Task, int]]] = {}
        self._page_waiters: list[Task] = []       # BLOCKED, FIFO
        self._throttled: list[Task] = []          # THROTTLED on pfmemalloc_wait
        self._pages_freed = False
        self._kicked = False
        self._in_run = False
        self._run_now = None

    # ------------------------------------------------------------------ public API
    def spawn(self, name: str, gen: Generator, kthread: bool = False,
              on_crash: Callable[[Task], None] | None = None, errors: tuple = ()) -> Task:
        """Start ``gen`` as task ``name``. ``on_crash(task)``: called once if the task raises
        (after the crash is recorded), to fail what waited on it; ``errors``: exception types
        that end the task "failed" (its answer), not "crashed" (see the module docstring)."""
        if not hasattr(gen, "send"):
            raise TypeError(f"spawn({name!r}): expected a generator, got {type(gen).__name__}")
        task = Task(next(self._pids), name, gen, kthread, self.now, on_crash, tuple(errors))
        self.tasks[task.pid] = task
        self.counters["tasks_spawned"] += 1
        self._make_runnable(task, None)
        return task

    def wake(self, key: Hashable, value: Any = None) -> int:
        """Resume every task waiting on ``key`` with ``value`` (wake_up_all); returns how many."""
        waiters = self._events.pop(key, None)
        if not waiters:
            return 0
        woken = 0
        for task, token in waiters:
            if task._token == token and task.state == WAITING:
                self._make_runnable(task, value)
                woken += 1
        return woken

    def wake_one(self, key: Hashable, value: Any = None) -> int:
        """Resume the longest-waiting task on ``key`` (an exclusive wait, as rpc_wake_up_next
        for the RPC backlog); the others stay queued. Returns 1, or 0 if nobody waits."""
        waiters = self._events.get(key)
        while waiters:
            task, token = waiters.pop(0)
            if task._token == token and task.state == WAITING:
                if not waiters:
                    del self._events[key]
                self._make_runnable(task, value)
                return 1
        if waiters is not None:
            del self._events[key]
        return 0

    def kill(self, task: Task) -> None:
        """Cancel a task: its generator is closed (its ``finally`` blocks run, e.g. to free
        pages); state "killed". A task may kill itself: it stops at its next yield."""
        if task.state in _EXITED:
            return
        if task.state == RUNNING:
            task._kill_pending = True
            return
        self._unpark(task)
        saved = self._swap_in(task)
        try:
            task.gen.close()
        except Exception as e:  # a finally block that raised: still dead, but say so
            self._finish(task, CRASHED, error=f"{type(e).__name__}: {e} (while being killed)",
                         tb=traceback.format_exc())
            return
        finally:
            self._swap_out(task, saved)
        self._finish(task, KILLED)
        self._update_free_hook()

    def throw(self, task: Task, exc: BaseException) -> bool:
        """Fault injection: resume ``task`` (parked or runnable) by raising ``exc`` at its yield,
        as if the code it runs had raised there; what follows is what a real bug gives (the
        task's ``except``/``finally`` blocks run; uncaught, it crashes). False if it has exited.
        ValueError for the running task (it would raise at itself: just raise)."""
        if task.state in _EXITED:
            return False
        if task.state == RUNNING:
            raise ValueError(f"throw({task!r}): the task is running")
        self._unpark(task)
        task.wait = None
        task.since = None
        self._make_runnable(task, exc, _THROW)
        return True

    def stats(self) -> dict:
        """The scheduler's counters and its crash records (newest last): what the agent's
        ``snapshot()["sched"]`` and the watchdog read."""
        return {"counters": dict(self.counters), "crashes": [dict(c) for c in self.crashes]}

    def run(self, now: float) -> float | None:
        """Run everything due at ``now``; return the next deadline (``now`` if more is
        runnable, None if nothing is timed)."""
        if now > self.now:
            self.now = now
        now = self.now
        self._kicked = False
        self._in_run = True
        runq = self._runq
        try:
            timers = self._timers
            if timers and timers[0][0] <= now:
                self._fire_timers(now)
            if self._pages_freed:
                self._service_page_waiters()
            # Passes over the run queue: what a pass makes runnable (a wake, freed pages) runs
            # in the next pass; after RUN_PASSES the rest waits for the next run() (we return
            # ``now``), so tasks waking each other forever cannot spin run() forever.
            step = self._step
            popleft = runq.popleft
            for _ in range(RUN_PASSES):
                if not runq:
                    break
                for _ in range(len(runq)):
                    task = popleft()
                    if task.state == RUNNABLE:
                        step(task)
                if self._pages_freed:
                    self._service_page_waiters()
        finally:
            self._in_run = False
            alloc = self.alloc
            if alloc is not None and alloc.on_pages_freed is not None:
                self._update_free_hook()
        if runq or self._pages_freed:
            return now
        return self.next_deadline() if self._timers else None

    def next_deadline(self) -> float | None:
        if self._runq or self._pages_freed:
            return self.now
        timers = self._timers
        while timers and timers[0][2]._token != timers[0][3]:
            heapq.heappop(timers)  # stale: the task moved on
        return timers[0][0] if timers else None

    def snapshot(self) -> list[dict]:
        """Every live task, then the last few exited ones: name, state, wait reason, since."""
        now = self.now
        return [t.snapshot(now) for t in self.tasks.values()] + \
               [t.snapshot(now) for t in self.exited]

    def attach_loop(self, loop) -> None:
        """Drive this scheduler from a ``loop.Loop``: run when kicked and at each deadline."""
        state = {"handle": None}

        def tick():
            state["handle"] = None
            deadline = self.run(loop.time())
            if deadline is not None:
                state["handle"] = loop.call_at(deadline, tick)

        def kick():
            h = state["handle"]
            if h is not None:
                h.cancel()
            state["handle"] = loop.call_soon(tick)

        def run_now():
            # The loop callback that just made tasks runnable runs them itself (no separate
            # call_soon tick): the same run(), one loop turn earlier (tick's body, inline).
            h = state["handle"]
            if h is not None:
                h.cancel()
                state["handle"] = None
            deadline = self.run(loop.time())
            if deadline is not None:
                state["handle"] = loop.call_at(deadline, tick)

        self.on_runnable = kick
        self._run_now = run_now
        kick()

    def hold_kicks(self) -> bool:
        """Until ``release_kicks``: tasks made runnable do not schedule a loop tick (a NAPI poll
        runs them itself right after). Returns False (and holds nothing) inside ``run()``."""
        if self._in_run or self._run_now is None:
            return False
        self._in_run = True
        return True

    def release_kicks(self) -> None:
        """End ``hold_kicks``: run the scheduler now if anything became runnable meanwhile."""
        self._in_run = False
        if self._runq or self._pages_freed:
            self._kicked = False
            self._run_now()

    # ------------------------------------------------------------------ internals
    def _kick(self) -> None:
        if not self._in_run and not self._kicked and self.on_runnable is not None:
            self._kicked = True
            self.on_runnable()

    def _make_runnable(self, task: Task, value: Any, action: int = _SEND) -> None:
        task._token += 1
        task.state = RUNNABLE
        task.state_since = self.now
        task._value = value
        task._action = action
        self._runq.append(task)
        if not self._in_run:
            self._kick()

    def _park(self, task: Task, state: str) -> int:
        task._token += 1
        task.state = state
        task.state_since = self.now
        return task._token

    def _add_timer(self, t: float, task: Task) -> None:
        heapq.heappush(self._timers, (t, next(self._seq), task, task._token))

    def _unpark(self, task: Task) -> None:
        """Take a task off whatever it waits on (lazily for timers and events)."""
        if task.state == BLOCKED:
            self._page_waiters.remove(task)
        elif task.state == THROTTLED:
            self._throttled.remove(task)
        elif task.state == WAITING:
            self._drop_event(task)
        elif task.state == RUNNABLE:
            try:
                self._runq.remove(task)
            except ValueError:
                pass
        task._token += 1

    def _drop_event(self, task: Task) -> None:
        """Remove a task's entry under its WaitEvent key: unique keys must not pile up."""
        key = task.wait.key
        waiters = self._events.get(key)
        if waiters is not None:
            waiters[:] = [e for e in waiters if e[0] is not task]
            if not waiters:
                del self._events[key]

    def _swap_in(self, task: Task) -> int:
        alloc = self.alloc
        if alloc is None:
            return 0
        saved = alloc.pf_memalloc_depth
        alloc.pf_memalloc_depth = task.pf_memalloc_depth
        return saved

    def _swap_out(self, task: Task, saved: int) -> None:
        alloc = self.alloc
        if alloc is not None:
            task.pf_memalloc_depth = alloc.pf_memalloc_depth
            alloc.pf_memalloc_depth = saved

    def _step(self, task: Task) -> None:
        task.state = RUNNING
        task.state_since = now = self.now
        value = task._value
        task._value = None
        alloc = self.alloc                      # _swap_in, inline
        if alloc is not None:
            saved = alloc.pf_memalloc_depth
            alloc.pf_memalloc_depth = task.pf_memalloc_depth
        else:
            saved = 0
        try:
            throw = False
            if task._action == _RETRY_AFTER_THROTTLE:
                task._action = _SEND
                ok, value = self._try_pages(task, task.wait, check_throttle=False)
                if not ok:
                    return
            elif task._action == _THROW:
                task._action = _SEND
                throw = True
            send = task.gen.send
            for _ in range(INLINE_STEPS):
                try:
                    if throw:
                        throw = False
                        w = task.gen.throw(value)
                    else:
                        w = send(value)
                except StopIteration as stop:
                    self._finish(task, DONE, result=stop.value)
                    return
                except Exception as e:
                    state = FAILED if task.errors and isinstance(e, task.errors) else CRASHED
                    self._finish(task, state, error=f"{type(e).__name__}: {e}",
                                 tb=traceback.format_exc(), exc=e)
                    return
                if task._kill_pending:   # it killed itself (or was killed by what it called)
                    task._kill_pending = False
                    try:
                        task.gen.close()
                    except Exception as e:
                        self._finish(task, CRASHED, tb=traceback.format_exc(),
                                     error=f"{type(e).__name__}: {e} (while being killed)")
                        return
                    self._finish(task, KILLED)
                    return
                task.wait = w
                task.since = now
                if type(w) is WaitEvent:       # the common case (readers, RPC replies) first
                    task._token = token = task._token + 1       # _park(task, WAITING), inline
                    task.state = WAITING
                    task.state_since = now
                    waiters = self._events.get(w.key)
                    if waiters is None:
                        self._events[w.key] = [(task, token)]
                    else:
                        waiters.append((task, token))
                    if w.until is not None:
                        self._add_timer(w.until, task)
                    return
                if isinstance(w, WaitPages):
                    if self.alloc is None:
                        self._crash_bad_yield(task, w, "WaitPages on a Scheduler without alloc")
                        return
                    ok, value = self._try_pages(task, w, check_throttle=True)
                    if not ok:
                        return
                    continue            # got the pages (or None) at once: resume inline
                if isinstance(w, Sleep):
                    self._park(task, SLEEPING)
                    self._add_timer(w.until, task)
                    return
                if isinstance(w, WaitEvent):
                    token = self._park(task, WAITING)
                    self._events.setdefault(w.key, []).append((task, token))
                    if w.until is not None:
                        self._add_timer(w.until, task)
                    return
                self._crash_bad_yield(task, w, "expected WaitPages, WaitEvent or Sleep")
                return
            self._make_runnable(task, value)   # inline budget used up: back of the queue
        finally:
            if alloc is not None:               # _swap_out, inline
                task.pf_memalloc_depth = alloc.pf_memalloc_depth
                alloc.pf_memalloc_depth = saved

    def _crash_bad_yield(self, task: Task, w: Any, why: str) -> None:
        try:
            task.gen.close()
        except Exception:
            pass
        self._finish(task, CRASHED, error=f"TypeError: task yielded {w!r}: {why}")

    def _try_pages(self, task: Task, w: WaitPages, check_throttle: bool) -> tuple[bool, Any]:
        """One pass of the allocation slow path. (True, pages-or-None) or (False, parked)."""
        alloc = self.alloc
        pages = alloc.alloc(w.n, w.gfp, w.owner)
        if pages is not None:
            task.wait = None
            task.since = None
            return True, pages
        if not w.gfp & _DIRECT_RECLAIM or alloc.pf_memalloc_depth:
            task.wait = None
            task.since = None
            return True, None
        if check_throttle and alloc.should_throttle_direct_reclaim(task.kthread):
            alloc.vmstat["pgscan_direct_throttle"] += 1
            self._park(task, THROTTLED)
            self._throttled.append(task)
            if not w.gfp & _FS:
                self._add_timer(self.now + THROTTLE_NOFS_TIMEOUT_S, task)
            alloc.on_pages_freed = self._on_pages_freed
            return False, None
        alloc.vmstat["allocstall"] += 1
        self._park(task, BLOCKED)
        self._page_waiters.append(task)
        alloc.on_pages_freed = self._on_pages_freed
        return False, None

    def _on_pages_freed(self) -> None:
        self._pages_freed = True
        self._kick()

    def _service_page_waiters(self) -> None:
        """Pages were freed: wake throttled tasks if the level is restored, and hand pages to
        blocked tasks (FIFO) whose own floor can now be met."""
        self._pages_freed = False
        alloc = self.alloc
        if self._throttled and alloc.allow_direct_reclaim():
            throttled, self._throttled = self._throttled, []
            for task in throttled:
                self._make_runnable(task, None, _RETRY_AFTER_THROTTLE)
        if self._page_waiters:
            still = []
            for task in self._page_waiters:
                w = task.wait
                if alloc.nr_free - w.n < alloc.watermark_floor(w.gfp):
                    still.append(task)
                    continue
                pages = alloc.alloc(w.n, w.gfp, w.owner)
                if pages is None:
                    still.append(task)
                    continue
                task.wait = None
                task.since = None
                self._make_runnable(task, pages)
            self._page_waiters = still

    def _update_free_hook(self) -> None:
        alloc = self.alloc
        if alloc is not None and not self._page_waiters and not self._throttled \
                and alloc.on_pages_freed == self._on_pages_freed:
            alloc.on_pages_freed = None  # nothing waits: free() stays on its fast path

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _t, _seq, task, token = heapq.heappop(timers)
            if task._token != token:
                continue
            if task.state == SLEEPING:
                task.wait = None
                task.since = None
                self._make_runnable(task, now)
            elif task.state == WAITING:
                self._drop_event(task)
                task.wait = None
                task.since = None
                self._make_runnable(task, TIMEOUT)   # its _events entry is now stale
            elif task.state == THROTTLED:
                self._throttled.remove(task)
                self._make_runnable(task, None, _RETRY_AFTER_THROTTLE)

    def _finish(self, task: Task, state: str, result: Any = None, error: str | None = None,
                tb: str | None = None, exc: BaseException | None = None) -> None:
        task.state = state
        task.state_since = self.now
        task.result = result
        task.error = error
        task.traceback = tb
        task._token += 1
        self.tasks.pop(task.pid, None)
        self.exited.append(task)
        self.counters["tasks_exited"] += 1
        if state == CRASHED:
            self.counters["tasks_crashed"] += 1
        elif state == FAILED:
            self.counters["tasks_failed"] += 1
        elif state == KILLED:
            self.counters["tasks_killed"] += 1
        self.wake(task, result)  # joiners: ``yield WaitEvent(task)``
        if state == CRASHED:
            self._crashed(task, exc)

    def _crashed(self, task: Task, exc: BaseException | None) -> None:
        """Record, count (done by _finish), log once, and let the owner fail the waiters."""
        error = task.error or "unknown error"
        rec = {"pid": task.pid, "name": task.name, "kthread": task.kthread,
               "t_s": round(self.now - self.epoch, 6),
               "exception": type(exc).__name__ if exc is not None else error.split(":", 1)[0],
               "message": str(exc) if exc is not None else error.split(": ", 1)[-1],
               "error": error, "traceback": task.traceback or "", "on_crash": None}
        self.crashes.append(rec)
        self.log(f"BUG: task {task.name}:{task.pid} crashed: {error}")
        hook, task.on_crash = task.on_crash, None
        if hook is not None:
            try:
                hook(task)
                rec["on_crash"] = "waiters failed"
            except Exception as e:  # noqa: BLE001 -- a broken hook is one more bug, kept
                rec["on_crash"] = f"on_crash raised {type(e).__name__}: {e}"
                rec["traceback"] += "\nwhile failing its waiters:\n" + traceback.format_exc()
                self.log(f"BUG: task {task.name}:{task.pid}: on_crash raised {type(e).__name__}: {e}")
