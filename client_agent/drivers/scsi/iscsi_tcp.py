"""Swap over iSCSI: a LUN of an iSCSI target as a ``mm.page_io.StorageBackend`` (Linux
``drivers/scsi/iscsi_tcp.c`` + ``libiscsi.c``, with iscsid's login and sd's probe), driving
``protocols.iscsi_initiator.IscsiInitiator`` over the agent's TCP.

Invariants owned here (the connection and the request queue: drivers/tcp_block.py):
- Login (iscsid): AuthMethod=None, then the operational keys -- HeaderDigest/DataDigest (None or
  CRC32C), MaxRecvDataSegmentLength, InitialR2T, ImmediateData, FirstBurstLength,
  MaxBurstLength as open-iscsi offers them; the same ISID on every reconnect (session
  reinstatement, RFC 7143 §6.3.5). ``activate()`` then probes as scsi_scan + sd do: REPORT LUNS
  to LUN 0 (the LUN must be listed), INQUIRY (a connected direct-access device: peripheral byte
  0), READ CAPACITY(16) -> size in whole pages; anything else is an ``ActivateError``.
- Socket (iscsi_sw_tcp_conn_bind): ``sk_allocation = GFP_ATOMIC``, ``sk_use_task_frag`` off,
  SOCK_MEMALLOC; PDU transmit (and receive) under PF_MEMALLOC -- on every new connection.
- ``write_page``: WRITE(10) (WRITE(16) past 2^32 blocks) with FUA (``durability="fua"``), or
  without FUA followed by SYNCHRONIZE CACHE(10) (``"sync"``); immediate data / unsolicited
  Data-Out / R2T + Data-Out as negotiated (the state machine). UNIT ATTENTION is retried (3
  times, as the SCSI midlayer does), BUSY / TASK SET FULL after a pause; any other CHECK
  CONDITION ends the page's writeback as a ``WriteError`` (EIO, the sense key and ASC named).
- Liveness (libiscsi's iscsi_check_transport_timeouts): after ``noop_out_interval_s`` without
  a PDU from the target a NOP-Out ping is sent; no NOP-In within ``noop_out_timeout_s`` is a
  connection failure (reconnect, re-login, resend every outstanding command).
- Counters named as Linux's ``struct iscsi_stats`` (iscsiadm -m session -s) names them, one per
  PDU sent or received (``scsicmd_pdus``, ``dataout_pdus``, ``r2t_pdus``, ``datain_pdus``,
  ``scsirsp_pdus``, ``noptx_pdus``, ``noprx_pdus``, ...), ``timeout_err`` (ping timeouts), plus
  SCSI opcode names (``WRITE_10``, ``SYNCHRONIZE_CACHE``) and ``sense_<key> <asc>``.
"""

from __future__ import annotations

import hashlib

from protocols import iscsi, scsi
from protocols.iscsi_initiator import CommandDone, Failed, IscsiInitiator, LoggedIn, NopIn

from ...mm.gfp import GFP_ATOMIC
from ...mm.page_io import PAGE_SIZE, ActivateError, WriteError
from ...tasks import Sleep
from ..tcp_block import TcpBlockDevice

ISCSI_PORT = 3260
ACTIVATE_TIMEOUT_S = 30.0
DURABILITY = ("fua", "sync")
DIGESTS = ("None", "CRC32C")
UA_RETRIES = 3
BUSY_RETRY_S = 0.1
class _CountingInitiator(IscsiInitiator):
    """The state machine, with every PDU it sends and receives counted as iscsi_stats does."""

    stats: dict

    def _send(self, p):
        self.stats[iscsi.STATS_NAMES[p.opcode]] += 1
        self.stats["txdata_octets"] += len(p.data)
        super()._send(p)

    def _pdu(self, p, events):
        name = iscsi.STATS_NAMES.get(p.opcode)
        if name:
            self.stats[name] += 1
        self.stats["rxdata_octets"] += len(p.data)
        super()._pdu(p, events)


