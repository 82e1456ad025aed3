"""NfsTransport on the agent's own stack against NasCore over an in-memory wire."""

import socket

from client_agent.mm.gfp import GFP_ATOMIC, Gfp

from client_agent.loop import Loop, ManualClock
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.fs.nfs.nfs3proc import NfsTransport
from client_agent.phy.fault import FaultInjector
from client_agent.phy.wire_pair import WirePair
from client_agent.mm.anon import page_bytes
from client_agent.tasks import Scheduler
from protocols import nfs3
from tests.nas_wire_kit import nas_pumped

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def _setup(loss=0.0, seed=5):
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    dev_a = FaultInjector(w.a, seed, loss=loss) if loss else w.a
    dev_b = FaultInjector(w.b, seed + 1, loss=loss) if loss else w.b
    alloc = PageAllocator(1024)
    sched = Scheduler(alloc)
    sched.attach_loop(loop)
    st = Stack(alloc, dev_a, MAC_A, "198.18.0.2", 24, sched)
    store, img = nas_pumped(loop, st, dev_b)
    logs = []
    t = NfsTransport(st, sched, "198.18.0.1", slots=4, timeo_s=0.1, timeo_max_s=0.4, retrans=2,
                     log=logs.append)
    return loop, alloc, sched, st, t, store, img, logs


def _write_pages(t, n, out):
    root = yield from t.mount("swap")
    fh, size = yield from t.lookup(root, "swap.img")
    out["size"] = size
    for i in range(n):
        r = yield from t.write(fh, i * 4096, page_bytes(1, i, 0), nfs3.FILE_SYNC)
        out.setdefault("committed", []).append(r.committed)


def test_mount_lookup_write_file_sync_and_rcvbuf_sized_for_slots():
    loop, alloc, sched, st, t, store, img, logs = _setup()
    out = {}
    task = sched.spawn("w", _write_pages(t, 8, out))
    assert loop.run_until(lambda: task.state == "done", 10.0), task.error
    assert out["size"] == 64 * 4096 and out["committed"] == [nfs3.FILE_SYNC] * 8
    assert all(img.read(i * 4096, 4096) == page_bytes(1, i, 0) for i in range(8))
    assert t.counters["rpc_calls"] == 10 and t.counters["rpc_replies"] == 10
    assert t.counters["rpc_retrans"] == 0 and logs == []
    assert t.sk.rcvbuf == 5 * (4096 + 576)
    t.close()
    assert alloc.nr_free == alloc.nr_pages, alloc.owner_pages()


def test_retransmits_with_backoff_under_loss_and_never_errors():
    loop, alloc, sched, st, t, store, img, logs = _setup(loss=0.3, seed=11)
    out = {}
    task = sched.spawn("w", _write_pages(t, 20, out))
    assert loop.run_until(lambda: task.state == "done", 120.0), (task.state, task.error)
    assert t.counters["rpc_retrans"] > 5
    assert all(img.read(i * 4096, 4096) == page_bytes(1, i, 0) for i in range(20))
    t.close()
    assert alloc.nr_free == alloc.nr_pages, alloc.owner_pages()


def test_server_gone_logs_not_responding_then_ok():
    loop, alloc, sched, st, t, store, img, logs = _setup()
    out = {}
    task = sched.spawn("w", _write_pages(t, 1, out))
    loop.run_until(lambda: task.state == "done", 5.0)
    # cut the wire toward the NAS: swap the device's peer queue out by dropping frames
    real_transmit = st.dev.transmit
    st.dev.transmit = lambda frame, now: True          # the wire eats everything
    def one():
        root = yield from t.mount("swap")
        return root

    task2 = sched.spawn("m", one())
    loop.run_until(None, 3.0)
    assert task2.state == "waiting"
    assert t.counters["rpc_major_timeouts"] >= 1
    assert logs == ["nfs: server 198.18.0.1 not responding, still trying"]
    st.dev.transmit = real_transmit
    assert loop.run_until(lambda: task2.state == "done", 5.0)
    assert logs[-1] == "nfs: server 198.18.0.1 OK" and len(logs) == 2
    t.close()
    assert alloc.nr_free == alloc.nr_pages


def test_swapoff_clears_sock_memalloc_and_reserve_frames_are_then_dropped():
    loop, alloc, sched, st, t, store, img, logs = _setup()
    t.set_memalloc(True)
    assert t.sk.memalloc and alloc.memalloc_socks == 1
    t.reconnect()                                      # marked again on the new socket
    assert t.sk.memalloc and alloc.memalloc_socks == 1
    t.set_memalloc(False)                              # swapoff
    assert not t.sk.memalloc and alloc.memalloc_socks == 0
    # a reserve-backed frame for the transport socket is now dropped like any other socket's
    other = st.udp_socket()
    other.bind(("0.0.0.0", 7000))
    other.sk_set_memalloc()                            # keeps sk_memalloc_socks() true
    held = alloc.alloc(alloc.nr_free, GFP_ATOMIC | Gfp.MEMALLOC, "hog")   # every page
    alloc.free(held[:1])                               # one reserve page left
    from client_agent.wire.ethernet import ETH_P_IP, emit as eth_emit
    from client_agent.wire.ipv4 import IPPROTO_UDP, emit_header
    from client_agent.wire.udp import emit as udp_emit
    src, dst = socket.inet_aton("198.18.0.1"), socket.inet_aton("198.18.0.2")
    seg = udp_emit(src, dst, 2049, t.sk.local[1], b"x" * 32)
    frame = eth_emit(MAC_A, MAC_B, ETH_P_IP, emit_header(src, dst, IPPROTO_UDP, len(seg)) + seg)
    before = st.counters["PFMemallocDrop"]
    st.rx_frame(frame, 0.0)
    assert st.counters["PFMemallocDrop"] == before + 1
    alloc.free(held[1:])
    other.close()
    t.close()
    assert alloc.nr_free == alloc.nr_pages, alloc.owner_pages()
