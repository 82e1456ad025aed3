"""AoE in the agent (issue 17): the AoE initiator behind the stack's EtherType table and the storage
interface; Linux's protocol-filter drop of reserve-backed 0x88A2 frames; policy extended beyond
Linux; 100,000 malformed frames through the stack."""

import hashlib
import time
from collections import deque

import pytest

from aoe_wire_kit import MAC_INI, MAC_TGT, SHELF, SLOT
from client_agent.bugs import reintroduced
from client_agent.drivers.block.aoe import STATE_UP, AoeDev
from client_agent.drivers.block.aoenet import aoenet
from client_agent.mm.gfp import GFP_ATOMIC
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.tasks import Scheduler
from nas_server.aoe_target import AoeTarget
from nas_server.store import MemoryStore
from protocols import aoe
from test_aoe_fuzz import N_FRAMES, Rng, initiator_case
from testbed import scenario as S
from testbed.sim import run_sim


# ------------------------------------------------------------------------------ the scenarios (sim)
@pytest.fixture(scope="module")
def sims():
    out = {}
    for name in ("aoe-linux", "aoe-extended"):
        sc = S.load(name)
        checks, _ = S.preflight(sc)
        assert S.failing(sc, checks) == [], name
        out[name] = run_sim(sc.to_dict(), 1)
    return out


def _clean(r):
    assert r["leaked_pages"] == 0, r["leaked_owners"]
    assert r["leaked_tasks"] == []
    assert r["memalloc_socks_after_swapoff"] == 0
    assert r["verify_failures"] == 0 and r["pages_verified"] == r["acked_pages"]


def test_aoe_linux_deadlocks_its_responses_dropped_at_the_protocol_filter(sims):
    r = sims["aoe-linux"]
    assert r["outcome"] == "deadlock"
    _clean(r)
    assert r["memalloc_socks"] == 1                      # the NFS swap beside it: memalloc sockets exist
    assert r["nfs_swap"]["nr_slots"] == 64
    a = r["aoe"]
    assert a["state"] == "up" and not a["memalloc"] and a["drops"] == {}
    # every reserve-backed AoE response died at skb_pfmemalloc_protocol, named PFMEMALLOC, seen by tag
    assert r["rx_pfmemalloc_proto_drop"] > 0
    assert r["aoe_rsp_fates"]["PFMEMALLOC"] == r["rx_pfmemalloc_proto_drop"]
    # rexmit_timer's retransmissions at plain GFP_ATOMIC found no buffer below the atomic floor
    assert a["aoenet"]["tx_nobuf"] > 0 and a["counters"]["retransmit"] > 0
    assert r["acked_pages"] == 0 and r["nr_writeback"] > 0


def test_aoe_extended_recovers_beyond_linux_every_page_verified(sims):
    r = sims["aoe-extended"]
    assert r["outcome"] == "recovered" and r["beyond_linux"]
    _clean(r)
    assert r["acked_pages"] > 3000
    assert r["memalloc_socks"] == 2                      # the NFS swap + the marked AoE device
    assert r["rx_pfmemalloc_proto_drop"] == 0 and "PFMEMALLOC" not in r["aoe_rsp_fates"]
    assert r["aoe"]["memalloc"] and r["aoe"]["aoenet"]["tx_nobuf"] == 0
    assert r["rx_pfmemalloc"] > 0                        # the responses did come from the reserve
    assert r["drop_reasons"]["PFMEMALLOC"] == r["PFMemallocDrop"]  # the flood's, at sk_filter only


# ------------------------------------------------------------------------------ the stack, by hand
class FakeDev:
    """A NIC: what the stack transmits lands on ``sent``; nothing is received by polling."""

    def __init__(self):
        self.sent = deque()

    def transmit(self, frame, now):
        self.sent.append(bytes(frame))
        return True

    def receive(self, now, budget):
        return []

    def poll_at(self):
        return None


class Rig:
    """The agent's stack with one AoE device, and nas-server's AoE target core answering it."""

    def __init__(self, pool_pages=4096):
        self.alloc = PageAllocator(pool_pages, 1024)
        self.sched = Scheduler(self.alloc)
        self.nic = FakeDev()
        self.stack = Stack(self.alloc, self.nic, MAC_INI, "198.18.0.2", 24, self.sched)
        self.store = MemoryStore()
        self.store.add_export("swap")
        self.img = self.store.create_image("swap", "aoe.img", 1 << 20)
        self.img.data[:] = __import__("random").Random(2).randbytes(len(self.img.data))
        self.tgt = AoeTarget(MAC_TGT, 1500)
        self.tgt.add_disk(SHELF, SLOT, self.img, "swap/aoe.img")
        self.net = aoenet(self.stack, self.sched)
        self.dev = AoeDev(MAC_INI, SHELF, SLOT, mtu=1500, aoe_deadsecs=0)
        self.net.add(self.dev)
        self.now = 0.0
        self.target_up = True

    def pump(self, until, limit_s=30.0):
        while not until():
            while self.nic.sent:
                f = self.nic.sent.popleft()
                if self.target_up:
                    for _at, rsp in self.tgt.handle(f, self.now):
                        self.stack.rx_frame(rsp, self.now)
            if until():
                return
            nd = self.stack.next_deadline()
            assert nd is not None and nd - self.now < limit_s, "nothing left to wait for"
            self.now = max(self.now, nd)
            self.stack.run_timers(self.now)

    def up(self):
        self.dev.activate(self.now)
        self.net.run(self.dev, self.now)
        self.pump(lambda: self.dev.state == STATE_UP)
        return self


