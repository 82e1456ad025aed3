"""The QEMU command line for the guest, and which accelerator actually boots a kernel here.

The guest boots the uncompressed vmlinux through its PVH entry (``-kernel vmlinux``), one vCPU,
no default devices: ttyS0 is the console (kernel messages and the init script's ``@`` lines),
ttyS1 the sampler's channel, both written by QEMU to files the host reads as they grow; one NIC of
the scenario's model on a tap that already exists (``script=no``: QEMU configures nothing).

KVM is used only where it boots: ``/dev/kvm`` may exist and still not run a stock kernel (this
machine's ``kvm_pvm`` aborts ``-cpu host`` on MSR 0x10a and hangs in early boot otherwise), so
``probe_accel`` boots the real kernel with a one-line init under KVM with a deadline, and the
result is cached per kernel and QEMU binary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

from .initramfs import CpioWriter, find_busybox

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 12.0
PROBE_LINE = b"@probe booted"
ACCELS = ("auto", "tcg", "kvm")


class QemuError(Exception):
    """QEMU is missing or refused its arguments: one line with the fix."""


def qemu_binary() -> str:
    p = shutil.which(QEMU)
    if not p:
        raise QemuError(f"{QEMU} not found; install qemu-system-x86 (scripts/bootstrap.sh does)")
    return p


def qemu_version() -> str:
    try:
        out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuError(f"{QEMU} --version failed: {e}") from None
    return out.splitlines()[0] if out else "?"


def cmdline(extra: str = "") -> str:
    """The kernel command line: console on ttyS0, zswap off (else swap-outs stay in RAM),
    /dev/kmsg writable, panic -> reboot (QEMU -no-reboot exits), plus the scenario's own."""
    base = ["console=ttyS0,115200", "zswap.enabled=0", "printk.devkmsg=on", "panic=1", "oops=panic",
            "rdinit=/init", "loglevel=6", "8250.nr_uarts=2", "mitigations=off", "nokaslr",
            "tsc=reliable", "no_timer_check", "sysrq_always_enabled",
            # THP off: khugepaged would raise min_free_kbytes over the scenario's (set_recommended_min_free_kbytes)
            "transparent_hugepage=never"]
    return " ".join(base + ([extra] if extra else []))


def argv(*, vmlinux: str, initrd: str, append: str, memory_mib: int, nic_model: str, mac: str,
         tap: str | None, console_path: str, sampler_path: str, accel: str = "tcg",
         pidfile: str | None = None, monitor: str | None = None, vnet_hdr: bool = True) -> list[str]:
    """The QEMU argv (no shell). ``monitor``: a Unix socket for the HMP monitor (``sendkey
    alt-sysrq-w`` asks a hung guest's kernel to list its blocked tasks on the console)."""
    a = [qemu_binary(), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
         "-machine", "pc", "-smp", "1", "-m", f"{memory_mib}M",
         "-kernel", vmlinux, "-initrd", initrd, "-append", append,
         "-chardev", f"file,id=con,path={console_path}", "-serial", "chardev:con",
         "-chardev", f"file,id=smp,path={sampler_path}", "-serial", "chardev:smp"]
    if accel == "kvm":
        a += ["-accel", "kvm", "-cpu", "host"]
    else:
        a += ["-accel", "tcg", "-cpu", "max"]
    if tap:
        a += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no" + ("" if vnet_hdr else ",vnet_hdr=off"),
              "-device", f"{nic_model},netdev=n0,mac={mac}"]
    else:
        a += ["-nic", "none"]
    if pidfile:
        a += ["-pidfile", pidfile]
    if monitor:
        a += ["-monitor", f"unix:{monitor},server=on,wait=off"]
    return a


def _probe_initrd(path: str) -> None:
    with open(path, "wb") as f:
        w = CpioWriter(f)
        for d in ("bin", "dev", "proc"):
            w.dir(d)
        w.chardev("dev/console", 5, 1)
        with open(find_busybox(), "rb") as b:
            w.file("bin/busybox", b.read(), 0o755)
        for app in ("sh", "echo", "poweroff"):
            w.symlink(f"bin/{app}", "busybox")
        w.file("init", b"#!/bin/sh\nexport PATH=/bin\necho '" + PROBE_LINE + b"'\npoweroff -f\n", 0o755)
        w.trailer()


