"""Agent control ops for a file-backed consumer on the in-memory wire (no root)."""

import socket

from client_agent.agent import Agent
from client_agent.loop import Loop, ManualClock
from client_agent.mm.filemap import file_page_bytes
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.phy.wire_pair import WirePair
from nas_server.core import NasCore
from nas_server.store import MemoryStore

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def test_fileon_file_workload_file_map():
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    agent = Agent(loop, w.a, ip="198.18.0.2", prefix_len=24, pool_pages=1024, seed=4)
    agent.stack.neigh.add_permanent(socket.inet_aton("198.18.0.1"), MAC_B)
    nas = Stack(PageAllocator(8192), w.b, MAC_B, "198.18.0.1", 24)
    nas.neigh.add_permanent(socket.inet_aton("198.18.0.2"), MAC_A)
    store = MemoryStore()
    store.add_export("swap")
    img = store.create_image("swap", "file.img", 2048 * 4096)
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
    res = h["fileon"]({"op": "fileon", "server": "198.18.0.1", "memalloc": False})
    assert res["nr_pages"] == 2048 and res["policy"] == "linux"
    assert agent.alloc.memalloc_socks == 0               # Linux: a file transport is not marked
    assert h["file_workload"]({"op": "file_workload", "kind": "write", "pages": 1500,
                               "seed": 4}) == {"started": True}
    loop.run_until(lambda: agent.filemap.workload["done"], 60.0)
    snap = h["snapshot"]({"op": "snapshot"})
    f = snap["filemap"]
    assert f["workload"]["done"] and f["acked"] == 1500 and f["nr_dirty"] == 0
    assert f["balance_dirty_pages"] > 0 and f["nr_dirty_threshold"] > 0
    m = h["file_map"]({"op": "file_map"})
    assert m["content"] == "file" and len(m["acked"]) == 1500
    for idx, (i, gen) in m["acked"].items():
        assert img.read(int(idx) * 4096, 4096) == file_page_bytes(4, i, gen)
    agent.filemap.detach()
    agent.filemap.release()
    agent.file_transport.close()
    agent.kswapd.stop()
    assert agent.alloc.nr_free == agent.alloc.nr_pages, agent.alloc.owner_pages()
