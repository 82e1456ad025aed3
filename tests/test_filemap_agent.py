"""Agent control ops for a file-backed consumer on the in-memory wire (no root)."""

from client_agent.mm.filemap import file_page_bytes
from tests.nas_wire_kit import agent_and_nas, file_teardown


def test_fileon_file_workload_file_map():
    loop, agent, img = agent_and_nas("file.img", 2048)
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
    file_teardown(agent)
