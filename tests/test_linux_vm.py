"""Pure parts of testbed.linux_vm (no root, no QEMU): cpio newc, vmlinux extraction, modules.dep
ordering, the sampler stream and /proc parsers, the console scanner, and the watchdog's view of a
real kernel's /proc."""

from __future__ import annotations

import io
import lzma
import gzip
import os
import stat

import pytest

from testbed.linux_vm import initramfs as ir
from testbed.linux_vm import parse
from testbed.linux_vm.vmlinux import VmlinuxError, extract_vmlinux_bytes, vmlinux_for
from testbed.watchdog import Watchdog, proc_view

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


# ------------------------------------------------------------------------------ cpio
def test_cpio_newc_roundtrip_and_alignment():
    buf = io.BytesIO()
    w = ir.CpioWriter(buf)
    w.dir("bin")
    w.file("bin/x", b"abc", 0o755)
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.trailer()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    assert data[:6] == b"070701"
    # header of the second entry starts 4-aligned after name "bin\0" (110 + 4 = 114 -> 116)
    assert data[116:122] == b"070701"
    ents = ir.read_newc(data)
    names = [e[0] for e in ents]
    assert names == ["bin", "bin/x", "bin/sh", "dev/console", "init"]
    mode = {n: m for n, m, _ in ents}
    assert stat.S_ISDIR(mode["bin"]) and stat.S_ISLNK(mode["bin/sh"]) and stat.S_ISCHR(mode["dev/console"])
    assert mode["bin/x"] & 0o777 == 0o755
    assert dict((n, d) for n, _, d in ents)["bin/sh"] == b"busybox"
    assert data.endswith(b"\0" * (len(data) - data.rindex(b"TRAILER!!!") - 11))


def test_cpio_concatenated_archives_and_duplicates():
    a, b = io.BytesIO(), io.BytesIO()
    wa = ir.CpioWriter(a)
    wa.file("etc/a", b"1")
    wa.trailer()
    b.write(ir.run_archive({"NSDT_X": "it's", "NSDT_N": 3}))
    ents = ir.read_newc(a.getvalue() + b.getvalue())
    assert [e[0] for e in ents] == ["etc/a", "etc/nsdt.conf"]
    assert ents[1][2] == b"NSDT_X='it'\\''s'\nNSDT_N='3'\n"
    with pytest.raises(ValueError):
        wa.file("etc/a", b"2")
    with pytest.raises(ValueError):
        ir.run_archive({"bad-key": 1})
    with pytest.raises(ValueError):
        ir.read_newc(b"070702" + b"0" * 200)


# ------------------------------------------------------------------------------ vmlinux
@pytest.mark.parametrize("kind", ["xz", "gzip"])
def test_extract_vmlinux_finds_payload_after_junk(kind):
    payload = lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ) if kind == "xz" else gzip.compress(FAKE_ELF)
    # a bzImage: setup code, a false magic that does not decompress, the payload, trailing bytes
    image = b"MZ" + b"\0" * 500 + b"\xfd7zXZ\x00garbage" + b"\x1f\x8b\x08junk" + b"\0" * 77 + payload + b"\xff" * 300
    elf, got_kind, off = extract_vmlinux_bytes(image)
    assert elf == FAKE_ELF and got_kind == kind and image[off:off + len(payload)] == payload


def test_extract_vmlinux_refuses_non_kernel_and_passes_elf(tmp_path):
    with pytest.raises(VmlinuxError, match="no compressed ELF"):
        extract_vmlinux_bytes(b"MZ" + b"\0" * 1000 + lzma.compress(b"not an elf"))
    p = tmp_path / "vmlinux"
    p.write_bytes(FAKE_ELF)
    assert vmlinux_for(str(p), str(tmp_path)) == str(p)
    z = tmp_path / "vmlinuz-x"
    z.write_bytes(b"HdrS" + b"\0" * 64 + lzma.compress(FAKE_ELF))
    out = vmlinux_for(str(z), str(tmp_path))
    assert open(out, "rb").read() == FAKE_ELF
    assert vmlinux_for(str(z), str(tmp_path)) == out          # cached
    with pytest.raises(VmlinuxError, match="cannot read"):
        vmlinux_for(str(tmp_path / "missing"), str(tmp_path))


