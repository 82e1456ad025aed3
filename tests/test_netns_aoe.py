"""AoE on real packets, two namespaces joined by a veth (no IP needed: AoE is raw Ethernet, 0x88A2).

- The agent's initiator core (``AoeDev`` through its thin AF_PACKET driver) against vblade
  (Debian's AoE target): discover, IDENTIFY, write, FLUSH CACHE, read back byte-exactly, and the
  image file read independently.
- nas-server's AoE target answering aoetools' userspace probes (``aoeping`` IDENTIFY over raw
  sockets, ``aoecfg`` config set/read), which need no kernel module, and the same initiator.
- tshark decodes every AoE frame of both captures, with no malformed frame.
- 2,000 seeded malformed frames (tests/test_aoe_fuzz.py's cases, readdressed) into the running
  nas-server through its AF_PACKET socket: every AoE one counted once, none an internal error or a
  write, the image file unchanged, the process alive, then a clean read of what was written before.
Everything created (namespaces, veth, processes, files) is removed in the fixtures' finally.
"""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
from capture_kit import TcpdumpCapture

from client_agent.drivers.block.aoe_io import AoeSocketDriver
from nas_server.netpair import NetPair
from netns_setup import nsutil
from netns_setup.control import ControlClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAS = os.path.join(REPO, ".venv", "bin", "nas-server")
IMG_BYTES = 8 << 20
PAGES = 64


@pytest.fixture(scope="module")
def net():
    run_dir = f"/dev/shm/aoe-netns-{os.getpid()}"
    os.makedirs(run_dir)
    pair = NetPair(tag="aoe", subnet_octet=81)
    try:
        pair.run_dir = run_dir
        yield pair
    finally:
        pair.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not any(ns in nsutil.list_netns() for ns in (pair.server_ns, pair.client_ns))




def driver(net, shelf, slot) -> AoeSocketDriver:
    with nsutil.entered(net.client_ns):  # the AF_PACKET socket belongs to the namespace it was made in
        return AoeSocketDriver(net.client_if, shelf, slot)


