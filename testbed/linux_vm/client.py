"""``LinuxVmClient``: a real Linux kernel in a QEMU VM as the testbed's client host.

Placement: inside the client host's namespace a bridge joins the host's NIC (its veth to the
switch) and a tap; QEMU's NIC sits on the tap with the client's own MAC, the guest takes the client's
address. The NAS, the flood and the captures see the same host on the same switch as with the agent.

Observation needs nothing from a guest that may hang:
- the sampler (in the guest, mlocked) streams /proc/{vmstat,zoneinfo,net/netstat,net/snmp,
  net/sockstat,net/rpc/nfs} on ttyS1, which QEMU writes to a file (no guest allocation to read it);
- the console (ttyS0) is scanned for page allocation failures, hung-task reports and
  "nfs: server ... not responding", and for the init script's ``@`` lines;
- silence: seconds since the last byte on either channel;
- outside views the runner adds (``outside``): NAS-side progress from nas-server's control snapshot.
``snapshot()`` returns these /proc-shaped (keys are the files' and fields' own names);
testbed.watchdog decides the outcome from them. A hung guest is killed by pid (``stop``); its
console and sampler logs are kept in the report directory.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from dataclasses import dataclass, field

from testbed.clients.base import Client, ClientError
from testbed.watchdog import proc_view

from . import initramfs, qemu
from .parse import ConsoleScanner, SamplerStream
from .vmlinux import cache_dir, vmlinux_for

DEFAULT_SAMPLE_MS = 500
SETUP_TIMEOUT_S = 180.0       # boot, modules, mount, swapon under TCG on a loaded machine
EINVAL = 22
TAIL_EVENTS = 200


class LinuxVmError(Exception):
    """The VM could not be prepared or started (kernel, modules, QEMU, tap): one line with the fix."""


def default_kernel() -> str:
    """The newest /boot/vmlinuz-* (Debian's linux-image-amd64)."""
    found = sorted(glob.glob("/boot/vmlinuz-*"), key=lambda p: [int(x) if x.isdigit() else x
                                                                  for x in re.split(r"[.-]", p)])
    if not found:
        raise LinuxVmError("no /boot/vmlinuz-*; install linux-image-amd64 or pass --kernel PATH")
    return found[-1]


def kernel_release(vmlinux: str) -> str | None:
    """The release string ("6.1.0-57-amd64") from the image's "Linux version ..." banner."""
    with open(vmlinux, "rb") as f:
        data = f.read()
    m = re.search(rb"Linux version (\S+) \(", data)
    return m.group(1).decode() if m else None


def mount_options(device: dict) -> str:
    """mount(2) data for NFSv3 from a device spec (testbed/clients/base.py): ``proto`` tcp with
    Linux's defaults (timeo=600, retrans=2), or udp with the spec's timeo_s/retrans; MOUNT on the
    same port (nas-server runs no portmapper here); rsize/wsize negotiated unless ``wsize`` says
    (the agent's one-page-per-call wsize is its own model: on Linux 6.1 a 4 KiB wsize turns each
    swapped page into its own RPC, and swap_write_unplug's batching is lost)."""
    proto, ip, port = device.get("proto", "tcp"), device["server"], device.get("port", 2049)
    o = [f"vers=3,proto={proto},nolock,hard,addr={ip},port={port},mountport={device.get('mount_port', port)},"
         f"mountproto={proto},mountvers=3,mountaddr={ip}"]
    if device.get("wsize"):
        o.append(f"rsize={device['wsize']},wsize={device['wsize']}")
    if proto == "udp":
        o.append(f"timeo={max(1, int(device.get('timeo_s', 1.1) * 10))},retrans={device.get('retrans', 3)}")
    return ",".join(o)


@dataclass
class GuestSpec:
    """What the scenario says about the guest. ``kernel``/``modules`` empty: the distro's."""
    kernel: str = ""
    modules: str = ""
    memory_mib: int = 256
    nic_model: str = "virtio-net-pci"
    cmdline: str = ""
    accel: str = "auto"
    sample_ms: int = DEFAULT_SAMPLE_MS
    faults: str = ""        # client_faults: the tap is relayed, not bridged (relay.py)
    config: dict = field(default_factory=dict)   # /etc/nsdt.conf for guest_init.sh


class LinuxVmClient(Client):
    """A QEMU guest as a ``testbed.clients.base.Client``.

    A kernel takes its setup at boot (the init script reads /etc/nsdt.conf from the initramfs), so:
    ``start(rig, host)`` prepares the kernel, the initramfs and the accelerator and puts the tap on
    the host's NIC; ``sinks``/``attach``/``set`` check each request against what a real kernel can
    be put in (``ClientError`` in one line otherwise) and record it; ``start_workload`` boots the
    guest with all of it and returns once the guest's workload has started (boot, modules, mount,
    swapon done). ``snapshot()`` is /proc-shaped per the contract (``testbed.watchdog.proc_view``
    of the last sample, plus the raw files under ``proc`` and the outside views).
    ``workload_map()`` raises: the guest verifies every page itself (``verify()``)."""

    kind = "linux"

    def __init__(self, spec: GuestSpec, out_dir: str, *, log=None):
        self.spec, self.out = spec, out_dir
        self.st = self.host = self.mac = None
        self.rig = None
        self.cpus = None
        self.say = log or (lambda m: None)
        self.proc = None
        self.tap = self.bridge = None
        self.console = ConsoleScanner()
        self.sampler = SamplerStream()
        self.samples: list[dict] = []
        self.last: dict | None = None
        self.last_sample_at: float | None = None
        self.last_byte_at: float | None = None
        self.events: list[dict] = []
        self.workload: dict = {}
        self.steps: dict = {}
        self.t_start: float | None = None
        self.outside: dict = {}
        self.info: dict = {}
        self._fcon = self._fsmp = None
        self.killed = False
        self.setup_s: float | None = None

    # ------------------------------------------------------------------ the Client interface
    def start(self, rig, host: str, **placement) -> None:
        """Prepare (kernel, initramfs, accelerator: ``prepare``), put a bridge + tap on ``host``'s NIC
        in the rig's topology; the guest boots in ``start_workload``. ``placement``: ``cpus`` (default
        the rig's agent CPU)."""
        from testbed.rig import AGENT_CPU, OTHER_CPU, _cpus, _mac
        self.rig, self.st, self.host = rig, rig.st, host
        self.mac = _mac(rig.hosts[host])
        self.cpus = placement.get("cpus", _cpus(AGENT_CPU))
        # beside the host's NIC t<sfx>-<host>: IFNAMSIZ leaves room for these
        self.tap, self.bridge = f"t{self.st.data['suffix']}-vtap", f"t{self.st.data['suffix']}-vbr"
        try:
            self.prepare()
        except LinuxVmError as e:
            raise ClientError(str(e)) from None
        self.rig_cpus_other = _cpus(OTHER_CPU)
        self._net_up()
        if self.spec.faults:
            self._start_relay()

    def sinks(self, ports, reader: str, rcvbuf_bytes: int) -> list[dict]:
        ports = list(ports)
        if ports and reader != "none":
            raise ClientError(f"noise_reader = {reader}: the guest's noise sockets are never read "
                              "(nsdt-guest noise); use noise_reader = \"none\"")
        if ports and ports != list(range(ports[0], ports[0] + len(ports))):
            raise ClientError(f"noise ports {ports[0]}..{ports[-1]} are not consecutive; the guest binds a range")
        self.spec.config.update(NSDT_NOISE_SOCKETS=len(ports), NSDT_NOISE_PORT_BASE=ports[0] if ports else 9001,
                                NSDT_NOISE_RCVBUF=rcvbuf_bytes)
        return [{"port": p, "reader": "none", "rcvbuf": rcvbuf_bytes, "at": "boot"} for p in ports]

    def attach(self, consumer: str, device: dict, *, memalloc: bool, policy: str = "linux",
               dirty_ratio: int = 20, dirty_background_ratio: int = 10) -> dict:
        """``device``: an nfs spec; the guest mounts ``server:/export`` over ``proto`` (mount(2)
        options from ``mount_options``) and swapons ``image`` (swap) or maps it MAP_SHARED (mmap)."""
        if device.get("kind") != "nfs":
            raise ClientError(f"device kind {device.get('kind')!r}: the Linux guest mounts NFS only")
        if consumer == "swap" and not memalloc:
            raise ClientError("memalloc = false cannot be run on a real kernel: sunrpc marks every swap transport "
                              "SOCK_MEMALLOC itself (xs_set_memalloc at swapon)")
        if consumer == "write":
            raise ClientError("consumer = write is not implemented in the guest helper; use mmap or swap")
        if policy == "extended":
            raise ClientError("policy = extended marks a file transport SOCK_MEMALLOC, which Linux never does")
        opts = mount_options(device)
        self.spec.config.update(NSDT_EXPORT="/" + device["export"], NSDT_IMAGE=device["image"],
                                NSDT_CONSUMER=consumer, NSDT_MOUNT_OPTS=opts)
        self.consumer = consumer
        return {"consumer": consumer, "mount": f"{device['server']}:/{device['export']}", "options": opts,
                "at": "boot"}

    SET_KEYS = {"min_free_kbytes": "NSDT_MIN_FREE_KBYTES", "watermark_scale_factor": "NSDT_WATERMARK_SCALE_FACTOR",
                "budget": "NSDT_DEV_WEIGHT"}

    def set(self, key: str, value) -> dict:
        if key == "pfmemalloc_demux_drop":
            if not value:
                raise ClientError("pfmemalloc_demux_drop = false cannot be run on a real kernel: sk_filter_trim_cap "
                                  "drops pfmemalloc skbs for every socket without SOCK_MEMALLOC, with no knob")
            return {key: True, "at": "always (Linux)"}
        if key not in self.SET_KEYS:
            raise ClientError(f"set {key}: not a key the Linux guest takes ({', '.join(sorted(self.SET_KEYS))}, "
                              "pfmemalloc_demux_drop)")
        self.spec.config[self.SET_KEYS[key]] = int(value)
        return {key: int(value), "at": "boot"}

    def start_workload(self, consumer: str, pages: int, seed: int, rate_pps: float = 0) -> dict:
        """Boot the guest with everything recorded; return once its workload started."""
        if rate_pps:
            raise ClientError(f"workload_rate_pps = {rate_pps}: the guest's workload touches as fast as it can (0)")
        self.spec.config.update(NSDT_WORKLOAD_PAGES=pages, NSDT_SEED=seed)
        self.boot()
        t_boot = time.monotonic()
        while "workload" not in self.steps:
            self.poll()
            if "fail" in self.steps or not self.running() or time.monotonic() - t_boot > SETUP_TIMEOUT_S:
                mnt = self.steps.get("mount")
                tail = [ln for ln in self.console.lines if ln.strip()][-3:]
                if mnt is not None and mnt.get("errno") == EINVAL and "proto=udp" in self.spec.config.get("NSDT_MOUNT_OPTS", ""):
                    raise ClientError("the guest kernel refuses NFS over UDP (mount(2) EINVAL): it is built with "
                                      "CONFIG_NFS_DISABLE_UDP_SUPPORT=y (Debian's is); use guest_nfs_proto = \"tcp\" "
                                      "or pass --kernel with one built with it =n")
                what = (self.steps.get("fail") or {}).get("line") or ("QEMU exited" if not self.running()
                                                                      else f"no workload after {SETUP_TIMEOUT_S:.0f} s")
                raise ClientError(f"guest setup failed: {what}; console ends: {' | '.join(tail)}")
            time.sleep(0.1)
        self.setup_s = round(time.monotonic() - t_boot, 2)
        return {"pages": pages, "seed": seed, "setup_s": self.setup_s,
                "mounted": (self.steps.get("mounted") or {}).get("line", "")}

    def workload_map(self) -> dict:
        raise ClientError("a Linux guest's swap slots are the kernel's own: its workload verifies every page itself "
                          "after swap-in (LinuxVmClient.verify)")

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> dict:
        """Kernel, initramfs, accelerator (cached); no VM yet. Returns what was chosen and why."""
        cache = cache_dir()
        kernel = self.spec.kernel or default_kernel()
        try:
            vml = vmlinux_for(kernel, cache)
        except Exception as e:  # VmlinuxError, OSError
            raise LinuxVmError(str(e)) from None
        rel = kernel_release(vml)
        modules = self.spec.modules or (f"/lib/modules/{rel}" if rel else "")
        if not modules or not os.path.isdir(modules):
            raise LinuxVmError(f"no modules directory for kernel {kernel} (release {rel or '?'}): "
                               f"pass --modules DIR (the kernel's lib/modules/RELEASE)")
        try:
            base = initramfs.build_base(modules, self.spec.nic_model, cache)
        except initramfs.InitramfsError as e:
            raise LinuxVmError(str(e)) from None
        accel, why = qemu.choose_accel(vml, cache, self.spec.accel)
        self.info = {"kernel": kernel, "vmlinux": vml, "release": rel, "modules": modules, "initramfs": base,
                     "accel": accel, "accel_why": why, "nic_model": self.spec.nic_model,
                     "memory_mib": self.spec.memory_mib, "cmdline": qemu.cmdline(self.spec.cmdline),
                     "qemu": qemu.qemu_version()}
        return self.info

    def _net_up(self) -> None:
        from pyroute2 import IPRoute

        from netns_setup.nsutil import entered
        ns, nic = self.st.host_netns(self.host), self.st.host_iface(self.host)
        # everything inside the namespace: pyroute2 creates a tuntap by ioctl on /dev/net/tun, in
        # the calling thread's namespace, not through the netlink socket's
        with entered(ns):
            ipr = IPRoute()
            try:
                if self.spec.faults:
                    self._relay_up(ipr, nic)
                    return
                ipr.link("add", ifname=self.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0,
                         br_mcast_snooping=0)
                ipr.link("add", ifname=self.tap, kind="tuntap", mode="tap")
                br = ipr.link_lookup(ifname=self.bridge)[0]
                # The guest carries the client's MAC; the host's NIC, now a bridge port, must not,
                # or the bridge would take the guest's frames for its own (a local fdb entry)
                port_mac = "06" + self.mac[2:]
                ipr.link("set", index=ipr.link_lookup(ifname=nic)[0], address=port_mac)
                for ifn in (self.tap, nic):
                    idx = ipr.link_lookup(ifname=ifn)
                    if not idx:
                        raise LinuxVmError(f"no interface {ifn} in {ns} after creating it; is the topology up?")
                    ipr.link("set", index=idx[0], master=br)
                    ipr.link("set", index=idx[0], state="up")
                ipr.link("set", index=br, state="up")
            finally:
                ipr.close()

    def _relay_up(self, ipr, nic: str) -> None:
        """Faults: the tap and the host's NIC joined by testbed.linux_vm.relay (seeded faults both
        ways) instead of a bridge; the NIC keeps the client's MAC, which the guest carries too."""
        ipr.link("add", ifname=self.tap, kind="tuntap", mode="tap")
        for ifn in (self.tap, nic):
            idx = ipr.link_lookup(ifname=ifn)[0]
            ipr.link("set", index=idx, state="up")

    def _start_relay(self) -> None:
        import sys

        from netns_setup.process import ProcessStartError, start_process
        from testbed.rig import REPO
        ctl = self.rig.control_path(f"relay-{self.host}")
        argv = [sys.executable, "-m", "testbed.linux_vm.relay", "--nic", self.st.host_iface(self.host),
                "--tap", self.tap, "--fault", self.spec.faults, "--control", ctl]
        try:
            self.relay = start_process(self.st, self.host, argv, role="relay", ready=True, cpus=self.rig_cpus_other,
                                       env=self.rig.env, cwd=REPO)
        except ProcessStartError as e:
            raise ClientError(f"the fault relay did not start: {e.one_line()}") from None
        self.rig.procs[f"relay:{self.host}"] = self.relay
        self.relay_ctl = ctl

    def relay_counters(self) -> dict | None:
        """The relay's fault counters (to_guest/from_guest: FaultInjector's), or None without faults."""
        from netns_setup.control import ControlClient, ControlError
        if getattr(self, "relay_ctl", None) is None:
            return getattr(self, "relay_final", None)
        try:
            with ControlClient(self.relay_ctl, timeout_s=2.0) as c:
                return c.call("snapshot")
        except (ControlError, OSError):
            return getattr(self, "relay_final", None)

    def _net_down(self) -> None:
        from pyroute2 import IPRoute

        from netns_setup.nsutil import entered, netns_exists
        ns = self.st.host_netns(self.host)
        if not netns_exists(ns):
            return
        with entered(ns):
            ipr = IPRoute()
            try:
                for ifn in (self.tap, self.bridge):
                    idx = ipr.link_lookup(ifname=ifn)
                    if idx:
                        ipr.link("del", index=idx[0])
            finally:
                ipr.close()

    # ------------------------------------------------------------------ start
    def boot(self) -> dict:
        from netns_setup.process import start_process
        if not self.info:
            self.prepare()
        os.makedirs(self.out, exist_ok=True)
        rundir = os.path.join(self.st.dir, "guest")
        os.makedirs(rundir, exist_ok=True)
        initrd = os.path.join(rundir, "initrd.cpio")
        with open(initrd, "wb") as f, open(self.info["initramfs"], "rb") as b:
            shutil.copyfileobj(b, f)
            f.write(initramfs.run_archive({**self.spec.config, "NSDT_SAMPLE_MS": self.spec.sample_ms}))
        self.monitor_path = os.path.join(rundir, "monitor.sock")
        self.con_path = os.path.join(self.out, "console.log")
        self.smp_path = os.path.join(self.out, "sampler.log")
        for p in (self.con_path, self.smp_path):
            open(p, "wb").close()
        argv = qemu.argv(vmlinux=self.info["vmlinux"], initrd=initrd, append=self.info["cmdline"],
                         memory_mib=self.spec.memory_mib, nic_model=self.spec.nic_model, mac=self.mac,
                         tap=self.tap, console_path=self.con_path, sampler_path=self.smp_path,
                         accel=self.info["accel"], monitor=self.monitor_path,
                         vnet_hdr=not self.spec.faults)
        self.info["argv"] = argv
        self.proc = start_process(self.st, self.host, argv, role="qemu", cpus=self.cpus)
        if self.rig is not None:
            self.rig.procs[f"qemu:{self.host}"] = self.proc
        self.t_start = time.monotonic()
        self.last_byte_at = self.t_start
        self._fcon = open(self.con_path, "rb")
        self._fsmp = open(self.smp_path, "rb")
        self.say(f"guest: {os.path.basename(self.info['kernel'])} under {self.info['accel']} "
                 f"({self.info['accel_why']}), {self.spec.memory_mib} MiB, NIC {self.spec.nic_model}, pid {self.proc.pid}")
        return self.info

    # ------------------------------------------------------------------ observe
    def poll(self) -> list[dict]:
        """Read what the guest wrote since the last call; returns the new console events."""
        now = time.monotonic()
        new = []
        if self._fcon is not None:
            data = self._fcon.read()
            if data:
                self.last_byte_at = now
                for ev in self.console.feed(data):
                    ev["t_host"] = round(now - (self.t_start or now), 3)
                    new.append(ev)
                    self._note(ev)
        if self._fsmp is not None:
            data = self._fsmp.read()
            if data:
                self.last_byte_at = now
                for s in self.sampler.feed(data):
                    s["t_host"] = round(now - (self.t_start or now), 3)
                    self.last, self.last_sample_at = s, now
                    self.samples.append(s)
        return new

    def _note(self, ev: dict) -> None:
        k = ev["kind"]
        if k == "workload":
            w = ev.get("words") or []
            if w[:1] == ["done"]:
                self.workload.update({kk: v for kk, v in ev.items() if kk not in ("kind", "words", "line")}, done=True)
            elif w[:1] == ["start"]:
                self.workload.update(started=True, pages=ev.get("pages"), t_host_start=ev["t_host"])
            elif w[:1] == ["fail"]:
                self.workload.update(failed=ev["line"])
            for key in ("allocated", "verified"):
                if key in ev and not self.workload.get("done"):
                    self.workload[key] = ev[key]
        elif k in ("step", "mount", "noise", "sampler", "fail"):
            name = (ev.get("words") or [k])[0] if k == "step" else k
            self.steps[name] = ev
        if k not in ("workload",) or (ev.get("words") or [""])[0] in ("done", "start", "fail"):
            self.events.append(ev)
            if len(self.events) > 4 * TAIL_EVENTS:
                del self.events[: 2 * TAIL_EVENTS]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def snapshot(self, traces: bool = False) -> dict:
        """The contract's /proc-shaped snapshot (testbed/clients/base.py): ``proc_view`` of
        ``raw_snapshot()`` (alloc, stack, nfs, swap, workload, valid, evidence) with the raw files and
        outside views kept beside it. ``traces`` has nothing more to give for a kernel."""
        return proc_view(self.raw_snapshot())

    def raw_snapshot(self) -> dict:
        """The client's state as read, /proc-shaped::

            {"client": "linux", "running": bool, "t_s": host seconds since start,
             "proc": {"vmstat": {...}, "zoneinfo": {zone: {...}}, "netstat": {"TcpExt": {...}, ...},
                      "snmp": {...}, "sockstat": {...}, "rpc_nfs": {...}} (the last complete sample),
             "sample": {"seq", "uptime_ms", "age_s"}, "silent_s": seconds since the guest's last byte,
             "console": {kind: count}, "workload": {...}, "steps": {...}, "outside": {...},
             "evidence": [one line per thing seen]}
        """
        self.poll()
        now = time.monotonic()
        s = self.last or {}
        proc = {k: s[k] for k in ("vmstat", "zoneinfo", "netstat", "snmp", "sockstat", "rpc_nfs") if k in s}
        age = None if self.last_sample_at is None else round(now - self.last_sample_at, 3)
        silent = None if self.last_byte_at is None else round(now - self.last_byte_at, 3)
        return {"client": "linux", "running": self.running(), "t_s": round(now - (self.t_start or now), 3),
                "proc": proc, "sample": {"seq": s.get("seq"), "uptime_ms": s.get("uptime_ms"), "age_s": age,
                                         "interval_s": self.spec.sample_ms / 1000, "count": len(self.samples),
                                         "torn": self.sampler.torn},
                "silent_s": silent, "console": dict(self.console.counts), "workload": dict(self.workload),
                "steps": {k: v.get("line") for k, v in self.steps.items()}, "outside": dict(self.outside),
                "evidence": self.evidence()}

    def evidence(self) -> list[str]:
        """One line per kind of thing seen on the console (first occurrence quoted)."""
        out, seen = [], set()
        for ev in self.events:
            k = ev["kind"]
            if k in ("page_allocation_failure", "hung_task", "nfs_not_responding", "nfs_ok", "oom", "panic",
                     "soft_lockup", "rcu_stall", "fail") and k not in seen:
                seen.add(k)
                out.append(f"console: {self.console.counts.get(k, 1)} x {k}, first at t={ev['t_host']:.1f}s: "
                           f"{ev['line'].strip()[:200]}")
        return out

    def console_events(self, kinds: tuple[str, ...] | None = None) -> list[dict]:
        return [e for e in self.events if kinds is None or e["kind"] in kinds]

    def verify(self) -> dict:
        """The workload's own check after swap-in: every page stamped (seed, index, pattern) and read
        back; ``swapped_in_verified`` counts pages that mincore() showed non-resident before the read."""
        w = self.workload
        if not w.get("done"):
            return {"verified": None, "pages": w.get("pages"), "note": "the workload did not finish "
                    f"(allocated {w.get('allocated')}, verified {w.get('verified')})"}
        return {"verified": w.get("verified"), "pages": w.get("pages"), "bad": w.get("bad"),
                "swapped_in_verified": w.get("swapped_in_verified"),
                "nonresident_before_verify": w.get("nonresident_before_verify"), "first_bad": w.get("first_bad")}

    def sysrq(self, key: str = "w", wait_s: float = 3.0) -> list[str]:
        """SysRq ``key`` through the keyboard (QEMU monitor ``sendkey alt-sysrq-KEY``): 'w' lists the
        blocked (D state) tasks with their stacks on the console, from the keyboard interrupt -- it
        needs no allocation. Returns the console lines that arrived within ``wait_s``."""
        if not self.running():
            return []
        n0 = len(self.console.lines)
        try:
            qemu.monitor_command(self.monitor_path, f"sendkey alt-sysrq-{key}")
        except OSError as e:
            return [f"(sysrq-{key} not sent: {e})"]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(0.25)
            self.poll()
        return self.console.lines[n0:]

    def wait_exit(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.2)
        self.poll()
        return self.proc.poll()

    def stop(self, kill: bool = True) -> dict:
        """Stop QEMU by its pid (SIGKILL at once: a guest still running has either hung or been given
        its time by the caller (``wait_exit``); ``kill=False`` gives it 2 s), remove the tap and bridge,
        keep the logs. Idempotent. Returns {"exit", "killed"}."""
        code = None
        if getattr(self, "relay", None) is not None:
            self.relay_final = self.relay_counters()
            self.relay_ctl = None
            self.relay.stop()
            self.relay = None
        if self.rig is not None:
            self.rig.procs.pop(f"qemu:{self.host}", None)
            self.rig.procs.pop(f"relay:{self.host}", None)
        if self.proc is not None:
            if self.running():
                self.killed = True
                code = self.proc.stop(grace_s=0.0 if kill else 2.0)
            else:
                code = self.proc.poll()
                self.proc.stop()
        self.poll()
        for f in (self._fcon, self._fsmp):
            if f is not None:
                f.close()
        self._fcon = self._fsmp = None
        if self.st is None:
            return {"exit": code, "killed": self.killed}
        try:
            self._net_down()
        except Exception as e:  # noqa: BLE001 -- the namespace goes away with the run anyway
            self.say(f"guest: could not remove {self.tap}/{self.bridge}: {e}")
        return {"exit": code, "killed": self.killed}
