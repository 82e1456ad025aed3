"""Processes inside a host's namespace: start, wait for readiness, stop -- each one recorded.

Invariant owned here: a process this module starts is in the run's state record (pid, namespace,
namespace inode, start time) BEFORE it executes its program: the child waits on a "go" pipe until
the parent has recorded it. The child dies with the thread that started it (PR_SET_PDEATHSIG), so
a runner killed by SIGKILL leaves no service behind; ``clean`` stops recorded processes only after
checking that pid, start time and namespace still match the record (no pid-reuse accidents).

How a process is started (no ``ip netns exec``): fork; in the child, prctl(PR_SET_PDEATHSIG),
setsid, setns(2) into /run/netns/<ns>, optional sched_setaffinity, stdout+stderr to
``<run_dir>/logs/<host>.<role>.log``, wait for the go byte, exec. Readiness is a byte written to
``--ready-fd N`` (appended to argv when ``ready=True``) -- never a sleep -- or, for programs that
cannot take that flag (tcpdump), a line in their output (``ready_line``).

Running a Python callable in a namespace (tests: a kernel UDP socket in ``nas``) is
``run_in_netns(netns, fn, *args)``: forked child, setns, result pickled back.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import threading
import time
import traceback
from typing import Any, Callable, Iterable

import psutil

from .nsutil import CLONE_NEWNET, netns_inode, netns_path
from .state import RunState, log_path

PR_SET_PDEATHSIG = 1
# How long `stop` waits after SIGTERM before SIGKILL: services flush logs and reply "shutdown".
DEFAULT_STOP_GRACE_S = 3.0
KILL_REAP_S = 2.0            # how long stop() waits to reap a process after SIGKILL
DEFAULT_READY_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 15

_libc = ctypes.CDLL(None, use_errno=True)


class ProcessStartError(Exception):
    """The program could not be started or did not become ready; the message has its log's tail."""

    # set by _not_ready: what went wrong, the host, the log and its tail
    what: str = ""
    host: str = ""
    log_path: str = ""
    tail: str = ""

    def one_line(self) -> str:
        """One line for a CLI error: what went wrong and the last non-empty line of the log --
        usually the program's own reason (``client-agent: offload gro needs ...``) -- then the
        log's path; the full argv and tail stay in ``str(self)``."""
        if not self.what:
            return str(self).splitlines()[0]
        last = next((ln.strip() for ln in reversed(self.tail.splitlines()) if ln.strip()), "")
        said = f"; it said: {last}" if last else ""
        return f"in host {self.host} it {self.what}{said} (log {self.log_path})"


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:]) or "(log is empty)"


