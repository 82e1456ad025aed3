"""The uncompressed kernel (``vmlinux``, an ELF with a PVH entry note) from a compressed ``vmlinuz``.

QEMU boots an ELF ``vmlinux`` directly through its PVH entry (``-kernel vmlinux``); under TCG the
bzImage's own decompressor is very slow, so the project extracts the payload once and caches it.
The method is the kernel's ``scripts/extract-vmlinux``: look for each compressor's magic in the
file, decompress from there, keep the first result that is an ELF image. Decompressors: Python's
``gzip``/``zlib``, ``lzma`` (xz, lzma), ``bz2``; zstd through the ``zstandard`` package when it is
installed (Debian's 6.1 kernels are xz).
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import zlib

ELF_MAGIC = b"\x7fELF"
# (name, magic) as scripts/extract-vmlinux tries them.
MAGICS = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
)
# A kernel is a few tens of MB uncompressed; refuse to inflate beyond this (a corrupt stream).
MAX_VMLINUX_BYTES = 512 << 20


class VmlinuxError(Exception):
    """No compressed ELF kernel found in the file, or the file cannot be read: one line."""


def _inflate(kind: str, data: bytes) -> bytes | None:
    """Decompress one stream starting at data[0]; trailing bytes after the stream are ignored.
    Returns None when the stream is not valid for that compressor."""
    try:
        if kind == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return d.decompress(data, MAX_VMLINUX_BYTES)
        if kind in ("xz", "lzma"):
            d = lzma.LZMADecompressor(lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
            return d.decompress(data, MAX_VMLINUX_BYTES)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data)
        if kind == "zstd":
            try:
                import zstandard
            except ImportError:
                return None
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError):
        return None
    return None


def extract_vmlinux_bytes(data: bytes, max_tries_per_magic: int = 8) -> tuple[bytes, str, int]:
    """(vmlinux ELF bytes, compressor name, offset of the stream) from a vmlinuz image.

    Raises VmlinuxError when the image is already an ELF (nothing to extract: use it as is is the
    caller's business) or when no magic leads to an ELF."""
    if data[:4] == ELF_MAGIC:
        return data, "none", 0
    tried = []
    for kind, magic in MAGICS:
        pos, n = data.find(magic), 0
        while pos >= 0 and n < max_tries_per_magic:
            out = _inflate(kind, data[pos:])
            if out and out[:4] == ELF_MAGIC:
                return out, kind, pos
            tried.append(f"{kind}@{pos}")
            pos, n = data.find(magic, pos + 1), n + 1
    raise VmlinuxError("no compressed ELF kernel found (tried "
                       + (", ".join(tried[:12]) or "no compressor magic present") + ")")


def cache_dir() -> str:
    """Where extracted kernels and built initramfs images live: $NSDT_CACHE, else
    $XDG_CACHE_HOME/nsdeadlock-testbed, else ~/.cache/nsdeadlock-testbed."""
    base = os.environ.get("NSDT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nsdeadlock-testbed")
    os.makedirs(base, exist_ok=True)
    return base


def vmlinux_for(kernel: str, cache: str | None = None) -> str:
    """Path of the uncompressed vmlinux for ``kernel`` (a vmlinuz/bzImage or already an ELF vmlinux),
    extracted once into the cache (keyed by the image's size, mtime and path)."""
    try:
        st = os.stat(kernel)
        with open(kernel, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise VmlinuxError(f"{kernel}: cannot read ({e.strerror}); pass an existing kernel image to --kernel") from None
    if head == ELF_MAGIC:
        return kernel
    key = hashlib.sha256(f"{os.path.realpath(kernel)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = os.path.join(cache or cache_dir(), f"vmlinux-{os.path.basename(kernel)}-{key}")
    if os.path.exists(out):
        return out
    with open(kernel, "rb") as f:
        data = f.read()
    try:
        elf, _kind, _off = extract_vmlinux_bytes(data)
    except VmlinuxError as e:
        raise VmlinuxError(f"{kernel}: {e}; pass a bzImage/vmlinuz or an ELF vmlinux") from None
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, out)
    return out
