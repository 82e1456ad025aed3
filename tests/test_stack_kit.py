"""Shared kit for the stack tests (no tests here): pools with a leak check, stacks on a wire,
a scripted peer that injects raw frames, and a helper to drain the wire."""

import pytest

from client_agent.mm.gfp import GFP_ATOMIC
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net import Stack
from client_agent.phy.wire_pair import WirePair
from client_agent.wire import ethernet, ipv4, udp

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A, IP_B = "198.18.0.1", "198.18.0.2"
A, B = ipv4.ip_aton(IP_A), ipv4.ip_aton(IP_B)


class Kit:
    def __init__(self):
        self.allocs = []
        self.stacks = []
        self.held = []

    def alloc(self, nr_pages=1024, **kw):
        a = PageAllocator(nr_pages, **kw)
        self.allocs.append(a)
        return a

    def stack(self, alloc, dev, mac, ip, **kw):
        s = Stack(alloc, dev, mac, ip, 24, **kw)
        self.stacks.append(s)
        return s

    def pair(self, nr_pages=1024, mtu=1500, latency_s=0.0):
        w = WirePair(latency_s=latency_s, mtu=mtu)
        sa = self.stack(self.alloc(nr_pages), w.a, MAC_A, IP_A)
        sb = self.stack(self.alloc(nr_pages), w.b, MAC_B, IP_B)
        return w, sa, sb

    def exhaust(self, alloc, gfp=GFP_ATOMIC):
        """Take pages at ``gfp`` until its floor refuses (held until the test ends)."""
        while True:
            p = alloc.alloc(1, gfp, "anon")
            if p is None:
                return alloc.nr_free
            self.held.append((alloc, p))

    def release(self):
        for a, p in self.held:
            a.free(p)
        self.held = []

    def finish(self):
        self.release()
        for s in self.stacks:
            for sk in list(s.sockets):
                sk.close()
            s.run_timers(1e9)
            assert s.rx_in_flight() == 0
            assert sum(s.rx_fate.values()) == s.counters["rx_packets"], s.rx_fate
        for a in self.allocs:
            assert a.nr_free == a.nr_pages, a.owner_pages()
            assert a.memalloc_socks == 0


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.finish()


def run(now, *stacks, rounds=50):
    """Poll every stack until no frame is left on any device at ``now``."""
    for _ in range(rounds):
        moved = False
        for s in stacks:
            if s.dev.poll_at() is not None and s.dev.poll_at() <= now:
                moved = True
            s.poll(now)
        if not moved:
            return
    raise AssertionError("stacks did not go quiet")


def udp_frame(payload=b"x", sport=5000, dport=7000, src=A, dst=B, *, dst_mac=MAC_B,
              ident=1, flags=0, frag_off=0, ttl=64, seg=None, options=b""):
    if seg is None:
        seg = udp.emit(src, dst, sport, dport, payload)
    return ethernet.emit(dst_mac, MAC_A, ethernet.ETH_P_IP,
                         ipv4.emit_header(src, dst, 17, len(seg), ident=ident, flags=flags,
                                          frag_off=frag_off, ttl=ttl, options=options) + seg)
