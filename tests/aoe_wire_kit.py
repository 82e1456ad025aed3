"""Shared kit (no tests here): the AoE initiator core and nas-server's AoE target core joined by an
in-memory wire with a manual clock, one-way latency and a seeded, per-frame drop hook."""

from __future__ import annotations

import heapq

from client_agent.drivers.block.aoe import STATE_UP, AoeDev
from nas_server.aoe_target import AoeTarget
from nas_server.store import MemoryStore

MAC_TGT, MAC_INI = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
SHELF, SLOT = 1, 0


class AoeWire:
    """``dev`` (initiator) <-> ``tgt`` (target) over ``latency_s`` each way; ``drop(frame, direction)``
    returns True to lose a frame ("req" initiator->target, "rsp" target->initiator)."""

    def __init__(self, image_bytes: int = 1 << 20, *, mtu: int = 1500, service_time_s: float = 0.0005,
                 latency_s: float = 0.0001, write_cache: bool = False, bufcnt: int = 16, **dev_kw):
        self.store = MemoryStore()
        self.store.add_export("swap")
        self.img = self.store.create_image("swap", "img", image_bytes)
        self.tgt = AoeTarget(MAC_TGT, mtu, service_time_s=service_time_s, write_cache=write_cache, bufcnt=bufcnt)
        self.tgt.add_disk(SHELF, SLOT, self.img, "swap/img")
        self.dev = AoeDev(MAC_INI, SHELF, SLOT, mtu=mtu, netif="mem0", **dev_kw)
        self.latency_s = latency_s
        self.now = 0.0
        self.q: list = []          # (arrival, seq, direction, frame)
        self.seq = 0
        self.drop = lambda frame, direction: False
        self.target_up = True
        self.sent: list[tuple[float, str, bytes]] = []

    def _push(self, at: float, direction: str, frame: bytes) -> None:
        self.sent.append((at, direction, frame))
        if self.drop(frame, direction):
            return
        self.seq += 1
        heapq.heappush(self.q, (at + self.latency_s, self.seq, direction, frame))

    def step(self) -> bool:
        """Deliver the next event (a frame or a timer); False when nothing is left to do."""
        while self.dev.outbox:
            self._push(self.now, "req", self.dev.outbox.popleft())
        nt = self.dev.next_timer()
        if self.q and (nt is None or self.q[0][0] <= nt):
            at, _seq, direction, frame = heapq.heappop(self.q)
            self.now = max(self.now, at)
            if direction == "req":
                if self.target_up:
                    for send_at, reply in self.tgt.handle(frame, self.now):
                        self._push(send_at, "rsp", reply)
            else:
                self.dev.receive(frame, self.now)
            return True
        if nt is None:
            return False
        self.now = max(self.now, nt)
        self.dev.timer(self.now)
        return True

    def run_until(self, done, limit_s: float = 600.0) -> None:
        end = self.now + limit_s
        while not done() and self.now < end and self.step():
            pass
        assert done(), f"not done at t={self.now:.3f}: {self.dev.snapshot()}"

    def up(self) -> "AoeWire":
        self.dev.activate(self.now)
        self.run_until(lambda: self.dev.state == STATE_UP)
        return self

    def restart_target(self, now_lost: bool = True) -> None:
        """SIGKILL and restart: unflushed write-cache data and config strings are lost; the new
        process announces itself (vblade's aoead)."""
        self.store.crash(b"restart1")
        self.tgt.restart()
        for at, frame in self.tgt.advertise(self.now):
            self._push(at, "rsp", frame)