# ------------------------------------------------------------------------------ modules.dep
DEP = """kernel/fs/nfs_common/nfs_acl.ko: kernel/net/sunrpc/sunrpc.ko
kernel/fs/nfs/nfs.ko: kernel/fs/lockd/lockd.ko kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/nfs/nfsv3.ko: kernel/fs/nfs_common/nfs_acl.ko kernel/fs/nfs/nfs.ko kernel/fs/lockd/lockd.ko kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/lockd/lockd.ko: kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko
kernel/fs/nfs_common/grace.ko:
kernel/net/sunrpc/sunrpc.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/net/ethernet/8390/ne2k-pci.ko: kernel/drivers/net/ethernet/8390/8390.ko
kernel/drivers/net/ethernet/8390/8390.ko:
"""


def test_module_load_order_puts_every_dependency_first():
    deps = ir.parse_modules_dep(DEP)
    order = ir.module_load_order(deps, ["virtio_pci", "nfsv3", "ne2k_pci"])
    names = [ir.module_name(p) for p in order]
    assert len(names) == len(set(names))
    pos = {p: i for i, p in enumerate(order)}
    for p in order:
        for d in deps[p]:
            assert pos[d] < pos[p], f"{d} must load before {p}"
    assert names[-1] == "ne2k-pci" and "8390" in names
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_pci")
    assert names.index("sunrpc") < names.index("lockd") < names.index("nfs") < names.index("nfsv3")


def test_module_load_order_errors():
    deps = ir.parse_modules_dep(DEP)
    with pytest.raises(ir.InitramfsError, match="not in modules.dep"):
        ir.module_load_order(deps, ["e1000"])
    cyc = ir.parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ir.InitramfsError, match="cycle"):
        ir.module_load_order(cyc, ["a"])


def test_real_modules_dep_if_present():
    d = "/lib/modules"
    rels = sorted(os.listdir(d)) if os.path.isdir(d) else []
    rels = [r for r in rels if os.path.exists(os.path.join(d, r, "modules.dep"))]
    if not rels:
        pytest.skip("no installed kernel modules")   # unit test: CI's netns test boots the real one
    with open(os.path.join(d, rels[-1], "modules.dep")) as f:
        deps = ir.parse_modules_dep(f.read())
    order = [ir.module_name(p) for p in ir.module_load_order(deps, ["virtio_pci", "virtio_net", "nfsv3"])]
    assert order.index("sunrpc") < order.index("nfsv3") and order.index("virtio_ring") < order.index("virtio_net")


# ------------------------------------------------------------------------------ /proc parsers
ZONEINFO = """Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 10
      nr_free_pages 999
  pages free     3808
        boost    0
        min      96
        low      120
        high     144
        spanned  4095
        present  3998
        managed  3840
        cma      0
        protection: (0, 1234, 1234, 1234)
      nr_free_pages 3808
  pagesets
    cpu: 0
              count: 12
              high:  42
              batch: 1
  vm stats threshold: 2
  node_unreclaimable:  0
  start_pfn:           1
Node 0, zone    DMA32
  pages free     1289
        boost    0
        min      416
        low      520
        high     624
        spanned  28672
        present  28672
        managed  16640
      nr_free_pages 1289
  pagesets
    cpu: 0
              count: 40
              high:  378
              batch: 63
  node_unreclaimable:  0
  start_pfn:           4096
Node 0, zone   Normal
  pages free     0
        min      0
        low      0
        high     0
        spanned  0
        present  0
        managed  0
"""
NETSTAT = """TcpExt: SyncookiesSent PFMemallocDrop TCPBacklogDrop
TcpExt: 0 17 3
IpExt: InNoRoutes InOctets
IpExt: 0 12345
"""
SNMP = """Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 10 0 5 3 2 0 0 0 3
"""