class HostProcess:
    """A process started in a host's namespace by ``start_process``."""

    def __init__(self, pid: int, record: dict[str, Any], state: RunState | None):
        self.pid = pid
        self.record = record
        self.state = state
        self.returncode: int | None = None
        self._tee: threading.Thread | None = None

    @property
    def log_path(self) -> str:
        return self.record["log"]

    @property
    def netns(self) -> str:
        return self.record["netns"]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not our child (or already reaped elsewhere)
                if not psutil.pid_exists(self.pid):
                    self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for exit; returns the exit code (negative: killed by that signal) or None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        if self._tee is not None:
            self._tee.join(timeout=2.0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; reap; drop from the record. Returns the exit code."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(grace_s) is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                # SIGKILL cannot be caught: the exit is a matter of milliseconds, so reap it even
                # with grace_s 0 (else the caller gets None for the exit code of a killed process)
                self.wait(max(grace_s, KILL_REAP_S))
        if self.state is not None:
            self.state.drop_process(self.pid)
        return self.returncode

    def __enter__(self) -> "HostProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HostProcess(pid={self.pid}, host={self.record['host']!r}, argv={self.record['argv']!r})"


def _child(argv: list[str], env: dict[str, str] | None, cwd: str | None, ns_fd: int, log_fd: int,
           out_w: int | None, go_r: int, err_w: int, keep_fds: list[int], cpus: list[int] | None,
           parent_pid: int, pdeathsig: int) -> None:
    """Runs in the forked child; never returns."""
    try:
        if _libc.prctl(PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)
        os.setsid()  # Ctrl-C at the terminal goes to the runner, which stops us in order
        if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        if cpus:
            os.sched_setaffinity(0, cpus)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        out = out_w if out_w is not None else log_fd
        os.dup2(out, 1)
        os.dup2(out, 2)
        for fd in keep_fds:
            os.set_inheritable(fd, True)
        if cwd:
            os.chdir(cwd)
        if os.read(go_r, 1) != b"G":  # parent gone or refused: never run unrecorded
            os._exit(1)
        if env is None:
            os.execvp(argv[0], argv)
        os.execvpe(argv[0], argv, env)
    except BaseException as e:  # report to the parent through the CLOEXEC error pipe
        try:
            os.write(err_w, f"{type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(127)


def start_process(run: RunState | str, host: str, argv: list[str], *, role: str | None = None,
                  ready: bool = False, ready_line: bytes | None = None,
                  ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S, cpus: Iterable[int] | None = None,
                  env: dict[str, str] | None = None, cwd: str | None = None, log: str | None = None,
                  pdeathsig: int = signal.SIGKILL, pass_fds: Iterable[int] = ()) -> HostProcess:
    """Start ``argv`` inside host ``host`` of run ``run`` (a RunState or a run name).

    ``ready=True`` appends ``--ready-fd N`` and returns only after the program wrote a byte to it;
    ``ready_line`` instead waits for that byte string in its output. Either way a timeout or an
    early exit stops the process and raises ProcessStartError with the log's tail.
    """
    st = run if isinstance(run, RunState) else RunState.load(run)
    ns = st.host_netns(host)
    role = role or os.path.basename(argv[0])
    logfile = log or log_path(st.dir, host, role)
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    argv = [str(a) for a in argv]

    ns_fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r = ready_w = out_r = out_w = None
    keep = list(pass_fds)
    if ready:
        ready_r, ready_w = os.pipe()
        argv = argv + ["--ready-fd", str(ready_w)]
        keep.append(ready_w)
    if ready_line is not None:
        out_r, out_w = os.pipe()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(argv, env, cwd, ns_fd, log_fd, out_w, go_r, err_w, keep, list(cpus) if cpus else None,
               parent_pid, int(pdeathsig))
    for fd in (ns_fd, go_r, err_w, ready_w, out_w):
        if fd is not None:
            os.close(fd)
    record = {"pid": pid, "host": host, "netns": netns_path(ns), "netns_inode": netns_inode(ns),
              "argv": argv, "role": role, "log": logfile, "create_time": None, "started_at": time.time()}
    proc = HostProcess(pid, record, st)
    try:
        record["create_time"] = psutil.Process(pid).create_time()
        st.add_process(record)
        os.write(go_w, b"G")
        os.close(go_w)
        go_w = -1
        err = _read_all(err_r)  # EOF when exec succeeded (CLOEXEC); a message when it failed
        if err:
            proc.wait(5.0)
            st.drop_process(pid)
            raise ProcessStartError(f"cannot start {argv[0]!r} in host {host} ({ns}): {err}; is it installed and on PATH?")
        if ready_r is not None:
            _wait_ready_fd(proc, ready_r, ready_timeout_s)
        if out_r is not None:
            proc._tee = _wait_ready_line(proc, out_r, log_fd, ready_line, ready_timeout_s)
            out_r = None
        return proc
    except BaseException:
        if go_w != -1:
            os.close(go_w)
        proc.stop(grace_s=1.0)
        raise
    finally:
        os.close(err_r)
        if ready_r is not None:
            os.close(ready_r)
        if proc._tee is None:
            os.close(log_fd)
            if out_r is not None:
                os.close(out_r)


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        b = os.read(fd, 4096)
        if not b:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(b)


def _not_ready(proc: HostProcess, what: str) -> ProcessStartError:
    argv = " ".join(proc.record["argv"])
    tail = proc.log_tail()
    e = ProcessStartError(f"{argv!r} in host {proc.record['host']} {what}; log {proc.log_path} ends with:\n{tail}")
    e.what, e.host, e.log_path, e.tail = what, proc.record["host"], proc.log_path, tail
    return e


def _wait_ready_fd(proc: HostProcess, ready_r: int, timeout_s: float) -> None:
    r, _, _ = select.select([ready_r], [], [], timeout_s)
    if not r:
        proc.stop(grace_s=1.0)
        raise _not_ready(proc, f"did not write its readiness byte to --ready-fd within {timeout_s} s")
    if not os.read(ready_r, 1):  # EOF: exited (or closed the fd) without signalling
        code = proc.wait(2.0)
        proc.stop(grace_s=1.0)
        raise _not_ready(proc, f"closed --ready-fd without signalling readiness (exit code {code})")


def _wait_ready_line(proc: HostProcess, out_r: int, log_fd: int, line: bytes, timeout_s: float) -> threading.Thread:
    deadline = time.monotonic() + timeout_s
    seen = bytearray()
    while line not in seen:
        left = deadline - time.monotonic()
        r, _, _ = select.select([out_r], [], [], max(0.0, left))
        if not r:
            os.write(log_fd, bytes(seen))
            proc.stop(grace_s=1.0)
            raise _not_ready(proc, f"did not print {line!r} within {timeout_s} s")
        chunk = os.read(out_r, 65536)
        if not chunk:
            os.write(log_fd, bytes(seen))
            code = proc.wait(2.0)
            proc.stop(grace_s=1.0)
            raise _not_ready(proc, f"exited (code {code}) before printing {line!r}")
        seen += chunk
    os.write(log_fd, bytes(seen))

    def tee() -> None:  # keep draining the program's output into its log until it exits
        try:
            while chunk := os.read(out_r, 65536):
                os.write(log_fd, chunk)
        finally:
            os.close(out_r)
            os.close(log_fd)

    t = threading.Thread(target=tee, name=f"tee-{proc.pid}", daemon=True)
    t.start()
    return t


def stop_process(proc: HostProcess, grace_s: float = DEFAULT_STOP_GRACE_S) -> int | None:
    return proc.stop(grace_s)


# -- a Python callable inside a namespace --------------------------------------------------------
def run_in_netns(netns: str, fn: Callable[..., Any], *args: Any, timeout_s: float = 10.0, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in a forked child inside namespace ``netns``; return its result.

    ``netns`` is a namespace name (``RunState.host_netns(host)``). The result (or exception) must
    be picklable. The child is killed if it runs longer than ``timeout_s``.
    """
    ns_fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            payload = pickle.dumps(("ok", fn(*args, **kwargs)))
        except BaseException as e:
            try:
                payload = pickle.dumps(("err", e))
            except Exception:
                payload = pickle.dumps(("err", RuntimeError(traceback.format_exc())))
        try:
            os.write(w, payload) if len(payload) < 65536 else _write_all(w, payload)
        finally:
            os._exit(0)
    os.close(ns_fd)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(0.0, left))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {netns} did not finish within {timeout_s} s")
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} in {netns}: child died without a result")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "err":
        raise value
    return value


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
