"""An AoE device as a storage backend (``mm.page_io.StorageBackend``): Linux's ``aoeblk.c`` between
the block layer and ``AoeDev`` (drivers/block/aoe.py), on the agent's stack (aoenet.py).

Invariants owned here:
- ``activate()`` sends the config query and waits until IDENTIFY brought the device up; its size
  in whole pages is the answer. No answer within ``activate_timeout_s``: ``ActivateError``.
- ``set_memalloc(on)``: policy ``linux`` does nothing -- the AoE driver has no socket and no
  memalloc flag anywhere (kernel-mechanism.md §9), so ``memalloc`` stays False. Policy
  ``extended`` (beyond Linux) marks the device in ``AoeNet`` (a memalloc "socket", its target's
  reserve-backed frames pass the protocol filter, its frames use __GFP_MEMALLOC).
- ``write_page`` submits WRITE SECTORS EXT (+ FLUSH CACHE EXT when the target offers one) and
  returns None only once the core marked the request durable; EIO (the core's ``aoedev_downdev``
  after ``aoe_deadsecs``, an ATA error) is a ``WriteError``. ``read_page`` likewise.
- ``snapshot()`` is the core's sysfs/debugfs view (``AoeDev.snapshot``) plus the device's
  ``aoenet`` counters.
"""

from __future__ import annotations

from ...mm.page_io import PAGE_SIZE, ActivateError, WriteError
from ...tasks import TIMEOUT, WaitEvent
from .aoe import STATE_UP, AoeDev
from .aoenet import aoenet

POLICIES = ("linux", "extended")


class AoeBlk:
    kind = "aoe"

    def __init__(self, stack, sched, clock, shelf: int, slot: int, *, mtu: int = 1500,
                 policy: str = "linux", flush_writes: bool = True, aoe_deadsecs: int = 180,
                 aoe_maxout: int = 64, activate_timeout_s: float = 10.0, on_tx=None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be linux or extended, got {policy!r}")
        self.net = aoenet(stack, sched, on_tx)
        self.dev = AoeDev(stack.mac, shelf, slot, mtu=mtu, netif="agent", aoe_deadsecs=aoe_deadsecs,
                          aoe_maxout=aoe_maxout, flush_writes=flush_writes)
        self.net.add(self.dev)
        self.sched = sched
        self.clock = clock
        self.policy = policy
        self.activate_timeout_s = activate_timeout_s
        self._memalloc = False
        self.counters = self.dev.counters

    @property
    def memalloc(self) -> bool:
        return self._memalloc

    def describe(self) -> str:
        return f"e{self.dev.aoemajor}.{self.dev.aoeminor}"

    def set_memalloc(self, on: bool) -> None:
        if self.policy != "extended":
            return                                  # Linux: nothing to mark
        if on:
            self.net.mark(self.dev)
        else:
            self.net.unmark(self.dev)
        self._memalloc = bool(on)

    def activate(self):
        """Generator: discovery + IDENTIFY -> the device's size in whole pages."""
        d = self.dev
        now = self.clock()
        d.activate(now)
        self.net.run(d, now)
        until = now + self.activate_timeout_s
        while d.state != STATE_UP:
            got = yield WaitEvent((d.aoemajor, d.aoeminor, "state"), until=until,
                                  reason=f"AoE discovery of {self.describe()}")
            if got is TIMEOUT:
                raise ActivateError(f"AoE {self.describe()}: no target answered within "
                                    f"{self.activate_timeout_s} s (state {d.state}); is a target "
                                    f"serving shelf {d.aoemajor} slot {d.aoeminor} on this link?")
        pages = d.ident.sectors * 512 // PAGE_SIZE
        if pages <= 0:
            raise ActivateError(f"AoE {self.describe()} has no room ({d.ident.sectors} sectors)")
        return pages

    def _wait(self, r):
        while not r.done:
            yield WaitEvent(r, reason=f"AoE {r.op} on {self.describe()}")
        return r

    def write_page(self, offset: int, make_data):
        """Generator: None once the target holds the page (flushed if it offers a flush), or a WriteError."""
        now = self.clock()
        r = self.dev.write_page(offset // PAGE_SIZE, make_data(), now)
        self.net.run(self.dev, now)
        yield from self._wait(r)
        if r.status == 0 and r.durable:
            return None
        return WriteError("EIO", r.error or "not durable", offset, "WRITE")

    def read_page(self, offset: int):
        now = self.clock()
        r = self.dev.read_page(offset // PAGE_SIZE, now)
        self.net.run(self.dev, now)
        yield from self._wait(r)
        if r.status == 0:
            return bytes(r.data)
        return WriteError("EIO", r.error, offset, "READ")

    def snapshot(self) -> dict:
        return {**self.dev.snapshot(), "aoenet": dict(self.net.counters), "policy": self.policy,
                "memalloc": self._memalloc}

    def close(self) -> None:
        now = self.clock()
        self.set_memalloc(False)
        self.dev.close(now)
        self.net.run(self.dev, now)
        self.net.remove(self.dev, now)
