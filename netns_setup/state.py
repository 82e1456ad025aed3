"""Run directories and their state record: what a topology created, written before it is created.

Invariant owned here: every kernel object and process the testbed makes is in ``state.json`` of its
run directory BEFORE it exists (status ``intent``) and is marked ``created`` (with its identity:
a namespace's inode, a process's pid + start time + namespace inode) right after. A SIGKILL at
any instant therefore leaves a record that covers everything that might exist, and ``clean``
removes exactly what records list -- never anything found by a name pattern.

Layout of a run directory (root: $TESTBED_RUN_ROOT, default /run/nsdeadlock-testbed -- a tmpfs,
so records vanish at reboot together with the namespaces they describe)::

    <root>/<name>/state.json     the record (JSON, replaced atomically on every change)
    <root>/<name>/.lock          flock(2) taken for every read-modify-write of state.json
    <root>/<name>/logs/<host>.<role>.log   stdout+stderr of each process started in a host
    <root>/<name>/ctl/<service>.sock       control sockets (netns_setup.control)
    <root>/<name>/pcap/<host>-<iface>.pcap captures (default location)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from typing import Any, Iterator

RUN_ROOT_ENV = "TESTBED_RUN_ROOT"
DEFAULT_RUN_ROOT = "/run/nsdeadlock-testbed"
STATE_FILE = "state.json"
STATE_VERSION = 1
# A run name becomes part of namespace names and file paths: keep it short and shell-safe.
RUN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")


class StateError(Exception):
    """A run directory or its state record is missing, busy or unreadable."""


def run_root() -> str:
    return os.environ.get(RUN_ROOT_ENV) or DEFAULT_RUN_ROOT


def check_run_name(name: str) -> str:
    if not RUN_NAME_RE.match(name or ""):
        raise StateError(f"run name {name!r} is not valid; use 1-24 lower-case letters, digits or '-', starting with a letter or digit")
    return name


def run_dir(name: str) -> str:
    return os.path.join(run_root(), check_run_name(name))


def control_socket_path(run_directory: str, service: str) -> str:
    """Where service ``service`` (e.g. ``agent-client``, ``nas``) listens for control requests."""
    return os.path.join(run_directory, "ctl", f"{service}.sock")


def log_path(run_directory: str, host: str, role: str) -> str:
    return os.path.join(run_directory, "logs", f"{host}.{role}.log")


def list_runs() -> list[str]:
    """Names of run directories that hold a state record."""
    root = run_root()
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [e for e in entries if os.path.isfile(os.path.join(root, e, STATE_FILE))]


def _own_start_time() -> float | None:
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 -- only used to tell a live owner from a recycled pid
        return None


def creator_alive(data: dict[str, Any]) -> int | None:
    """The pid of the process that created this run if it is still running (same pid and start
    time, not us): such a run is in use -- a `testbed run` or `demo` in another terminal."""
    pid, t = data.get("creator_pid"), data.get("creator_start_time")
    if not pid or t is None or pid == os.getpid():
        return None
    try:
        import psutil
        return pid if abs(psutil.Process(pid).create_time() - t) < 0.05 else None
    except Exception:  # noqa: BLE001 -- gone, or not ours to see: not in use
        return None


class RunState:
    """The state record of one run, backed by ``<run_dir>/state.json``.

    Every mutator takes the lock, re-reads the file (another process -- the runner -- may have
    added a process), changes it, and replaces it atomically (write temp, fsync, rename).
    """

    def __init__(self, directory: str, data: dict[str, Any]):
        self.dir = directory
        self.data = data

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, suffix: str, topology: dict[str, Any]) -> "RunState":
        d = run_dir(name)
        # 0700: the run directory holds the control sockets (which can stop services), logs and pcaps
        os.makedirs(run_root(), mode=0o700, exist_ok=True)
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        for sub in ("logs", "ctl", "pcap"):
            os.makedirs(os.path.join(d, sub), mode=0o700, exist_ok=True)
        st = cls(d, {})
        with st._locked():
            if os.path.exists(st.path):
                raise StateError(f"topology {name!r} is already up (record {st.path}); run `testbed down --name {name}` first, or pick another --name")
            st.data = {
                "version": STATE_VERSION,
                "name": name,
                "suffix": suffix,
                "phase": "creating",
                "created_at": time.time(),
                "creator_pid": os.getpid(),
                "creator_start_time": _own_start_time(),
                "topology": topology,
                "objects": [],
                "processes": [],
            }
            st._write()
        return st

    @classmethod
    def load(cls, name: str) -> "RunState":
        d = run_dir(name)
        st = cls(d, {})
        if not os.path.exists(st.path):
            up = ", ".join(list_runs()) or "none"
            raise StateError(f"no topology named {name!r} is up (no {st.path}); topologies up: {up}")
        with st._locked():
            st._read()
        return st

    @property
    def path(self) -> str:
        return os.path.join(self.dir, STATE_FILE)

    @property
    def name(self) -> str:
        return self.data["name"]

    # -- locking and I/O ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> None:
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except ValueError as e:
            raise StateError(f"state record {self.path} is not valid JSON ({e}); inspect it, remove what it lists by hand, then delete it") from None

    def _write(self) -> None:
        tmp = self.path + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Locked read-modify-write: ``with st.update() as data: data[...] = ...``."""
        with self._locked():
            if os.path.exists(self.path):
                self._read()
            yield self.data
            self._write()

    def reload(self) -> None:
        with self._locked():
            self._read()

    # -- objects -----------------------------------------------------------------------------
    def record_intent(self, kind: str, **fields: Any) -> int:
        """Record that an object is about to be created; returns its index for ``mark_created``."""
        with self.update() as data:
            data["objects"].append(dict(fields, kind=kind, status="intent"))
            return len(data["objects"]) - 1

    def mark_created(self, index: int, **fields: Any) -> None:
        with self.update() as data:
            data["objects"][index].update(fields, status="created")

    def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.data["objects"] if kind is None or o["kind"] == kind]

    def set_phase(self, phase: str) -> None:
        with self.update() as data:
            data["phase"] = phase

    # -- processes ---------------------------------------------------------------------------
    def add_process(self, record: dict[str, Any]) -> None:
        with self.update() as data:
            data["processes"].append(record)

    def drop_process(self, pid: int) -> None:
        with self.update() as data:
            data["processes"] = [p for p in data["processes"] if p["pid"] != pid]

    # -- lookups the runner uses -------------------------------------------------------------
    def host_netns(self, host: str) -> str:
        for o in self.data["objects"]:
            if o["kind"] == "netns" and o.get("host") == host:
                return o["name"]
        hosts = [o["host"] for o in self.data["objects"] if o["kind"] == "netns" and o.get("host")]
        raise StateError(f"topology {self.name!r} has no host {host!r}; hosts: {', '.join(hosts)}")

    def host_iface(self, host: str) -> str:
        for o in self.data["objects"]:
            if o["kind"] == "veth" and o.get("host") == host:
                return o["peer_ifname"]
        raise StateError(f"topology {self.name!r} has no interface for host {host!r}")

    def hosts(self) -> list[str]:
        return [h["name"] for h in self.data["topology"]["hosts"]]

    def remove_record(self) -> None:
        """Delete state.json (only once everything it lists is verified gone)."""
        with self._locked():
            os.unlink(self.path)
