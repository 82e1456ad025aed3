"""`testbed clean` leaves runs that are still in use alone; SIGTERM to a running command tears its run down."""

import os
import signal
import subprocess
import sys
import time
import uuid

from netns_setup import lifecycle, nsutil
from netns_setup.state import list_runs, run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}


def _ours(name):
    return {n for n in nsutil.list_netns() if n.startswith(f"nsdt-{name}-")}


def _wait_for(pred, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_clean_skips_a_run_whose_creator_is_alive_then_removes_it_once_gone():
    name = "iu" + uuid.uuid4().hex[:6]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from netns_setup import lifecycle, topology;"
         f" lifecycle.up(topology.default_topology(), {name!r}); print('up', flush=True); time.sleep(60)"],
        env=ENV, stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == b"up"
        assert len(_ours(name)) == 4
        in_use: dict = {}
        done = lifecycle.clean(in_use=in_use)
        assert name not in done and in_use[name] == holder.pid
        assert len(_ours(name)) == 4                       # untouched while its creator lives
    finally:
        holder.kill()
        holder.wait(5)
    in_use = {}
    done = lifecycle.clean(in_use=in_use)
    assert name in done and done[name]["namespaces"] == 4 and name not in in_use
    assert _ours(name) == set() and name not in list_runs()


def test_sigterm_to_a_running_scenario_tears_its_topology_down(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", "memalloc", "--out", str(tmp_path / "r")],
                         env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # wait until its topology exists and its services run (its run record lists processes)
        def started():
            for r in list_runs():
                st = os.path.join(run_dir(r), "state.json")
                try:
                    if str(p.pid) in open(st).read() and '"processes": [\n  {' in open(st).read():
                        return r
                except OSError:
                    pass
            return None
        assert _wait_for(lambda: started() is not None), p.stderr.read1(4096) if p.poll() is not None else "no run record"
        name = started()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert rc == 130, p.stderr.read().decode()[-2000:]
    assert _ours(name) == set() and name not in list_runs()
    assert not [d for d in os.listdir("/dev/shm") if d.startswith(f"nsdt-nasdata-{name}")]
