"""The kernel's historical failures as tests (kernel-mechanism.md §6; switches in client_agent/bugs.py).

Each test runs twice: ``fixed`` is the code as it is (no switch touched) and must show the healthy
figures; ``bug`` re-introduces one failure with ``reintroduced(name)`` and must show its figures --
so a test that passes in both modes proves it can tell the two apart. To see a regression test
fail the way it would if the bug came back, switch the bug on for the whole run:

    CLIENT_AGENT_BUGS=stale_pfmemalloc_tag .venv/bin/python -m pytest tests/test_kernel_history.py

(the ``fixed`` case then fails with the figures of the bug).
"""

import contextlib

import pytest

from client_agent.bugs import BUGS, NAMES, reintroduced
from client_agent.loop import Loop, ManualClock
from client_agent.mm.gfp import GFP_ATOMIC, GFP_KERNEL
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.core.page_frag import Current, frag_sendto
from client_agent.net.stack import Stack
from client_agent.fs.nfs.nfs3proc import NfsTransport
from client_agent.phy.wire_pair import WirePair
from client_agent.mm.anon import page_bytes
from client_agent.tasks import Scheduler, WaitEvent, WaitPages
from client_agent.wire import ethernet, ipv4, udp
from protocols import nfs3
from test_stack_kit import A, B, IP_A, IP_B, MAC_A, MAC_B, kit, run, udp_frame  # noqa: F401
from tests.nas_wire_kit import nas_pumped

PAGES = 256          # min_free_kbytes 128 -> min 32 pages, GFP_ATOMIC floor 12, throttle <= 16

modes = pytest.mark.parametrize("bug_on", [False, True], ids=["fixed", "bug"])


def switch(name: str, on: bool):
    """The bug on inside the block, or the code as it is (whatever the environment set)."""
    return reintroduced(name) if on else contextlib.nullcontext()


def _receiver(kit):
    """A stack on a wire with an NFS-swap-like SOCK_MEMALLOC socket (2049) and an ordinary one
    (5353); frames are injected raw from the other end of the wire."""
    w = WirePair()
    alloc = kit.alloc(PAGES)
    sb = kit.stack(alloc, w.b, MAC_B, IP_B)
    swap = sb.udp_socket()
    swap.bind(("", 2049))
    swap.sk_set_memalloc()
    other = sb.udp_socket()
    other.bind(("", 5353))
    return w, alloc, sb, swap, other


def test_switches_and_context_manager_restores():
    fresh = type(BUGS)()
    assert fresh.enabled() == [] and len(NAMES) == 6       # every switch off by default
    before = BUGS.enabled()
    with reintroduced("stale_pfmemalloc_tag", "throttle_unreclaimable"):
        assert BUGS.stale_pfmemalloc_tag and BUGS.throttle_unreclaimable
    assert BUGS.enabled() == before
    with pytest.raises(ValueError, match="unknown bug switch"):
        with reintroduced("no_such_bug"):
            pass


# ---------------------------------------------------------------------------------------- §6.1
RETRIES = 5


@modes
def test_1_stale_pfmemalloc_tag_on_a_recycled_page(kit, bug_on):
    """2013: a page kept its pfmemalloc tag when handed out again (compaction kept it). Memory is
    plentiful, yet every retransmission to an ordinary socket lands in that same page and is
    dropped PFMEMALLOC -- forever. Fixed: an ordinary allocation clears the tag."""
    w, alloc, sb, swap, other = _receiver(kit)
    with switch("stale_pfmemalloc_tag", bug_on):
        kit.exhaust(alloc)
        w.a.transmit(udp_frame(b"nfs-reply", dport=2049), 0.0)
        sb.poll(0.0)                                   # from the reserve: the page gets tagged
        assert sb.counters["rx_pfmemalloc"] == 1
        kit.release()
        assert swap.recvfrom()[0] == b"nfs-reply"      # the tagged page is freed last ...
        tagged = alloc._free_list[-1]
        assert tagged.pfmemalloc                       # ... so it is the next one handed out
        swap.close()                                   # no SOCK_MEMALLOC socket left at all
        assert alloc.nr_free == alloc.nr_pages and alloc.memalloc_socks == 0
        tries, got = 0, None
        while got is None and tries < RETRIES:          # the sender retransmits until answered
            tries += 1
            w.a.transmit(udp_frame(b"hello", dport=5353, ident=tries), float(tries))
            sb.poll(float(tries))
            got = other.recvfrom()
    figures = {"tries": tries, "delivered": got is not None,
               "PFMemallocDrop": sb.snmp["TcpExt"]["PFMemallocDrop"],
               "rx_pfmemalloc": sb.counters["rx_pfmemalloc"] - 1,
               "same_page_each_time": alloc._free_list[-1] is tagged}
    if bug_on:
        assert figures == {"tries": RETRIES, "delivered": False, "PFMemallocDrop": RETRIES,
                           "rx_pfmemalloc": RETRIES, "same_page_each_time": True}
    else:
        assert figures == {"tries": 1, "delivered": True, "PFMemallocDrop": 0,
                           "rx_pfmemalloc": 0, "same_page_each_time": True}


