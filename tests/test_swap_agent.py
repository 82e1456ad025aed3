"""Agent control ops for swap over NFS on the in-memory wire (no root)."""

import socket

from client_agent.agent import Agent
from client_agent.loop import Loop, ManualClock
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.phy.wire_pair import WirePair
from client_agent.swap import page_bytes
from nas_server.core import NasCore
from nas_server.store import MemoryStore

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def test_swapon_workload_swap_map_swapoff():
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    agent = Agent(loop, w.a, ip="198.18.0.2", prefix_len=24, pool_pages=1024, seed=4)
    agent.stack.neigh.add_permanent(socket.inet_aton("198.18.0.1"), MAC_B)
    nas = Stack(PageAllocator(8192), w.b, MAC_B, "198.18.0.1", 24)
    nas.neigh.add_permanent(socket.inet_aton("198.18.0.2"), MAC_A)
    store = MemoryStore()
    store.add_export("swap")
    img = store.create_image("swap", "swap.img", 512 * 4096)
    core = NasCore(store)
    nsk = nas.udp_socket()
    nsk.bind(("0.0.0.0", 2049))

    def nas_poll():
        now = loop.time()
        nas.poll(now, 256)
        while (got := nsk.recvfrom()) is not None:
            for r in core.handle(got[0], got[1], now):
                nsk.sendto(r, got[1], now)
    w.b.on_rx = lambda: loop.call_soon(nas_poll)

    h = agent.handlers(lambda: None)
    res = h["swapon"]({"op": "swapon", "server": "198.18.0.1", "memalloc": True})
    assert res["nr_slots"] == 512 and len(bytes.fromhex(res["fh"])) > 0
    assert agent.alloc.memalloc_socks == 1
    assert h["workload"]({"op": "workload", "pages": 1200, "seed": 4}) == {"started": True}
    loop.run_until(lambda: agent.swap.workload["done"] and not agent.swap.writeback, 30.0)
    snap = h["snapshot"]({"op": "snapshot"})
    assert snap["workload"]["done"] and snap["workload"]["allocated"] == 1200
    vm = snap["alloc"]["vmstat"]
    assert vm["pswpout"] == vm["pgsteal_kswapd"] == snap["swap"]["acked"] > 1200 - 1024
    assert snap["nfs"]["counters"]["rpc_replies"] >= vm["pswpout"]
    m = h["swap_map"]({"op": "swap_map"})
    assert m["seed"] == 4 and len(m["acked"]) == vm["pswpout"]
    for slot, (pid, gen) in m["acked"].items():
        assert img.read(int(slot) * 4096, 4096) == page_bytes(4, pid, gen)
    assert h["swapoff"]({"op": "swapoff"}) == {"memalloc_socks": 0}
    agent.swap.release()
    agent.transport.close()
    agent.kswapd.stop()
    assert agent.alloc.nr_free == agent.alloc.nr_pages, agent.alloc.owner_pages()