def test_proc_parsers():
    z = parse.parse_zoneinfo(ZONEINFO)
    assert z["DMA"]["free"] == 3808 and z["DMA"]["min"] == 96 and z["DMA"]["managed"] == 3840
    assert z["DMA"]["protection"] == [0, 1234, 1234, 1234]
    assert z["DMA32"]["low"] == 520 and z["DMA32"]["high"] == 624   # not the pageset's "high:  378"
    assert z["Normal"]["managed"] == 0
    n = parse.parse_netstat(NETSTAT)
    assert n["TcpExt"]["PFMemallocDrop"] == 17 and n["IpExt"]["InOctets"] == 12345
    assert parse.parse_netstat(SNMP)["Udp"]["MemErrors"] == 3
    assert parse.parse_vmstat("nr_free_pages 5097\npswpout 12\n") == {"nr_free_pages": 5097, "pswpout": 12}
    s = parse.parse_sockstat("sockets: used 5\nUDP: inuse 4 mem 2048\n")
    assert s == {"sockets": {"used": 5}, "UDP": {"inuse": 4, "mem": 2048}}
    r = parse.parse_rpc_nfs("net 0 0 0 0\nrpc 1187 3 0\nproc3 22 0 1 2\n")
    assert r["rpc"] == {"calls": 1187, "retrans": 3, "authrefresh": 0} and r["proc3"] == [0, 1, 2]


def _record(seq, name, body):
    return f">>> {seq} {1000 + seq} {name}\n{body}<<<\n".encode()


def test_sampler_stream_incremental_and_torn():
    files = {"vmstat": "pswpout 1\nnr_free_pages 10\n", "zoneinfo": ZONEINFO, "netstat": NETSTAT,
             "snmp": SNMP, "sockstat": "UDP: inuse 4 mem 3\n", "rpc_nfs": "rpc 5 0 0\n"}
    data = b"".join(_record(0, k, v) for k, v in files.items())
    s = parse.SamplerStream()
    got = []
    for i in range(0, len(data), 7):                      # arbitrary chunking
        got += s.feed(data[i:i + 7])
    assert len(got) == 1 and got[0]["seq"] == 0 and got[0]["uptime_ms"] == 1000
    assert got[0]["vmstat"]["pswpout"] == 1 and got[0]["zoneinfo"]["DMA32"]["free"] == 1289
    # a record torn by a dying guest, then a complete sample
    torn = _record(1, "vmstat", "pswpout 2\n")[:-6]
    rest = b"".join(_record(2, k, v) for k, v in files.items())
    got = s.feed(torn + rest)
    assert s.torn == 1 and [g["seq"] for g in got] == [2]


# ------------------------------------------------------------------------------ console
def test_console_scanner_events():
    c = parse.ConsoleScanner()
    text = (b"[    7.375448] kworker/u2:1: page allocation failure: order:0, mode:0x20c40(GFP_NOFS|__GFP_MEMALLOC), nodemask=(null)\r\n"
            b"[  130.1] INFO: task kswapd0:34 blocked for more than 120 seconds.\n"
            b"[  61.0] nfs: server 198.18.0.1 not responding, still trying\n"
            b"@workload done pages=20000 verified=20000 bad=0 swapped_in_verified=10561\n"
            b"@step mounted opts=rw,vers=3\n[ 62.0] nfs: server 198.18.0.1 OK\npartial")
    ev = c.feed(text[:50]) + c.feed(text[50:])
    kinds = [e["kind"] for e in ev]
    assert kinds == ["page_allocation_failure", "hung_task", "nfs_not_responding", "workload", "step", "nfs_ok"]
    assert ev[0]["task"] == "kworker/u2:1" and ev[0]["gfp"] == "GFP_NOFS|__GFP_MEMALLOC" and ev[0]["t_kernel"] == 7.375448
    assert ev[1]["task"] == "kswapd0" and ev[1]["pid"] == 34 and ev[1]["seconds"] == 120
    assert ev[2]["server"] == "198.18.0.1" and ev[2]["how"] == "still trying"
    assert ev[3]["words"] == ["done"] and ev[3]["verified"] == 20000 and ev[3]["swapped_in_verified"] == 10561
    assert c.part == b"partial" and c.counts["page_allocation_failure"] == 1