# ---------------------------------------------------------------------------------------- §6.2
@modes
def test_2_copy_of_a_tagged_buffer_does_not_inherit_the_tag(kit, bug_on):
    """A copy (skb_copy: fresh pages) is pfmemalloc only if its own allocation was. Here the
    reassembler linearizes: the first fragment came from the reserve, memory recovered, the last
    fragment completes the datagram and the copy is made in ordinary memory -- the reserve pages
    are freed at once, so the ordinary socket may have the datagram. With the bug the copy takes
    the source's flag (__copy_skb_header) and the datagram is wrongly dropped."""
    w, alloc, sb, swap, other = _receiver(kit)
    sb.reasm.linearize = True
    seg = udp.emit(A, B, 1, 5353, b"y" * 24)
    first = udp_frame(seg=seg[:16], flags=ipv4.IP_MF, ident=9)
    last = udp_frame(seg=seg[16:], frag_off=16, ident=9)
    with switch("copy_inherits_pfmemalloc", bug_on):
        kit.exhaust(alloc)
        w.a.transmit(first, 0.0)
        sb.poll(0.0)                                   # queued in a reserve page (tagged)
        kit.release()
        w.a.transmit(last, 0.1)
        sb.poll(0.1)                                   # completes: copied at GFP_ATOMIC, plenty free
    got = other.recvfrom()
    figures = {"ReasmOKs": sb.snmp["Ip"]["ReasmOKs"],
               "pgalloc_pfmemalloc": alloc.snapshot()["reserve"]["pgalloc_pfmemalloc"],
               "delivered": got[0] if got else None,
               "PFMemallocDrop": sb.snmp["TcpExt"]["PFMemallocDrop"], "rx_fate": dict(sb.rx_fate)}
    if bug_on:
        assert figures == {"ReasmOKs": 1, "pgalloc_pfmemalloc": 1, "delivered": None,
                           "PFMemallocDrop": 1,
                           "rx_fate": {"ip_frag_merged": 1, "PFMEMALLOC": 1}}
    else:
        assert figures == {"ReasmOKs": 1, "pgalloc_pfmemalloc": 1, "delivered": b"y" * 24,
                           "PFMemallocDrop": 0,
                           "rx_fate": {"ip_frag_merged": 1, "udp_read": 1}}


# ---------------------------------------------------------------------------------------- §6.3
@modes
def test_3_reclaim_send_does_not_write_into_the_interrupted_tasks_task_frag(kit, bug_on):
    """NBD 2019, NFS/CIFS 2022: a task half-way through building a 1000-byte frame in
    current->task_frag allocates, enters direct reclaim, and reclaim writes a dirty page to swap
    over the swap socket -- in the same task. The swap socket has sk_use_task_frag = False (the
    fix), so it uses its own sk_frag; with the bug sk_page_frag() hands it the task's cache and the
    swap bytes land on top of the half-built frame. The peer checks every byte it receives.
    (Model: client_agent/net/page_frag.py; both frames go through the real stacks.)"""
    w, sa, sb = kit.pair(nr_pages=PAGES)
    sa.neigh.add_permanent(B, MAC_B)
    sb.neigh.add_permanent(A, MAC_A)
    app = sa.udp_socket()
    swap_sk = sa.udp_socket()
    swap_sk.sk_use_task_frag = False                   # as xprtsock/nbd set it since the fix
    peer_app = sb.udp_socket()
    peer_app.bind(("", 7000))
    nas = sb.udp_socket()
    nas.bind(("", 2049))
    current = Current(sa.alloc, "writer")
    frame, page = b"A" * 1000, b"S" * 1000

    def direct_reclaim():
        with sa.alloc.pf_memalloc():                   # reclaim runs under PF_MEMALLOC
            assert frag_sendto(swap_sk, current, page, (IP_B, 2049), 0.0) == len(page)

    with switch("shared_task_frag", bug_on):
        assert frag_sendto(app, current, frame, (IP_B, 7000), 0.0,
                           reenter=direct_reclaim) == len(frame)
    run(0.0, sa, sb)
    got_app, got_swap = peer_app.recvfrom()[0], nas.recvfrom()[0]
    current.task_frag.release()
    if swap_sk.sk_frag is not None:
        swap_sk.sk_frag.release()
    figures = {"swap_page_intact": got_swap == page, "app_len": len(got_app),
               "app_bytes_corrupted": sum(x != y for x, y in zip(got_app, frame)),
               "corrupted_with_swap_bytes": got_app[:500] == page[:500]}
    if bug_on:
        assert figures == {"swap_page_intact": True, "app_len": 1000,
                           "app_bytes_corrupted": 500, "corrupted_with_swap_bytes": True}
    else:
        assert figures == {"swap_page_intact": True, "app_len": 1000,
                           "app_bytes_corrupted": 0, "corrupted_with_swap_bytes": False}


