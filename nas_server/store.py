"""Export stores: fixed-size images in directories, with NFSv3 stability semantics.

Invariants owned here:
- An image never grows or shrinks: a write must lie wholly inside ``[0, size_bytes)``.
- FILE_SYNC / DATA_SYNC writes are durable (``fdatasync``) before ``write`` returns.
- UNSTABLE writes live only in this process's memory (``Image.pending``) until ``commit``, which
  writes them out and syncs; a crash (SIGKILL) loses them, and the write verifier -- fresh on every
  process start -- tells the client to resend. Reads always see pending data (overlaid in order).
- Export and image names are single path components from a safe alphabet, opened with
  O_NOFOLLOW below the data directory: nothing outside the data directory is ever reachable.
- An image made by an EXCLUSIVE CREATE keeps the client's 8-byte create verifier (RFC 1813
  §3.3.8) until its first WRITE or time change, so a replayed CREATE is recognised. As Linux nfsd
  (``nfsd_create_setattr``/``nfsd4_vfs_create``: verifier words in ``i_atime``/``i_mtime``),
  ``FileImage`` also writes it into the file's atime/mtime seconds, which survive a restart.

``MemoryStore`` has the same semantics without files (``crash()`` drops pending data and renews the
verifier), so the client agent's tests can run a NAS with no root and no disk.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # no '/', no leading '.', <= 255 bytes
# Pending UNSTABLE data above this is written out (not synced) to bound the server's memory; it is
# then "in the page cache", as on a real server, and still uncommitted.
MAX_PENDING_BYTES = 512 << 20


class StoreError(Exception):
    """A store operation failed; ``status`` is the nfsstat3 name the server should answer with."""

    def __init__(self, status: str, msg: str):
        super().__init__(msg)
        self.status = status


def check_name(name: str, what: str) -> str:
    if not SAFE_NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r} is not a safe single path component (letters, digits, '.', '_', '-'; "
            "not starting with '.'; at most 255 bytes)"
        )
    return name


class Image:
    """One fixed-size image; subclasses supply ``_pread``/``_pwrite``/``_sync``."""

    def __init__(self, name: str, fileid: int, size_bytes: int, mtime_s: float):
        self.name = name
        self.fileid = fileid
        self.size_bytes = size_bytes
        self.pending: dict[int, bytes] = {}  # offset -> UNSTABLE data, in arrival order
        self.pending_bytes = 0
        self.mode = 0o644
        self.mtime_s = mtime_s
        self.ctime_s = mtime_s
        # EXCLUSIVE CREATE verifier; b"" once written or touched (forgotten); None: not known here
        self.create_verf: bytes | None = None

    def set_create_verf(self, verf: bytes) -> None:
        self.create_verf = bytes(verf)

    def create_verf_matches(self, verf: bytes) -> bool:
        """Whether an EXCLUSIVE CREATE with ``verf`` is a replay of the one that made this image."""
        return bool(self.create_verf) and self.create_verf == bytes(verf)

    def forget_create_verf(self) -> None:
        """The client has written or set times: the verifier's job is done (Linux overwrites it then)."""
        self.create_verf = b""

    # backend
    def _pread(self, offset: int, count: int) -> bytes:
        raise NotImplementedError

    def _pwrite(self, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _sync(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # semantics
    def read(self, offset: int, count: int) -> bytes:
        end = min(offset + count, self.size_bytes)
        if offset >= end:
            return b""
        data = self._pread(offset, end - offset)
        if self.pending:
            buf = bytearray(data)
            for off, pd in self.pending.items():
                lo, hi = max(off, offset), min(off + len(pd), end)
                if lo < hi:
                    buf[lo - offset : hi - offset] = pd[lo - off : hi - off]
            data = bytes(buf)
        return data

    def check_range(self, offset: int, count: int) -> None:
        if offset + count > self.size_bytes:
            raise StoreError(
                "NFS3ERR_NOSPC",
                f"write of {count} bytes at offset {offset} ends past the end of image {self.name!r} "
                f"({self.size_bytes} bytes); images never grow",
            )

    def write(self, offset: int, data: bytes | memoryview, stable: bool, now_s: float) -> None:
        self.check_range(offset, len(data))
        if stable:
            self._flush_pending()
            self._pwrite(offset, data)
            self._sync()
        else:
            old = self.pending.pop(offset, None)
            if old is not None:
                self.pending_bytes -= len(old)
            self.pending[offset] = bytes(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > MAX_PENDING_BYTES:
                self._flush_pending()
        self.mtime_s = self.ctime_s = now_s
        self.forget_create_verf()

    def _flush_pending(self) -> None:
        for off, pd in self.pending.items():
            self._pwrite(off, pd)
        self.pending.clear()
        self.pending_bytes = 0

    def commit(self) -> None:
        self._flush_pending()
        self._sync()


class MemoryImage(Image):
    def __init__(self, name: str, fileid: int, size_bytes: int, now_s: float = 0.0):
        super().__init__(name, fileid, size_bytes, now_s)
        self.data = bytearray(size_bytes)  # the "durable" bytes
        self.syncs = 0

    def _pread(self, offset, count):
        return bytes(self.data[offset : offset + count])

    def _pwrite(self, offset, data):
        self.data[offset : offset + len(data)] = data

    def _sync(self):
        self.syncs += 1


class FileImage(Image):
    def __init__(self, name: str, path: str, dir_fd: int):
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ValueError(f"{path} is not a regular file")
        super().__init__(name, st.st_ino, st.st_size, st.st_mtime)
        self.path = path
        self.fd = fd
        self.syncs = 0

    def _pread(self, offset, count):
        return os.pread(self.fd, count, offset)

    def _pwrite(self, offset, data):
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def _sync(self):
        os.fdatasync(self.fd)
        self.syncs += 1

    def close(self):
        os.close(self.fd)

    def set_create_verf(self, verf: bytes) -> None:
        """Keep the verifier in memory and, as Linux does, in the file's atime/mtime seconds (synced)."""
        super().set_create_verf(verf)
        hi, lo = int.from_bytes(verf[:4], "big"), int.from_bytes(verf[4:], "big")
        os.utime(self.fd, ns=(hi * 1_000_000_000, lo * 1_000_000_000))
        os.fsync(self.fd)

    def create_verf_matches(self, verf: bytes) -> bool:
        if self.create_verf is not None:
            return super().create_verf_matches(verf)
        # Loaded at start and untouched since: the verifier is read back from atime/mtime (a READ under relatime or a
        # WRITE may have replaced them since, as on Linux; then the replay is refused with EXIST).
        st = os.fstat(self.fd)
        stored = ((st.st_atime_ns // 1_000_000_000) & 0xFFFFFFFF, (st.st_mtime_ns // 1_000_000_000) & 0xFFFFFFFF)
        return stored == (int.from_bytes(verf[:4], "big"), int.from_bytes(verf[4:], "big"))


@dataclass
class Export:
    """A directory of images. ``networks`` lists who may mount it (ipaddress networks)."""
    name: str
    fsid: int
    dir_fileid: int
    networks: list = field(default_factory=list)
    images: dict[str, Image] = field(default_factory=dict)
    by_fileid: dict[int, Image] = field(default_factory=dict)
    mtime_s: float = 0.0

    def add(self, img: Image) -> None:
        self.images[img.name] = img
        self.by_fileid[img.fileid] = img


def _fsid(name: str) -> int:
    import zlib
    return zlib.crc32(name.encode()) or 1


class Store:
    """A set of exports. ``verifier`` is the NFSv3 write verifier for this store's lifetime."""

    def __init__(self, verifier: bytes):
        if len(verifier) != 8:
            raise ValueError(f"write verifier must be 8 bytes, got {len(verifier)}")
        self.verifier = verifier
        self.exports: dict[str, Export] = {}
        self.by_fsid: dict[int, Export] = {}

    def _add_export(self, exp: Export) -> Export:
        if exp.fsid in self.by_fsid:
            raise ValueError(f"export {exp.name!r} collides with {self.by_fsid[exp.fsid].name!r} (fsid); rename one")
        self.exports[exp.name] = exp
        self.by_fsid[exp.fsid] = exp
        return exp

    def create_image(self, export: str, name: str, size_bytes: int, now_s: float = 0.0) -> Image:
        raise NotImplementedError

    def pending_bytes(self) -> int:
        return sum(i.pending_bytes for e in self.exports.values() for i in e.images.values())

    def image_count(self) -> int:
        return sum(len(e.images) for e in self.exports.values())

    def fsstat(self, exp: Export) -> tuple[int, int, int, int, int, int]:
        """FSSTAT3resok's ``tbytes, fbytes, abytes, tfiles, ffiles, afiles`` (RFC 1813 §3.3.18)."""
        raise NotImplementedError

    def close(self) -> None:
        for e in self.exports.values():
            for i in e.images.values():
                i.close()


class MemoryStore(Store):
    def __init__(self, verifier: bytes = b"memstor1"):
        super().__init__(verifier)
        self._next_fileid = 2

    def add_export(self, name: str, networks: list | None = None) -> Export:
        check_name(name, "export name")
        exp = Export(name, _fsid(name), 1, list(networks or []))
        return self._add_export(exp)

    def create_image(self, export: str, name: str, size_bytes: int, now_s: float = 0.0) -> Image:
        check_name(name, "image name")
        exp = self.exports[export]
        if name in exp.images:
            return exp.images[name]
        self._next_fileid += 1
        img = MemoryImage(name, self._next_fileid, size_bytes, now_s)
        exp.add(img)
        return img

    def fsstat(self, exp: Export) -> tuple[int, int, int, int, int, int]:
        """No backing file system: the images are all there is, and nothing is free (images never grow)."""
        return (sum(i.size_bytes for i in exp.images.values()), 0, 0, len(exp.images), 0, 0)

    def crash(self, new_verifier: bytes) -> None:
        """What SIGKILL and a restart do: pending UNSTABLE data is lost, the verifier changes."""
        for e in self.exports.values():
            for i in e.images.values():
                i.pending.clear()
                i.pending_bytes = 0
        self.verifier = new_verifier


class DirStore(Store):
    """Exports are ``data_dir/NAME/``; every regular file directly inside is an image."""

    def __init__(self, data_dir: str, verifier: bytes):
        super().__init__(verifier)
        self.data_dir = os.path.realpath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self._dir_fds: dict[str, int] = {}

    def add_export(self, name: str, networks: list | None = None) -> Export:
        check_name(name, "export name")
        path = os.path.join(self.data_dir, name)
        os.makedirs(path, exist_ok=True)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(dfd)
        exp = Export(name, _fsid(name), st.st_ino, list(networks or []), mtime_s=st.st_mtime)
        self._dir_fds[name] = dfd
        for entry in sorted(os.listdir(dfd)):
            if not SAFE_NAME.match(entry):
                continue
            try:
                if stat.S_ISREG(os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mode):
                    exp.add(FileImage(entry, os.path.join(path, entry), dfd))
            except (OSError, ValueError):
                continue
        return self._add_export(exp)

    def create_image(self, export: str, name: str, size_bytes: int, now_s: float = 0.0) -> Image:
        check_name(name, "image name")
        exp = self.exports[export]
        if name in exp.images:
            img = exp.images[name]
            if img.size_bytes != size_bytes:
                raise ValueError(
                    f"image {export}/{name} exists with {img.size_bytes} bytes, not {size_bytes}; "
                    "images are fixed-size: remove it or ask for its size"
                )
            return img
        dfd = self._dir_fds[export]
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        try:
            os.ftruncate(fd, size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(dfd)
        img = FileImage(name, os.path.join(self.data_dir, export, name), dfd)
        exp.add(img)
        return img

    def fsstat(self, exp: Export) -> tuple[int, int, int, int, int, int]:
        """The file system holding the export, from ``statvfs`` as Linux nfsd's ``nfsd3_proc_fsstat``
        (``vfs_statfs``): total, free and available-to-unprivileged bytes and inodes."""
        st = os.statvfs(self._dir_fds[exp.name])
        f = st.f_frsize
        return (st.f_blocks * f, st.f_bfree * f, st.f_bavail * f, st.f_files, st.f_ffree, st.f_favail)

    def close(self) -> None:
        super().close()
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()
