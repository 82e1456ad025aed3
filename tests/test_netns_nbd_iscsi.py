"""NBD and iSCSI interop on real packets: nas-server's targets against third-party clients, and the
project's own NBD client / iSCSI initiator (``protocols``, over a kernel socket) against
third-party targets (nbdkit with its delay filter, nbd-server, qemu-nbd, tgt's tgtd).

Two namespaces joined by a veth (198.18.78.0/24); data on tmpfs; every namespace, process and file
is removed in the fixtures' ``finally``. tshark decodes the captured NBD and iSCSI traffic and must
find no malformed frame.
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

from nas_server.blockrefclient import IscsiRefClient, NbdRefClient
from nas_server.netpair import NetPair
from netns_setup import nsutil
from netns_setup.control import ControlClient
from protocols import scsi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAS = os.path.join(REPO, ".venv", "bin", "nas-server")
IMG_BYTES = 16 << 20
IQN = "iqn.2025-01.org.nsdeadlock.nas:swap.img"

pytestmark = pytest.mark.netns


def _wait_ready(r: int, what: str, log: str) -> None:
    got = b""
    deadline = time.monotonic() + 15
    while not got and time.monotonic() < deadline:
        got = os.read(r, 1)
    os.close(r)
    assert got == b"R", f"{what} did not signal readiness; log:\n{open(log).read()[-2000:]}"


class Nas:
    def __init__(self, net: NetPair, data_dir: str, run_dir: str):
        self.net, self.data_dir, self.run_dir = net, data_dir, run_dir
        self.control = os.path.join(run_dir, "nas.sock")
        self.log = os.path.join(run_dir, "nas.log")
        self.proc = None

    def start(self):
        r, w = os.pipe()
        argv = [NAS, "--data-dir", self.data_dir, "--export", "swap:198.18.78.0/24", "--create-image",
                f"img:{IMG_BYTES >> 20}M", "--create-image", "copy:16M", "--portmap-port", "0", "--nbd", "--iscsi",
                "--control", self.control, "--ready-fd", str(w)]
        self.proc = self.net.popen(self.net.server_ns, argv, pass_fds=(w,), stderr=open(self.log, "a"))
        os.close(w)
        _wait_ready(r, "nas-server", self.log)

    def snapshot(self):
        with ControlClient(self.control) as c:
            return c.call("snapshot")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def image(self, name="img") -> bytes:
        with open(os.path.join(self.data_dir, "swap", name), "rb") as f:
            return f.read()


@pytest.fixture(scope="module")
def nas():
    data_dir = f"/dev/shm/nbi-netns-{os.getpid()}"
    run_dir = data_dir + "-run"
    os.makedirs(run_dir, exist_ok=True)
    net = NetPair(tag="nbi", subnet_octet=78)
    try:
        n = Nas(net, data_dir, run_dir)
        n.start()
        yield n
    finally:
        net.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not any(ns in nsutil.list_netns() for ns in (net.server_ns, net.client_ns))




# a malformed frame that TCP analysis does not explain: a kernel retransmission (the two kernels'
# TCP, not ours) re-sends bytes tshark's reassembly already used, and its PDU dissector then flags
# the copy "(suspected retransmission?)" as malformed
MALFORMED = "_ws.malformed && !tcp.analysis.flags"


def client_run(nas, *argv, timeout_s=120):
    p = nas.net.run(nas.net.client_ns, list(argv), timeout_s=timeout_s)
    assert p.returncode == 0, (argv, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout.decode()


def test_nbdinfo_nbdcopy_qemu_img_byte_exact_decoded_by_tshark(nas):
    url = f"nbd://{nas.net.server_ip}/swap/copy"
    src = os.path.join(nas.run_dir, "rand")
    data = bytearray(random.Random(16).randbytes(IMG_BYTES))
    data[4 << 20 : 6 << 20] = bytes(2 << 20)  # a zero run: nbdcopy/qemu-img may send WRITE_ZEROES for it
    open(src, "wb").write(data)
    cap = TcpdumpCapture(nas.net, os.path.join(nas.run_dir, "nbd.pcap"))
    info = client_run(nas, "nbdinfo", url)
    assert "export-size: 16777216" in info and "can_fua: true" in info and "can_flush: true" in info, info
    listing = client_run(nas, "nbdinfo", "--list", f"nbd://{nas.net.server_ip}")
    assert 'export="swap/img"' in listing and 'export="swap/copy"' in listing, listing
    client_run(nas, "nbdcopy", "--flush", src, url)
    assert hashlib.sha256(nas.image("copy")).digest() == hashlib.sha256(data).digest()  # flushed: on disk
    back = os.path.join(nas.run_dir, "back")
    client_run(nas, "nbdcopy", url, back)
    assert open(back, "rb").read() == data
    client_run(nas, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, url)
    # qemu-img writes another pattern into the image over NBD, then compares it back
    data2 = random.Random(17).randbytes(IMG_BYTES)
    open(src, "wb").write(data2)
    client_run(nas, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, url)
    client_run(nas, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, url)
    cap.stop()
    snap = nas.snapshot()["nbd"]
    c = snap["counters"]
    assert c["NBD_OPT_GO"] >= 5 and c["NBD_CMD_WRITE_bytes"] >= 2 * IMG_BYTES - (2 << 20), c
    assert c["NBD_CMD_READ_bytes"] >= 2 * IMG_BYTES and c["NBD_CMD_FLUSH"] >= 1, c
    assert not any(k.startswith(("drop_", "NBD_E")) for k in c), c
    assert cap.tshark("-Y", MALFORMED) == ""
    types = cap.tshark("-Y", "nbd", "-T", "fields", "-e", "nbd.type").split()
    assert "0" in types and "1" in types, sorted(set(types))[:20]  # NBD_CMD_READ and NBD_CMD_WRITE decoded


def test_libiscsi_tools_read_write_byte_exact_decoded_by_tshark(nas):
    base = f"iscsi://{nas.net.server_ip}"
    lun0 = f"{base}/{IQN}/0"
    cap = TcpdumpCapture(nas.net, os.path.join(nas.run_dir, "iscsi.pcap"))
    ls = client_run(nas, "iscsi-ls", "-s", base)
    assert f"Target:{IQN} Portal:{nas.net.server_ip}:3260,1" in ls and "DIRECT_ACCESS" in ls, ls
    inq = client_run(nas, "iscsi-inq", lun0)
    assert "Vendor:NSDLOCK" in inq and "DIRECT_ACCESS" in inq, inq
    rc16 = client_run(nas, "iscsi-readcapacity16", lun0)
    assert f"RETURNED LOGICAL BLOCK ADDRESS:{IMG_BYTES // 512 - 1}" in rc16 and "BLOCK LENGTH IN BYTES:512" in rc16
    # byte-exact both ways through qemu-img's libiscsi driver (the tools above only query)
    src = os.path.join(nas.run_dir, "rand-iscsi")
    data = random.Random(18).randbytes(IMG_BYTES)
    open(src, "wb").write(data)
    client_run(nas, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, lun0)
    client_run(nas, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, lun0)
    cap.stop()
    c = nas.snapshot()["iscsi"]["counters"]
    assert c["login_accepts"] >= 5 and c["sessions_Discovery"] >= 1, c
    assert c.get("WRITE_16_bytes", 0) + c.get("WRITE_10_bytes", 0) >= IMG_BYTES, c
    assert c["datain_pdus"] > 0 and c.get("internal_errors", 0) == 0, c
    assert cap.tshark("-Y", MALFORMED) == ""
    ops = set(cap.tshark("-Y", "iscsi", "-T", "fields", "-e", "iscsi.opcode").replace(",", " ").split())
    assert {"0x03", "0x23", "0x01", "0x21", "0x25"} <= ops, ops  # login, SCSI command/response, Data-In


def test_iscsi_test_cu_conformance_subset(nas):
    """libiscsi's conformance tool, the SBC suites this LU implements; every test must pass
    (RDPROTECT/WRPROTECT included) -- the ones it skips are for commands the LU does not offer."""
    suites = ("SCSI.TestUnitReady,SCSI.Inquiry,SCSI.ReadCapacity10,SCSI.ReadCapacity16,SCSI.ReportLuns,"
              "SCSI.Read10,SCSI.Read16,SCSI.Write10,SCSI.Write16,SCSI.SynchronizeCache10,SCSI.SynchronizeCache16,"
              "SCSI.ModeSense6")
    run, passed, failed, out = _iscsi_test_cu(nas, suites, 300)
    assert failed == 0 and passed >= 35, out[-6000:]


def _iscsi_test_cu(nas, suites: str, timeout_s: float) -> tuple[int, int, int, str]:
    """Run libiscsi's iscsi-test-cu on LUN 0: (tests run, passed, failed, its output)."""
    p = nas.net.run(nas.net.client_ns, ["iscsi-test-cu", "-d", "-n", "-t", suites,
                                        f"iscsi://{nas.net.server_ip}/{IQN}/0"], timeout_s=timeout_s)
    out = p.stdout.decode()
    tests = [ln.split() for ln in out.splitlines() if ln.strip().startswith("tests")]
    assert tests, out[-3000:]
    _, run, _total, passed, failed, _inactive = tests[-1][:6]
    return int(run), int(passed), int(failed), out