class IscsiDevice(TcpBlockDevice):
    """LUN ``lun`` of the target ``target`` (IQN) at ``server:port``."""

    kind = "iscsi"

    def __init__(self, stack, sched, server: str, port: int = ISCSI_PORT, target: str = "", *,
                 lun: int = 0, initiator: str = "iqn.2025-01.org.nsdeadlock:client-agent",
                 durability: str = "fua", header_digest: str = "None", data_digest: str = "None",
                 initial_r2t: bool = False, immediate_data: bool = True,
                 max_recv_data_segment_length: int = 262144, first_burst_length: int = 262144,
                 max_burst_length: int = 16776192, noop_out_interval_s: float = 5.0,
                 noop_out_timeout_s: float = 5.0, seed: int = 0, **kw) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be fua or sync, got {durability!r}")
        for k, v in (("header_digest", header_digest), ("data_digest", data_digest)):
            if v not in DIGESTS:
                raise ValueError(f"{k} must be None or CRC32C, got {v!r}")
        super().__init__(stack, sched, server, port, name=f"{target}/{lun}", **kw)
        self.target, self.lun, self.initiator = target, lun, initiator
        self.durability = durability
        self.digests = (header_digest, data_digest)
        self.offer = dict(InitialR2T=initial_r2t, ImmediateData=immediate_data,
                          MaxRecvDataSegmentLength=max_recv_data_segment_length,
                          FirstBurstLength=first_burst_length, MaxBurstLength=max_burst_length)
        self.noop_out_interval_s, self.noop_out_timeout_s = noop_out_interval_s, noop_out_timeout_s
        # the ISID: random format (RFC 7143 §11.12.5), from the host's seed so runs replay
        self.isid = b"\x80" + hashlib.sha256(f"isid:{seed}:{initiator}".encode()).digest()[:5]
        self.block_bytes = 512
        self.blocks = 0
        self.params = None
        self.last_rx = 0.0
        self.nop_sent_at: float | None = None
        self.counters.update({k: 0 for k in (*iscsi.STATS_NAMES.values(), "txdata_octets", "rxdata_octets",
                                             "timeout_err", "unit_attention_retries",
                                             "busy_retries")})

    # -- protocol hooks --------------------------------------------------------------------------
    def _new_machine(self):
        m = _CountingInitiator(self.initiator, self.target, header_digest=self.digests[0],
                           data_digest=self.digests[1], isid=self.isid,
                           offer=iscsi.Params(**self.offer))
        m.stats = self.counters
        m.start()
        self.nop_sent_at = None
        self.last_rx = self.sched.now
        return m

    def _mark_socket(self, sk) -> None:
        sk.sk_allocation = int(GFP_ATOMIC)     # iscsi_sw_tcp_conn_bind
        sk.sk_use_task_frag = False

    def _handshake_done(self, ev):
        if isinstance(ev, LoggedIn):
            self.params = ev.params
            return True
        if isinstance(ev, Failed):
            return False
        return None

    def _reply(self, ev):
        self.last_rx = self.sched.now
        if isinstance(ev, CommandDone):
            return ev.itt, ev
        if isinstance(ev, NopIn):
            self.nop_sent_at = None
            return None
        if isinstance(ev, Failed):
            return False
        return None

    def _idle(self, now: float):
        """NOP-Out ping after noop_out_interval_s of silence; no NOP-In in time: reconnect."""
        if self.state != "ready" or self.noop_out_interval_s <= 0:
            return None
        if self.nop_sent_at is not None:
            due = self.nop_sent_at + self.noop_out_timeout_s
            if now >= due:
                self.counters["timeout_err"] += 1
                self.nop_sent_at = None
                self.force_reconnect(f"ping timeout of {self.noop_out_timeout_s:g} s")
                return None
            return due
        due = self.last_rx + self.noop_out_interval_s
        if now >= due:
            self.m.nop(b"")
            self.nop_sent_at = now
            self._flush()
            return now + self.noop_out_timeout_s
        return due

    def _goodbye(self) -> None:
        if self.state == "ready" and self.m is not None:
            self.m.logout()
            self._flush()

    # -- commands --------------------------------------------------------------------------------
    def _command(self, cdb: bytes, what: str, offset: int, data_out: bytes | None = None,
                 make_data=None, read_bytes: int = 0, lun: int | None = None):
        """Generator: one SCSI command until GOOD -> CommandDone, or a WriteError."""
        name = scsi.OPCODE_NAMES.get(cdb[0], f"opcode_{cdb[0]:#04x}")
        ua = 0
        while True:
            self.counters[name] = self.counters.get(name, 0) + 1

            def submit(m, cdb=cdb):
                data = make_data() if make_data is not None else (data_out or b"")
                return m.command(cdb, lun=self.lun if lun is None else lun, data_out=data,
                                 read_bytes=read_bytes)

            r = yield from self.request(submit, name)
            if r is None:
                return WriteError("EIO", "device closed", offset, name)
            if r.status == scsi.GOOD:
                return r
            if r.status in (scsi.BUSY, scsi.TASK_SET_FULL):
                self.counters["busy_retries"] += 1
                yield Sleep(self.sched.now + BUSY_RETRY_S, reason=f"iscsi {name}: target busy")
                continue
            key, asc = scsi.decode_sense(r.sense) if r.sense else (None, None)
            if key == scsi.UNIT_ATTENTION and ua < UA_RETRIES:
                ua += 1
                self.counters["unit_attention_retries"] += 1
                continue
            sense = (f"{scsi.SENSE_KEY_NAMES.get(key, key)} {scsi.ASC_NAMES.get(asc, asc)}"
                     if key is not None else scsi.STATUS_NAMES.get(r.status, str(r.status)))
            self.counters[f"sense_{sense}"] = self.counters.get(f"sense_{sense}", 0) + 1
            errno = "ENOSPC" if asc == scsi.ASC_LBA_OUT_OF_RANGE else "EIO"
            return WriteError(errno, sense, offset, name)

    # -- StorageBackend --------------------------------------------------------------------------
    def activate(self):
        """Generator: login, INQUIRY, REPORT LUNS, READ CAPACITY(16) -> size in whole pages."""
        yield from self.wait_ready(ACTIVATE_TIMEOUT_S)
        # scsi_scan: REPORT LUNS to LUN 0 first, then INQUIRY of the LUN
        r = yield from self._command(scsi.cdb_report_luns(4096), "REPORT LUNS", 0, read_bytes=4096,
                                     lun=0)
        if isinstance(r, WriteError):
            raise ActivateError(f"iscsi {self.describe()}: REPORT LUNS: {r.reason}")
        n = int.from_bytes(r.data[:4], "big") // 8 if len(r.data) >= 4 else 0
        luns = [int.from_bytes(r.data[8 + 8 * i: 10 + 8 * i], "big") & 0x3FFF for i in range(n)
                if len(r.data) >= 16 + 8 * i]
        if self.lun not in luns:
            raise ActivateError(f"iscsi {self.describe()}: LUN {self.lun} not in REPORT LUNS "
                                f"{luns}")
        r = yield from self._command(scsi.cdb_inquiry(96), "INQUIRY", 0, read_bytes=96)
        if isinstance(r, WriteError) or not r.data or r.data[0] != 0:
            raise ActivateError(f"iscsi {self.describe()}: INQUIRY: not a connected direct-access "
                                f"device (peripheral byte "
                                f"{r.reason if isinstance(r, WriteError) else r.data[:1].hex()})")
        r = yield from self._command(scsi.cdb_read_capacity_16(), "READ CAPACITY(16)", 0,
                                     read_bytes=32)
        if isinstance(r, WriteError):
            raise ActivateError(f"iscsi {self.describe()}: READ CAPACITY(16): {r.reason}")
        self.blocks, self.block_bytes = scsi.decode_read_capacity_16(r.data)
        if self.block_bytes <= 0 or PAGE_SIZE % self.block_bytes:
            raise ActivateError(f"iscsi {self.describe()}: block size {self.block_bytes} does "
                                f"not divide a page")
        size = self.blocks * self.block_bytes
        if size // PAGE_SIZE <= 0:
            raise ActivateError(f"iscsi {self.describe()} has no room ({size} bytes)")
        self.counters["size_bytes"] = size
        self.log(f"iscsi: {self.describe()}: {self.blocks} blocks of {self.block_bytes} bytes, "
                 f"durability {self.durability}")
        return size // PAGE_SIZE

    def write_page(self, offset: int, make_data):
        """Generator: None once the LUN holds the page durably, or a WriteError."""
        lba, blocks = offset // self.block_bytes, PAGE_SIZE // self.block_bytes
        fua = self.durability == "fua"
        while True:
            gen = self.gen
            r = yield from self._command(scsi.cdb_rw(True, lba, blocks, fua=fua), "WRITE",
                                         offset, make_data=make_data)
            if isinstance(r, WriteError):
                return r
            if fua:
                return None
            r = yield from self._command(scsi.cdb_sync_cache(), "SYNCHRONIZE CACHE", offset)
            if isinstance(r, WriteError):
                return r
            if self.gen == gen:
                return None
            self.counters["requests_requeued"] += 1  # the sync went to a new session: write again

    def read_page(self, offset: int):
        """Generator: the page's 4096 bytes, or a WriteError (proc READ_10)."""
        lba, blocks = offset // self.block_bytes, PAGE_SIZE // self.block_bytes
        r = yield from self._command(scsi.cdb_rw(False, lba, blocks), "READ", offset,
                                     read_bytes=PAGE_SIZE)
        return r if isinstance(r, WriteError) else r.data
