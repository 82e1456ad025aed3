"""Swap over NBD: an NBD export as a ``mm.page_io.StorageBackend`` (Linux ``drivers/block/nbd.c``
with nbd-client's handshake), driving ``protocols.nbd_client.NbdClient`` over the agent's TCP.

Invariants owned here (the connection and the request queue: drivers/tcp_block.py):
- Handshake as nbd-client does it: fixed newstyle, NBD_OPT_GO with NBD_INFO_BLOCK_SIZE, falling
  back to NBD_OPT_EXPORT_NAME on NBD_REP_ERR_UNSUP or from a server without FIXED_NEWSTYLE;
  simple replies only (the kernel's nbd does not take structured replies). ``activate()`` ->
  the export's size in whole pages; an export the server does not know, or of no whole page, is
  an ``ActivateError``.
- Socket (nbd_start_device, nbd_reconnect_socket, __sock_xmit): SOCK_MEMALLOC,
  ``sk_allocation = GFP_NOIO | __GFP_MEMALLOC``, sends and receives under PF_MEMALLOC -- on the
  first socket and every reconnected one.
- ``write_page``: NBD_CMD_WRITE with NBD_CMD_FLAG_FUA when the export advertises
  NBD_FLAG_SEND_FUA (``durability="fua"``), else WRITE then NBD_CMD_FLUSH (``"flush"``, or when
  FUA is not offered); the page is durable when the last reply came with error 0. A lost
  connection or NBD_ESHUTDOWN resends the whole sequence on the next connection; any other
  error ends the page's writeback as a ``WriteError`` named after the NBD error (NBD_EIO ->
  EIO, NBD_ENOSPC -> ENOSPC, ...).
- Counters as nbd's debugfs and nbdinfo name things: ``NBD_CMD_WRITE``, ``NBD_CMD_FLAG_FUA``,
  ``NBD_CMD_FLUSH``, ``NBD_CMD_READ``, ``NBD_CMD_DISC``, one per reply error name
  (``NBD_EIO``), ``via`` (NBD_OPT_GO / NBD_OPT_EXPORT_NAME), ``transmission_flags``.
"""

from __future__ import annotations

from protocols import nbd
from protocols.nbd_client import Failed, NbdClient, Ready, Reply

from ...mm.gfp import GFP_NOIO, Gfp
from ...mm.page_io import PAGE_SIZE, ActivateError, WriteError
from ..tcp_block import TcpBlockDevice

ACTIVATE_TIMEOUT_S = 30.0
DURABILITY = ("fua", "flush")
_ERRNO = {nbd.NBD_EPERM: "EPERM", nbd.NBD_EIO: "EIO", nbd.NBD_ENOMEM: "ENOMEM",
          nbd.NBD_EINVAL: "EINVAL", nbd.NBD_ENOSPC: "ENOSPC", nbd.NBD_EOVERFLOW: "EOVERFLOW",
          nbd.NBD_ENOTSUP: "EOPNOTSUPP", nbd.NBD_ESHUTDOWN: "ESHUTDOWN"}


