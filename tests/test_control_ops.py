"""Every control op of the agent still answers with today's arguments (users' setup scripts call
them), and swapon/fileon also take a device spec (issue 13). In-memory wire, no root."""

import pytest

from netns_setup.control import BadRequest
from client_agent.mm.anon import page_bytes
from tests.nas_wire_kit import agent_and_nas

TODAY = {
    "swapon": {"server": "198.18.0.1", "port": 2049, "export": "swap", "image": "swap.img",
               "slots": 8, "wsize": 4096, "timeo_s": 0.5, "timeo_max_s": 2.0, "retrans": 3,
               "memalloc": True, "stable": "FILE_SYNC", "timeout_s": 30.0},
    "fileon": {"server": "198.18.0.1", "port": 2049, "export": "swap", "image": "file.img",
               "slots": 8, "wsize": 4096, "timeo_s": 0.5, "timeo_max_s": 2.0, "retrans": 3,
               "memalloc": False, "stable": "FILE_SYNC", "dirty_ratio": 20,
               "dirty_background_ratio": 10, "timeout_s": 30.0},
}


def _call(h, op, **args):
    return h[op]({"op": op, **args})


def test_every_service_and_setting_op_with_todays_arguments():
    loop, agent, _img = agent_and_nas("swap.img", 64)
    h = agent.handlers(lambda: {"bye": True})
    assert _call(h, "udp_echo", port=7, rcvbuf=65536)["kind"] == "echo"
    assert _call(h, "udp_sink", port=9, reader="fast", rcvbuf=65536)["reader"] == "fast"
    with pytest.raises(BadRequest, match="already has a service"):
        _call(h, "udp_sink", port=9)
    # the generic form: a stream sink (listener + accept, the same readers) on the same port number
    tcp = _call(h, "sink", port=9, kind="tcp", reader="none", rcvbuf=65536)
    assert (tcp["proto"], tcp["accepted"], tcp["reader"]) == ("tcp", 0, "none")
    ln = agent.services["tcp:9"]["sock"].snapshot()
    assert ln["state"] == "LISTEN" and ln["skmem"]["rb"] == 65536
    with pytest.raises(BadRequest, match="sink kind must be one of udp, tcp, got 'sctp'"):
        _call(h, "sink", port=11, kind="sctp")
    with pytest.raises(BadRequest, match="TCP port 9 already has a service"):
        _call(h, "sink", port=9, kind="tcp")
    assert _call(h, "memalloc", port=9, on=True) == {"port": 9, "memalloc": True, "memalloc_socks": 1}
    assert _call(h, "memalloc", port=9, on=False)["memalloc_socks"] == 0
    with pytest.raises(BadRequest, match="no service on UDP port 10"):
        _call(h, "memalloc", port=10)
    held = _call(h, "hog", pages=10, gfp="atomic")
    assert held["held"] == 10 and held["nr_free"] == agent.alloc.nr_pages - 10
    assert _call(h, "hog", pages=5)["held"] == "in progress"
    loop.run_until(lambda: False, 0.01)
    assert _call(h, "hog_free")["freed"] == 15
    for key, value in (("pfmemalloc_demux_drop", False), ("min_free_kbytes", 128),
                       ("watermark_scale_factor", 20), ("budget", 32)):
        assert _call(h, "set", key=key, value=value) == {"key": key, "value": value}
    assert agent.stack.policy.pfmemalloc_demux_drop is False and agent.budget == 32
    with pytest.raises(BadRequest, match="unknown key"):
        _call(h, "set", key="nope", value=1)
    snap = _call(h, "snapshot", traces=False)
    assert snap["services"]["udp:7"]["kind"] == "echo" and snap["swap"] is None
    assert snap["swap_devices"] == [] and snap["filemaps"] == []
    assert _call(h, "shutdown") == {"bye": True}


