"""The guest's initramfs: a cpio ``newc`` archive of busybox, the kernel's modules and the helper.

- ``CpioWriter``: the ``newc`` format the kernel unpacks (Documentation/driver-api/early-userspace/
  buffer-format.rst): a 110-byte ASCII header ("070701", 13 eight-digit hex fields), the NUL-ended
  name padded to 4 bytes, the data padded to 4 bytes, ending with "TRAILER!!!". Concatenated
  archives are unpacked one after the other, so a run appends a small archive (its config) to the
  cached base one.
- ``module_load_order``: modules.dep (``path: dep dep ...``) resolved depth-first, every module after
  all of its dependencies, each once -- what ``modprobe`` does, since busybox's ``insmod`` loads one
  file and resolves nothing.
- ``build_base``: busybox (static) with its applet links, the modules for the NIC model and NFS in
  load order (``/modules.order``), the ``nsdt-guest`` helper and ``/init``; cached by content key.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"

# QEMU NIC model -> the guest driver modules it needs (besides their modules.dep dependencies).
NIC_MODULES = {
    "virtio-net-pci": ["virtio_pci", "virtio_net"],
    "e1000": ["e1000"],
    "e1000e": ["e1000e"],
    "rtl8139": ["8139too"],
    "pcnet": ["pcnet32"],
    "ne2k_pci": ["ne2k-pci"],
    "vmxnet3": ["vmxnet3"],
    "i82559er": ["e100"],
}
NFS_MODULES = ["nfsv3"]
BUSYBOX_APPLETS = ("sh", "mount", "umount", "mkdir", "cat", "echo", "insmod", "ip", "sysctl", "mkswap",
                   "swapon", "swapoff", "sleep", "poweroff", "reboot", "ls", "dd", "sync", "grep", "free",
                   "dmesg", "ifconfig", "uname", "rm", "sed", "true", "false", "test", "[", "printf", "kill",
                   "wait", "date", "head", "tail", "wc", "df", "mknod")


class InitramfsError(Exception):
    """A module, busybox or the helper could not be found or built: one line with the fix."""


# ------------------------------------------------------------------------------ cpio newc
class CpioWriter:
    """Write a cpio ``newc`` archive to a binary stream. Inode numbers are assigned in order;
    mtimes are 0 so the archive is reproducible."""

    def __init__(self, out: io.BufferedIOBase):
        self.out = out
        self.ino = 1
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               rdevmajor: int = 0, rdevminor: int = 0) -> None:
        name = name.lstrip("/") or "."
        if name in self.names and name != TRAILER:
            raise ValueError(f"cpio: duplicate entry {name!r}")
        self.names.add(name)
        bname = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevmajor, rdevminor, len(bname), 0)
        hdr = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self.ino += 1
        self.out.write(hdr + bname + b"\0" * (-(len(hdr) + len(bname)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdevmajor=major, rdevminor=minor)

    def trailer(self) -> None:
        self._entry(TRAILER, 0, nlink=1)


def read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every entry of one or more concatenated newc archives (for tests and
    for inspecting a built image); stops at the end of data. Raises ValueError on a bad header."""
    out, pos = [], 0
    while pos + 110 <= len(data):
        if data[pos:pos + 6] != NEWC_MAGIC:
            if not data[pos:].strip(b"\0"):
                break
            raise ValueError(f"cpio: bad magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        npos = pos + 110
        name = data[npos:npos + namesize - 1].decode()
        dpos = npos + namesize + (-(110 + namesize) % 4)
        body = data[dpos:dpos + size]
        pos = dpos + size + (-size % 4)
        if name == TRAILER:
            continue
        out.append((name, mode, body))
    return out


# ------------------------------------------------------------------------------ modules
def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep text -> {module path: [dependency paths]} (paths as written, relative to the
    modules directory)."""
    deps: dict[str, list[str]] = {}
    for ln in text.splitlines():
        if ":" not in ln:
            continue
        mod, rest = ln.split(":", 1)
        deps[mod.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    """kernel/drivers/net/virtio_net.ko(.xz|.zst|.gz) -> virtio_net ("-" and "_" are the same to
    the kernel; the file's own spelling is kept)."""
    base = os.path.basename(path)
    return base.split(".ko")[0]


def module_load_order(deps: dict[str, list[str]], wanted: list[str]) -> list[str]:
    """Paths of ``wanted`` modules (names, '-'/'_' alike) and their dependencies, each after all of
    its own dependencies, each once. Raises InitramfsError for a module modules.dep does not list."""
    by_name = {module_name(p).replace("-", "_"): p for p in deps}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(path: str, chain: tuple) -> None:
        if state.get(path) == 2:
            return
        if state.get(path) == 1:
            raise InitramfsError(f"modules.dep: dependency cycle through {' -> '.join(chain + (path,))}")
        state[path] = 1
        for d in deps.get(path, []):
            visit(d, chain + (path,))
        state[path] = 2
        order.append(path)

    for name in wanted:
        p = by_name.get(name.replace("-", "_"))
        if p is None:
            raise InitramfsError(f"module {name!r} is not in modules.dep; is it built as a module for this kernel "
                                 f"(or built in: then drop it from the list)?")
        visit(p, ())
    return order


def builtin_modules(modules_dir: str) -> set[str]:
    try:
        with open(os.path.join(modules_dir, "modules.builtin")) as f:
            return {module_name(ln.strip()).replace("-", "_") for ln in f if ln.strip()}
    except OSError:
        return set()


def _module_bytes(path: str) -> bytes:
    """A module file's bytes, decompressed when Debian/the user's build compressed it (busybox
    insmod reads plain ELF .ko files)."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        import lzma
        return lzma.decompress(data)
    if path.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise InitramfsError(f"{path}: zstd-compressed module and no zstandard package; "
                                 "pip install zstandard or build modules uncompressed") from None
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=64 << 20)
    return data


# ------------------------------------------------------------------------------ helper binary
HELPER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsdt_guest.c")


def build_helper(cache: str) -> str:
    """Compile nsdt_guest.c statically into the cache (once per source content); return its path."""
    with open(HELPER_SOURCE, "rb") as f:
        src = f.read()
    key = hashlib.sha256(src).hexdigest()[:16]
    out = os.path.join(cache, f"nsdt-guest-{key}")
    if os.path.exists(out):
        return out
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if not cc:
        raise InitramfsError("no C compiler to build the in-guest helper; install gcc and libc6-dev")
    tmp = f"{out}.tmp{os.getpid()}"
    r = subprocess.run([cc, "-static", "-O2", "-o", tmp, HELPER_SOURCE], capture_output=True, text=True)
    if r.returncode != 0:
        raise InitramfsError(f"building the in-guest helper failed ({cc} -static): "
                             f"{(r.stderr.strip().splitlines() or ['?'])[-1]}; install libc6-dev (static libc)")
    os.replace(tmp, out)
    return out


def find_busybox() -> str:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                head = f.read(4096)
            if b"ld-linux" not in head and b"/lib64/ld" not in head:   # static: no interpreter
                return p
    raise InitramfsError("no static busybox (/bin/busybox); install busybox-static")


# ------------------------------------------------------------------------------ the archives
INIT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_init.sh")


def build_base(modules_dir: str, nic_model: str, cache: str, extra_modules: tuple[str, ...] = ()) -> str:
    """The cached base initramfs for this kernel's modules and NIC model; returns its path."""
    dep_path = os.path.join(modules_dir, "modules.dep")
    try:
        with open(dep_path) as f:
            deps = parse_modules_dep(f.read())
    except OSError as e:
        raise InitramfsError(f"{dep_path}: cannot read ({e.strerror}); pass the kernel's modules directory "
                             f"(…/lib/modules/RELEASE, after `make modules_install` and depmod) to --modules") from None
    if nic_model not in NIC_MODULES:
        raise InitramfsError(f"NIC model {nic_model!r} is not one of {', '.join(NIC_MODULES)}")
    builtin = builtin_modules(modules_dir)
    wanted = [m for m in NIC_MODULES[nic_model] + NFS_MODULES + list(extra_modules)
              if m.replace("-", "_") not in builtin]
    order = module_load_order(deps, wanted)
    busybox = find_busybox()
    helper = build_helper(cache)
    with open(INIT_SCRIPT, "rb") as f:
        init = f.read()
    h = hashlib.sha256()
    for p in (busybox, helper, *[os.path.join(modules_dir, m) for m in order]):
        s = os.stat(p)
        h.update(f"{os.path.realpath(p)}:{s.st_size}:{s.st_mtime_ns}\n".encode())
    h.update(init)
    out = os.path.join(cache, f"initramfs-{h.hexdigest()[:16]}.cpio")
    if os.path.exists(out):
        return out
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        w = CpioWriter(f)
        for d in ("bin", "sbin", "dev", "proc", "sys", "mnt", "tmp", "etc", "lib", "lib/modules", "run", "root"):
            w.dir(d)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        with open(busybox, "rb") as b:
            w.file("bin/busybox", b.read(), 0o755)
        for a in BUSYBOX_APPLETS:
            w.symlink(f"bin/{a}", "busybox")
        with open(helper, "rb") as b:
            w.file("bin/nsdt-guest", b.read(), 0o755)
        names = []
        for m in order:
            name = os.path.basename(m).split(".ko")[0] + ".ko"
            w.file(f"lib/modules/{name}", _module_bytes(os.path.join(modules_dir, m)))
            names.append(name)
        w.file("modules.order", ("\n".join(names) + "\n").encode())
        w.file("init", init, 0o755)
        w.trailer()
    os.replace(tmp, out)
    return out


def run_archive(config: dict[str, str | int]) -> bytes:
    """The per-run archive: /etc/nsdt.conf (shell ``KEY='value'`` lines the init script sources)."""
    lines = []
    for k, v in config.items():
        if not k.replace("_", "").isalnum() or not k[0].isalpha():
            raise ValueError(f"config key {k!r} is not a shell variable name")
        sv = str(v)
        lines.append(f"{k}='" + sv.replace("'", "'\\''") + "'")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("etc/nsdt.conf", ("\n".join(lines) + "\n").encode())
    w.trailer()
    return buf.getvalue()