ISCSI_FAMILY = ("iSCSI.iSCSIcmdsn,iSCSI.iSCSIdatasn,iSCSI.iSCSIResiduals.Read10Invalid,iSCSI.iSCSIResiduals.Read10Residuals,"
                "iSCSI.iSCSIResiduals.Read12Residuals,iSCSI.iSCSIResiduals.Read16Residuals,"
                "iSCSI.iSCSIResiduals.WriteVerify10Residuals,iSCSI.iSCSIResiduals.WriteVerify12Residuals,"
                "iSCSI.iSCSIResiduals.WriteVerify16Residuals,iSCSI.iSCSITMF.AbortTaskSimpleAsync")


def test_iscsi_test_cu_iscsi_family(nas):
    """libiscsi's iSCSI-layer tests (CmdSN window, DataSN order, residuals, ABORT TASK): all 11 pass
    (the READ12 and WRITE AND VERIFY residual tests pass as skipped: the LU does not offer them).
    Left out: Write10/16Residuals (they expect GOOD for a WRITE whose EDTL is smaller than the
    command's data; the target answers CHECK CONDITION as LIO does) and LUNResetSimpleAsync (Debian's
    libiscsi 1.19 asserts a flag before the TMF completes, fixed upstream in 5553d6b)."""
    run, passed, failed, out = _iscsi_test_cu(nas, ISCSI_FAMILY, 120)
    assert (run, failed, passed) == (11, 0, 11), out[-6000:]
    c = nas.snapshot()["iscsi"]["counters"]
    assert c["drop_cmdsn_outside_window"] >= 2 and c["drop_dataout_datasn_error"] >= 4, c


