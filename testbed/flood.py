"""``python -m testbed.flood``: a paced UDP flood from the ``noise`` host, over kernel UDP sockets.

Invariants owned here:
- Pacing follows an ABSOLUTE schedule: send k (since the last (re)start) is due at
  ``start_s + k / rate_pps`` on ``time.monotonic``; a late send never shifts the ones after it, so
  the achieved rate equals the offered rate whenever the sender keeps up. The coarse part of each
  wait is a ``select`` (which also serves the control socket), the last ``SPIN_S`` is a busy spin.
  A send made more than ``LATE_SLACK_S`` after its due time counts in ``late_sends``; a stall longer
  than ``MAX_BACKLOG_S`` (preempted, SIGSTOP) abandons the missed slots (``skipped_slots``) and
  re-anchors the schedule instead of bursting them all at once.
- Every datagram starts with ``FLOOD_HEADER`` (magic ``NSDF`` + a 64-bit sequence number) followed by
  seeded bytes; the sequence number counts successful sends only, so a receiver that got sequence
  numbers ``0..sent-1`` lost nothing, and any gap is a frame lost after the sender's kernel took it.
- Traffic goes only to a destination inside 198.18.0.0/15 (RFC 2544 benchmarking range): anything
  else is refused before a socket exists.
- ``ENOBUFS``/``EAGAIN`` (and any other send error) are counted per errno, never raised.

The pacing (``Pacer``) and the on/off switching schedule (``OnOffSchedule``) are sans-I/O objects
driven by ``now`` so they are tested with a fake clock; ``Flood`` is the thin driver around them.

Control (netns_setup.control): ``snapshot``; ``set`` with key ``rate_pps`` | ``on`` | ``size``;
``shutdown`` (replies with the final summary, then exits 0). The same summary is printed on stdout
as one JSON line when the flood stops (``--duration-s`` elapsed, SIGTERM, SIGINT or ``shutdown``).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import math
import os
import random
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from netns_setup.control import BadRequest, ControlServer, signal_ready

ALLOWED_NET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: never send test traffic elsewhere
FLOOD_MAGIC = b"NSDF"
FLOOD_HEADER = struct.Struct("!4sQ")   # magic, sequence number (successful sends, from 0)
MIN_SIZE_BYTES = FLOOD_HEADER.size     # a datagram must carry the header
MAX_SIZE_BYTES = 65507                 # largest UDP payload over IPv4
# Linux select/poll wakeups land within ~50-60 us (timer slack) of the asked time: sleeping until
# SPIN_S before the due time and spinning the rest puts sends within a few us of their schedule.
SPIN_S = 100e-6
# A send this late is "late" (at 50 kpps it is 5 intervals; at 4 kpps 2 intervals).
LATE_SLACK_S = 500e-6
# Behind by more than this: the sender was stalled; drop the missed slots rather than burst them.
MAX_BACKLOG_S = 0.050
# At most this many back-to-back sends per wakeup (bounds the control latency under catch-up).
MAX_BATCH = 64
# While spinning at high rates the control socket is polled at least this often.
CONTROL_POLL_S = 0.010
SNDBUF_BYTES = 4 << 20


class FloodError(ValueError):
    """A bad option or setting; the message is one line with the value and the fix."""


# -- sans-I/O core ---------------------------------------------------------------------------------
class Pacer:
    """Absolute send schedule: send k is due at ``start_s + k / rate_pps``.

    ``take(now)`` says how many sends are due at ``now`` and advances the schedule by that many;
    ``due_at()`` is the next deadline. Counters: ``late_sends``, ``skipped_slots``.
    """

    def __init__(self, rate_pps: float, start_s: float, *, late_slack_s: float = LATE_SLACK_S,
                 max_backlog_s: float = MAX_BACKLOG_S):
        if not rate_pps > 0:
            raise FloodError(f"rate_pps {rate_pps!r} must be > 0; to stop sending use on=false")
        self.rate_pps = float(rate_pps)
        self.start_s = start_s
        self.k = 0
        self.late_slack_s = late_slack_s
        self.max_backlog_s = max_backlog_s
        self.late_sends = 0
        self.skipped_slots = 0

    def due_at(self) -> float:
        return self.start_s + self.k / self.rate_pps

    def restart(self, now: float, rate_pps: float | None = None) -> None:
        """Re-anchor the schedule at ``now`` (the first send is due at once), optionally at a new rate."""
        if rate_pps is not None:
            if not rate_pps > 0:
                raise FloodError(f"rate_pps {rate_pps!r} must be > 0; to stop sending use on=false")
            self.rate_pps = float(rate_pps)
        self.start_s = now
        self.k = 0

    def take(self, now: float, max_batch: int = MAX_BATCH) -> int:
        due = self.due_at()
        if now < due:
            return 0
        if now - due > self.max_backlog_s:
            # Stalled: the slots that fell due while we were not running are not sent in a burst.
            missed = max(0, math.floor((now - self.start_s) * self.rate_pps) - self.k)
            self.skipped_slots += missed
            self.late_sends += 1
            self.restart(now)
            self.k = 1
            return 1
        # slots due by `now` (floor can land one short when now == due exactly: at least one)
        n = max(1, math.floor((now - self.start_s) * self.rate_pps) + 1 - self.k)
        n = min(n, max_batch)
        late_upto = math.floor((now - self.late_slack_s - self.start_s) * self.rate_pps) + 1 - self.k
        self.late_sends += max(0, min(n, late_upto))
        self.k += n
        return n


@dataclass
class OnOffSchedule:
    """Alternate ``on_s`` seconds of sending with ``off_s`` of silence, from ``start_s``."""

    on_s: float
    off_s: float
    start_s: float = 0.0

    def phase(self, now: float) -> tuple[bool, float]:
        """(sending?, time of the next switch)."""
        period = self.on_s + self.off_s
        t = (now - self.start_s) % period
        base = now - t
        if t < self.on_s:
            return True, base + self.on_s
        return False, base + period


def parse_on_off(text: str) -> tuple[float, float]:
    try:
        on_s, off_s = (float(x) for x in text.split(":"))
    except ValueError:
        raise FloodError(f"--on-off {text!r} is not ON_S:OFF_S; e.g. --on-off 2:1 (2 s sending, 1 s silent)") from None
    if not (on_s > 0 and off_s >= 0):
        raise FloodError(f"--on-off {text!r}: ON_S must be > 0 and OFF_S >= 0")
    return on_s, off_s


def parse_ports(text: str) -> list[int]:
    ports: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            ports.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise FloodError(f"--ports {text!r} is not a list of ports; e.g. --ports 9001,9002 or 9001-9004") from None
    bad = [p for p in ports if not 0 < p < 65536]
    if not ports or bad:
        raise FloodError(f"--ports {text!r}: ports must be 1..65535 (bad: {bad or 'none given'})")
    return ports


def check_dst(dst: str) -> str:
    try:
        addr = ipaddress.ip_address(dst)
    except ValueError:
        raise FloodError(f"--dst {dst!r} is not an IPv4 address; use a testbed address such as 198.18.0.2") from None
    if addr not in ALLOWED_NET:
        raise FloodError(f"--dst {dst} is outside {ALLOWED_NET} (the RFC 2544 benchmarking range); "
                         f"refusing to send there -- use a testbed address such as 198.18.0.2")
    return str(addr)


def check_size(size: int) -> int:
    if not MIN_SIZE_BYTES <= int(size) <= MAX_SIZE_BYTES:
        raise FloodError(f"size {size} bytes is outside {MIN_SIZE_BYTES}..{MAX_SIZE_BYTES} (UDP payload, header included)")
    return int(size)


def payload_template(seed: int, size: int) -> bytearray:
    """The seeded datagram body; ``FLOOD_HEADER`` is written over its first bytes per send."""
    buf = bytearray(random.Random(seed).randbytes(max(size, MIN_SIZE_BYTES)))
    FLOOD_HEADER.pack_into(buf, 0, FLOOD_MAGIC, 0)
    return buf


def parse_seq(payload: bytes) -> int | None:
    """The flood sequence number of a received UDP payload, or None if it is not a flood datagram."""
    if len(payload) < FLOOD_HEADER.size:
        return None
    magic, seq = FLOOD_HEADER.unpack_from(payload)
    return seq if magic == FLOOD_MAGIC else None


class PortChooser:
    """Round-robin over ``ports``, or a seeded uniform choice (``order="random"``)."""

    def __init__(self, ports: list[int], order: str, seed: int):
        if order not in ("round-robin", "random"):
            raise FloodError(f"port order {order!r} unknown; use round-robin or random")
        self.n = len(ports)
        self.order = order
        self._rng = random.Random(seed)
        self._i = -1

    def next(self) -> int:
        if self.order == "random":
            return self._rng.randrange(self.n)
        self._i = (self._i + 1) % self.n
        return self._i


# -- the driver ----------------------------------------------------------------------------------
class Flood:
    def __init__(self, dst: str, ports: list[int], rate_pps: float, size: int, seed: int, *,
                 order: str = "round-robin", bind: str | None = None, on_off: tuple[float, float] | None = None,
                 start_on: bool = True, clock: Callable[[], float] = time.monotonic):
        self.dst = check_dst(dst)
        self.ports = ports
        self.size = check_size(size)
        self.seed = seed
        self.clock = clock
        now = clock()
        self.pacer = Pacer(rate_pps, now)
        self.chooser = PortChooser(ports, order, seed)
        self.on_off = OnOffSchedule(on_off[0], on_off[1], now) if on_off else None
        self.enabled = start_on
        self.sending = False           # effective state: enabled and in an "on" phase
        self.started_s = now
        self.on_time_s = 0.0
        self._on_since: float | None = None
        self.sent = 0
        self.sent_bytes = 0
        self.sent_per_port = [0] * len(ports)
        self.errors: dict[str, int] = {}
        self._buf = payload_template(seed, MAX_SIZE_BYTES if size > 4096 else 4096)
        self._view = memoryview(self._buf)
        self._addrs = [(self.dst, p) for p in ports]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
            if bind:
                self.sock.bind((bind, 0))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    # -- state ------------------------------------------------------------------------------
    def _update_phase(self, now: float) -> float | None:
        """Apply enabled + on/off schedule at ``now``; returns the next on/off switch time, if any."""
        want, next_switch = True, None
        if self.on_off is not None:
            want, next_switch = self.on_off.phase(now)
        want = want and self.enabled
        if want and not self.sending:
            self.pacer.restart(now)
            self._on_since = now
        elif not want and self.sending:
            self.on_time_s += now - (self._on_since or now)
            self._on_since = None
        self.sending = want
        return next_switch if self.enabled else None

    def set(self, key: str, value: Any) -> dict:
        now = self.clock()
        if key == "rate_pps":
            try:
                rate = float(value)
            except (TypeError, ValueError):
                raise FloodError(f"rate_pps {value!r} is not a number") from None
            self.pacer.restart(now, rate)
        elif key == "on":
            if not isinstance(value, bool):
                raise FloodError(f"on must be true or false, not {value!r}")
            if value and not self.enabled and self.on_off is not None:
                self.on_off.start_s = now  # the on/off cycle starts over when switched on
            self.enabled = value
            self._update_phase(now)
        elif key == "size":
            if isinstance(value, bool) or not isinstance(value, int):
                raise FloodError(f"size {value!r} is not an integer number of bytes")
            self.size = check_size(value)
            if self.size > len(self._buf):
                self._buf = payload_template(self.seed, MAX_SIZE_BYTES)
                self._view = memoryview(self._buf)
        else:
            raise FloodError(f"unknown key {key!r}; settable: rate_pps, on, size")
        return {key: value}

    def snapshot(self) -> dict:
        now = self.clock()
        on_time = self.on_time_s + (now - self._on_since if self.sending and self._on_since is not None else 0.0)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "dst": self.dst, "ports": self.ports, "seed": self.seed, "size_bytes": self.size,
            "port_order": self.chooser.order,
            "sent": self.sent, "sent_bytes": self.sent_bytes,
            "sent_per_port": {str(p): n for p, n in zip(self.ports, self.sent_per_port)},
            "offered_rate_pps": self.pacer.rate_pps if self.sending else 0.0,
            "rate_pps": self.pacer.rate_pps,
            "achieved_rate_pps": self.sent / on_time if on_time > 0 else 0.0,
            "on_time_s": on_time, "elapsed_s": now - self.started_s,
            "late_sends": self.pacer.late_sends, "skipped_slots": self.pacer.skipped_slots,
            "errors": dict(self.errors), "errors_total": sum(self.errors.values()),
            "on": self.sending, "enabled": self.enabled,
            "on_off": None if self.on_off is None else {"on_s": self.on_off.on_s, "off_s": self.on_off.off_s},
            "rusage": {"user_s": ru.ru_utime, "system_s": ru.ru_stime},
        }

    # -- I/O --------------------------------------------------------------------------------
    def send_burst(self, n: int) -> None:
        buf, view, size = self._buf, self._view, self.size
        sendto, addrs, nxt = self.sock.sendto, self._addrs, self.chooser.next
        for _ in range(n):
            i = nxt()
            struct.pack_into("!Q", buf, 4, self.sent)
            try:
                sendto(view[:size], addrs[i])
            except OSError as e:  # ENOBUFS, EAGAIN (BlockingIOError), ...: counted, never fatal
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                self.errors[name] = self.errors.get(name, 0) + 1
                continue
            self.sent += 1
            self.sent_bytes += size
            self.sent_per_port[i] += 1

    def run(self, sel: selectors.BaseSelector, should_stop: Callable[[], bool], deadline_s: float | None) -> None:
        """The one loop: serve control, sleep the coarse part of each wait, spin the rest, send."""
        clock = self.clock
        last_poll = clock()

        def serve(timeout: float) -> None:
            nonlocal last_poll
            for key, mask in sel.select(max(0.0, timeout)):
                key.data(mask)
            last_poll = clock()

        while not should_stop():
            now = clock()
            if deadline_s is not None and now >= deadline_s:
                break
            next_switch = self._update_phase(now)
            limit = deadline_s if deadline_s is not None else math.inf
            if next_switch is not None:
                limit = min(limit, next_switch)
            if not self.sending:
                serve(min(limit - now, 0.25))
                continue
            due = self.pacer.due_at()
            if due >= limit:  # the phase ends before the next send
                serve(min(limit - now, 0.25))
                continue
            gap = due - now
            if gap > SPIN_S:
                serve(min(gap - SPIN_S, 0.25))
                continue
            if now - last_poll > CONTROL_POLL_S:
                serve(0.0)
                if not self.sending:
                    continue
            while clock() < due:
                pass
            self.send_burst(self.pacer.take(clock()))
        if self.sending:
            self.on_time_s += clock() - (self._on_since or clock())
            self._on_since = None
            self.sending = False

    def close(self) -> None:
        self.sock.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed.flood", description=__doc__.split("\n")[0])
    p.add_argument("--dst", required=True, help="destination address (must lie in 198.18.0.0/15)")
    p.add_argument("--ports", required=True, help="destination UDP ports, e.g. 9001,9002 or 9001-9004")
    p.add_argument("--rate-pps", type=float, required=True, help="datagrams per second (all ports together)")
    p.add_argument("--size", type=int, default=64, help="UDP payload bytes per datagram, header included (default 64)")
    p.add_argument("--seed", type=int, default=1, help="seeds the payload bytes and a random port order")
    p.add_argument("--port-order", choices=("round-robin", "random"), default="round-robin")
    p.add_argument("--duration-s", type=float, help="stop after this many seconds (default: until told)")
    p.add_argument("--on-off", metavar="ON_S:OFF_S", help="alternate ON_S seconds sending with OFF_S silent")
    p.add_argument("--start-off", action="store_true", help="send nothing until control `set on true`")
    p.add_argument("--control", metavar="PATH", help="Unix socket for the control protocol")
    p.add_argument("--ready-fd", type=int, metavar="N", help="write one byte to fd N once ready")
    p.add_argument("--bind", metavar="ADDR", help="source address to bind")
    p.add_argument("--cpu", type=int, metavar="K", help="pin to CPU K")
    return p


def stop_on_signals() -> Callable[[], bool]:
    """SIGTERM and SIGINT set a flag instead of raising; returns the flag's reader (True once
    either came). For the senders' loops (this flood, testbed/tcp_noise.py), which stop at the
    end of their current tick and then print their summary."""
    state = {"stop": False}

    def on_signal(_sig, _frame):
        state["stop"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return lambda: state["stop"]


def main(argv: list[str] | None = None, *, parser: argparse.ArgumentParser | None = None,
         make_flood: Callable[..., "Flood"] | None = None) -> int:
    """``parser``/``make_flood(args, ports, on_off)``: a variant's own options and Flood subclass
    (testbed.bench.ringflood); the control loop and the summary are this one."""
    args = (parser or build_parser()).parse_args(argv)
    try:
        ports = parse_ports(args.ports)
        on_off = parse_on_off(args.on_off) if args.on_off else None
        if args.duration_s is not None and not args.duration_s > 0:
            raise FloodError(f"--duration-s {args.duration_s} must be > 0")
        if args.cpu is not None:
            try:
                os.sched_setaffinity(0, {args.cpu})
            except OSError as e:
                raise FloodError(f"--cpu {args.cpu}: cannot pin ({e.strerror}); this machine has CPUs {sorted(os.sched_getaffinity(0))}") from None
        if make_flood is not None:
            flood = make_flood(args, ports, on_off)
        else:
            flood = Flood(args.dst, ports, args.rate_pps, args.size, args.seed, order=args.port_order,
                          bind=args.bind, on_off=on_off, start_on=not args.start_off)
    except FloodError as e:
        print(f"flood: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"flood: cannot open the UDP socket ({e}); check --bind {args.bind!r} is an address of this host", file=sys.stderr)
        return 2

    stopped = stop_on_signals()

    def on_set(req: dict):
        try:
            return flood.set(req.get("key"), req.get("value"))
        except FloodError as e:
            raise BadRequest(str(e)) from None

    # select(2), not epoll: epoll_wait rounds every timeout UP to a whole millisecond (Python's
    # EpollSelector too), which would turn each 100-us sleep into 1 ms and make most sends late.
    sel = selectors.SelectSelector()
    control = None
    if args.control:
        control = ControlServer(args.control, {"snapshot": lambda req: flood.snapshot(), "set": on_set,
                                               "shutdown": lambda req: flood.snapshot()})
        control.attach(sel)
    start = time.monotonic()
    deadline = start + args.duration_s if args.duration_s else None
    signal_ready(args.ready_fd)
    try:
        flood.run(sel, lambda: stopped() or (control is not None and control.closing), deadline)
    finally:
        summary = flood.snapshot()
        print(json.dumps({"flood_summary": summary}, sort_keys=True), flush=True)
        if control is not None:
            control.close()
        flood.close()
        sel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
