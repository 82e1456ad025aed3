"""AoE on the agent's stack (Linux ``drivers/block/aoe/aoenet.c``): the EtherType handler, the
transmit path and the timers of every ``AoeDev`` on one stack.

Invariants owned here:
- Receive: ``aoenet_rcv`` is registered with ``stack.dev_add_pack(ETH_P_AOE)``; it is reached
  only by frames that got a receive buffer as every frame does (GFP_ATOMIC, reserve-backed
  pfmemalloc while memalloc sockets exist) and passed ``skb_pfmemalloc_protocol`` -- which, as
  in Linux, refuses a reserve-backed 0x88A2 frame (net/core/dev.py) unless policy ``extended``
  marked the device (``mark``: beyond Linux, the marked target's frames pass). Every frame is
  handed to the ``AoeDev`` of its shelf.slot and its buffer freed once: ``consume_skb`` if the
  core used it, ``kfree_skb(AOE_DROP)`` if the core dropped it (the core names why in its
  ``drops``; Linux frees these with dev_kfree_skb, a consume, so no drop monitor sees them).
  A frame for no device here is counted ``aoenet.no_device``.
- Transmit (``aoenet_xmit``): each frame on a device's ``outbox`` gets a buffer at GFP_ATOMIC
  (Linux's ``new_skb``/``skb_clone``: no __GFP_MEMALLOC anywhere in the driver; a PF_MEMALLOC
  caller -- the swap writeback task, a pfmemalloc receive -- gets the reserve from the allocator
  as any caller would) and goes out through ``stack.dev_queue_xmit``. A marked device
  (policy ``extended``) adds __GFP_MEMALLOC, as ``sk_gfp_mask`` does for a SOCK_MEMALLOC socket.
  A frame with no buffer is not sent (``tx_nobuf``, NOMEM); the core still has it outstanding,
  so ``rexmit_timer`` resends it.
- Timers: one ``Timer`` per device on ``stack.timers``, re-armed to ``AoeDev.next_timer()``
  after every event; completions wake the tasks waiting on their ``AoeRequest``.
"""

from __future__ import annotations

from protocols.aoe import ETH_P_AOE

from ...mm.gfp import GFP_ATOMIC, Gfp
from ...net.core.skbuff import SkBuff
from ...net.core.timer import Timer

AOE_TX_OWNER = "aoe-tx"
# offsets in the frame (Ethernet 14 + AoE header, r11 2.1)
_OFF_FLAGS, _OFF_MAJOR, _OFF_MINOR, _OFF_TAG = 14, 16, 18, 20