# ---------------------------------------------------------------------------------------- §6.4
BOUND_S = 10.0


@modes
def test_4_throttled_reclaimer_with_nothing_reclaimable_makes_progress(bug_on):
    """2024: no swap, all memory anonymous, so zone_reclaimable_pages() == 0; atomic allocations
    took free pages below min/2. A GFP_KERNEL allocation must not be throttled (nothing can
    raise the level): it goes on to direct reclaim, fails, and the OOM killer (played here by the
    test: it runs only for a task that reached the allocation stall, as out_of_memory() does)
    frees the hog's memory. With the bug the task sleeps on pfmemalloc_wait for ever and the OOM
    step is never reached."""
    alloc = PageAllocator(PAGES)
    alloc.zone_reclaimable_pages = lambda: 0
    sched = Scheduler(alloc)
    held = []

    def hog():
        try:
            while (p := alloc.alloc(1, GFP_ATOMIC, "hog")) is not None:
                held.append(p)
            yield WaitEvent("forever")
        finally:
            for p in held:
                alloc.free(p)

    def user():
        pages = yield WaitPages(1, GFP_KERNEL, "user")
        alloc.free(pages)

    with switch("throttle_unreclaimable", bug_on):
        h = sched.spawn("hog", hog())
        sched.run(0.0)
        assert alloc.nr_free == 12 and alloc.nr_free <= alloc.wmark_min // 2
        u = sched.spawn("user", user())
        oom_kills, t, done_at = 0, 0.0, None
        while t <= BOUND_S:
            sched.run(t)
            if u.state == "done":
                done_at = t
                break
            if alloc.vmstat["allocstall"] and h.state != "killed":
                sched.kill(h)                          # out_of_memory(): kill the biggest task
                oom_kills += 1
            t = round(t + 0.1, 6)
        figures = {"user": u.state, "progress_within_bound": done_at is not None,
                   "pgscan_direct_throttle": alloc.vmstat["pgscan_direct_throttle"],
                   "allocstall": alloc.vmstat["allocstall"], "oom_kills": oom_kills}
        sched.kill(u)
        sched.kill(h)
    assert alloc.nr_free == alloc.nr_pages
    if bug_on:
        assert figures == {"user": "throttled", "progress_within_bound": False,
                           "pgscan_direct_throttle": 1, "allocstall": 0, "oom_kills": 0}
    else:
        assert figures == {"user": "done", "progress_within_bound": True,
                           "pgscan_direct_throttle": 0, "allocstall": 1, "oom_kills": 1}