# ------------------------------------------------------------------------------ watchdog on /proc
def _snap(free, pswpout, age=0.0, done=False, nas=0):
    z = parse.parse_zoneinfo(ZONEINFO)
    z["DMA32"]["free"] = free - z["DMA"]["free"]
    return {"proc": {"zoneinfo": z, "vmstat": {"pswpout": pswpout}}, "outside": {"nas_write_calls": nas},
            "sample": {"seq": 1, "age_s": age, "interval_s": 0.5},
            "workload": {"done": done, "verified": 9, "pages": 9, "swapped_in_verified": 4} if done else {},
            "evidence": ["console: 1 x page_allocation_failure"]}


def test_proc_view_sums_zones_and_atomic_floor():
    v = proc_view(_snap(5000, 7))
    z = v["alloc"]["zoneinfo"]
    assert (z["min"], z["low"], z["high"], z["managed"], z["free"]) == (512, 640, 768, 20480, 5000)
    # per zone: min - min/2, then minus a quarter: 96 -> 36, 416 -> 156
    assert v["alloc"]["reserve"]["atomic_floor"] == 36 + 156
    assert v["alloc"]["kswapd"]["wanted"] is False
    assert proc_view({"alloc": {}}) == {"alloc": {}}              # an agent snapshot passes unchanged


def test_watchdog_rules_on_a_real_kernel():
    wd = Watchdog(stall_threshold_s=2.0)
    assert wd.feed(0.0, _snap(600, 10)) is None                   # free < low: reclaim needed, progress
    assert wd.feed(1.0, _snap(600, 10, nas=5)) is None            # NAS writes are progress too
    assert wd.feed(2.0, _snap(600, 10, nas=5)) is None
    assert wd.feed(3.1, _snap(600, 10, nas=5)) == "deadlock"
    assert "pswpout" in wd.reasons[0] and any(e.startswith("NAS: 5 WRITE") for e in wd.evidence)
    # the stuck figure is pswpout + the NAS's WRITE calls: named as the sum it is, terms apart
    assert "writeback progress (pswpout 10 + NAS WRITE calls 5) stuck at 15 for" in wd.reasons[0]
    assert any("page_allocation_failure" in e for e in wd.evidence)
    # a silent guest (stale sample) with free above low counts as reclaim needed
    wd = Watchdog(stall_threshold_s=2.0)
    wd.feed(0.0, _snap(9000, 10))
    assert wd.feed(1.0, _snap(9000, 10, age=1.6)) is None
    assert wd.feed(3.2, _snap(9000, 10, age=3.8)) == "deadlock"
    assert "silent guest" in wd.reasons[0] and any(e.startswith("guest silent") for e in wd.evidence)
    # free under the atomic floor, then done and above high: recovered
    wd = Watchdog(stall_threshold_s=5.0)
    wd.feed(0.0, _snap(100, 1))
    assert wd.feed(1.0, _snap(9000, 50, done=True)) == "recovered"
    assert any("after swap-in" in e for e in wd.evidence)