class AoeNet:
    """The AoE devices of one stack (``aoenet_init``); ``aoenet(stack)`` returns the one instance."""

    def __init__(self, stack, sched=None, on_tx=None) -> None:
        self.stack = stack
        self.sched = sched
        self.on_tx = on_tx or (lambda: None)
        self.devs: dict[tuple[int, int], object] = {}
        self.timers: dict[tuple[int, int], Timer] = {}
        self.marked: set[tuple[int, int]] = set()
        self.counters = {"rx": 0, "no_device": 0, "runt": 0, "tx": 0, "tx_nobuf": 0}
        stack.dev_add_pack(ETH_P_AOE, self.aoenet_rcv)
        stack.ptype_memalloc[ETH_P_AOE] = self.pfmemalloc_allowed

    # -- devices ---------------------------------------------------------------------------------
    def add(self, dev) -> None:
        key = (dev.aoemajor, dev.aoeminor)
        if key in self.devs:
            raise ValueError(f"AoE device e{key[0]}.{key[1]} already exists on this host")
        self.devs[key] = dev
        self.timers[key] = Timer(lambda now, d=dev: self._timer(d, now), f"aoe rexmit_timer e{key[0]}.{key[1]}")

    def remove(self, dev, now: float) -> None:
        key = (dev.aoemajor, dev.aoeminor)
        self.unmark(dev)
        t = self.timers.pop(key, None)
        if t is not None:
            self.stack.timers.del_timer(t)
        self.devs.pop(key, None)

    def mark(self, dev) -> None:
        """Policy ``extended`` (beyond Linux): the device counts as a memalloc socket
        (sk_memalloc_socks), its target's reserve-backed frames pass the protocol filter, its
        frames are built with __GFP_MEMALLOC."""
        key = (dev.aoemajor, dev.aoeminor)
        if key not in self.marked:
            self.marked.add(key)
            self.stack.alloc.sk_memalloc_inc()

    def unmark(self, dev) -> None:
        key = (dev.aoemajor, dev.aoeminor)
        if key in self.marked:
            self.marked.discard(key)
            self.stack.alloc.sk_memalloc_dec()

    def pfmemalloc_allowed(self, frame) -> bool:
        """May this reserve-backed 0x88A2 frame pass ``skb_pfmemalloc_protocol`` (policy
        ``extended`` only): a response from a marked device's target (before discovery, any
        response for a marked shelf.slot)."""
        if not self.marked or len(frame) < 24:
            return False
        key = (frame[_OFF_MAJOR] << 8 | frame[_OFF_MAJOR + 1], frame[_OFF_MINOR])
        if key not in self.marked:
            return False
        t = self.devs[key].target
        return t is None or bytes(frame[6:12]) == t.addr

    # -- receive ---------------------------------------------------------------------------------
    def aoenet_rcv(self, skb, payload, pkt_type, now: float) -> None:
        st = self.stack
        frame = skb.data
        self.counters["rx"] += 1
        if len(frame) < 24:
            self.counters["runt"] += 1
            st.kfree_skb(skb, "AOE_DROP")
            return
        key = (frame[_OFF_MAJOR] << 8 | frame[_OFF_MAJOR + 1], frame[_OFF_MINOR])
        dev = self.devs.get(key)
        if dev is None:
            self.counters["no_device"] += 1
            st.kfree_skb(skb, "AOE_DROP")
            return
        dropped = sum(dev.drops.values())
        dev.receive(frame, now)
        if sum(dev.drops.values()) != dropped:
            st.kfree_skb(skb, "AOE_DROP")
        else:
            if st.rx_trace_hooks:
                st.rx_trace(frame, "aoenet_rcv")
            st.consume_skb(skb, "aoenet_rcv")
        self.run(dev, now)

    # -- transmit, timers, completions ----------------------------------------------------------
    def run(self, dev, now: float) -> None:
        """After any event on ``dev``: send its outbox, wake finished requests, re-arm its timer."""
        self.aoenet_xmit(dev, now)
        sched = self.sched
        while dev.completed:
            r = dev.completed.popleft()
            if sched is not None:
                sched.wake(r, r)
        if sched is not None:
            sched.wake((dev.aoemajor, dev.aoeminor, "state"), dev.state)
        key = (dev.aoemajor, dev.aoeminor)
        t = self.timers.get(key)
        if t is None:
            return
        nt = dev.next_timer()
        if nt is None:
            self.stack.timers.del_timer(t)
        elif t.expires != nt:
            self.stack.timers.mod_timer(t, nt)

    def _timer(self, dev, now: float) -> None:
        dev.timer(now)
        self.run(dev, now)

    def aoenet_xmit(self, dev, now: float) -> None:
        st = self.stack
        alloc = st.alloc
        gfp = GFP_ATOMIC | Gfp.MEMALLOC if (dev.aoemajor, dev.aoeminor) in self.marked else GFP_ATOMIC
        sent = False
        while dev.outbox:
            frame = dev.outbox.popleft()
            pages = alloc.alloc((len(frame) + 4095) >> 12 or 1, gfp, AOE_TX_OWNER)
            if pages is None:
                self.counters["tx_nobuf"] += 1
                st.counters["tx_nobuf"] += 1
                st.drop_noskb("NOMEM", False)
                continue
            self.counters["tx"] += 1
            st.dev_queue_xmit(SkBuff(alloc, frame, pages, False), now)
            sent = True
        if sent:
            self.on_tx()


def aoenet(stack, sched=None, on_tx=None) -> AoeNet:
    """The stack's ``AoeNet``, created (and registered for 0x88A2) on first use."""
    h = stack.ptype_base.get(ETH_P_AOE)
    if h is not None and isinstance(getattr(h, "__self__", None), AoeNet):
        return h.__self__
    return AoeNet(stack, sched, on_tx)


class AoeRspTrace:
    """What became of every AoE response from the stack's point of view, by tag (an
    ``rx_trace_hooks`` observer, as ``net/sunrpc/trace.py`` for RPC replies): ``(tag, fate)``
    with fate a drop reason (``NOMEM``, ``PFMEMALLOC`` at the protocol filter, ``AOE_DROP``) or
    ``aoenet_rcv``. It only observes."""

    def __init__(self, ring: int = 32768) -> None:
        from collections import deque
        self.fates = deque(maxlen=ring)

    def __call__(self, frame, fate: str) -> None:
        if len(frame) < 24 or frame[12] != 0x88 or frame[13] != 0xA2 or not frame[_OFF_FLAGS] & 0x08:
            return
        self.fates.append((int.from_bytes(frame[_OFF_TAG:_OFF_TAG + 4], "big"), fate))


def aoe_rsp_trace(stack) -> AoeRspTrace:
    for hook in stack.rx_trace_hooks:
        if isinstance(hook, AoeRspTrace):
            return hook
    t = AoeRspTrace()
    stack.rx_trace_hooks.append(t)
    return t