class NbdDevice(TcpBlockDevice):
    """The NBD export ``export`` at ``server:port`` (see the module docstring)."""

    kind = "nbd"

    def __init__(self, stack, sched, server: str, port: int = nbd.NBD_DEFAULT_PORT,
                 export: str = "", *, durability: str = "fua", use_go: bool = True, **kw) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be fua or flush, got {durability!r}")
        super().__init__(stack, sched, server, port, name=export, **kw)
        self.export = export
        self.durability = durability
        self.use_go = use_go
        self.ready: Ready | None = None
        self.counters.update({"NBD_CMD_WRITE": 0, "NBD_CMD_FLAG_FUA": 0, "NBD_CMD_FLUSH": 0,
                              "NBD_CMD_READ": 0, "NBD_CMD_DISC": 0, "via": None,
                              "transmission_flags": None, "size_bytes": None})

    # -- protocol hooks --------------------------------------------------------------------------
    def _new_machine(self):
        return NbdClient(self.export.encode(), structured=False, use_go=self.use_go)

    def _mark_socket(self, sk) -> None:
        # __sock_xmit: sk_allocation = GFP_NOIO | __GFP_MEMALLOC (the flag only with the cure)
        sk.sk_allocation = int(GFP_NOIO | Gfp.MEMALLOC) if self._memalloc else int(GFP_NOIO)
        sk.sk_use_task_frag = False

    def _handshake_done(self, ev):
        if isinstance(ev, Ready):
            self.ready = ev
            self.counters["via"] = ev.via
            self.counters["transmission_flags"] = ev.transmission_flags
            self.counters["size_bytes"] = ev.size_bytes
            return True
        if isinstance(ev, Failed):
            return False
        return None

    def _reply(self, ev):
        if isinstance(ev, Reply):
            return ev.handle, ev
        if isinstance(ev, Failed):
            return False
        return None

    def _goodbye(self) -> None:
        if self.state == "ready" and self.m is not None:
            self.m.disconnect()                 # NBD_CMD_DISC: no reply
            self.counters["NBD_CMD_DISC"] += 1
            self._flush()

    # -- StorageBackend --------------------------------------------------------------------------
    def activate(self):
        """Generator: connect + negotiate -> the export's size in whole pages."""
        yield from self.wait_ready(ACTIVATE_TIMEOUT_S)
        size = self.ready.size_bytes or 0
        flags = self.ready.transmission_flags
        if flags & nbd.NBD_FLAG_READ_ONLY:
            raise ActivateError(f"nbd {self.describe()} is read-only")
        if size // PAGE_SIZE <= 0:
            raise ActivateError(f"nbd {self.describe()} has no room ({size} bytes)")
        if self.durability == "fua" and not flags & nbd.NBD_FLAG_SEND_FUA:
            self.durability = "flush"
        self.log(f"nbd: {self.describe()}: {size} bytes via {self.ready.via}, "
                 f"durability {self.durability}")
        return size // PAGE_SIZE

    def _errno(self, reply: Reply) -> str:
        name = nbd.ERROR_NAMES.get(reply.error, f"NBD_E{reply.error}")
        self.counters[name] = self.counters.get(name, 0) + 1
        return _ERRNO.get(reply.error, "EIO")

    def _do(self, submit, what: str, offset: int):
        """Generator: one request until a final reply: Reply (error 0) or a WriteError."""
        while True:
            r = yield from self.request(submit, what)
            if r is None:
                return WriteError("EIO", "device closed", offset, what)
            if r.error == 0:
                return r
            err = self._errno(r)
            if r.error == nbd.NBD_ESHUTDOWN:        # the server is going away: next connection
                self.force_reconnect("NBD_ESHUTDOWN")
                continue
            return WriteError(err, nbd.ERROR_NAMES.get(r.error, str(r.error)), offset, what)

    def write_page(self, offset: int, make_data):
        """Generator: None once the export holds the page durably, or a WriteError."""
        fua = self.durability == "fua" and bool(self.ready.transmission_flags & nbd.NBD_FLAG_SEND_FUA)
        while True:
            gen = self.gen
            self.counters["NBD_CMD_WRITE"] += 1
            if fua:
                self.counters["NBD_CMD_FLAG_FUA"] += 1
            got = yield from self._do(lambda m: m.write(offset, make_data(), fua=fua),
                                      "NBD_CMD_WRITE", offset)
            if isinstance(got, WriteError) or fua:
                return got if isinstance(got, WriteError) else None
            if not self.ready.transmission_flags & nbd.NBD_FLAG_SEND_FLUSH:
                return None                          # no write cache: the reply is durable
            self.counters["NBD_CMD_FLUSH"] += 1
            got = yield from self._do(lambda m: m.flush(), "NBD_CMD_FLUSH", offset)
            if isinstance(got, WriteError):
                return got
            if self.gen == gen:
                return None
            # the flush went to a new connection: the target may have restarted and lost the
            # write (held in its memory) -- write the page again
            self.counters["requests_requeued"] += 1

    def read_page(self, offset: int):
        """Generator: the page's 4096 bytes, or a WriteError (proc NBD_CMD_READ)."""
        self.counters["NBD_CMD_READ"] += 1
        got = yield from self._do(lambda m: m.read(offset, PAGE_SIZE), "NBD_CMD_READ", offset)
        return got if isinstance(got, WriteError) else got.data