def write_read_verify(drv: AoeSocketDriver, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pages = [rng.randbytes(4096) for _ in range(PAGES)]
    writes = [drv.dev.write_page(i, p, time.monotonic()) for i, p in enumerate(pages)]
    drv.wait(writes)
    assert all(w.status == 0 and w.durable for w in writes), [w.error for w in writes if w.status]
    reads = [drv.dev.read_page(i, time.monotonic()) for i in range(PAGES)]
    drv.wait(reads)
    assert all(r.status == 0 for r in reads)
    assert [bytes(r.data) for r in reads] == pages
    return pages


def assert_tshark_decodes(cap: TcpdumpCapture, min_frames: int) -> dict:
    assert "\n0 packets dropped by kernel" in cap.stats, cap.stats
    assert cap.tshark("-Y", "_ws.malformed || _ws.expert.severity >= error") == ""
    cmds = cap.tshark("-Y", "aoe", "-T", "fields", "-e", "aoe.cmd", "-e", "aoe.response", "-e", "aoe.ata.cmd").splitlines()
    assert len(cmds) >= min_frames
    total = int(cap.tshark("-T", "fields", "-e", "frame.number").split()[-1])
    assert len(cmds) == total  # every captured frame is AoE and decoded as such
    return {"frames": total, "ata_cmds": sorted({c.split("\t")[2] for c in cmds if c.split("\t")[2]})}


def test_initiator_against_vblade(net):
    img = os.path.join(net.run_dir, "vblade.img")
    with open(img, "wb") as f:
        f.truncate(IMG_BYTES)
    cap = TcpdumpCapture(net, os.path.join(net.run_dir, "vblade.pcap"), "ether", "proto", "0x88a2", side="client")
    # -s: O_SYNC, so an acknowledged write is on disk (vblade's FLUSH CACHE is a no-op)
    vb = net.popen(net.server_ns, ["vblade", "-s", "3", "7", net.server_if, img],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    drv = driver(net, 3, 7)
    try:
        drv.activate(timeout_s=10)
        d = drv.dev
        assert d.ident.sectors == IMG_BYTES // 512 and d.ident.lba48 and "vblade" in d.ident.model
        assert d.fw_ver == 0x4019                        # vblade 25: FWV = 0x4000 + 25
        assert d.maxbcnt == 1024                         # (1500 - 36) // 512 sectors per frame
        pages = write_read_verify(drv, seed=5)
        snap = d.snapshot()
    finally:
        drv.close()
        vb.send_signal(signal.SIGTERM)
        vb.wait(5)
        cap.stop()
    with open(img, "rb") as f:                           # the image, read independently of AoE
        assert f.read(PAGES * 4096) == b"".join(pages)
    assert snap["flush"] == "FLUSH CACHE"                 # vblade's IDENTIFY offers 0xE7, not 0xEA
    assert snap["counters"]["write_ok"] == PAGES and snap["counters"]["read_ok"] == PAGES
    assert snap["target"]["w"] == PAGES * 4 and snap["target"]["r"] == PAGES * 4   # 4 KiB = 4 frames of 1 KiB
    assert snap["drops"].get("internal_error", 0) == 0
    seen = assert_tshark_decodes(cap, min_frames=2 + 2 * PAGES * (4 + 4 + 1))
    assert {"0x24", "0x34", "0xe7", "0xec"} <= set(seen["ata_cmds"]), seen


class Nas:
    def __init__(self, net, name="nas"):
        self.net = net
        self.data_dir = os.path.join(net.run_dir, name)
        self.control = os.path.join(net.run_dir, f"{name}.sock")
        self.log = os.path.join(net.run_dir, f"{name}.log")

    def start(self):
        r, w = os.pipe()
        argv = [NAS, "--data-dir", self.data_dir, "--export", "swap", "--create-image", "img:8M",
                "--portmap-port", "0", "--aoe-interface", self.net.server_if, "--aoe-disk", "2.1=swap/img",
                "--aoe-service-ms", "1", "--control", self.control, "--ready-fd", str(w)]
        self.proc = self.net.popen(self.net.server_ns, argv, pass_fds=(w,), stderr=open(self.log, "a"))
        os.close(w)
        got, deadline = b"", time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            got = os.read(r, 1)
        os.close(r)
        assert got == b"R", open(self.log).read()[-2000:]

    def snapshot(self):
        with ControlClient(self.control) as c:
            return c.call("snapshot")["aoe"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def test_nas_target_answers_aoetools_probes_and_the_initiator(net):
    nas = Nas(net)
    nas.start()
    cap = TcpdumpCapture(net, os.path.join(net.run_dir, "nas.pcap"), "ether", "proto", "0x88a2", side="client")
    try:
        # aoeping: config query, then ATA IDENTIFY, pretty-printed (raw socket, no aoe module)
        p = net.run(net.client_ns, ["aoeping", "-I", "-s", "5", "2", "1", net.client_if], timeout_s=20, text=True)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "model: nas-server AoE target" in p.stdout and "serial_number: NAS2.1" in p.stdout, p.stdout
        # aoecfg: set the config string (unconditional), then read it back
        p = net.run(net.client_ns, ["aoecfg", "-c", "fset", "-s", "swap-of-host-a", "-t", "1", "2", "1", net.client_if],
                    timeout_s=20, text=True)
        assert p.returncode == 0 and "swap-of-host-a" in p.stdout, (p.stdout, p.stderr)
        p = net.run(net.client_ns, ["aoecfg", "-t", "1", "2", "1", net.client_if], timeout_s=20, text=True)
        assert "swap-of-host-a" in p.stdout, (p.stdout, p.stderr)
        # our initiator against the same target
        drv = driver(net, 2, 1)
        try:
            drv.activate(timeout_s=10)
            assert drv.dev.ident.sectors == IMG_BYTES // 512 and drv.dev.ident.flush_cmd == 0xEA
            pages = write_read_verify(drv, seed=9)
        finally:
            drv.close()
        snap = nas.snapshot()
    finally:
        cap.stop()
        nas.stop()
    with open(os.path.join(nas.data_dir, "swap", "img"), "rb") as f:
        assert hashlib.sha256(f.read(PAGES * 4096)).digest() == hashlib.sha256(b"".join(pages)).digest()
    disk = snap["disks"]["e2.1"]
    assert disk["config"] == "swap-of-host-a"
    assert disk["write_sectors"] == PAGES * 8 and disk["read_sectors"] == PAGES * 8
    assert disk["ata_identify"] >= 2 and disk["ata_flush"] == PAGES
    assert not any(k.startswith("drop_") or k == "internal_error" for k in snap["dispositions"]), snap["dispositions"]
    seen = assert_tshark_decodes(cap, min_frames=2 * PAGES * 9)
    assert {"0x24", "0x34", "0xea", "0xec"} <= set(seen["ata_cmds"]), seen


def test_malformed_frames_into_the_running_nas_server_then_a_clean_read(net):
    """The real process, its socket and loop (the 100,000-frame run is the core's, in-memory:
    tests/test_aoe_fuzz.py): 2,000 seeded malformed frames from the client's side of the veth."""
    import socket
    from aoe_wire_kit import MAC_INI, MAC_TGT, SHELF, SLOT
    from netns_setup.nsutil import link_mtu_mac
    from test_aoe_fuzz import Rng, target_case
    n_frames = 2000
    nas = Nas(net, "nasfuzz")
    nas.start()
    try:
        drv = driver(net, 2, 1)
        try:
            drv.activate(timeout_s=10)
            pages = write_read_verify(drv, seed=11)
        finally:
            drv.close()
        with open(os.path.join(nas.data_dir, "swap", "img"), "rb") as f:
            before = hashlib.sha256(f.read()).hexdigest()
        s0 = nas.snapshot()
        with nsutil.entered(net.client_ns):
            mtu, cli_mac = link_mtu_mac(net.client_if)
            with nsutil.entered(net.server_ns):
                _mtu, nas_mac = link_mtu_mac(net.server_if)
            sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sk.bind((net.client_if, 0))
        rng, sent, aoe_sent, unsendable = Rng(20261130), 0, 0, 0
        try:
            while sent < n_frames:
                _cat, f, _allowed = target_case(rng)
                # readdress the core fuzz's frames to this target (MAC, e2.1) and from this client
                if f[0:6] == MAC_TGT:
                    f = nas_mac + f[6:]
                if f[6:12] == MAC_INI:
                    f = f[:6] + cli_mac + f[12:]
                if len(f) >= 19 and f[16:19] == bytes([0, SHELF, SLOT]):
                    f = f[:16] + b"\x00\x02\x01" + f[19:]
                if not 14 <= len(f) <= 14 + mtu:
                    unsendable += 1                     # no Ethernet header, or beyond the MTU: the kernel refuses it
                    continue
                sk.send(f)
                sent += 1
                aoe_sent += f[12:14] == b"\x88\xa2"
                if sent % 50 == 0:
                    time.sleep(0.002)                   # paced: the target's socket buffer, not the point
        finally:
            sk.close()
        time.sleep(0.5)
        s1 = nas.snapshot()
        assert nas.proc.poll() is None                  # no crash
        got = s1["frames_in"] - s0["frames_in"]
        assert sent == n_frames
        assert got + (s1["port"]["tp_drops"] - s0["port"]["tp_drops"]) == aoe_sent and got > n_frames // 2
        d = {k: v - s0["dispositions"].get(k, 0) for k, v in s1["dispositions"].items() if v != s0["dispositions"].get(k, 0)}
        assert sum(d.values()) == got                   # every frame counted exactly once
        assert "internal_error" not in d and "ata_write" not in d, d
        with open(os.path.join(nas.data_dir, "swap", "img"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == before
        # a clean read afterwards: what was written before the storm, byte for byte
        drv = driver(net, 2, 1)
        try:
            drv.activate(timeout_s=10)
            reads = [drv.dev.read_page(i, time.monotonic()) for i in range(PAGES)]
            drv.wait(reads)
        finally:
            drv.close()
        assert all(r.status == 0 for r in reads) and [bytes(r.data) for r in reads] == pages
        print(f"nas-server: {sent} malformed frames sent ({aoe_sent} AoE; {unsendable} shorter than a header or "
              f"longer than the MTU not sent), {got} counted by the target: {dict(sorted(d.items()))}")
    finally:
        nas.stop()
