"""Swap over TCP to an NFS server that is not nas-server, on real packets (root): nfs-ganesha
(scripts/nas-ganesha.sh: VFS FSAL with its own rpcbind, in the nas namespace) named by the
scenario key ``nas_command``. The agent finds MOUNT (ganesha's 20048) and NFS through portmap
GETPORT, swaps under the flood with Linux's cure, and the runner's reference client -- not the
agent -- reads every acknowledged page back over TCP, ports again from portmap; ganesha and its
rpcbind are gone afterwards (the rig stops the command's process group). ~13 s."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]


def test_memalloc_swaps_to_nfs_ganesha_with_mount_from_portmap(tmp_path):
    assert shutil.which("ganesha.nfsd") and shutil.which("rpcbind"), "nfs-ganesha/rpcbind missing (scripts/bootstrap.sh)"
    out = tmp_path / "g"
    argv = [sys.executable, "-m", "testbed.cli", "run", "memalloc", "--out", str(out),
            "--set", 'nas_command="scripts/nas-ganesha.sh"', "--set", "max_duration_s=30"]
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert (out / "report.json").exists(), p.stderr[-3000:]
    e = json.loads((out / "report.json").read_text())["scenarios"][0]
    assert e["parameters"]["nas_command"] == "scripts/nas-ganesha.sh"
    # ports found through ganesha's rpcbind, not given
    assert e["nas"]["ports_from_portmap"] == {"nfs": 2049, "mount": 20048}
    # the agent was given no port: it learnt ganesha's mountd port (20048) from GETPORT, and
    # honoured ganesha's FSINFO (rtmax/wtmax)
    nfs = json.loads((out / "final_snapshot.json").read_text())["nfs"]
    assert nfs["proto"] == "tcp" and nfs["mount_port"] == 20048 and nfs["server"].endswith(":2049")
    assert nfs["fsinfo"][1] >= 4096
    # the swap went there, and every acknowledged page reads back through the reference client
    assert e["pages_written"] > 1000, (e["outcome"], e["watchdog"])
    assert e["pages_verified"] == e["pages_written"] and e["pages_lost"] == 0, e["verification"]
    assert e["outcome"] in ("recovered", "completed"), e["watchdog"]
    logs = os.listdir(out / "logs")
    assert any("nas-command" in n for n in logs) and not any("nas-server" in n for n in logs)
    if shutil.which("tshark"):
        q = subprocess.run(["tshark", "-r", str(out / "pcap" / "client.pcap"), "-Y",
                            "portmap.procedure_v2 == 3 && rpc.msgtyp == 0", "-T", "fields",
                            "-e", "portmap.prog"], capture_output=True, text=True, timeout=120)
        progs = set(q.stdout.split())
        assert {"100005", "100003"} <= progs, q.stdout           # GETPORT MOUNT and NFS on the wire
        m = subprocess.run(["tshark", "-r", str(out / "pcap" / "client.pcap"), "-Y",
                            "tcp.dstport == 20048 && mount.procedure_v3 == 1"],
                           capture_output=True, text=True, timeout=120)
        assert m.stdout.strip(), "no MNT call to ganesha's mountd port"
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"nsdt-{e['run_name']}-" not in ns
    data = e["nas"]["export"]                             # the export dir (tmpfs) is gone too
    assert not os.path.exists(data)
    import psutil
    assert not [p.info for p in psutil.process_iter(["pid", "cmdline"])
                if data in " ".join(p.info["cmdline"] or [])]   # no ganesha.nfsd of this run left
