"""The storage interface mm/ writes pages through, and how a page write can fail (mm/page_io.c,
include/linux/fs.h's swap_activate/swap_rw, the block layer's submit + flush).

A storage protocol's client implements ``StorageBackend``; swapon (mm/swapfile.py) and the page
cache (mm/filemap.py) use nothing else, so mm/ never imports a protocol. Invariants every backend
keeps:
- ``activate()`` (a generator) connects, logs in or mounts, and returns the number of 4 KiB pages
  the backing object holds; it raises ``ActivateError`` (with a sentence saying what failed) if
  the object cannot be used.
- ``set_memalloc(on)`` marks every socket the backend owns SOCK_MEMALLOC (and its tasks as
  swappers, so their buffers may use the reserve), and does so again on every reconnect; off
  clears it. ``memalloc`` reads the current state.
- ``write_page(offset, make_data)`` (a generator) completes only when the page is durable on the
  target (NFS: FILE_SYNC, or UNSTABLE + COMMIT with a stable verifier; a block protocol: FUA or
  WRITE + FLUSH), with the protocol's own retry rules inside; ``make_data()`` regenerates the
  bytes for every resend. It returns None when durable or a ``WriteError`` when the page's
  writeback ends with an error; it never raises for anything the target sends.
- ``read_page(offset)`` (a generator) returns the 4096 bytes at ``offset`` or a ``WriteError``
  (named for the read: ``proc`` is the protocol's read operation).
- ``dead`` (optional; None when absent): a sentence once the backend can do no more I/O because a
  task of its own crashed (a bug of this program, client_agent/tasks.py) -- every write would
  fail at once with EIO, so swap and the page cache start no new writeback on it (else reclaim
  would resubmit the same page without end at one instant).
- ``snapshot()`` returns the protocol's counters, named as the protocol's tools name them;
  ``counters`` is the live dict; ``describe()`` names the object (``server:/export/file``);
  ``close()`` releases sockets and tasks.
"""

from __future__ import annotations

import errno as _errno
from typing import NamedTuple, Protocol

PAGE_SIZE = 4096

# Kernel-internal errnos (include/linux/errno.h) have no name in Python's errno module.
_KERNEL_ERRNO = {"EBADHANDLE": 521, "ENOTSYNC": 522, "EBADCOOKIE": 523, "ENOTSUPP": 524,
                 "ETOOSMALL": 525, "ESERVERFAULT": 526, "EBADTYPE": 527, "EJUKEBOX": 528}


def errno_number(name: str) -> int:
    """Linux's number for an errno name ("EIO" -> 5, "EJUKEBOX" -> 528)."""
    return _KERNEL_ERRNO.get(name) or getattr(_errno, name, _errno.EIO)


class WriteError(NamedTuple):
    """A page's I/O ended without the target holding it: ``errno`` name ("EIO", "ENOSPC", ...),
    ``reason`` (the protocol's own name for what happened), ``offset`` (bytes) and ``proc`` (the
    protocol operation: "WRITE", "COMMIT", ...)."""
    errno: str
    reason: str
    offset: int
    proc: str

    @property
    def errno_number(self) -> int:
        return errno_number(self.errno)


def backend_dead(backend) -> str | None:
    """``backend.dead`` if the backend has it (see the module docstring), else None."""
    return getattr(backend, "dead", None) if backend is not None else None


def count_write_error(counters: dict, err: WriteError) -> WriteError:
    """Count a page write that ended with ``err`` in a consumer's counters: ``write_errors``,
    and by name in ``write_error_reasons`` / ``write_error_errnos`` (created if absent)."""
    counters["write_errors"] = counters.get("write_errors", 0) + 1
    for key, name in (("write_error_reasons", err.reason), ("write_error_errnos", err.errno)):
        d = counters.setdefault(key, {})
        d[name] = d.get(name, 0) + 1
    return err


# The reason a page's writeback ends with when its writeback task crashed (a bug of this program).
TASK_CRASHED = "writeback task crashed"


class ActivateError(Exception):
    """The backing object cannot be used (no such export/file/LUN, empty, refused)."""


class StorageBackend(Protocol):
    """What swapon and the page cache see of a storage protocol (see the module docstring)."""

    counters: dict

    @property
    def memalloc(self) -> bool: ...

    def activate(self): ...

    def set_memalloc(self, on: bool) -> None: ...

    def write_page(self, offset: int, make_data): ...

    def read_page(self, offset: int): ...

    def snapshot(self) -> dict: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...