def test_proc_view_gives_the_client_contract_shape():
    s = _snap(5000, 7)
    s["proc"]["netstat"] = parse.parse_netstat(NETSTAT)
    s["proc"]["snmp"] = {"Udp": {"InDatagrams": 10, "RcvbufErrors": 2, "MemErrors": 3}}
    s["proc"]["rpc_nfs"] = {"rpc": {"calls": 40, "retrans": 1}}
    v = proc_view(s)
    assert v["stack"]["counters"]["PFMemallocDrop"] == 17
    assert v["stack"]["drop_reasons"] == {"PFMEMALLOC": 17, "SOCKET_RCVBUFF": 2, "PROTO_MEM": 3, "SOCKET_BACKLOG": 3}
    assert v["nfs"]["counters"] == {"rpc_calls": 40, "rpc_retrans": 1}
    assert v["swap"]["pswpout"] == 7 and v["valid"] is True and v["proc"] is s["proc"]
    assert proc_view(v) is v                                      # already contract-shaped: unchanged


def test_linux_client_refuses_what_a_kernel_cannot_be_put_in_without_a_vm():
    from testbed.clients import ClientError
    from testbed.linux_vm.client import GuestSpec, LinuxVmClient, mount_options
    c = LinuxVmClient(GuestSpec(), "/nonexistent")
    dev = {"kind": "nfs", "server": "198.18.0.1", "port": 2049, "export": "swap", "image": "swap.img", "proto": "tcp"}
    for call, why in ((lambda: c.attach("swap", dev, memalloc=False), "xs_set_memalloc"),
                      (lambda: c.attach("mmap", dev, memalloc=False, policy="extended"), "never does"),
                      (lambda: c.attach("swap", {**dev, "kind": "nbd"}, memalloc=True), "NFS only"),
                      (lambda: c.set("pfmemalloc_demux_drop", False), "sk_filter_trim_cap"),
                      (lambda: c.set("napi_weight", 3), "not a key"),
                      (lambda: c.sinks([9001, 9002], "ordinary", 1 << 20), "never read"),
                      (lambda: c.workload_map(), "verifies every page itself")):
        with pytest.raises(ClientError, match=why):
            call()
    assert c.attach("swap", dev, memalloc=True)["options"] == mount_options(dev)
    assert c.spec.config["NSDT_MOUNT_OPTS"].startswith("vers=3,proto=tcp,nolock,hard,addr=198.18.0.1,port=2049")
    assert c.set("min_free_kbytes", 4096) == {"min_free_kbytes": 4096, "at": "boot"}
    assert c.spec.config["NSDT_MIN_FREE_KBYTES"] == 4096
    assert [s["port"] for s in c.sinks([9001, 9002], "none", 1 << 20)] == [9001, 9002]
    assert "timeo=5,retrans=2" in mount_options({**dev, "proto": "udp", "timeo_s": 0.5, "retrans": 2})


def test_fault_relay_counts_every_frame_both_ways():
    from testbed.linux_vm.relay import Relay

    class Wire:
        mtu, mac = 1500, b"\x02" * 6

        def __init__(self, frames):
            self.rx, self.tx = list(frames), []

        def receive(self, now, budget):
            out, self.rx = [(f, False) for f in self.rx[:budget]], self.rx[budget:]
            return out

        def transmit(self, frame, now):
            self.tx.append(frame)
            return True

        def poll_at(self):
            return None
    nic, tap = Wire([bytes([i]) * 60 for i in range(200)]), Wire([bytes([i]) * 70 for i in range(100)])
    r = Relay(nic, tap, {"loss": 0.1, "dup": 0.05, "seed": 3})
    t = 0.0
    while nic.rx or tap.rx:
        r.pump(t)
        t += 0.01
    s = r.snapshot()
    tg, fg = s["to_guest"], s["from_guest"]
    assert tg["tx_frames"] == 200 and fg["tx_frames"] == 100
    assert tg["lost"] + tg["passed"] == 200 and tg["lost"] > 0
    assert len(tap.tx) == tg["passed"] + tg["duplicated"] and len(nic.tx) == fg["passed"] + fg["duplicated"]
    # seeded: the same frames give the same faults
    nic2, tap2 = Wire([bytes([i]) * 60 for i in range(200)]), Wire([])
    r2 = Relay(nic2, tap2, {"loss": 0.1, "dup": 0.05, "seed": 3})
    r2.pump(0.0), r2.pump(0.01), r2.pump(0.02), r2.pump(0.03)
    assert tap2.tx == tap.tx