def test_own_clients_against_nas_server_fua_flush_and_restart(nas):
    """The protocols' clients against nas-server; restart semantics: a write acknowledged without
    FUA and not flushed may be lost by SIGKILL, FUA / flushed writes never are."""
    a, b, c, d = (bytes([x]) * 4096 for x in b"ABCD")
    with nsutil.entered(nas.net.client_ns):
        n = NbdRefClient(nas.net.server_ip, 10809, b"swap/img")
        n.write(0, a, fua=True)
        n.write(4096, b)
        n.flush()
        i = IscsiRefClient(nas.net.server_ip, 3260, IQN, header_digest="CRC32C", data_digest="CRC32C")
        assert i.capacity() == (IMG_BYTES // 512, 512)
        i.write(64, d, fua=True)             # LBA 64 = byte 32768
        # after the last durable write (which also writes out what was pending before it):
        n.write(8192, c)                     # unflushed
        i.write(72, d)                       # unflushed, byte 36864
        assert n.read(0, 12288) == a + b + c and i.read(64, 16) == d + d
        i.nop()
    img = nas.image()
    assert img[:8192] == a + b and img[32768:36864] == d  # durable before the reply
    nas.kill()
    nas.start()
    with nsutil.entered(nas.net.client_ns):
        n = NbdRefClient(nas.net.server_ip, 10809, b"swap/img", structured=False)
        got = n.read(0, 40960)
        n.close()
    assert got[:8192] == a + b and got[32768:36864] == d
    assert got[8192:12288] == bytes(4096) and got[36864:40960] == bytes(4096)  # unflushed: lost with the process


# -- third-party targets, the project's own clients ---------------------------------------------
@pytest.fixture(scope="module")
def peers():
    run_dir = f"/dev/shm/nbi-peers-{os.getpid()}"
    os.makedirs(run_dir, exist_ok=True)
    net = NetPair(tag="nbp", subnet_octet=79)
    try:
        yield net, run_dir
    finally:
        net.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _wait_port(net: NetPair, port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        p = net.run(net.server_ns, ["ss", "-Hltn", f"sport = :{port}"], timeout_s=5)
        if p.stdout.strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} never listened on {port}")


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def _nbd_round_trip(net: NetPair, export: bytes, **kw) -> dict:
    rnd = random.Random(19)
    blocks = {off: rnd.randbytes(4096) for off in range(0, 1 << 20, 65536)}
    with nsutil.entered(net.client_ns):
        c = NbdRefClient(net.server_ip, 10809, export, **kw)
        for i, (off, data) in enumerate(blocks.items()):
            c.write(off, data, fua=bool(i % 2))
        c.flush()
        ready = c.ready
        got = {off: c.read(off, 4096) for off in blocks}
        big = rnd.randbytes(256 << 10)
        c.write(1 << 20, big)
        assert c.read(1 << 20, len(big)) == big
        c.close()
    assert got == blocks
    return {"via": ready.via, "structured": ready.structured, "size": ready.size_bytes, "flags": ready.transmission_flags}


def test_own_nbd_client_against_nbdkit_with_delay_filter(peers):
    net, _run = peers
    p = net.popen(net.server_ns, ["nbdkit", "-f", "-i", net.server_ip, "-p", "10809", "--filter=delay",
                                  "memory", "64M", "wdelay=5ms", "rdelay=2ms"])
    try:
        _wait_port(net, 10809, p, "nbdkit")
        r = _nbd_round_trip(net, b"")
        assert r["via"] == "NBD_OPT_GO" and r["structured"] and r["size"] == 64 << 20, r
    finally:
        _stop(p)


def test_own_nbd_client_against_nbd_server(peers):
    net, run = peers
    img = os.path.join(run, "nbd-server.img")
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    conf = os.path.join(run, "nbd-server.conf")
    with open(conf, "w") as f:
        f.write(f"[generic]\n    listenaddr = {net.server_ip}\n    port = 10809\n    allowlist = true\n"
                f"[swap]\n    exportname = {img}\n    flush = true\n    fua = true\n")
    p = net.popen(net.server_ns, ["nbd-server", "-C", conf, "-d"], stderr=subprocess.DEVNULL)
    try:
        _wait_port(net, 10809, p, "nbd-server")
        r = _nbd_round_trip(net, b"swap")
        assert r["via"] == "NBD_OPT_GO" and r["size"] == 16 << 20, r
    finally:
        _stop(p)


def test_own_nbd_client_against_qemu_nbd_simple_and_export_name_fallback(peers):
    net, run = peers
    img = os.path.join(run, "qemu-nbd.img")
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    p = net.popen(net.server_ns, ["qemu-nbd", "-f", "raw", "-x", "swap", "-b", net.server_ip, "-p", "10809",
                                  "-t", "--cache=none", img])
    try:
        _wait_port(net, 10809, p, "qemu-nbd")
        r = _nbd_round_trip(net, b"swap", structured=False)
        assert r["via"] == "NBD_OPT_GO" and not r["structured"], r
        r = _nbd_round_trip(net, b"swap", use_go=False)
        assert r["via"] == "NBD_OPT_EXPORT_NAME", r
    finally:
        _stop(p)


def test_own_iscsi_initiator_against_tgtd(peers):
    net, run = peers
    img = os.path.join(run, "tgt.img")
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    ctl = str(1000 + os.getpid() % 30000)  # tgtd's management socket /var/run/tgtd/socket.N (N <= 32767)
    made_run_dir = not os.path.isdir("/var/run/tgtd")
    p = net.popen(net.server_ns, ["tgtd", "-f", "-C", ctl, "--iscsi", f"portal={net.server_ip}:3260"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    iqn = "iqn.2025-01.org.nsdeadlock.test:tgt"
    try:
        _wait_port(net, 3260, p, "tgtd")
        for args in (["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn],
                     ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", img],
                     ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]):
            q = net.run(net.server_ns, ["tgtadm", "-C", ctl, "--lld", "iscsi", *args], timeout_s=20)
            assert q.returncode == 0, (args, q.stderr)
        with nsutil.entered(net.client_ns):
            assert (iqn, f"{net.server_ip}:3260,1") in IscsiRefClient.discover(net.server_ip, 3260)
            for hd in ("None", "CRC32C,None"):
                # tgt answers None to a CRC32C-first offer: the initiator takes the target's choice
                # from its own list (a choice outside it is a negotiation failure)
                i = IscsiRefClient(net.server_ip, 3260, iqn, header_digest=hd, data_digest=hd, lun=1)
                assert i.params.HeaderDigest in hd.split(",") and i.params.DataDigest in hd.split(",")
                assert i.capacity() == ((16 << 20) // 512, 512)
                luns = i.checked(scsi.cdb_report_luns(), read_bytes=4096)
                assert int.from_bytes(luns[:4], "big") >= 16, luns[:32].hex()  # LUN 0 (controller) and 1
                data = random.Random(20 + len(hd)).randbytes(1 << 20)  # > FirstBurstLength: R2T/Data-Out
                i.write(2048, data, fua=True)
                i.write(0, data[:4096])
                i.sync()
                assert i.read(2048, len(data) // 512) == data and i.read(0, 8) == data[:4096]
                i.nop()
                i.logout()
        with open(img, "rb") as f:
            assert f.read(4096) == data[:4096]
    finally:
        p.kill()  # tgtd holds no state worth a clean stop (tgtadm --op delete --mode system)
        p.wait(5)
        for leftover in (f"/var/run/tgtd/socket.{ctl}", f"/var/run/tgtd/socket.{ctl}.lock"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        if made_run_dir:
            try:
                os.rmdir("/var/run/tgtd")
            except OSError:
                pass
