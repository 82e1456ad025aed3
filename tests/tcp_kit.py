"""Shared kit for the TCP tests (no tests here), in packetdrill's spirit.

``Script``: the agent's stack on one end of an in-memory wire, the test on the other end with a
manual clock -- it injects segments it builds (``inject``), reads what the agent sent
(``expect``: one parsed segment, asserting flags/seq/ack), and advances time (``at``), which
runs the stack's timers exactly at their deadlines.
``Duo``: two agent stacks talking TCP over a wire (optionally through seeded faults).
Both check at the end that every page went back to its pool and every frame has one fate.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from client_agent.mm.page_alloc import PageAllocator
from client_agent.net import Stack
from client_agent.net.ipv4.tcp import TIME_WAIT
from client_agent.phy.wire_pair import WirePair
from client_agent.wire import ethernet, ipv4
from client_agent.wire import tcp as wtcp

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A, IP_B = "198.18.0.1", "198.18.0.2"
A, B = ipv4.ip_aton(IP_A), ipv4.ip_aton(IP_B)
S, F, R, P, DOT = wtcp.SYN, wtcp.FIN, wtcp.RST, wtcp.PSH, wtcp.ACK


@dataclass
class Out:
    """A segment the agent sent, as the script reads it."""
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    win: int
    opts: wtcp.TcpOptions
    data: bytes
    raw: bytes
    t: float = 0.0

    def __repr__(self) -> str:
        return (f"<{wtcp.flags_str(self.flags)} seq={self.seq} ack={self.ack} win={self.win} "
                f"len={len(self.data)}>")


def parse_frame(frame: bytes) -> Out | None:
    if frame[12:14] != b"\x08\x00":
        return None
    ip = ipv4.Ipv4Packet.new_checked(frame[14:])
    if ip.proto != 6:
        return None
    seg = bytes(ip.payload)
    th = wtcp.TcpPacket.new_checked(seg)
    assert th.verify_checksum(ip.src, ip.dst), "agent sent a bad TCP checksum"
    return Out(th.sport, th.dport, th.seq, th.ack_seq, th.flags, th.window, th.options(),
               bytes(th.payload), seg)


def frame(seg: bytes, src=A, dst=B, dst_mac=MAC_B) -> bytes:
    return ethernet.emit(dst_mac, MAC_A, ethernet.ETH_P_IP,
                         ipv4.emit_header(src, dst, 6, len(seg)) + seg)


class Script:
    """The test is the peer at 198.18.0.1 (port ``pport``); the agent is 198.18.0.2."""

    def __init__(self, nr_pages: int = 1024, pport: int = 40000, seed: int = 1, **alloc_kw):
        self.wire = WirePair()
        self.alloc = PageAllocator(nr_pages, **alloc_kw)
        self.stack = Stack(self.alloc, self.wire.b, MAC_B, IP_B, 24, seed=seed)
        self.stack.neigh.add_permanent(A, MAC_A)
        self.tcp = self.stack.tcp
        self.now = 0.0
        self.pport = pport
        self.aport = 0
        self.pending: list[Out] = []
        self.held = []

    # -- clock
    def at(self, t: float) -> None:
        """Advance to ``t``, running every deadline on the way, at its own time."""
        assert t >= self.now
        while True:
            d = self.stack.next_deadline()
            if d is None or d > t:
                break
            self.now = max(self.now, d)
            self.stack.poll(self.now)
        self.now = t
        self.stack.poll(t)

    # -- wire
    def seg(self, flags: int, seq: int, ack: int = 0, win: int = 65535, data=b"",
            opts: bytes = b"", sport: int | None = None, dport: int | None = None) -> bytes:
        return wtcp.emit(A, B, self.pport if sport is None else sport,
                         self.aport if dport is None else dport, seq, ack, flags, win, opts,
                         data)

    def inject(self, flags: int, seq: int, ack: int = 0, win: int = 65535, data=b"",
               opts: bytes = b"", **kw) -> None:
        self.inject_raw(self.seg(flags, seq, ack, win, data, opts, **kw))

    def inject_raw(self, seg: bytes) -> None:
        self.wire.a.transmit(frame(seg), self.now)
        self.stack.poll(self.now)

    def sent(self) -> list[Out]:
        """Everything the agent sent since the last call (ARP and non-TCP ignored)."""
        out = self.pending
        self.pending = []
        q = self.wire.a._rxq                     # (time sent, frame): latency 0
        while q:
            t, f = q.popleft()
            o = parse_frame(f)
            if o is not None:
                o.t = t
                out.append(o)
        return out

    def expect(self, flags: int, seq: int | None = None, ack: int | None = None,
               data: bytes | None = None) -> Out:
        got = self.sent()
        assert got, f"expected {wtcp.flags_str(flags)} at t={self.now}, the agent sent nothing"
        o = got.pop(0)
        self.pending = got
        assert o.flags == flags, f"expected {wtcp.flags_str(flags)}, got {o}"
        if seq is not None:
            assert o.seq == seq & 0xFFFFFFFF, f"expected seq {seq}, got {o}"
        if ack is not None:
            assert o.ack == ack & 0xFFFFFFFF, f"expected ack {ack}, got {o}"
        if data is not None:
            assert o.data == data, f"expected {len(data)} bytes, got {o}"
        return o

    def time_wait(self):
        """The TIME_WAIT record standing for the connection (aport, IP_A, pport), or None."""
        rec = self.tcp.ehash.get((self.aport, A, self.pport))
        return rec if rec is not None and rec.state == TIME_WAIT else None

    def expect_nothing(self) -> None:
        got = self.sent()
        assert not got, f"expected silence at t={self.now}, got {got}"

    # -- common openings
    def passive_open(self, port: int = 2049):
        """Agent listens; the script connects (MSS 1460, SACK, TS, wscale 7). Returns
        (child socket, agent ISN)."""
        ln = self.tcp.socket()
        ln.bind(("", port))
        ln.listen(8)
        self.aport = port
        self.inject(S, 1000, 0, 65535, opts=wtcp.opt_syn(1460, 7, True, (100, 0)))
        sa = self.expect(S | DOT, ack=1001)
        self.inject(DOT, 1001, sa.seq + 1, 1024, opts=wtcp.opt_established((101, sa.opts.tsval),
                                                                            None))
        child = ln.accept()
        assert child is not None and child.state == 1
        self.listener = ln
        return child, sa.seq

    def active_open(self, port: int | None = None, *, sack=True, ts=True, wscale=7,
                    mss=1460, win=65535, rcvbuf=None):
        """Agent connects to the script. Returns (socket, agent ISN, SYN seen)."""
        sk = self.tcp.socket()
        if rcvbuf is not None:
            sk.rcvbuf = rcvbuf
        assert sk.connect((IP_A, self.pport if port is None else port), self.now) == 0
        syn = self.expect(S)
        self.aport = syn.sport
        opts = wtcp.opt_syn(mss, wscale, sack, (500, syn.opts.tsval) if ts else None)
        self.inject(S | DOT, 5000, syn.seq + 1, win, opts=opts)
        self.expect(DOT, seq=syn.seq + 1, ack=5001)
        assert sk.state == 1
        return sk, syn.seq, syn

    def ts(self, tsval: int, o: Out | None = None) -> bytes:
        return wtcp.opt_established((tsval, o.opts.tsval if o else 0), None)

    def exhaust(self, gfp) -> int:
        while True:
            p = self.alloc.alloc(1, gfp, "anon")
            if p is None:
                return self.alloc.nr_free
            self.held.append(p)

    def release(self) -> None:
        for p in self.held:
            self.alloc.free(p)
        self.held = []

    def finish(self) -> None:
        """Close everything, run every timer out, check pages and frame fates."""
        self.release()
        for sk in list(self.tcp.sockets):
            sk.check_accounting()
            sk.abort(self.now)
        self.at(self.now + 1000.0)
        st = self.stack
        assert st.rx_in_flight() == 0
        assert sum(st.rx_fate.values()) == st.counters["rx_packets"], st.rx_fate
        assert self.alloc.nr_free == self.alloc.nr_pages, self.alloc.owner_pages()
        assert self.alloc.memalloc_socks == 0
        assert self.tcp.memory_allocated == 0


class Duo:
    """Two agent stacks (a = 198.18.0.1, b = 198.18.0.2) over a wire; ``dev_a``/``dev_b`` may
    wrap the ends (FaultInjector)."""

    def __init__(self, nr_pages: int = 4096, latency_s: float = 0.001, wrap=None, seed: int = 1):
        self.wire = WirePair(latency_s=latency_s)
        ea, eb = self.wire.a, self.wire.b
        if wrap is not None:
            ea, eb = wrap(ea, 0), wrap(eb, 1)
        self.alloc_a = PageAllocator(nr_pages)
        self.alloc_b = PageAllocator(nr_pages)
        self.a = Stack(self.alloc_a, ea, MAC_A, IP_A, 24, seed=seed)
        self.b = Stack(self.alloc_b, eb, MAC_B, IP_B, 24, seed=seed + 1)
        self.a.neigh.add_permanent(B, MAC_B)
        self.b.neigh.add_permanent(A, MAC_A)
        self.now = 0.0

    def step(self, each=None) -> bool:
        """Run both stacks at ``now`` (``each(now)`` -- the applications -- after every poll,
        as a woken reader would run), then jump to the next deadline. False when idle."""
        for _ in range(100):
            da = self.a.poll(self.now)
            if each is not None:
                each(self.now)
            db = self.b.poll(self.now)
            if each is not None:
                each(self.now)
            if da != self.now and db != self.now:
                break
        ds = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
        if not ds:
            return False
        self.now = max(self.now, min(ds))
        return True

    def run_until(self, cond, limit_s: float = 600.0, each=None) -> None:
        end = self.now + limit_s
        while not cond():
            if each is not None:
                each(self.now)
            if not self.step(each) or self.now > end:
                if cond():
                    return
                raise AssertionError(f"condition not reached by t={self.now}")

    def finish(self) -> None:
        for st, al in ((self.a, self.alloc_a), (self.b, self.alloc_b)):
            for sk in list(st.tcp.sockets):
                sk.check_accounting()
                sk.abort(self.now)
        t = self.now + 1000.0
        while self.step() and self.now < t:
            pass
        for st, al in ((self.a, self.alloc_a), (self.b, self.alloc_b)):
            st.run_timers(1e9)
            assert st.rx_in_flight() == 0
            assert sum(st.rx_fate.values()) == st.counters["rx_packets"], st.rx_fate
            assert al.nr_free == al.nr_pages, al.owner_pages()
            assert st.tcp.memory_allocated == 0


@pytest.fixture
def sc():
    """A Script (default pool) for one test, finished (every page back) after it."""
    s = Script()
    yield s
    s.finish()
