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

from . import initramfs, qemu
from .parse import ConsoleScanner, SamplerStream
from .vmlinux import cache_dir, vmlinux_for

DEFAULT_SAMPLE_MS = 500
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
    config: dict = field(default_factory=dict)   # /etc/nsdt.conf for guest_init.sh


class LinuxVmClient:
    """start() / snapshot() / verify() / stop() for a QEMU guest in host ``host`` of run ``st``."""

    kind = "linux"

    def __init__(self, st, host: str, spec: GuestSpec, mac: str, out_dir: str, *, cpus=None, log=None):
        self.st, self.host, self.spec, self.mac, self.out = st, host, spec, mac, out_dir
        self.cpus = cpus
        self.say = log or (lambda m: None)
        self.proc = None
        # beside the host's NIC t<sfx>-<host>: IFNAMSIZ leaves room for these
        self.tap, self.bridge = f"t{st.data['suffix']}-vtap", f"t{st.data['suffix']}-vbr"
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
    def start(self) -> dict:
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
        self._net_up()
        argv = qemu.argv(vmlinux=self.info["vmlinux"], initrd=initrd, append=self.info["cmdline"],
                         memory_mib=self.spec.memory_mib, nic_model=self.spec.nic_model, mac=self.mac,
                         tap=self.tap, console_path=self.con_path, sampler_path=self.smp_path,
                         accel=self.info["accel"], monitor=self.monitor_path)
        self.info["argv"] = argv
        self.proc = start_process(self.st, self.host, argv, role="qemu", cpus=self.cpus)
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

    def snapshot(self) -> dict:
        """The client's state, /proc-shaped::

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

    def stop(self, kill: bool = False) -> dict:
        """Stop QEMU by its pid (SIGKILL at once when ``kill``: a hung guest cannot shut down), remove
        the tap and bridge, keep the logs. Returns {"exit", "killed"}."""
        code = None
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
        try:
            self._net_down()
        except Exception as e:  # noqa: BLE001 -- the namespace goes away with the run anyway
            self.say(f"guest: could not remove {self.tap}/{self.bridge}: {e}")
        return {"exit": code, "killed": self.killed}
