"""nas-server against independent peers in two namespaces joined by a veth (addresses 198.18.77.0/24).

rpcinfo (libtirpc), libnfs's nfs-cp/nfs-cat, tshark decoding tcpdump captures, and the reference
client over kernel UDP/TCP. Data directories live on tmpfs (/dev/shm); every namespace, veth and
process is removed even when a test fails (NetPair.close in the fixture's finally).
"""

import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import time

import pytest
from capture_kit import TcpdumpCapture

from nas_server.netpair import NetPair
from protocols import nfs3, rpc
from nas_server.refclient import RefClient, page_data
from netns_setup import nsutil
from netns_setup.control import ControlClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAS = os.path.join(REPO, ".venv", "bin", "nas-server")
IMG_BYTES = 64 << 20


class Nas:
    def __init__(self, net: NetPair, data_dir: str, run_dir: str):
        self.net, self.data_dir, self.run_dir = net, data_dir, run_dir
        self.proc = None
        self.control = os.path.join(run_dir, "nas.sock")
        self.log = os.path.join(run_dir, "nas.log")

    def start(self):
        r, w = os.pipe()
        argv = [NAS, "--data-dir", self.data_dir, "--export", "swap:198.18.77.0/24",
                "--create-image", "img:64M", "--create-image", "small:4M", "--new-image-size", "4M",
                "--control", self.control, "--ready-fd", str(w)]
        self.proc = self.net.popen(self.net.server_ns, argv, pass_fds=(w,), stderr=open(self.log, "a"))
        os.close(w)
        got = b""
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            got = os.read(r, 1)
        os.close(r)
        assert got == b"R", f"nas-server did not signal readiness; log:\n{open(self.log).read()[-2000:]}"

    def snapshot(self):
        with ControlClient(self.control) as c:
            return c.call("snapshot")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


@contextlib.contextmanager
def running_nas(tag: str = "nas", subnet_octet: int = 77, client_ips: tuple[str, ...] = ()):
    """nas-server in a fresh NetPair, data on tmpfs; ``client_ips`` are extra client addresses."""
    data_dir = f"/dev/shm/{tag}-netns-{os.getpid()}"
    run_dir = data_dir + "-run"
    os.makedirs(run_dir, exist_ok=True)
    net = NetPair(tag=tag, subnet_octet=subnet_octet)
    try:
        for ip in client_ips:
            p = net.run(net.client_ns, ["ip", "addr", "add", f"{ip}/24", "dev", net.client_if])
            assert p.returncode == 0, p.stderr
        n = Nas(net, data_dir, run_dir)
        n.start()
        yield n
    finally:
        net.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        if not os.environ.get("NAS_KEEP_RUN"):
            shutil.rmtree(run_dir, ignore_errors=True)
    assert not any(ns in nsutil.list_netns() for ns in (net.server_ns, net.client_ns))


@pytest.fixture(scope="module")
def nas():
    with running_nas() as n:
        yield n


def client(nas, transport, **kw) -> RefClient:
    with nsutil.entered(nas.net.client_ns):  # the socket belongs to the namespace it was made in
        return RefClient(nas.net.server_ip, 2049, transport, **kw)




def test_rpcinfo_null_over_udp_and_tcp(nas):
    for flag in ("-u", "-t"):
        for prog in ("100003", "100005"):
            p = nas.net.run(nas.net.client_ns, ["rpcinfo", flag, nas.net.server_ip, prog, "3"], timeout_s=20)
            assert p.returncode == 0 and b"ready and waiting" in p.stdout, (flag, prog, p.stdout, p.stderr)
    p = nas.net.run(nas.net.client_ns, ["rpcinfo", "-p", nas.net.server_ip], timeout_s=20)
    assert p.stdout.count(b"2049") == 4 and b"portmapper" in p.stdout


