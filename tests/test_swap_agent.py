"""Agent control ops for swap over NFS on the in-memory wire (no root)."""

from client_agent.mm.anon import page_bytes
from tests.nas_wire_kit import agent_and_nas


def test_swapon_workload_swap_map_swapoff():
    loop, agent, img = agent_and_nas("swap.img", 512)
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
