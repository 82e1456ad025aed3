"""The rig every real-packet run stands on -- `testbed run`, `demo`, `chaos` (testbed/runner.py)
and the bench sections: a topology, one nas-server, client hosts (testbed/clients/), the flood,
captures.

Invariants owned here:
- Everything the rig makes (namespaces, processes) is recorded by netns_setup under one run name
  and removed by ``close()`` (lifecycle.teardown), whatever happened; ``with SwapRig(...)``.
- One placement for every run: agents on CPU 0, the NAS, the flood and the reference client on
  CPU 1 (on a 2-core machine), so the host under study never shares its core with a peer.
- The NAS and noise hosts get a permanent neighbour entry for every client (its agent may be
  unable to answer ARP); every agent gets one for the NAS and noise.
- Figures are read only through control sockets (``snapshot``) and psutil, from outside.

``CLIENT_AGENT_PROFILE`` for one agent: pass ``profile=PATH``; the agent writes a cProfile there
when it is stopped (SIGTERM).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

from netns_setup.nsutil import add_permanent_neighbours

from testbed.rig_errors import RigError

BenchError = RigError       # the name the bench sections knew it by

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout: scripts/, scenarios/
REPO = PROJECT   # the checkout: the services' PYTHONPATH and working directory
NFS_PORT = 2049
EXPORT = "swap"
AGENT_CPU = 0
OTHER_CPU = 1
PAGE = 4096
NAS_DATA_ROOT = "/dev/shm"
NBD_PORT = 10809
ISCSI_PORT = 3260
TGT_IQN = "iqn.2025-01.org.nsdeadlock.tgt:swap"
THIRD_PARTY_TARGETS = {"nbd": ("nbdkit", "qemu-nbd"), "iscsi": ("tgtd",)}


def _port_open(ip: str, port: int) -> bool:
    import socket
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


BLOCK_TARGET_ARGS = {"nbd": ["--nbd", "--nbd-port", str(NBD_PORT)],
                     "iscsi": ["--iscsi", "--iscsi-port", str(ISCSI_PORT)]}
# Bench profiles: when set, sections that start agents profile one of them into this directory.
PROFILE_DIR_ENV = "TESTBED_BENCH_PROFILE_DIR"


def profile_path(name: str) -> str | None:
    d = os.environ.get(PROFILE_DIR_ENV)
    if not d:
        return None
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{name}.prof")


def _cpus(k: int) -> list[int] | None:
    return [k] if (os.cpu_count() or 1) > 1 else None


def _stop_group(proc: Any, grace_s: float = 5.0) -> None:
    """SIGTERM to the process group of ``proc`` (a process the rig started: setsid made it the
    group's leader, so the group is exactly what it started), SIGKILL to what is left after
    ``grace_s``."""
    import signal
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            proc.poll()                     # reap the leader (a zombie keeps the group alive)
            time.sleep(0.1)


def _log_tail(path: str, n: int = 300) -> str:
    """The last ``n`` characters of a log, on one line (the run directory goes at teardown)."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read()[-n:].split("\n")).strip(" |") or "(empty log)"
    except OSError as e:
        return f"(log unreadable: {e})"


def _mac(h: Any) -> str:
    return h.mac if isinstance(h.mac, str) else ":".join(f"{b:02x}" for b in h.mac)


class Rig:
    """``up`` a topology, start a nas-server exporting ``swap`` with ``images`` ([(name, MiB or a
    size such as "256K")]), and start clients, the flood and captures on demand. ``export_networks``:
    the export's ACL (default: the NAS's own network); ``name``: the run name (default ``b<tag><hex>``);
    ``block_targets``: "nbd" / "iscsi" -- nas-server serves the images over them too.

    ``aoe`` (docs/aoe.md): serve one of ``images`` as the AoE device e<shelf>.<slot> on the NAS's
    interface -- ``{"image", "shelf", "slot", "target", "service_ms", "bufcnt"}``; target
    ``nas-server`` (its own AoE target, ``--aoe-interface``/``--aoe-disk``) or ``vblade`` (started
    in the nas namespace on the image file, ``-s``: O_SYNC, since vblade's FLUSH CACHE does not
    sync). ``aoe_image_path`` is then the image file, for reading back after the run."""

    def __init__(self, topo: Any, tag: str, *, images: list[tuple[str, int | str]], nas_on_tmpfs: bool = True,
                 nas_write_latency_ms: float = 0.0, say: Callable[[str], None] = lambda _m: None,
                 export_networks: str | None = None, name: str | None = None, aoe: dict | None = None,
                 nas_command: str | None = None, block_targets: tuple[str, ...] = ()):
        from netns_setup import lifecycle

        self.topo, self.say = topo, say
        self.hosts = {h.name: h for h in topo.hosts}
        self.clients = [h.name for h in topo.hosts if h.name.startswith("client")]
        self.nas_ip = str(self.hosts["nas"].address.ip)
        self.name = name or f"b{tag}{secrets.token_hex(2)}"
        self.procs: dict[str, Any] = {}
        self.caps: dict[str, Any] = {}
        self.data_dir: str | None = None
        self.ctls: dict[str, Any] = {}
        self._tgt_ctl: str | None = None        # tgtd's management socket number (start_block_target)
        self._tgt_made_dir = False
        self.nas_command = nas_command or None
        self.flood_command: str | None = None     # start_flood_command's
        self.nas_export_dir: str | None = None
        self.block_targets = tuple(block_targets)
        self.env = {**os.environ, "PYTHONPATH": REPO}
        self.env.pop("CLIENT_AGENT_PROFILE", None)
        self.st = lifecycle.up(topo, self.name)
        try:
            # On tmpfs: FILE_SYNC's fdatasync then costs what the server's code costs, not the
            # disk's latency (/run is on a disk here) -- the figures compare clients, not disks.
            # nas_on_tmpfs=False: in the run directory.
            if nas_on_tmpfs:
                self.data_dir = data = tempfile.mkdtemp(prefix=f"{self.name}-nas-", dir=NAS_DATA_ROOT)
            else:
                data = os.path.join(self.st.dir, "nasdata")
            self.aoe = dict(aoe) if aoe else None
            self.aoe_image_path = os.path.join(data, EXPORT, aoe["image"]) if aoe else None
            if self.nas_command:
                self._start_nas_command(data, images)
            else:
                self._start_nas_server(data, images, export_networks, nas_write_latency_ms, aoe)
            pairs = [(str(self.hosts[c].address.ip), _mac(self.hosts[c])) for c in self.clients]
            for h in ("nas", "noise"):
                if h in self.hosts:
                    add_permanent_neighbours(self.st.host_netns(h), self.st.host_iface(h), pairs)
        except BaseException:
            self.close()
            raise

    def _start_nas_server(self, data: str, images, export_networks, nas_write_latency_ms, aoe) -> None:
        from netns_setup.control import ControlClient
        from netns_setup.state import control_socket_path
        ctl = control_socket_path(self.st.dir, "nas")
        self.nas_argv = [sys.executable, "-m", "nas_server.main", "--data-dir", data,
                         "--export", f"{EXPORT}:{export_networks or self.hosts['nas'].address.network}",
                         *[f"--create-image={EXPORT}/{img}:{mib}{'M' if isinstance(mib, int) else ''}"
                           for img, mib in images],
                         "--bind", self.nas_ip, "--port", str(NFS_PORT), "--portmap-port", "0",
                         "--control", ctl, "--write-latency-ms", str(nas_write_latency_ms)]
        # the same images as block devices (nas-server --nbd / --iscsi) when a run needs them
        for proto in self.block_targets:
            if proto not in BLOCK_TARGET_ARGS:
                raise RigError(f"block target {proto!r} unknown; known: {', '.join(BLOCK_TARGET_ARGS)}")
            self.nas_argv += BLOCK_TARGET_ARGS[proto]
        if aoe and aoe.get("target", "nas-server") == "nas-server":
            self.nas_argv += ["--aoe-interface", self.st.host_iface("nas"),
                              "--aoe-disk", f"{aoe['shelf']}.{aoe['slot']}={EXPORT}/{aoe['image']}",
                              "--aoe-service-ms", str(aoe.get("service_ms", 0.0)),
                              "--aoe-bufcnt", str(aoe.get("bufcnt", 16))]
        self._start_nas()
        if aoe and aoe.get("target") == "vblade":
            self.start_vblade()
        self.ctls["nas"] = ControlClient(ctl, timeout_s=10.0)

    def _start_nas_command(self, data: str, images, ready_timeout_s: float = 30.0) -> None:
        """Another NAS: ``nas_command`` (sh -c) in the nas namespace with NAS_IP, NAS_DATA (the
        export directory, holding the images as sparse files) and NAS_RUN set; ready once the
        NAS's portmapper answers GETPORT for MOUNT v3 and NFS v3 over TCP (probed from the nas
        namespace by the reference client). No control socket: nothing is read from it."""
        from netns_setup.process import ProcessStartError, run_in_netns, start_process
        from nas_server.refclient import portmap_ports
        export = os.path.join(data, "export")
        run = os.path.join(data, "run")
        os.makedirs(export, exist_ok=True)
        os.makedirs(run, exist_ok=True)
        for img, mib in images:
            if not isinstance(mib, int):
                raise RigError(f"nas_command: image {img} of size {mib!r}: a NAS command takes images in whole MiB")
            with open(os.path.join(export, img), "wb") as f:
                f.truncate(mib << 20)
        self.nas_export_dir = export
        env = {**self.env, "NAS_IP": self.nas_ip, "NAS_DATA": export, "NAS_RUN": run}
        try:   # relative paths in the command are the project's (scripts/nas-ganesha.sh)
            self.procs["nas"] = start_process(self.st, "nas", ["sh", "-c", self.nas_command],
                                              role="nas-command", cpus=_cpus(OTHER_CPU), env=env,
                                              cwd=PROJECT)
        except ProcessStartError as e:
            raise RigError(f"nas_command did not start: {e.one_line()}") from None
        deadline = time.monotonic() + ready_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.procs["nas"].poll() is not None:
                raise RigError(f"nas_command {self.nas_command!r} exited ({self.procs['nas'].poll()}) before "
                               f"serving: {_log_tail(self.procs['nas'].record['log'])}")
            try:
                self.nas_ports = run_in_netns(self.st.host_netns("nas"), portmap_ports, self.nas_ip, "tcp", 1.0,
                                              timeout_s=5.0)
                self.say(f"nas_command serving: NFS port {self.nas_ports[0]}, MOUNT port {self.nas_ports[1]} (portmap)")
                return
            except Exception as e:  # noqa: BLE001 -- retried until the deadline
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        raise RigError(f"nas_command {self.nas_command!r}: portmap on {self.nas_ip} gave no MOUNT/NFS port within "
                       f"{ready_timeout_s:.0f} s ({last}); its log: {_log_tail(self.procs['nas'].record['log'])}")

    def _start_nas(self) -> None:
        from netns_setup.process import ProcessStartError, start_process
        try:
            self.procs["nas"] = start_process(self.st, "nas", self.nas_argv, role="nas-server", ready=True,
                                              cpus=_cpus(OTHER_CPU), env=self.env, cwd=REPO)
        except ProcessStartError as e:
            raise RigError(f"nas-server did not start: {e.one_line()}") from None

    def start_vblade(self) -> None:
        """vblade (Debian's AoE target) in the nas namespace on the AoE image: ``-s`` opens it
        O_SYNC (its FLUSH CACHE is a no-op, so only O_SYNC makes an acknowledged write durable)."""
        from netns_setup.process import ProcessStartError, start_process
        a = self.aoe
        vblade = shutil.which("vblade") or "/usr/sbin/vblade"
        argv = [vblade, "-s", *(["-b", str(a["bufcnt"])] if a.get("bufcnt") else []),
                str(a["shelf"]), str(a["slot"]), self.st.host_iface("nas"), self.aoe_image_path]
        try:
            # vblade says "pid N: e<shelf>.<slot>, <n> sectors O_RDWR" once its socket is open
            self.procs["vblade"] = start_process(self.st, "nas", argv, role="vblade", ready_line=b"sectors",
                                                 cpus=_cpus(OTHER_CPU), env=self.env, cwd=REPO)
        except ProcessStartError as e:
            raise RigError(f"vblade did not start: {e.one_line()} (Debian package vblade)") from None

    def restart_nas(self) -> None:
        """SIGKILL + restart on the same data directory: UNSTABLE data and the DRC are lost, the
        write verifier changes (testbed chaos)."""
        if self.nas_command:
            raise RigError("restart_nas: a NAS named by nas_command is not restarted by the rig")
        self.procs["nas"].send_signal(9)
        self.procs["nas"].wait(5.0)
        self._start_nas()

    def capture(self, host: str, path: str, iface: str | None = None) -> Any:
        """tcpdump on ``host``'s interface (or ``iface`` in its namespace: a Linux guest's tap) into
        ``path`` (netns_setup.capture)."""
        from netns_setup.capture import start_capture
        cap = self.caps[host] = start_capture(self.st, host, iface=iface, path=path)
        return cap

    def control_path(self, role: str) -> str:
        from netns_setup.state import control_socket_path
        return control_socket_path(self.st.dir, role)

    @property
    def nas_pid(self) -> int:
        return self.procs["nas"].pid

    def nas(self) -> Any:
        return self.ctls["nas"]

    def start_agent(self, host: str, *, pool_pages: int, min_free_kbytes: int | None = None,
                    budget: int | None = None, profile: str | None = None, seed: int = 1,
                    extra: list[str] | None = None, python_argv: list[str] | None = None,
                    client: Any = None, ctl_timeout_s: float = 30.0) -> Any:
        """Start client-agent on ``host``; returns its ``testbed.clients.AgentClient`` (``call``
        reaches every control op), its process is ``procs["agent:<host>"]``."""
        from testbed.clients import AgentClient
        from netns_setup.control import ControlClient
        from netns_setup.process import ProcessStartError, start_process
        from netns_setup.state import control_socket_path

        h = self.hosts[host]
        neigh = [f"{self.nas_ip}={_mac(self.hosts['nas'])}"]
        if "noise" in self.hosts:
            neigh.append(f"{self.hosts['noise'].address.ip}={_mac(self.hosts['noise'])}")
        ctl = control_socket_path(self.st.dir, f"agent-{host}")
        argv = [*(python_argv or [sys.executable, "-m", "client_agent.agent"]), "--ifname", self.st.host_iface(host),
                "--addr", h.address_str if hasattr(h, "address_str") else str(h.address),
                "--pool-pages", str(pool_pages), "--seed", str(seed), "--control", ctl]
        for n in neigh:
            argv += ["--neigh", n]
        if min_free_kbytes is not None:
            argv += ["--min-free-kbytes", str(min_free_kbytes)]
        if budget is not None:
            argv += ["--budget", str(budget)]
        argv += extra or []
        env = dict(self.env)
        if profile:
            env["CLIENT_AGENT_PROFILE"] = profile
        try:
            self.procs[f"agent:{host}"] = start_process(self.st, host, argv, role="client-agent", ready=True,
                                                        cpus=_cpus(AGENT_CPU), env=env, cwd=REPO)
        except ProcessStartError as e:
            raise RigError(f"client-agent on {host} did not start: {e.one_line()}") from None
        c = self.ctls[f"agent:{host}"] = ControlClient(ctl, timeout_s=ctl_timeout_s)
        client = client or AgentClient()
        client.attach_process(self.procs[f"agent:{host}"], c)
        return client

    def swapon(self, host: str, **kw: Any) -> dict:
        kw = {"server": self.nas_ip, "port": NFS_PORT, "export": EXPORT, "image": f"{host}.img", "slots": 16,
              "wsize": PAGE, "stable": "FILE_SYNC", **kw}
        return self.ctls[f"agent:{host}"].call("swapon", **kw)

    def start_flood(self, dst: str, ports: list[int], rate_pps: int, *, size: int = 64, seed: int = 1,
                    start_off: bool = False) -> Any:
        from netns_setup.control import ControlClient
        from netns_setup.process import ProcessStartError, start_process
        from netns_setup.state import control_socket_path

        ctl = control_socket_path(self.st.dir, "flood")
        spec = ports if isinstance(ports, str) else ",".join(map(str, ports))
        argv = [sys.executable, "-m", "testbed.flood", "--dst", dst, "--ports", spec,
                "--rate-pps", str(rate_pps), "--size", str(size), "--seed", str(seed),
                "--bind", str(self.hosts["noise"].address.ip), "--control", ctl]
        if start_off:
            argv.append("--start-off")
        try:
            self.procs["flood"] = start_process(self.st, "noise", argv, role="flood", ready=True,
                                                cpus=_cpus(OTHER_CPU), env=self.env, cwd=REPO)
        except ProcessStartError as e:
            raise RigError(f"the flood did not start: {e.one_line()}") from None
        c = self.ctls["flood"] = ControlClient(ctl, timeout_s=10.0)
        return c

    def start_flood_command(self, command: str, dst: str, ports: str, rate_pps: int, *, size: int = 64,
                            settle_s: float = 0.5) -> Any:
        """A third-party flood generator instead of the built-in flood (docs/demo.md "Another
        flood"): ``command`` (sh -c) in the noise namespace with DST (the client's address),
        PORTS (the UDP sinks' ports, "9001-9004"), RATE_PPS (datagrams per second, all ports),
        SIZE (UDP payload bytes) and IFACE (noise's interface) set. No control socket and no
        ready signal: it counts as started if it still runs after ``settle_s``. The process is
        ``procs["flood"]``; ``stop("flood")`` ends its whole process group by its pid."""
        from netns_setup.process import ProcessStartError, start_process
        env = {**self.env, "DST": dst, "PORTS": ports, "RATE_PPS": str(rate_pps), "SIZE": str(size),
               "IFACE": self.st.host_iface("noise")}
        try:
            self.procs["flood"] = start_process(self.st, "noise", ["sh", "-c", command], role="flood-command",
                                                cpus=_cpus(OTHER_CPU), env=env, cwd=PROJECT)
        except ProcessStartError as e:
            raise RigError(f"flood_command did not start: {e.one_line()}") from None
        self.flood_command = command
        time.sleep(settle_s)
        if self.procs["flood"].poll() is not None:
            raise RigError(f"flood_command {command!r} exited ({self.procs['flood'].poll()}) at once: "
                           f"{_log_tail(self.procs['flood'].record['log'])}")
        return self.procs["flood"]

    def start_tcp_noise(self, dst: str, ports: list[int], rate_kbps: int, *, seed: int = 1) -> Any:
        """Kernel TCP senders in noise (testbed/tcp_noise.py): one connection per port of the
        client's stream sinks, each paced at ``rate_kbps``; returns once every one is connected.
        The process is ``procs["tcp-noise"]`` (stopped by pid: ``stop("tcp-noise")``)."""
        from netns_setup.process import ProcessStartError, start_process
        argv = [sys.executable, "-m", "testbed.tcp_noise", "--dst", dst,
                "--ports", ",".join(map(str, ports)), "--rate-kbps", str(rate_kbps), "--seed", str(seed),
                "--bind", str(self.hosts["noise"].address.ip)]
        try:
            self.procs["tcp-noise"] = start_process(self.st, "noise", argv, role="tcp-noise", ready=True,
                                                    cpus=_cpus(OTHER_CPU), env=self.env, cwd=REPO)
        except ProcessStartError as e:
            raise RigError(f"the TCP noise senders did not start: {e.one_line()}") from None
        return self.procs["tcp-noise"]

    def start_block_target(self, kind: str, image: str, *, latency_ms: float = 0.0) -> dict:
        """A third-party target on the NAS host serving nas-server's image ``EXPORT/image`` (the same
        file: read back over NFS or the target itself): ``nbdkit`` (file plugin, its delay filter
        giving ``latency_ms`` per write: wdelay), ``qemu-nbd`` (-t, cache none), or ``tgtd``
        (LUN 1 of one target, backing store the file). Returns the device spec's target part
        (``port``, ``export`` or ``target`` + ``lun``). The process is ``procs["target"]``."""
        from netns_setup.process import ProcessStartError, start_process
        data = self.data_dir or os.path.join(self.st.dir, "nasdata")
        path = os.path.join(data, EXPORT, image)
        ip = self.nas_ip
        if kind == "nbdkit":
            ms = f"{latency_ms:g}ms"
            argv = ["nbdkit", "-f", "-i", ip, "-p", str(NBD_PORT), "--filter=delay", "file", path,
                    f"wdelay={ms}"]
            spec = {"port": NBD_PORT, "export": ""}
        elif kind == "qemu-nbd":
            # -e 2: the agent's connection may still count when the reader connects (a stopped
            # agent sends no FIN: its TCP is in the process)
            argv = ["qemu-nbd", "-f", "raw", "-x", "swap", "-b", ip, "-p", str(NBD_PORT), "-t", "-e", "2",
                    "--cache=none", path]
            spec = {"port": NBD_PORT, "export": "swap"}
        elif kind == "tgtd":
            self._tgt_ctl = str(1000 + os.getpid() % 30000)   # /var/run/tgtd/socket.N, N <= 32767
            self._tgt_made_dir = not os.path.isdir("/var/run/tgtd")
            argv = ["tgtd", "-f", "-C", self._tgt_ctl, "--iscsi", f"portal={ip}:{ISCSI_PORT}"]
            spec = {"port": ISCSI_PORT, "target": TGT_IQN, "lun": 1}
        else:
            raise RigError(f"third-party target {kind!r} unknown; known: nbdkit, qemu-nbd, tgtd")
        try:
            self.procs["target"] = start_process(self.st, "nas", argv, role=kind, cpus=_cpus(OTHER_CPU),
                                                 env=self.env, cwd=REPO)
        except ProcessStartError as e:
            raise RigError(f"{kind} did not start: {e.one_line()}") from None
        self._wait_port(spec["port"], kind)
        if kind == "tgtd":
            import subprocess
            for args in (["--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_IQN],
                         ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", path],
                         ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]):
                q = subprocess.run(["tgtadm", "-C", self._tgt_ctl, "--lld", "iscsi", *args],
                                   capture_output=True, text=True, timeout=20)
                if q.returncode != 0:
                    raise RigError(f"tgtadm {' '.join(args[:4])} failed: {q.stderr.strip()}")
        return spec

    def _wait_port(self, port: int, what: str, timeout_s: float = 10.0) -> None:
        from netns_setup.process import run_in_netns
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if run_in_netns(self.st.host_netns("noise"), _port_open, self.nas_ip, port):
                return
            if self.procs["target"].poll() is not None:
                raise RigError(f"{what} exited before listening on {self.nas_ip}:{port}; see its log in {self.st.dir}")
            time.sleep(0.1)
        raise RigError(f"{what} did not listen on {self.nas_ip}:{port} within {timeout_s:g} s")

    def stop(self, key: str) -> None:
        c = self.ctls.pop(key, None)
        if c is not None:
            c.close()
        p = self.procs.pop(key, None)
        if p is not None:
            if (key == "nas" and self.nas_command) or (key == "flood" and self.flood_command):
                _stop_group(p)              # the command's whole process group (its servers)
            p.stop()

    def close(self) -> None:
        from netns_setup import lifecycle
        for cap in self.caps.values():
            try:
                cap.stop()
            except Exception:  # noqa: BLE001 -- teardown goes on
                pass
        for k in [k for k in self.procs if k != "nas"] + ["nas"]:
            try:
                self.stop(k)
            except Exception:  # noqa: BLE001 -- teardown goes on
                pass
        for c in self.ctls.values():
            c.close()
        self.ctls.clear()
        if self._tgt_ctl is not None:           # what tgtd leaves behind
            for leftover in (f"/var/run/tgtd/socket.{self._tgt_ctl}", f"/var/run/tgtd/socket.{self._tgt_ctl}.lock"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            if self._tgt_made_dir:
                try:
                    os.rmdir("/var/run/tgtd")
                except OSError:
                    pass
        try:
            lifecycle.down(self.name)
        finally:
            if self.data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SwapRig(Rig):
    """The bench sections' rig: one ``<client>.img`` of ``image_mib`` per client host (and a
    ``ref.img`` for the reference client)."""

    def __init__(self, topo: Any, tag: str, *, image_mib: int, ref_image_mib: int = 0, **kw: Any):
        clients = [h.name for h in topo.hosts if h.name.startswith("client")]
        images = [(f"{c}.img", image_mib) for c in clients]
        if ref_image_mib:
            images.append(("ref.img", ref_image_mib))
        super().__init__(topo, tag, images=images, **kw)


def process_cpu_s(pid: int) -> float:
    """CPU time (user + system) of ``pid`` in seconds, from its CPU clock (ns resolution)."""
    return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9


def process_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` from /proc/PID/stat's utime and stime (proc(5):
    fields 14 and 15, in clock ticks of SC_CLK_TCK, 10 ms here). System time is the kernel's
    work on the process's behalf: for the agent, its ring kicks and the veth/bridge/NAS receive
    path that runs inside them."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def stream_rate(agent: Any, *, window_s: float, warmup_s: float, sample_s: float = 0.2,
                max_wait_s: float = 20.0, pid: int | None = None) -> dict:
    """Swap writeback rate from ``snapshot`` samples: pages the NAS acknowledged (``swap.acked``
    grows with each FILE_SYNC reply; ``pswpout`` counts writes issued) over ``window_s`` once
    ``pswpout`` has started and ``warmup_s`` passed. Returns MiB/s and the counters."""
    t_end = time.monotonic() + max_wait_s
    while True:
        s = agent.call("snapshot", traces=False)   # no per-xid records: 0.2 s samples
        if s["alloc"]["vmstat"].get("pswpout", 0) > 0:
            break
        if time.monotonic() > t_end:
            raise BenchError(f"the agent never swapped out within {max_wait_s} s (workload {s.get('workload')}, "
                             f"free {s['alloc']['zoneinfo'].get('free')}); is the pool smaller than the workload?")
        time.sleep(0.05)
    time.sleep(warmup_s)
    samples = []
    t0 = time.monotonic()
    cpu0 = process_cpu_s(pid) if pid else None
    split0 = process_cpu_split(pid) if pid else None
    while True:
        s = agent.call("snapshot", traces=False)   # no per-xid records: 0.2 s samples
        t = time.monotonic() - t0
        samples.append((t, s["swap"]["acked"], s["alloc"]["vmstat"].get("pswpout", 0),
                        s["nfs"].get("rpc_retrans", 0) if s.get("nfs") else 0, s["workload"]["done"], s))
        if t >= window_s or s["workload"]["done"]:
            break
        time.sleep(sample_s)
    cpu1 = process_cpu_s(pid) if pid else None
    split1 = process_cpu_split(pid) if pid else None
    (ta, a0, p0, r0, _, s0), (tb, a1, p1, r1, done, s1) = samples[0], samples[-1]
    dt = tb - ta
    if dt <= 0 or a1 == a0:
        raise BenchError(f"no acknowledged swap writes in the window ({a0} -> {a1} pages over {dt:.2f} s)")
    return {"mib_per_s": (a1 - a0) * PAGE / dt / (1 << 20), "pages": a1 - a0, "seconds": dt,
            "pswpout": p1 - p0, "retrans": r1 - r0, "workload_done_early": bool(done), "first": s0, "last": s1,
            "samples": [(round(t, 3), a) for t, a, *_ in samples],
            "cpu_pct": None if cpu0 is None else (cpu1 - cpu0) / (time.monotonic() - t0) * 100,
            "cpu_user_s": None if split0 is None else split1[0] - split0[0],
            "cpu_sys_s": None if split0 is None else split1[1] - split0[1],
            "pswpout_window": p1 - p0, "window_s": time.monotonic() - t0}


def refclient_write(nas_ip: str, image: str, total_bytes: int, window: int, seed: int, cpu: int | None,
                    transport: str = "udp") -> dict:
    """Inside a host with a kernel address: the reference client's FILE_SYNC 4 KiB writes over a
    kernel UDP or TCP socket (``transport``; nas-server's one-port layout: MOUNT on 2049)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from protocols import nfs3
    from nas_server.refclient import RefClient
    with RefClient(nas_ip, NFS_PORT, transport) as c:
        root = c.mount("/" + EXPORT)
        fh, _ = c.lookup(root, image)
        r = c.write_pages(fh, total_bytes, PAGE, seed, nfs3.FILE_SYNC, window)
        r["client"] = dict(c.stats)
        return r