# ---------------------------------------------------------------------------------------- §6.5
@modes
def test_5_pfmemalloc_protocol_filter_drop_is_counted_as_pfmemalloc(kit, bug_on):
    """Until SKB_DROP_REASON_PFMEMALLOC (2025) a reserve-backed frame refused by
    skb_pfmemalloc_protocol() was indistinguishable from a frame of an unknown protocol. AoE
    (0x88A2) has no handler here: in ordinary memory it is UNHANDLED_PROTO either way; from the
    reserve it must be PFMEMALLOC."""
    w, alloc, sb, swap, other = _receiver(kit)
    aoe = ethernet.emit(MAC_B, MAC_A, ethernet.ETH_P_AOE, b"\0" * 40)
    with switch("pfmemalloc_drop_unnamed", bug_on):
        w.a.transmit(aoe, 0.0)
        sb.poll(0.0)                                   # ordinary memory
        kit.exhaust(alloc)
        for _ in range(3):
            w.a.transmit(aoe, 0.0)
        sb.poll(0.0)                                   # from the reserve
    figures = {r: sb.drop_reasons[r] for r in ("PFMEMALLOC", "UNHANDLED_PROTO")}
    figures["rx_pfmemalloc"] = sb.counters["rx_pfmemalloc"]
    if bug_on:
        assert figures == {"PFMEMALLOC": 0, "UNHANDLED_PROTO": 4, "rx_pfmemalloc": 3}
    else:
        assert figures == {"PFMEMALLOC": 3, "UNHANDLED_PROTO": 1, "rx_pfmemalloc": 3}


# ---------------------------------------------------------------------------------------- §6.6
MAC_C, MAC_N = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def _nfs_setup():
    """The agent's stack + NfsTransport against NasCore over the in-memory wire (as
    tests/test_nfs_transport.py)."""
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_C, mac_b=MAC_N)
    alloc = PageAllocator(PAGES)
    sched = Scheduler(alloc)
    sched.attach_loop(loop)
    st = Stack(alloc, w.a, MAC_C, "198.18.0.2", 24, sched)
    store, img = nas_pumped(loop, st, w.b)
    logs = []
    t = NfsTransport(st, sched, "198.18.0.1", slots=4, timeo_s=0.1, timeo_max_s=0.4, retrans=2,
                     log=logs.append)
    return loop, alloc, sched, st, t, logs


@modes
def test_6_swap_over_nfs_survives_a_reconnect_under_pressure(bug_on):
    """Swap over NFS silently broke for several releases until 2022. After swapon (SOCK_MEMALLOC
    on the transport's socket) the transport reconnects; memory then falls below the atomic floor
    and swap writeback (PF_MEMALLOC) sends a WRITE. Fixed: the new socket is marked again, the
    reply is taken from the reserve and the WRITE completes. With the bug the new socket is not
    marked, no SOCK_MEMALLOC socket is left, the receive path does not even try the reserve:
    every reply (and retransmission's reply) is dropped NOMEM and the swap stalls."""
    loop, alloc, sched, st, t, logs = _nfs_setup()
    out = {}

    def swapon():
        t.set_memalloc(True)
        root = yield from t.mount("swap")
        out["fh"], _size = yield from t.lookup(root, "swap.img")

    task = sched.spawn("swapon", swapon())
    assert loop.run_until(lambda: task.state == "done", 5.0), task.error
    held = []
    with switch("nfs_reconnect_unmarked", bug_on):
        t.reconnect()
        while (p := alloc.alloc(1, GFP_ATOMIC, "anon")) is not None:
            held.append(p)
        assert alloc.nr_free == 12

        def writeback():
            with alloc.pf_memalloc():                  # swap writeback: RPC_TASK_SWAPPER
                r = yield from t.write(out["fh"], 0, page_bytes(1, 0, 0), nfs3.FILE_SYNC)
            return r.committed

        wb = sched.spawn("writeback", writeback())
        loop.run_until(lambda: wb.state == "done", 3.0)
    sends = 1 + t.counters["rpc_retrans"]
    figures = {"write_done": wb.state == "done", "sock_memalloc": t.sk.memalloc,
               "memalloc_socks": alloc.memalloc_socks, "sends": sends,
               "replies_dropped_nomem": st.counters["rx_nobuf"],
               "not_responding_logged": "nfs: server 198.18.0.1 not responding, still trying"
               in logs}
    sched.kill(wb)
    t.close()
    for p in held:
        alloc.free(p)
    assert alloc.nr_free == alloc.nr_pages, alloc.owner_pages()
    if bug_on:
        assert figures == {"write_done": False, "sock_memalloc": False, "memalloc_socks": 0,
                           "sends": sends, "replies_dropped_nomem": sends,
                           "not_responding_logged": True}
        assert sends >= 8
    else:
        assert figures == {"write_done": True, "sock_memalloc": True, "memalloc_socks": 1,
                           "sends": 1, "replies_dropped_nomem": 0,
                           "not_responding_logged": False}
