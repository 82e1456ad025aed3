"""`testbed run` of the file-backed pair on real packets (root): a swapless client's MAP_SHARED file
over NFS under the memalloc flood. Linux's policy (the file's transport not SOCK_MEMALLOC) deadlocks:
kswapd's pageout cannot get an RPC buffer below min and nr_written stays 0; the extended policy
(beyond Linux: file writeback's transport marked too) recovers and every acknowledged page of
file.img reads back as file_page_bytes. Deadlock ends at the watchdog's decision (~6 s), recovery
in ~12 s.
"""

import os

import pytest

from tests.test_netns_run import run_cli

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]


def _common(p, rep, out, name):
    assert rep is not None, p.stderr[-3000:]
    e = rep["scenarios"][0]
    assert e["name"] == name and e["consumer"] == "mmap"
    assert "fileon" in e and "swapon" not in e
    assert e["counters"]["pswpout"] == 0                 # swapless: no swap traffic at all
    assert os.path.getsize(os.path.join(out, "pcap", "client.pcap")) > 24
    assert e["pages_verified"] == e["pages_written"] and e["pages_lost"] == 0, e["verification"]
    import subprocess
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"nsdt-{e['run_name']}-" not in ns
    return e


def test_file_mmap_linux_deadlocks_extended_recovers(tmp_path):
    out = tmp_path / "file-mmap-linux"
    p, rep = run_cli("file-mmap-linux", out, "max_duration_s=20")
    e = _common(p, rep, out, "file-mmap-linux")
    assert p.returncode == 0 and e["outcome"] == "deadlock", (e["outcome"], e["watchdog"], p.stderr[-2000:])
    assert e["policy"] == "linux" and e["beyond_linux"] is False and e["fileon"]["policy"] == "linux"
    fm = e["counters"]["filemap"]
    assert fm["memalloc"] is False and fm["nr_dirty"] > 0          # dirty pages no one could write
    assert e["counters"].get("nr_written", 0) < 10240          # vmstat has it once a page was written
    assert e["counters"]["rx_nobuf"] > 0 and e["counters"]["PFMemallocDrop"] == 0
    assert "INFO: task" in e["watchdog"] and "filemap (linux)" in e["watchdog"]
    assert "pswpout + nr_written" in e["watchdog"]

    out = tmp_path / "file-mmap-extended"
    p, rep = run_cli("file-mmap-extended", out, "max_duration_s=30")
    e = _common(p, rep, out, "file-mmap-extended")
    assert p.returncode == 0 and e["outcome"] == "recovered", (e["outcome"], e["watchdog"], p.stderr[-2000:])
    assert e["policy"] == "extended" and e["beyond_linux"] is True and e["fileon"]["policy"] == "extended"
    assert "(beyond Linux)" in p.stdout
    assert e["pages_written"] == 10240 and e["verification"]["verified"] == 10240   # the whole file
    assert e["counters"]["nr_written"] >= 10240
    assert e["counters"]["filemap"]["memalloc"] is True
    assert e["counters"]["PFMemallocDrop"] > 0 and e["counters"]["rx_nobuf"] == 0
    assert e["reserve_low_pages"] < e["preflight"][0]["values"]["atomic_floor"]   # the reserve was used