def test_frames_reach_the_driver_through_the_ethertype_table_and_buffers_return():
    r = Rig().up()
    free0 = r.alloc.nr_free
    w = r.dev.write_page(3, b"\x5a" * 4096, r.now)
    r.net.run(r.dev, r.now)
    r.pump(lambda: w.done)
    assert w.status == 0 and w.durable and bytes(r.img.data[3 * 4096:4 * 4096]) == b"\x5a" * 4096
    assert r.stack.rx_fate["aoenet_rcv"] == r.net.counters["rx"]
    assert r.alloc.nr_free == free0 and r.alloc.owner_pages().get("aoe-tx", 0) == 0


@pytest.mark.parametrize("bug", [False, True])
def test_reserve_backed_aoe_frame_dropped_before_the_handler_and_taps(bug):
    """skb_pfmemalloc_protocol: with a memalloc socket and free pages at the atomic floor, a 0x88A2
    response gets a reserve page and is dropped PFMEMALLOC (UNHANDLED_PROTO before 6.17) before
    aoenet_rcv and before any tap; a marked device (policy extended) takes it."""
    r = Rig().up()
    seen = []
    r.stack.taps.append(lambda f, now: seen.append(f))
    req = r.dev.read_page(1, r.now)
    r.net.run(r.dev, r.now)
    frames = [rsp for f in list(r.nic.sent) for _at, rsp in r.tgt.handle(f, r.now)]
    r.nic.sent.clear()
    r.alloc.sk_memalloc_inc()                              # an NFS swap socket elsewhere on the host
    hog = r.alloc.alloc(r.alloc.nr_free - r.alloc.watermark_floor(GFP_ATOMIC), GFP_ATOMIC, "hog")
    rx0 = r.net.counters["rx"]
    with (reintroduced("pfmemalloc_drop_unnamed") if bug else __import__("contextlib").nullcontext()):
        r.stack.rx_frame(frames[0], r.now)
    assert r.stack.counters["rx_pfmemalloc_proto_drop"] == 1 and r.net.counters["rx"] == rx0 and not seen
    assert r.stack.drop_reasons["UNHANDLED_PROTO" if bug else "PFMEMALLOC"] == 1
    r.net.mark(r.dev)                                      # beyond Linux
    for f in frames:
        r.stack.rx_frame(f, r.now)
    assert r.net.counters["rx"] == rx0 + len(frames) and req.done and req.status == 0
    assert bytes(req.data) == bytes(r.img.data[4096:8192])
    assert r.stack.counters["rx_pfmemalloc"] == 1 + len(frames)
    r.net.unmark(r.dev)
    r.alloc.sk_memalloc_dec()
    r.alloc.free(hog)
    assert r.alloc.memalloc_socks == 0


def test_100k_malformed_aoe_frames_through_the_stack():
    """Seeded malformed responses (tests/test_aoe_fuzz.py's cases) handed to the stack's receive
    path: 0 crashes, every frame's buffer freed and counted, the outstanding read untouched and then
    completed with the image's bytes, the image unchanged, no page leaked."""
    r = Rig().up()
    digest = hashlib.sha256(bytes(r.img.data)).hexdigest()
    r.target_up = False
    req = r.dev.read_page(5, r.now)
    r.net.run(r.dev, r.now)
    live = list(r.dev.factive)
    assert len(live) == 4
    free0 = r.alloc.nr_free
    st = r.stack
    fates0, rx0, drops0 = sum(st.rx_fate.values()), st.counters["rx_packets"], sum(r.dev.drops.values())
    used0, aoe_drop0, rxn0 = st.rx_fate.get("aoenet_rcv", 0), st.rx_fate.get("AOE_DROP", 0), r.net.counters["rx"]
    rng = Rng(20261130)
    t0 = time.perf_counter()
    n_aoe = 0
    for _ in range(N_FRAMES):
        cat, frame, _reason = initiator_case(rng, live)
        n_aoe += cat not in ("runt", "not_aoe")
        st.rx_frame(frame, r.now)
    elapsed = time.perf_counter() - t0
    d = r.dev
    assert st.counters["rx_packets"] - rx0 == N_FRAMES
    assert sum(st.rx_fate.values()) - fates0 == N_FRAMES and st.rx_in_flight() == 0
    assert "internal_error" not in d.drops
    # no malformed frame was used: each one the table gave the driver was freed AOE_DROP, counted by
    # the core under its own reason or by aoenet (runt header, no such shelf.slot)
    assert st.rx_fate.get("aoenet_rcv", 0) == used0
    aoe_drops = sum(d.drops.values()) - drops0 + r.net.counters["runt"] + r.net.counters["no_device"]
    assert st.rx_fate["AOE_DROP"] - aoe_drop0 == aoe_drops == r.net.counters["rx"] - rxn0
    assert aoe_drops >= n_aoe - N_FRAMES // 100
    assert r.alloc.nr_free == free0
    assert not req.done and set(d.factive) == set(live)
    assert hashlib.sha256(bytes(r.img.data)).hexdigest() == digest
    r.target_up = True
    r.pump(lambda: req.done, limit_s=7200)
    assert req.status == 0 and bytes(req.data) == bytes(r.img.data[5 * 4096:6 * 4096])
    print(f"stack: {N_FRAMES} frames in {elapsed:.2f} s; rx_fate {dict(sorted(st.rx_fate.items()))}")


