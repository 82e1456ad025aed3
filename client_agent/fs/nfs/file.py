"""One file on an NFS export as a storage backend (mm.page_io.StorageBackend): the swap file of
Linux's SWP_FS_OPS path (nfs_swap_activate + nfs_swap_rw) and the data file of the page cache.

Invariants owned here:
- ``activate()`` mounts the export (MOUNT MNT) and looks the file up (LOOKUP); its size in whole
  pages is the answer. A missing export/file or an empty file is an ``ActivateError``.
- ``set_memalloc(on)`` is the transport's: xs_set_memalloc on its socket, again after every
  reconnect (net/sunrpc/xprtsock.py), and RPC buffers from the reserve (RPC_TASK_SWAPPER).
- ``write_page`` is ``NfsTransport.write_durably`` with the mount's ``stable`` how: durable
  before it returns None; a ``WriteError`` ends the page's writeback (fs/nfs/nfs3proc.py).
  Its counters (``durability_counters()``: writes, commits, resends, verifier_changes, shortwrite,
  committed_lt_stable, delay, rpcgarbage, write_errors by reason and errno) are ``counters``.
- ``read_page`` is one READ of a page; an NFS error (or a dead transport's -EIO) is returned as a
  ``WriteError`` named READ.
"""

from __future__ import annotations

from protocols import nfs3

from ...mm.page_io import PAGE_SIZE, ActivateError, WriteError
from ...net.sunrpc.clnt import RpcSoftError
from .nfs3proc import NfsError, durability_counters

STABLE = {"FILE_SYNC": nfs3.FILE_SYNC, "UNSTABLE": nfs3.UNSTABLE, "DATA_SYNC": nfs3.DATA_SYNC}


class NfsFile:
    """``export``/``image`` on the server of ``transport`` (an ``NfsTransport``)."""

    kind = "nfs"

    def __init__(self, transport, export: str, image: str, stable: str | int = "FILE_SYNC",
                 counters: dict | None = None) -> None:
        if isinstance(stable, str) and stable not in STABLE:
            raise ValueError(f"stable must be one of {', '.join(STABLE)}, got {stable!r}")
        self.transport = transport
        self.export = export
        self.image = image
        self.stable = STABLE[stable] if isinstance(stable, str) else stable
        self.fh: bytes | None = None
        self.size_bytes: int | None = None
        self.counters = counters if counters is not None else durability_counters()

    @property
    def memalloc(self) -> bool:
        return bool(self.transport.memalloc)

    @property
    def dead(self) -> str | None:
        """The transport's task crashed (net/sunrpc/xprt.py ``dead``): no more I/O."""
        xprt = self.transport.xprt
        return xprt.dead if xprt is not None else None

    def describe(self) -> str:
        return f"{self.transport.server_ip}:/{self.export}/{self.image}"

    def activate(self):
        """Generator: MNT + LOOKUP -> the file's size in whole pages."""
        t = self.transport
        root = yield from t.mount(self.export)
        fh, size = yield from t.lookup(root, self.image)
        self.fh, self.size_bytes = fh, size
        pages = (size or 0) // PAGE_SIZE
        if pages <= 0:
            raise ActivateError(f"{self.describe()} has no room ({size} bytes)")
        return pages

    def set_memalloc(self, on: bool) -> None:
        self.transport.set_memalloc(on)

    def write_page(self, offset: int, make_data):
        """Generator: None once durable, or a WriteError. (The transport's generator itself: one
        frame less on every resumption of a writeback task.)"""
        return self.transport.write_durably(self.fh, offset, make_data, self.stable, self.counters)

    def read_page(self, offset: int):
        """Generator: the page's 4096 bytes, or a WriteError (proc READ)."""
        try:
            return (yield from self.transport.read(self.fh, offset, PAGE_SIZE))
        except (NfsError, RpcSoftError) as e:       # RpcXprtDead: the transport's task crashed
            return WriteError("EIO", str(e), offset, "READ")

    def snapshot(self) -> dict:
        return dict(self.counters)

    def close(self) -> None:
        self.transport.close()
