"""``testbed bench`` NAS section: reference-client throughput against nas-server and nfs-ganesha.

Invariant owned here: every figure is measured in this run, in namespaces this function creates and
removes (NetPair, 198.18.79.0/24), with data on tmpfs; the baseline is the same client, same sizes,
same seed, against nfs-ganesha (VFS FSAL, run in userspace with its own rpcbind inside a private
mount namespace). If ganesha cannot run, the figures keep ``baseline: None`` and the reason is in
``baseline_error`` -- never a made-up number.

Figure shape (the bench JSON): name, value, unit, baseline, ratio, target, met.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .netpair import NetPair

# (transport, io_bytes): UDP cannot carry a 64 KiB WRITE in one datagram (65507-byte limit), so
# its large size is 32 KiB, the UDP wtmax Linux uses too.
CASES = (("udp", 4096), ("udp", 32768), ("tcp", 4096), ("tcp", 65536))
TARGET_RATIO = 0.5  # a Python server at half a C server's throughput is "good enough" for the testbed
GANESHA_MOUNT_PORT = 20048
_GANESHA_CONF = """
NFS_CORE_PARAM {{ Protocols = 3; NFS_Port = 2049; MNT_Port = {mport}; Enable_NLM = false;
                 Enable_RQUOTA = false; Bind_addr = {ip}; }}
NFSV4 {{ Graceless = true; }}
EXPORT {{ Export_Id = 1; Path = {path}; Pseudo = /bench; Access_Type = RW; Squash = No_Root_Squash;
         Protocols = 3; Transports = UDP, TCP; SecType = sys; FSAL {{ Name = VFS; }} }}
LOG {{ Default_Log_Level = EVENT; }}
"""
# ganesha registers with rpcbind and exits if it cannot: run one in a private /run, record its pid.
_GANESHA_SH = """#!/bin/sh
mount -t tmpfs tmpfs /run && mkdir -p /run/ganesha || exit 97
rpcbind -f -w & echo $! > {dir}/rpcbind.pid
sleep 0.5
ganesha.nfsd -F -L {dir}/ganesha.log -f {dir}/ganesha.conf -p /run/ganesha/pid & echo $! > {dir}/ganesha.pid
wait
"""


def _refclient(net: NetPair, args: list[str]) -> dict:
    p = net.run(net.client_ns, [sys.executable, "-m", "nas_server.refclient", "--server", net.server_ip, *args],
                timeout_s=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if p.returncode != 0:
        raise RuntimeError(f"refclient {' '.join(args)} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return json.loads(p.stdout)


def _measure(net: NetPair, export: str, image: str, total_bytes: int, seed: int, extra: list[str]) -> dict:
    out = {}
    for transport, io in CASES:
        r = _refclient(net, ["--transport", transport, "--export", export, "--file", image, "--bytes",
                             str(total_bytes), "--io-bytes", str(io), "--seed", str(seed), "--write", "--commit",
                             "--verify", *extra])
        if not r["verify"]["verified"]:
            raise RuntimeError(f"{transport}/{io}: read-back differs at offsets {r['verify']['bad_offsets'][:5]}")
        out[(transport, io)] = (r["write"]["mib_per_s"], r["verify"]["mib_per_s"])
    return out


def _kill_pidfile(path: str) -> None:
    try:
        pid = int(open(path).read().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def _wait_tcp(net: NetPair, port: int, prog: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if net.run(net.client_ns, ["rpcinfo", "-n", str(port), "-t", net.server_ip, prog, "3"], timeout_s=5).returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"program {prog} did not answer on {net.server_ip}:{port} within {timeout_s} s")


def run_nas_bench(total_bytes: int = 32 << 20, seed: int = 1, work_dir: str | None = None) -> list[dict]:
    work = tempfile.mkdtemp(prefix="nas-bench-", dir=work_dir or "/dev/shm")
    ours: dict = {}
    base: dict = {}
    baseline_error = None
    try:
        with NetPair(tag="nasb", subnet_octet=79) as net:
            r, w = os.pipe()
            srv = net.popen(net.server_ns, [sys.executable, "-m", "nas_server.main", "--data-dir", work + "/ours",
                                            "--export", "bench", "--create-image", f"img:{total_bytes}",
                                            "--ready-fd", str(w)], pass_fds=(w,), stderr=subprocess.DEVNULL)
            os.close(w)
            if os.read(r, 1) != b"R":
                raise RuntimeError("nas-server did not start")
            os.close(r)
            ours = _measure(net, "/bench", "img", total_bytes, seed, [])
            srv.send_signal(signal.SIGTERM)
            srv.wait(10)
            gdir = work + "/ganesha"
            os.makedirs(gdir + "/export")
            with open(gdir + "/export/img", "wb") as f:
                f.truncate(total_bytes)
            open(gdir + "/ganesha.conf", "w").write(_GANESHA_CONF.format(mport=GANESHA_MOUNT_PORT, ip=net.server_ip,
                                                                          path=gdir + "/export"))
            open(gdir + "/run.sh", "w").write(_GANESHA_SH.format(dir=gdir))
            os.chmod(gdir + "/run.sh", 0o755)
            if shutil.which("ganesha.nfsd") is None:
                baseline_error = "ganesha.nfsd not installed (Debian: nfs-ganesha nfs-ganesha-vfs)"
            else:
                g = net.popen(net.server_ns, ["unshare", "-m", "--propagation", "private", gdir + "/run.sh"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    _wait_tcp(net, GANESHA_MOUNT_PORT, "100005")
                    base = _measure(net, gdir + "/export", "img", total_bytes, seed,
                                    ["--mount-port", str(GANESHA_MOUNT_PORT)])
                except RuntimeError as e:
                    log = open(gdir + "/ganesha.log").read()[-1500:] if os.path.exists(gdir + "/ganesha.log") else ""
                    baseline_error = f"nfs-ganesha baseline failed: {e}; log tail: {log}"
                finally:
                    _kill_pidfile(gdir + "/ganesha.pid")
                    _kill_pidfile(gdir + "/rpcbind.pid")
                    g.send_signal(signal.SIGKILL)
                    g.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = []
    for (transport, io), (wr, rd) in ours.items():
        for op, value, idx in (("write", wr, 0), ("read", rd, 1)):
            b = base.get((transport, io))
            baseline = round(b[idx], 1) if b else None
            ratio = round(value / b[idx], 3) if b else None
            fig = {"name": f"nas_refclient_{transport}_{op}_{io // 1024}k", "value": round(value, 1), "unit": "MiB/s",
                   "baseline": baseline, "ratio": ratio, "target": TARGET_RATIO,
                   "met": (ratio >= TARGET_RATIO) if ratio is not None else None,
                   "baseline_kind": "nfs-ganesha 4 VFS, same client" if b else None}
            if baseline_error:
                fig["baseline_error"] = baseline_error
            figures.append(fig)
    return figures


if __name__ == "__main__":
    print(json.dumps(run_nas_bench(), indent=1))