def test_aoe_device_spec_errors_are_one_line():
    from client_agent.host import aoe_backend

    class H:
        trace_replies = False
    for spec, needle in (({"kind": "aoe"}, "needs shelf, slot"),
                         ({"kind": "aoe", "shelf": 1, "slot": 300}, "slot must be an integer 0..254"),
                         ({"kind": "aoe", "shelf": 1, "slot": 0, "policy": "x"}, "policy must be linux or extended"),
                         ({"kind": "aoe", "shelf": 1, "slot": 0, "server": "a"}, "unknown key(s) server")):
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            aoe_backend(H(), spec)


def test_testbed_stat_aoe_view_names_the_counters_as_the_driver_does():
    """`testbed stat aoe`: sysfs attributes and the debugfs file of aoeblk.c, from a device that
    wrote one page; the testbed's own figures on testbed_* lines."""
    from testbed import views
    r = Rig().up()
    w = r.dev.write_page(1, b"\x11" * 4096, r.now)
    r.net.run(r.dev, r.now)
    r.pump(lambda: w.done)
    d = r.dev.snapshot()
    snap = {"swap_devices": [{"active": True, "acked": 1, **d, "aoenet": dict(r.net.counters)}],
            "stack": {"counters": dict(r.stack.counters)}}
    text = views.render("aoe", snap)
    lines = text.splitlines()
    assert lines[:6] == [f"/sys/block/etherd!e{SHELF}.{SLOT}/state: up",
                         f"/sys/block/etherd!e{SHELF}.{SLOT}/mac: {MAC_TGT.hex()}",
                         f"/sys/block/etherd!e{SHELF}.{SLOT}/netif: {d['netif']}",
                         f"/sys/block/etherd!e{SHELF}.{SLOT}/firmware-version: {d['firmware-version']}",
                         f"/sys/block/etherd!e{SHELF}.{SLOT}/payload: 1024",
                         f"/sys/kernel/debug/aoe/e{SHELF}.{SLOT}:"]
    assert lines[6] == f"rttavg: {d['rttavg']} rttdev: {d['rttdev']}" and lines[8] == "maxbcnt: 1024"
    t = d["target"]
    assert lines[9] == f"{MAC_TGT.hex()}:{t['nout']}:{t['maxout']}:{t['nframes']}"
    assert lines[10:14] == [f"\tssthresh:{t['ssthresh']}", "\ttaint:0", "\tr:0", "\tw:4"]   # 4 KiB = 4 frames
    assert "testbed_retransmit 0" in lines and "testbed_rx_pfmemalloc_proto_drop 0" in lines
    assert views.render("aoe", {"swap_devices": [{"active": True, "backend": "198.18.0.1:/swap/swap.img"}]}) == ""


def test_aoe_rows_in_the_every_storage_protocol_table():
    """The demo's "every storage protocol" table carries the AoE pair, with the aoe driver's own
    counters (retransmit, write_ok) in the request columns."""
    from testbed import demo
    assert [r[:2] for r in demo.PROTOCOL_ROWS if r[0] == "AoE"] == [("AoE", "aoe-linux"), ("AoE", "aoe-extended")]
    e = {"name": "aoe-extended", "expect": "recovered", "outcome": "recovered", "storage": "aoe",
         "time_to_stall_s": 0.2, "time_to_recover_s": 9.2, "pages_written": 3658, "pages_verified": 3658,
         "reserve_low_pages": 150, "rpc_retrans": None, "parameters": {"transport": "tcp"},
         "counters": {"PFMemallocDrop": 0, "rx_nobuf": 0},
         "aoe": {"device": {"counters": {"retransmit": 4, "write_ok": 3658}}}}
    row = demo.format_protocol_table([e]).splitlines()[3]
    assert row.startswith("AoE ") and "retransmit 4" in row and "write_ok 3658" in row


def test_aoe_alone_without_an_nfs_swap_area_beside_it(sims):
    """AoE with nfs_swap_pages = 0: no RPC transport exists at all. The report's TCP block (the
    NAS still listens) must not need one -- it crashed reading the absent transport's counters."""
    r = run_sim(S.load("aoe-extended", {"nfs_swap_pages": 0, "transport": "tcp"}).to_dict(), 1)
    _clean(r)
    assert r["outcome"] == sims["aoe-extended"]["outcome"] == "recovered"
    assert r["tcp"]["rpc"] == {}                  # no RPC transport, so no RPC counter (not invented zeros)
