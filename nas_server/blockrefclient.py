"""Reference NBD and iSCSI clients: the sans-I/O ``protocols.nbd_client`` / ``protocols.iscsi_initiator``
state machines driven over a kernel TCP socket, one request at a time (blocking, with a timeout).

They check the codecs against third-party targets (nbdkit, nbd-server, qemu-nbd, tgt) and against
nas-server before the agent's own TCP carries the same state machines. Invariant owned here: only
this module touches the socket; a protocol failure raises ``BlockClientError`` naming it.
"""

from __future__ import annotations

import socket

from protocols import iscsi, scsi
from protocols.iscsi_initiator import CommandDone, Failed, IscsiInitiator, LoggedIn, Targets
from protocols.nbd_client import Failed as NbdFailed
from protocols.nbd_client import NbdClient, Ready, Reply

BLOCK_BYTES = 512


class BlockClientError(RuntimeError):
    pass


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout_s)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class _Driver:
    def __init__(self, sock: socket.socket, machine):
        self.sock, self.m = sock, machine

    def pump(self, until) -> list:
        """Send what the machine has, feed it what arrives, until ``until(events)`` holds."""
        events: list = []
        while True:
            out = self.m.data_to_send()
            if out:
                self.sock.sendall(out)
            if until(events):
                return events
            data = self.sock.recv(1 << 20)
            if not data:
                raise BlockClientError(f"peer closed the connection (events so far: {events[-3:]})")
            new = self.m.receive(data)
            for e in new:
                if isinstance(e, (Failed, NbdFailed)):
                    raise BlockClientError(f"{e.reason}: {e.detail}")
            events += new


class NbdRefClient:
    def __init__(self, host: str, port: int, export: bytes, *, structured: bool = True, use_go: bool = True,
                 timeout_s: float = 20.0):
        self.c = NbdClient(export, structured=structured, use_go=use_go)
        self.d = _Driver(_connect(host, port, timeout_s), self.c)
        ev = self.d.pump(lambda evs: any(isinstance(e, Ready) for e in evs))
        self.ready: Ready = next(e for e in ev if isinstance(e, Ready))

    def _wait(self, h: int) -> Reply:
        ev = self.d.pump(lambda evs: any(isinstance(e, Reply) and e.handle == h for e in evs))
        r = next(e for e in ev if isinstance(e, Reply) and e.handle == h)
        if r.error:
            raise BlockClientError(f"NBD error {r.error}: {r.message.decode(errors='replace')}")
        return r

    def read(self, offset: int, length: int) -> bytes:
        return self._wait(self.c.read(offset, length)).data

    def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self._wait(self.c.write(offset, data, fua))

    def flush(self) -> None:
        self._wait(self.c.flush())

    def close(self) -> None:
        try:
            self.c.disconnect()
            self.d.sock.sendall(self.c.data_to_send())
        finally:
            self.d.sock.close()


class IscsiRefClient:
    def __init__(self, host: str, port: int, target: str, *, initiator: str = "iqn.2025-01.org.nsdeadlock:refclient",
                 header_digest: str = "None", data_digest: str = "None", offer: iscsi.Params | None = None,
                 lun: int = 0, timeout_s: float = 20.0):
        self.lun = lun
        self.i = IscsiInitiator(initiator, target, header_digest=header_digest, data_digest=data_digest, offer=offer)
        self.d = _Driver(_connect(host, port, timeout_s), self.i)
        self.i.start()
        ev = self.d.pump(lambda evs: any(isinstance(e, LoggedIn) for e in evs))
        self.params = next(e for e in ev if isinstance(e, LoggedIn)).params

    @staticmethod
    def discover(host: str, port: int, initiator: str = "iqn.2025-01.org.nsdeadlock:refclient",
                 timeout_s: float = 20.0) -> list[tuple[str, str]]:
        i = IscsiInitiator(initiator, discovery=True)
        d = _Driver(_connect(host, port, timeout_s), i)
        try:
            i.start()
            d.pump(lambda evs: any(isinstance(e, LoggedIn) for e in evs))
            i.send_targets()
            ev = d.pump(lambda evs: any(isinstance(e, Targets) for e in evs))
            i.logout()
            d.sock.sendall(i.data_to_send())
            return next(e for e in ev if isinstance(e, Targets)).targets
        finally:
            d.sock.close()

    def command(self, cdb: bytes, data_out: bytes = b"", read_bytes: int = 0) -> CommandDone:
        itt = self.i.command(cdb, lun=self.lun, data_out=data_out, read_bytes=read_bytes)
        ev = self.d.pump(lambda evs: any(isinstance(e, CommandDone) and e.itt == itt for e in evs))
        return next(e for e in ev if isinstance(e, CommandDone) and e.itt == itt)

    def checked(self, cdb: bytes, data_out: bytes = b"", read_bytes: int = 0) -> bytes:
        """Run a command; a UNIT ATTENTION (e.g. POWER ON, RESET after login) is retried up to
        3 times, as Linux's SCSI midlayer does; any other CHECK CONDITION raises."""
        for _ in range(4):
            r = self.command(cdb, data_out, read_bytes)
            if r.status != scsi.CHECK_CONDITION or not r.sense or scsi.decode_sense(r.sense)[0] != scsi.UNIT_ATTENTION:
                break
        if r.status != scsi.GOOD:
            key, asc = scsi.decode_sense(r.sense) if r.sense else (None, None)
            raise BlockClientError(f"{scsi.OPCODE_NAMES.get(cdb[0], cdb[0])}: status "
                                   f"{scsi.STATUS_NAMES.get(r.status, r.status)} sense "
                                   f"{scsi.SENSE_KEY_NAMES.get(key, key)} {scsi.ASC_NAMES.get(asc, asc)}")
        return r.data

    def capacity(self) -> tuple[int, int]:
        return scsi.decode_read_capacity_16(self.checked(scsi.cdb_read_capacity_16(), read_bytes=32))

    def read(self, lba: int, blocks: int, block_bytes: int = BLOCK_BYTES, sixteen: bool | None = None) -> bytes:
        return self.checked(scsi.cdb_rw(False, lba, blocks, sixteen=sixteen), read_bytes=blocks * block_bytes)

    def write(self, lba: int, data: bytes, fua: bool = False, block_bytes: int = BLOCK_BYTES,
              sixteen: bool | None = None) -> None:
        self.checked(scsi.cdb_rw(True, lba, len(data) // block_bytes, fua=fua, sixteen=sixteen), data_out=data)

    def sync(self) -> None:
        self.checked(scsi.cdb_sync_cache())

    def nop(self) -> None:
        from protocols.iscsi_initiator import NopIn
        itt = self.i.nop(b"ping")
        self.d.pump(lambda evs: any(isinstance(e, NopIn) and e.itt == itt for e in evs))

    def logout(self) -> None:
        try:
            self.i.logout()
            self.d.pump(lambda evs: self.i.state == "logged_out")
        finally:
            self.d.sock.close()