def test_nfs_cp_and_nfs_cat_round_trip_decoded_by_tshark(nas):
    src = os.path.join(nas.run_dir, "rand4m")
    data = random.Random(44).randbytes(4 << 20)
    open(src, "wb").write(data)
    cap = TcpdumpCapture(nas.net, os.path.join(nas.run_dir, "libnfs.pcap"), buffer_kib=131072)
    url = f"nfs://{nas.net.server_ip}/swap/copied?version=3"
    p = nas.net.run(nas.net.client_ns, ["nfs-cp", src, url])
    assert p.returncode == 0 and b"copied 4194304 bytes" in p.stdout, p.stderr
    p = nas.net.run(nas.net.client_ns, ["nfs-cat", url])
    cap.stop()
    assert p.returncode == 0 and len(p.stdout) == len(data) and p.stdout == data
    with open(os.path.join(nas.data_dir, "swap", "copied"), "rb") as f:  # durable on the server's disk
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert cap.tshark("-Y", "_ws.malformed") == ""
    procs = cap.tshark("-Y", "nfs && rpc.msgtyp == 0", "-T", "fields", "-e", "nfs.procedure_v3").split()
    # WRITE, READ, CREATE calls decoded (a 1 MiB record can lose a segment in the capture at this
    # rate, so not every one of the 4 WRITEs and 4 READs is always reassembled by tshark)
    assert "8" in procs and "19" in procs and "3" in procs, procs       # CREATE, FSINFO, LOOKUP
    if not (procs.count("7") >= 1 and procs.count("6") >= 1):
        # a 1 MiB WRITE/READ record spans ~700 segments: tshark decodes it only if the capture
        # kept every one. Then the capture (not the server) must say it lost some.
        assert cap.tshark("-Y", "tcp.analysis.lost_segment || tcp.analysis.ack_lost_segment"), procs
    assert "MNT" in cap.tshark("-Y", "mount")


def test_udp_retransmission_answered_from_drc_and_seen_by_tshark(nas):
    before = nas.snapshot()
    cap = TcpdumpCapture(nas.net, os.path.join(nas.run_dir, "dup.pcap"), buffer_kib=131072)
    c = client(nas, "udp")
    try:
        root = c.mount("/swap")
        fh, _ = c.lookup(root, "small")
        xid = c.next_xid()
        msg = nfs3.encode_write_call(xid, fh, 0, b"D" * 4096, nfs3.FILE_SYNC, c.cred)
        r1 = c.pump([(xid, msg)])[xid]
        r2 = c.pump([(xid, msg)])[xid]  # a deliberate retransmission: same xid, same bytes
    finally:
        c.close()
    cap.stop()
    after = nas.snapshot()
    assert r1 == r2 and nfs3.decode_write_reply(r2).status == 0
    assert after["drc"]["hits"] - before["drc"]["hits"] == 1
    assert after["counters"]["write_bytes_FILE_SYNC"] - before["counters"].get("write_bytes_FILE_SYNC", 0) == 4096
    assert cap.tshark("-Y", "_ws.malformed") == ""
    dups = cap.tshark("-Y", f"rpc.xid == {xid:#x} && rpc.dup", "-T", "fields", "-e", "rpc.msgtyp").split()
    assert sorted(dups) == ["0", "1"], dups  # tshark marks the second call and the second reply as duplicates


@pytest.mark.parametrize("transport,io_bytes", [("udp", 32768), ("tcp", 65536)])
def test_refclient_64mib_write_read_verify(nas, transport, io_bytes):
    c = client(nas, transport)
    try:
        root = c.mount("/swap")
        fh, attr = c.lookup(root, "img")
        assert attr.size == IMG_BYTES
        w = c.write_pages(fh, IMG_BYTES, io_bytes, seed=11)
        verf = c.commit(fh)
        v = c.verify_pages(fh, IMG_BYTES, io_bytes, seed=11)
    finally:
        c.close()
    assert w["calls"] == IMG_BYTES // io_bytes and w["verifiers"] == [verf.hex()]
    assert v["verified"] and v["bad_offsets"] == [] and v["calls"] == IMG_BYTES // io_bytes
    print(f"{transport} {io_bytes}: write {w['mib_per_s']:.0f} MiB/s, read {v['mib_per_s']:.0f} MiB/s, "
          f"retransmits {c.stats['retransmits']}")