def test_side_by_side_rows_pair_agent_and_linux():
    from testbed.demo import format_side_by_side, side_by_side_rows
    a = {"name": "memalloc", "outcome": "recovered", "seed": 1, "time_to_stall_s": None, "time_to_recover_s": 9.0,
         "counters": {"pswpout": 900, "PFMemallocDrop": 3000, "drop_reasons": {"PFMEMALLOC": 3000, "NOMEM": 5}},
         "reserve_low_pages": 190, "pages_verified": 900, "pages_written": 900, "parameters": {"transport": "tcp"}}
    lx = {"name": "memalloc", "client": "linux", "outcome": "deadlock", "seed": 1, "time_to_stall_s": 2.5,
          "time_to_recover_s": None, "counters": {"pswpout": 1200, "PFMemallocDrop": 0, "drop_reasons": {}},
          "reserve_low_pages": 80, "pages_verified": None, "verification": {"pages": 20000},
          "parameters": {"guest_nfs_proto": "tcp"}}
    other = {"name": "no-reserve", "outcome": "deadlock", "counters": {}}
    rows = side_by_side_rows([a, other, lx])
    assert [(r["scenario"], r["client"]) for r in rows] == [("memalloc", "agent"), ("memalloc", "linux")]
    assert rows[0]["drop_reasons"] == {"PFMEMALLOC": 3000, "NOMEM": 5} and rows[1]["pages_total"] == 20000
    text = format_side_by_side(rows)
    assert "agent (tcp)" in text and "linux (tcp)" in text and "PFMEMALLOC:3000, NOMEM:5" in text and "-/20000" in text


def test_relay_completes_a_partial_checksum():
    from client_agent.wire import ipv4, tcp, udp
    from client_agent.wire.ipv4 import ip_aton
    from testbed.linux_vm.relay import complete_checksum
    src, dst = ip_aton("198.18.0.1"), ip_aton("198.18.0.2")
    for seg, proto, off in ((udp.emit(src, dst, 2049, 700, b"hello world!!"), 17, 6),
                            (tcp.emit(src, dst, 2049, 700, 1, 2, 0x18, 65535, payload=b"x" * 101), 6, 16)):
        good = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4.emit_header(src, dst, proto, len(seg)) + seg
        partial = bytearray(good)
        partial[34 + off:36 + off] = b"\x12\x34"          # what CHECKSUM_PARTIAL leaves there
        assert complete_checksum(bytes(partial)) == good
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + b"\x00" * 28
    assert complete_checksum(arp) == arp


def test_a_reserve_buffer_seen_counts_as_below_the_floor():
    """A kernel's 0.5 s samples miss a dip that the allocator's reserve use proves: PFMemallocDrop."""
    def snap(free, pswpout, pfdrop, done=False):
        s = _snap(free, pswpout, done=done)
        s["proc"]["netstat"] = {"TcpExt": {"PFMemallocDrop": pfdrop}}
        return s
    wd = Watchdog(stall_threshold_s=5.0)
    assert wd.feed(0.0, snap(600, 1, 0)) is None
    assert wd.feed(0.5, snap(610, 5, 40)) is None                  # free above the floor (192), reserve used
    assert wd.feed(2.0, snap(9000, 50, 40, done=True)) == "recovered"
    assert wd.time_to_stall_s == 0.5 and wd.time_to_recover_s == 1.5
    assert "PFMemallocDrop" in wd.reasons[0] and any("by a buffer from the reserve" in e for e in wd.evidence)
    wd = Watchdog(stall_threshold_s=5.0)                           # no reserve use, no dip: completed
    wd.feed(0.0, snap(600, 1, 0))
    assert wd.feed(2.0, snap(9000, 50, 0, done=True)) == "completed"
