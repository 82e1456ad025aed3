"""Integration tests (root) of the process API: readiness, errors with log tails, stop, pdeathsig,
affinity, records that `down`/`clean` use, control sockets in the run dir, and `testbed doctor`."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from netns_setup.control import ControlClient
from netns_setup.lifecycle import clean, down, up
from netns_setup.nsutil import list_netns, netns_inode, pid_netns_inode
from netns_setup.process import ProcessStartError, start_process
from netns_setup.state import RunState, control_socket_path, list_runs
from netns_setup.topology import default_topology
from testbed import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_RUN_ROOT", str(tmp_path / "runs"))
    st = up(default_topology(), f"proc{os.getpid() % 10000}")
    yield st
    try:
        clean()
    finally:
        assert list_runs() == []


READY_SRC = "import os,sys,time; print('hello from', os.getpid(), flush=True); fd=int(sys.argv[-1]); os.write(fd,b'R'); time.sleep(60)"


def test_ready_fd_record_namespace_affinity_and_stop(run):
    t0 = time.monotonic()
    p = start_process(run, "nas", [PY, "-c", READY_SRC], role="hello", ready=True, cpus={0})
    ready_s = time.monotonic() - t0
    try:
        assert p.poll() is None and ready_s < 5
        assert pid_netns_inode(p.pid) == netns_inode(run.host_netns("nas")) != pid_netns_inode(os.getpid())
        assert psutil.Process(p.pid).cpu_affinity() == [0]
        rec = next(r for r in RunState.load(run.name).data["processes"] if r["pid"] == p.pid)
        assert rec["create_time"] == psutil.Process(p.pid).create_time()
        assert rec["netns_inode"] == netns_inode(run.host_netns("nas")) and rec["host"] == "nas"
        assert p.log_path == os.path.join(run.dir, "logs", "nas.hello.log")
        assert f"hello from {p.pid}" in open(p.log_path).read()
    finally:
        code = p.stop(grace_s=2)
    assert code == -signal.SIGTERM
    assert not psutil.pid_exists(p.pid)
    assert RunState.load(run.name).data["processes"] == []


def test_ready_timeout_error_has_log_tail_and_leaves_nothing(run):
    t0 = time.monotonic()
    with pytest.raises(ProcessStartError) as ei:
        start_process(run, "noise", [PY, "-c", "import time; print('still loading config', flush=True); time.sleep(30)"],
                      role="slow", ready=True, ready_timeout_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 4
    msg = str(ei.value)
    assert "did not write its readiness byte to --ready-fd within 0.5 s" in msg
    assert "still loading config" in msg and "noise.slow.log" in msg
    assert RunState.load(run.name).data["processes"] == []


def test_early_exit_and_missing_program(run):
    with pytest.raises(ProcessStartError, match=r"(?s)closed --ready-fd without signalling readiness \(exit code 3\).*boom"):
        start_process(run, "nas", [PY, "-c", "import sys; print('boom', flush=True); sys.exit(3)"], ready=True)
    with pytest.raises(ProcessStartError, match=r"cannot start '/nonexistent/prog' in host nas .*FileNotFoundError"):
        start_process(run, "nas", ["/nonexistent/prog"])
    assert RunState.load(run.name).data["processes"] == []


def test_stop_escalates_to_sigkill(run):
    src = "import os,signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); os.write(int(sys.argv[-1]), b'R'); time.sleep(60)"
    p = start_process(run, "noise", [PY, "-c", src], role="stubborn", ready=True)
    t0 = time.monotonic()
    assert p.stop(grace_s=0.3) == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - t0 < 3
    # grace 0 (LinuxVmClient.stop kills a hung QEMU so): the killed process is reaped all the same,
    # its exit code is the signal, not None
    p = start_process(run, "noise", [PY, "-c", src], role="stubborn0", ready=True)
    assert p.stop(grace_s=0.0) == -signal.SIGKILL


def test_children_die_with_the_runner_and_clean_verifies_identity(run):
    runner_src = (
        "import sys; from netns_setup.process import start_process\n"
        f"p = start_process({run.name!r}, 'client', ['sleep', '60'], role='sleeper')\n"
        "print(p.pid, flush=True); import time; time.sleep(60)\n")
    r = subprocess.Popen([PY, "-c", runner_src], cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    child = int(r.stdout.readline())
    assert psutil.Process(child).cmdline() == ["sleep", "60"]
    r.send_signal(signal.SIGKILL)
    r.wait(5)
    deadline = time.monotonic() + 3
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "child outlived its runner: PR_SET_PDEATHSIG not working"
        time.sleep(0.02)
    # The record is still there (the runner had no chance to drop it); down sees the pid is gone.
    assert [p["pid"] for p in RunState.load(run.name).data["processes"]] == [child]
    counts = down(run.name)
    assert counts["processes"] == 0 and counts["namespaces"] == 4


def test_down_stops_recorded_processes(run):
    p = start_process(run, "nas", ["sleep", "60"])
    counts = down(run.name)
    assert counts["processes"] == 1
    assert not psutil.pid_exists(p.pid)  # stopped and reaped by down (it was our child)
    assert not any(n.startswith(f"nsdt-{run.name}-") for n in list_netns())


def test_service_speaks_control_protocol_on_its_run_dir_socket(run):
    path = control_socket_path(run.dir, "nas")
    assert path == os.path.join(run.dir, "ctl", "nas.sock")
    src = (
        "import selectors, sys\n"
        "from netns_setup.control import ControlServer, signal_ready\n"
        "sel = selectors.DefaultSelector()\n"
        "srv = ControlServer(sys.argv[1], {'snapshot': lambda r: {'rx_packets': 7}, 'shutdown': lambda r: 'bye'})\n"
        "srv.attach(sel); signal_ready(int(sys.argv[-1]))\n"
        "while not srv.closing:\n"
        "    for key, mask in sel.select(): key.data(mask)\n"
        "srv.close()\n")
    p = start_process(run, "nas", [PY, "-c", src, path], role="ctl", ready=True, cwd=REPO)
    with ControlClient(path) as c:
        assert c.call("snapshot") == {"rx_packets": 7}
        assert c.call("shutdown") == "bye"
    assert p.wait(5) == 0


def test_doctor_passes_here_and_leaves_no_namespace(capsys):
    before = set(list_netns())
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    for name in ("privileges", "netns", "veth", "bridge", "af_packet", "offloads", "tcpdump"):
        assert checks[name]["ok"], checks[name]
    assert checks["offloads"]["detail"] == "offloads after disabling: tso=off gso=off gro=off"
    assert "missing: netem" in checks["qdiscs"]["detail"] and checks["qdiscs"]["required"] is False
    assert "pfifo" in checks["qdiscs"]["detail"].split(";")[0]
    assert not {n for n in set(list_netns()) - before if n.startswith("nsdt-doctor-")}