def probe_boot(vmlinux: str, accel: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot ``vmlinux`` under ``accel`` with an init that prints one line; (booted, why) within timeout_s."""
    with tempfile.TemporaryDirectory(prefix="nsdt-probe-") as d:
        initrd, con, smp = (os.path.join(d, n) for n in ("probe.cpio", "console.log", "s.log"))
        _probe_initrd(initrd)
        a = argv(vmlinux=vmlinux, initrd=initrd, append=cmdline(), memory_mib=128, nic_model="e1000",
                 mac="02:00:00:00:00:01", tap=None, console_path=con, sampler_path=smp, accel=accel)
        t0 = time.monotonic()
        p = subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        dt = time.monotonic() - t0
        try:
            with open(con, "rb") as f:
                text = f.read()
        except OSError:
            text = b""
        if PROBE_LINE in text:
            return True, f"booted to /init in {dt:.1f} s"
        err = (out or b"").decode(errors="replace").strip().splitlines()
        last = [ln for ln in text.decode(errors="replace").splitlines() if ln.strip()][-1:] or ["(no console output)"]
        if p.returncode not in (None, 0) and err:
            return False, f"QEMU exited {p.returncode}: {err[-1][:200]}"
        return False, f"no /init within {timeout_s:.0f} s; console ends: {last[0][:160]}"


def kvm_present() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return False, f"/dev/kvm cannot be opened ({e.strerror})"
    mod = ""
    try:
        with open("/proc/modules") as f:
            mods = [ln.split()[0] for ln in f if ln.startswith("kvm")]
        mod = f" (modules: {', '.join(mods)})" if mods else ""
    except OSError:
        pass
    return True, "/dev/kvm opens" + mod


def choose_accel(vmlinux: str, cache: str, want: str = "auto") -> tuple[str, str]:
    """("kvm"|"tcg", why). ``want`` "tcg"/"kvm" forces; "auto" uses KVM only if a probe boot under KVM
    reached /init (cached per kernel file and QEMU version)."""
    if want == "tcg":
        return "tcg", "TCG asked for"
    if want == "kvm":
        return "kvm", "KVM asked for"
    ok, why = kvm_present()
    if not ok:
        return "tcg", f"TCG: {why}"
    st = os.stat(vmlinux)
    key = hashlib.sha256(f"{os.path.realpath(vmlinux)}:{st.st_size}:{st.st_mtime_ns}:{qemu_version()}".encode()).hexdigest()[:16]
    path = os.path.join(cache, f"accel-{key}.json")
    try:
        with open(path) as f:
            got = json.load(f)
        return got["accel"], got["why"] + " (cached probe)"
    except (OSError, ValueError, KeyError):
        pass
    booted, detail = probe_boot(vmlinux, "kvm")
    res = ("kvm", f"KVM: a probe boot under KVM {detail}") if booted else \
          ("tcg", f"TCG: /dev/kvm is present but a probe boot under KVM failed ({detail})")
    with open(path, "w") as f:
        json.dump({"accel": res[0], "why": res[1]}, f)
    return res


def monitor_command(path: str, command: str, timeout_s: float = 2.0) -> str:
    """Send one HMP command on the monitor socket; returns what QEMU answered (may be empty)."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        out = b""
        try:
            out += s.recv(4096)              # banner and prompt
            s.sendall(command.encode() + b"\n")
            time.sleep(0.2)
            out += s.recv(4096)
        except socket.timeout:
            pass
    return out.decode(errors="replace")


def doctor() -> list[tuple[str, bool, str, str]]:
    """(name, ok, detail, fix) for `testbed doctor`: QEMU, the distro kernel and its modules, busybox,
    the helper's compiler, and which accelerator boots a kernel here and why. Never required: only
    ``--client linux`` needs them."""
    from .client import default_kernel, kernel_release
    from .initramfs import InitramfsError, build_helper
    from .vmlinux import VmlinuxError, cache_dir, vmlinux_for
    out = []
    try:
        out.append(("qemu", True, f"{qemu_binary()} ({qemu_version()})", ""))
    except QemuError as e:
        return [("qemu", False, str(e), "apt-get install -y qemu-system-x86")]
    try:
        out.append(("busybox", True, find_busybox() + " (static)", ""))
    except InitramfsError as e:
        out.append(("busybox", False, str(e), "apt-get install -y busybox-static"))
    cache = cache_dir()
    try:
        out.append(("guest_helper", True, f"nsdt-guest built: {build_helper(cache)}", ""))
    except InitramfsError as e:
        out.append(("guest_helper", False, str(e), "apt-get install -y gcc libc6-dev"))
    try:
        kernel = default_kernel()
        vml = vmlinux_for(kernel, cache)
        rel = kernel_release(vml)
        mods = f"/lib/modules/{rel}"
        ok_mods = os.path.exists(os.path.join(mods, "modules.dep"))
        out.append(("guest_kernel", ok_mods, f"{kernel} (release {rel}; vmlinux {vml}; modules {mods}"
                    f"{'' if ok_mods else ' MISSING'})", "" if ok_mods else "apt-get install -y linux-image-amd64"))
    except Exception as e:  # noqa: BLE001 -- LinuxVmError, VmlinuxError: reported, not raised
        return out + [("guest_kernel", False, str(e), "apt-get install -y linux-image-amd64, or pass --kernel")]
    accel, why = choose_accel(vml, cache, "auto")
    out.append(("accelerator", True, why, ""))
    return out
