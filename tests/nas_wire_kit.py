"""Shared kit (no tests here): a client Agent and a NAS (a second Stack feeding NasCore over a
MemoryStore) joined by an in-memory wire with a manual clock."""

import socket

from client_agent.agent import Agent
from client_agent.loop import Loop, ManualClock
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.stack import Stack
from client_agent.phy.wire_pair import WirePair
from nas_server.core import NasCore
from nas_server.store import MemoryStore

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def agent_and_nas(image: str, pages: int, *, pool_pages: int = 1024, seed: int = 4):
    """(loop, agent, img): the agent at 198.18.0.2, the NAS at 198.18.0.1 exporting ``swap`` with
    one image of ``pages`` pages; ``img`` is the MemoryStore image (read back to verify)."""
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    agent = Agent(loop, w.a, ip="198.18.0.2", prefix_len=24, pool_pages=pool_pages, seed=seed)
    agent.stack.neigh.add_permanent(socket.inet_aton("198.18.0.1"), MAC_B)
    nas = Stack(PageAllocator(8192), w.b, MAC_B, "198.18.0.1", 24)
    nas.neigh.add_permanent(socket.inet_aton("198.18.0.2"), MAC_A)
    store = MemoryStore()
    store.add_export("swap")
    img = store.create_image("swap", image, pages * 4096)
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
    return loop, agent, img