def test_swap_ops_with_todays_arguments_and_with_a_device_spec():
    loop, agent, img = agent_and_nas("swap.img", 512)
    h = agent.handlers(lambda: None)
    res = _call(h, "swapon", **TODAY["swapon"])
    assert res["nr_slots"] == 512 and bytes.fromhex(res["fh"])
    with pytest.raises(BadRequest, match="already on"):
        _call(h, "swapon", **TODAY["swapon"])
    assert _call(h, "workload", pages=1200, seed=4, rate_pps=0) == {"started": True}
    assert loop.run_until(lambda: agent.swap.workload["done"] and not agent.swap.writeback, 30.0)
    m = _call(h, "swap_map")
    assert m["seed"] == 4 and m["acked"]
    assert all(img.read(int(s) * 4096, 4096) == page_bytes(4, p, g) for s, (p, g) in m["acked"].items())
    snap = _call(h, "snapshot")
    assert snap["swap"]["backend"] == "198.18.0.1:/swap/swap.img" == snap["swap_devices"][0]["backend"]
    assert snap["nfs"]["slots"] == 8
    assert _call(h, "swapoff") == {"memalloc_socks": 0}
    # the same device as a spec: a second swap area, kswapd's second device
    res = _call(h, "swapon", device={"kind": "nfs", "server": "198.18.0.1", "image": "swap.img",
                                     "slots": 4}, memalloc=True)
    assert res["nr_slots"] == 512 and len(agent.swap_devices) == 2
    assert agent.kswapd.swap_devices == agent.swap_devices
    with pytest.raises(BadRequest, match="device kind 'nvme' unknown; known: nfs, nbd, iscsi, aoe"):
        agent.swapoff()
        _call(h, "swapon", device={"kind": "nvme", "server": "198.18.0.1"})
    with pytest.raises(BadRequest, match="unknown key"):
        _call(h, "swapon", device={"kind": "nfs", "server": "198.18.0.1", "lun": 3})
    with pytest.raises(BadRequest, match="stable must be"):
        _call(h, "swapon", server="198.18.0.1", stable="SOMETIMES")


def test_file_ops_with_todays_arguments():
    from tests.nas_wire_kit import file_teardown
    loop, agent, _img = agent_and_nas("file.img", 512)
    h = agent.handlers(lambda: None)
    res = _call(h, "fileon", **TODAY["fileon"])
    assert res["nr_pages"] == 512 and res["policy"] == "linux" and bytes.fromhex(res["fh"])
    assert _call(h, "file_workload", kind="write", pages=100, seed=4, rate_pps=0) == {"started": True}
    with pytest.raises(BadRequest, match="kind="):
        agent.filemap.active = True
        _call(h, "file_workload", kind="scribble", pages=1)
    assert loop.run_until(lambda: agent.filemap.workload["done"], 60.0)
    assert len(_call(h, "file_map")["acked"]) == 100
    assert _call(h, "snapshot")["filemaps"][0]["backend"] == "198.18.0.1:/swap/file.img"
    file_teardown(agent)


def test_a_second_swap_area_beside_the_first_with_priorities():
    """Linux swaps to many areas (swapon -p): a second swapon adds one; kswapd writes to the
    highest priority first; the same area twice is refused (EBUSY); swap_map/swapoff take the
    area's index (docs/aoe.md: the small marked NFS area beside the AoE one)."""
    loop, agent, img = agent_and_nas("swap.img", 512, more_images=[("small.img", 64)])
    small = agent.test_images["small.img"]
    h = agent.handlers(lambda: None)
    first = _call(h, "swapon", device={"kind": "nfs", "server": "198.18.0.1", "image": "swap.img"})
    assert first == {"nr_slots": 512, "device": 0, "priority": -1, "fh": first["fh"]}
    with pytest.raises(BadRequest, match=r"198.18.0.1:/swap/swap.img is already on \(device 0\)"):
        _call(h, "swapon", device={"kind": "nfs", "server": "198.18.0.1", "image": "swap.img"})
    with pytest.raises(BadRequest, match="priority must be an integer -1..32767"):
        _call(h, "swapon", device={"kind": "nfs", "server": "198.18.0.1", "image": "small.img"}, priority="high")
    second = _call(h, "swapon", device={"kind": "nfs", "server": "198.18.0.1", "image": "small.img"}, priority=5)
    assert second["device"] == 1 and second["priority"] == 5 and second["nr_slots"] == 64
    assert agent.swap is agent.swap_devices[0]                  # the workload's and swap_map's default
    assert agent.kswapd.swap_devices == [agent.swap_devices[1], agent.swap_devices[0]]   # by priority
    assert _call(h, "workload", pages=1200, seed=4) == {"started": True}
    assert loop.run_until(lambda: agent.swap.workload["done"] and not any(d.writeback for d in agent.swap_devices), 60.0)
    m_small, m_big = _call(h, "swap_map", device=1), _call(h, "swap_map", device=0)
    assert m_small["backend"] == "198.18.0.1:/swap/small.img" and m_small["kind"] == "nfs"
    assert len(m_small["acked"]) == 64                          # the higher-priority area filled first
    assert len(m_big["acked"]) > 0 and _call(h, "swap_map") == m_big
    for image, m in ((small, m_small), (img, m_big)):
        assert all(image.read(int(s) * 4096, 4096) == page_bytes(4, p, g) for s, (p, g) in m["acked"].items())
    snap = _call(h, "snapshot", traces=False)
    assert [d["backend"] for d in snap["swap_devices"]] == ["198.18.0.1:/swap/swap.img", "198.18.0.1:/swap/small.img"]
    with pytest.raises(BadRequest, match=r"device must be a swap area index 0..1"):
        _call(h, "swap_map", device=2)
    assert _call(h, "swapoff", device=1)["memalloc_socks"] == 1
    assert _call(h, "swapoff") == {"memalloc_socks": 0}