def test_sigkill_loses_unstable_data_and_verifier_changes(nas):
    c = client(nas, "tcp")
    try:
        root = c.mount("/swap")
        fh, _ = c.lookup(root, "small")
        c.write_pages(fh, 4 << 20, 32768, seed=1, stable=nfs3.FILE_SYNC)
        c.commit(fh)
        w = c.write_pages(fh, 4 << 20, 32768, seed=2, stable=nfs3.UNSTABLE)
        old_verf = bytes.fromhex(w["verifiers"][0])
    finally:
        c.close()
    assert nas.snapshot()["pending_unstable_bytes"] == 4 << 20
    nas.kill()
    nas.start()
    c = client(nas, "tcp")
    try:
        root = c.mount("/swap")
        fh2, _ = c.lookup(root, "small")
        assert fh2 == fh  # file handles survive a restart
        new_verf = c.commit(fh)
        assert new_verf != old_verf
        assert c.verify_pages(fh, 4 << 20, 32768, seed=1)["verified"]  # UNSTABLE seed-2 data is gone
        w = c.write_pages(fh, 4 << 20, 32768, seed=2, stable=nfs3.UNSTABLE)  # the client resends
        assert w["verifiers"] == [new_verf.hex()] and c.commit(fh) == new_verf
        assert c.verify_pages(fh, 4 << 20, 32768, seed=2)["verified"]
    finally:
        c.close()


def test_malformed_calls_over_tcp_many_per_connection(nas):
    from tests.test_nas_core import _classify, _fuzz_calls

    path = os.path.join(nas.data_dir, "swap", "img")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    before = nas.snapshot()
    c = client(nas, "tcp")
    root = c.mount("/swap")
    fh, _ = c.lookup(root, "img")
    c.close()
    rng = random.Random(9)
    answered, sent = 0, 0
    kinds = {}
    for conn in range(5):
        with nsutil.entered(nas.net.client_ns):
            s = socket.create_connection((nas.net.server_ip, 2049), timeout=10)
        calls = [m for _, m in _fuzz_calls(rng, root, fh, 1000, IMG_BYTES)]
        s.sendall(b"".join(rpc.frame_record(m) for m in calls))
        sent += len(calls)
        rm = rpc.RecordReassembler()
        expected = sum(1 for m in calls if len(m) >= 8 and m[4:8] == b"\0\0\0\0")  # CALLs get an answer or a drop
        got = []
        s.settimeout(3)
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                got += rm.feed(data)
                if len(got) >= expected:
                    break
        except socket.timeout:
            pass
        s.close()
        for r in got:
            k = _classify(r)
            kinds[k] = kinds.get(k, 0) + 1
        answered += len(got)
    after = nas.snapshot()
    assert nas.proc.poll() is None, "the server died"
    drops = sum(v - before["counters"].get(k, 0) for k, v in after["counters"].items() if k.startswith("drop_"))
    assert answered + drops == sent, (answered, drops, sent)
    assert after["counters"].get("internal_errors", 0) == 0
    assert kinds["GARBAGE_ARGS"] > 0 and kinds["NFS3ERR_STALE"] > 0 and kinds["PROC_UNAVAIL"] > 0 and "OK" not in kinds
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest


def test_write_latency_delays_each_reply_without_serialising_calls(nas):
    """--write-latency-ms / set write_latency_ms: every UDP reply leaves that long after its call,
    while other calls keep being served (the client's window, not the server, bounds the rate)."""
    latency_ms = 40
    with ControlClient(nas.control) as ctl:
        ctl.call("set", key="write_latency_ms", value=latency_ms)
    c = client(nas, "udp")
    try:
        root = c.mount("/swap")
        fh, _ = c.lookup(root, "small")
        before = nas.snapshot()["server"].get("udp_replies_delayed", 0)
        t0 = time.monotonic()
        c.write(fh, 0, page_data(5, 0, 4096))
        one_call_s = time.monotonic() - t0
        w = c.write_pages(fh, 32 * 4096, 4096, seed=5, window=16)
        after = nas.snapshot()["server"]["udp_replies_delayed"]
    finally:
        with ControlClient(nas.control) as ctl:
            ctl.call("set", key="write_latency_ms", value=0)
        c.close()
    assert one_call_s >= latency_ms / 1000            # a reply can never beat the service time
    assert after - before == 1 + 32                    # every reply after the snapshot was delayed
    assert w["calls"] == 32 and c.stats["retransmits"] == 0
    # 32 calls in windows of 16: about 2 service times, far from the 32 a serialising server takes
    assert w["seconds"] < 16 * latency_ms / 1000, w
