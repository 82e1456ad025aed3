"""Packet captures of a host's interface, taken by tcpdump inside the host's namespace.

Invariant owned here: ``start_capture`` returns only once tcpdump has said "listening on" -- the
capture is live, so no frame sent after it returns is missing from the pcap. tcpdump runs through
the process API (recorded, dies with the runner) with ``-U`` (each packet flushed to the file) and
``--immediate-mode`` (else TPACKET_V3 holds frames in a block that SIGTERM discards) and
``-Z root`` (it keeps the privileges it needs to write into the run directory).
"""

from __future__ import annotations

import os
import re
import shutil
import time

from .process import HostProcess, ProcessStartError, start_process
from .state import RunState

READY_LINE = b"listening on"
# tcpdump prints "N packets captured" on exit; the figure the CLI reports.
_CAPTURED_RE = re.compile(rb"(\d+) packets? captured")
_DROPPED_RE = re.compile(rb"(\d+) packets? dropped by kernel")
# tcpdump -B: the capture socket's buffer in KiB (its default, 2 MiB, dropped frames of a busy
# run on a loaded 2-core machine -- a pcap with a hole reads as "ACKed unseen segment")
CAPTURE_BUFFER_KIB = 32768


class CaptureError(Exception):
    pass


class Capture:
    def __init__(self, proc: HostProcess, path: str, host: str, iface: str):
        self.proc = proc
        self.path = path
        self.host = host
        self.iface = iface

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for tcpdump to finish on its own (``count`` reached)."""
        return self.proc.wait(timeout_s)

    def stop(self, grace_s: float = 3.0) -> int | None:
        """Stop tcpdump (SIGTERM flushes the pcap); return how many packets it captured."""
        self.proc.stop(grace_s)
        return self.packets_captured()

    def packets_captured(self) -> int | None:
        return log_figure(self.proc.log_path, _CAPTURED_RE)

    def packets_dropped(self) -> int | None:
        """tcpdump's "N packets dropped by kernel" once it has stopped (None before)."""
        return log_figure(self.proc.log_path, _DROPPED_RE)


def log_figure(log_path: str, pattern: "re.Pattern[bytes]") -> int | None:
    """The last figure ``pattern`` finds in a tcpdump log (its exit summary), or None."""
    try:
        with open(log_path, "rb") as f:
            m = pattern.findall(f.read())
    except OSError:
        return None
    return int(m[-1]) if m else None


def dropped_in_log(log_path: str) -> int | None:
    """Frames a stopped tcpdump says the kernel dropped, from its log."""
    return log_figure(log_path, _DROPPED_RE)

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


IFNAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$")   # IFNAMSIZ - 1; never an option to tcpdump


def start_capture(run: RunState | str, host: str, *, iface: str | None = None, path: str | None = None,
                  count: int | None = None, snaplen: int = 0, bpf_filter: list[str] | None = None,
                  ready_timeout_s: float = 10.0) -> Capture:
    """Capture ``iface`` (default: the host's NIC) of ``host`` into ``path`` (default: run_dir/pcap/)."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise CaptureError("tcpdump is not installed; install it with `apt-get install tcpdump` (testbed doctor checks this)")
    st = run if isinstance(run, RunState) else RunState.load(run)
    iface = iface or st.host_iface(host)
    if not IFNAME_RE.match(iface):
        raise CaptureError(f"interface name {iface!r} is not valid (1-15 letters, digits, '_', '.', '-', "
                           "not starting with '-'); see `testbed status` for the hosts' interfaces")
    if path is None:
        path = os.path.join(st.dir, "pcap", f"{host}-{iface}-{time.strftime('%Y%m%dT%H%M%S')}.pcap")
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    # The capture holds whatever crossed the wire: 0600 before tcpdump opens it (it truncates an
    # existing file and keeps its mode).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    os.chmod(path, 0o600)
    argv = [tcpdump, "-i", iface, "-w", path, "-U", "--immediate-mode", "-n", "-Z", "root", "-s", str(snaplen),
            "-B", str(CAPTURE_BUFFER_KIB)]
    if count is not None:
        argv += ["-c", str(count)]
    argv += bpf_filter or []
    try:
        proc = start_process(st, host, argv, role=f"tcpdump-{iface}", ready_line=READY_LINE,
                             ready_timeout_s=ready_timeout_s)
    except ProcessStartError as e:
        raise CaptureError(f"capture of {iface} in host {host} did not start: {e}") from None
    return Capture(proc, path, host, iface)
