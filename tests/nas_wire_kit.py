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
from testbed.nas_tcp import StackRpcServer

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def agent_and_nas(image: str, pages: int, *, pool_pages: int = 1024, seed: int = 4, handle=None):
    """(loop, agent, img): the agent at 198.18.0.2, the NAS at 198.18.0.1 exporting ``swap`` with
    one image of ``pages`` pages; ``img`` is the MemoryStore image (read back to verify).
    ``handle(core_handle, call, src, now) -> [replies]``, if given, stands between the wire and
    NasCore.handle: a test intercepts or rewrites calls and replies there."""
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    agent = Agent(loop, w.a, ip="198.18.0.2", prefix_len=24, pool_pages=pool_pages, seed=seed)
    agent.stack.neigh.add_permanent(socket.inet_aton("198.18.0.1"), MAC_B)
    serve, _store, img = _nas(w.b, image, pages, handle)
    w.b.on_rx = lambda: loop.call_soon(lambda: serve(loop.time(), 256))
    return loop, agent, img


def _nas(dev, image: str, pages: int, handle=None, tcp_box=None):
    """(serve(now, budget), store, img): a NAS Stack at 198.18.0.1 on ``dev`` feeding NasCore,
    over UDP on 2049 and over TCP (testbed.nas_tcp) on 2049 and 111; ``tcp_box`` (a dict), if
    given, receives the TCP server as ``tcp_box["server"]`` (a test restarts it there)."""
    nas = Stack(PageAllocator(8192), dev, MAC_B, "198.18.0.1", 24, seed=99)
    nas.neigh.add_permanent(socket.inet_aton("198.18.0.2"), MAC_A)
    store = MemoryStore()
    store.add_export("swap")
    img = store.create_image("swap", image, pages * 4096)
    core = NasCore(store)
    nsk = nas.udp_socket()
    nsk.bind(("0.0.0.0", 2049))
    tcp = StackRpcServer(nas)
    if tcp_box is not None:
        tcp_box["server"] = tcp
        tcp_box["stack"] = nas

    def serve(now, budget):
        nas.poll(now, budget)
        while (got := nsk.recvfrom()) is not None:
            replies = (core.handle(got[0], got[1], now) if handle is None
                       else handle(core.handle, got[0], got[1], now))
            for r in replies:
                nsk.sendto(r, got[1], now)
        for rec, peer, conn in tcp.pump(now):
            replies = (core.handle(rec, peer, now, "tcp") if handle is None
                       else handle(lambda m, p, t: core.handle(m, p, t, "tcp"), rec, peer, now))
            for r in replies:
                tcp.reply(conn, r, now)
    return serve, store, img


def nas_pumped(loop, client_stack, dev_b, *, image_pages: int = 64, handle=None, tcp_box=None):
    """A NAS (Stack + NasCore on a MemoryStore) behind ``dev_b`` at 198.18.0.1, polled together with
    ``client_stack`` every millisecond of loop time; returns ``(store, img)``. ``handle``: as for
    ``agent_and_nas``."""
    client_stack.neigh.add_permanent(socket.inet_aton("198.18.0.1"), MAC_B)
    serve, store, img = _nas(dev_b, "swap.img", image_pages, handle, tcp_box)

    def pump():
        now = loop.time()
        client_stack.poll(now, 64)
        serve(now, 64)
        client_stack.poll(now, 64)
        loop.call_at(now + 0.001, pump)

    loop.call_soon(pump)
    return store, img


def file_teardown(agent) -> None:
    """Unmount the agent's file consumer, stop kswapd, and check every page went back to the pool."""
    agent.filemap.detach()
    agent.filemap.release()
    agent.file_transport.close()
    agent.kswapd.stop()
    assert agent.alloc.nr_free == agent.alloc.nr_pages, agent.alloc.owner_pages()
