"""Two network namespaces joined by one veth pair: the NAS's own interop and bench setup.

Invariant owned here: everything ``NetPair`` creates (two namespaces, one veth pair, the processes
started through ``popen``) is removed by ``close()`` -- also when setup fails half-way -- and its
addresses are in 198.18.0.0/15 (RFC 2544 benchmarking range), so test traffic never leaves it.
Namespace names carry the pid, so parallel runs and leftovers of a killed run never collide.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess

from pyroute2 import IPRoute

from netns_setup import nsutil

_seq = itertools.count(1)


class NetPair:
    """``server`` namespace (addr ``server_ip``) and ``client`` namespace (``client_ip``)."""

    def __init__(self, tag: str = "nas", subnet_octet: int = 77, mtu: int = 1500):
        n = next(_seq)
        base = f"{tag}{os.getpid() % 100000}x{n}"
        self.server_ns, self.client_ns = base + "s", base + "c"
        self.server_if, self.client_if = base[:11] + "S", base[:11] + "C"
        self.server_ip = f"198.18.{subnet_octet}.1"
        self.client_ip = f"198.18.{subnet_octet}.2"
        self.procs: list[subprocess.Popen] = []
        self._made_ns: list[str] = []
        try:
            for ns in (self.server_ns, self.client_ns):
                nsutil.create_netns(ns)
                self._made_ns.append(ns)
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.server_if, kind="veth", peer=self.client_if)
                for ifname, ns in ((self.server_if, self.server_ns), (self.client_if, self.client_ns)):
                    idx = ipr.link_lookup(ifname=ifname)[0]
                    ipr.link("set", index=idx, net_ns_fd=ns)
            for ns, ifname, ip in ((self.server_ns, self.server_if, self.server_ip),
                                   (self.client_ns, self.client_if, self.client_ip)):
                with nsutil.entered(ns), IPRoute() as ipr:
                    lo = ipr.link_lookup(ifname="lo")[0]
                    ipr.link("set", index=lo, state="up")
                    idx = ipr.link_lookup(ifname=ifname)[0]
                    ipr.link("set", index=idx, mtu=mtu)
                    ipr.addr("add", index=idx, address=ip, prefixlen=24)
                    ipr.link("set", index=idx, state="up")
        except BaseException:
            self.close()
            raise

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``ns`` (via ``ip netns exec``); ``close`` stops it."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(p)
        return p

    def run(self, ns: str, argv: list[str], timeout_s: float = 60.0, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout_s, capture_output=True, **kw)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        for ns in self._made_ns:  # removing a namespace removes the veth end inside it
            try:
                nsutil.remove_netns(ns)
            except OSError:
                pass
        self._made_ns.clear()

    def __enter__(self) -> "NetPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
