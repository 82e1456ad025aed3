"""TCP noise: kernel TCP senders streaming into the client's stream sinks (the agent's op ``sink``
with kind ``tcp``), one connection per port, each paced at ``--rate-kbps`` (a token bucket refilled
every ``--tick-ms``). When a sink's reader blocks, the receiver's window closes, the kernel's send
buffer fills and send() returns EAGAIN: the sender then only keeps the bucket from growing past one
chunk, as a paced application would. Payload bytes are seeded (random.Random(seed)).

Run in the ``noise`` host by testbed/rig.py (``Rig.start_tcp_noise``); stopped by pid (SIGTERM),
it prints one JSON line ``{"tcp_noise_summary": {...}}``: per stream the bytes handed to the kernel
(``sent``), the EAGAIN count (``eagain``: window or sndbuf full), and the kernel's own figures from
TCP_INFO (``snd_wnd`` 0 is the receiver's zero window; ``probes`` its zero-window probes).

Usage: python -m testbed.tcp_noise --dst 198.18.0.2 --ports 9201-9204 --rate-kbps 2000 --seed 1
"""

from __future__ import annotations

import argparse
import errno
import json
import random
import socket
import struct
import sys
import time

from netns_setup.control import signal_ready
from testbed.flood import FloodError, parse_ports, stop_on_signals

CONNECT_TIMEOUT_S = 10.0
# struct tcp_info (include/uapi/linux/tcp.h): byte offsets of the fields summarised
_TI_PROBES, _TI_BACKOFF = 3, 4     # after tcpi_state, tcpi_ca_state, tcpi_retransmits
_TI_SND_WND = 228        # tcpi_snd_wnd (5.4+: after tcpi_rcv_ooopack)


def tcp_info(sk: socket.socket) -> dict:
    """The fields of getsockopt(TCP_INFO) the summary shows; {} if the kernel's struct is shorter."""
    raw = sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    out = {"probes": raw[_TI_PROBES], "backoff": raw[_TI_BACKOFF]}
    if len(raw) >= _TI_SND_WND + 4:
        out["snd_wnd"] = struct.unpack_from("=I", raw, _TI_SND_WND)[0]
    return out


def connect_all(dst: str, ports: list[int], bind: str | None) -> list[socket.socket]:
    """One non-blocking connection per port, retried until CONNECT_TIMEOUT_S (the agent's
    listeners may come up a moment after us). FloodError with the port on failure."""
    socks = []
    for port in ports:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if bind:
                sk.bind((bind, 0))
            sk.settimeout(1.0)
            try:
                sk.connect((dst, port))
                break
            except OSError as e:
                sk.close()
                if time.monotonic() > deadline:
                    for s in socks:
                        s.close()
                    raise FloodError(f"connect to {dst}:{port} failed ({e}); is a stream sink "
                                     f"listening there (agent op sink, kind tcp)?") from None
                time.sleep(0.1)
        sk.setblocking(False)
        socks.append(sk)
    return socks


def run(socks: list[socket.socket], rate_kbps: float, seed: int, tick_s: float, stop) -> list[dict]:
    """Send until ``stop()``; per-stream counters."""
    rng = random.Random(f"tcp_noise:{seed}")
    per_tick = max(1, int(rate_kbps * 1000 * tick_s))
    payload = rng.randbytes(per_tick)
    stats = [{"port": sk.getpeername()[1], "sent": 0, "eagain": 0, "error": None} for sk in socks]
    credit = [0] * len(socks)
    nxt = time.monotonic()
    while not stop():
        for i, sk in enumerate(socks):
            st = stats[i]
            if st["error"]:
                continue
            credit[i] = min(credit[i] + per_tick, per_tick)   # paced: no burst after a stall
            try:
                n = sk.send(payload[:credit[i]])
                st["sent"] += n
                credit[i] -= n
            except BlockingIOError:
                st["eagain"] += 1
            except OSError as e:
                st["error"] = errno.errorcode.get(e.errno, str(e))
        nxt += tick_s
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
    for st, sk in zip(stats, socks):
        try:
            st.update(tcp_info(sk))
        except OSError:
            pass
    return stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed.tcp_noise", description=__doc__.splitlines()[0])
    p.add_argument("--dst", required=True, help="the client's address")
    p.add_argument("--ports", required=True, help="e.g. 9201-9204 or 9201,9203: one connection each")
    p.add_argument("--rate-kbps", type=float, required=True, help="kB/s per stream (1 kB = 1000 bytes)")
    p.add_argument("--seed", type=int, default=1, help="seeds the payload bytes")
    p.add_argument("--tick-ms", type=float, default=5.0, help="pacing period (default 5 ms)")
    p.add_argument("--bind", metavar="ADDR", help="source address to bind")
    p.add_argument("--ready-fd", type=int, metavar="N", help="write one byte to fd N once connected")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.rate_kbps > 0 or not args.tick_ms > 0:
            raise FloodError(f"--rate-kbps {args.rate_kbps} and --tick-ms {args.tick_ms} must be > 0")
        ports = parse_ports(args.ports)
        socks = connect_all(args.dst, ports, args.bind)
    except FloodError as e:
        print(f"tcp_noise: {e}", file=sys.stderr)
        return 2
    stopped = stop_on_signals()
    signal_ready(args.ready_fd)
    try:
        stats = run(socks, args.rate_kbps, args.seed, args.tick_ms / 1000.0, stopped)
        print(json.dumps({"tcp_noise_summary": {"rate_kbps": args.rate_kbps, "streams": stats}},
                         sort_keys=True), flush=True)
    finally:
        for sk in socks:
            sk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
