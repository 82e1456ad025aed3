"""iSCSI initiator state machine (RFC 7143, ERL 0, one connection per session). Sans-I/O.

``i = IscsiInitiator("iqn.1994-05.org.example:host", "iqn...:swap.img")``; ``i.start()`` queues the
first Login Request; feed the target's bytes to ``i.receive(data)`` (returns events) and send
``i.data_to_send()``. After ``LoggedIn``, ``command(cdb, data_out=..., read_bytes=...)`` queues a SCSI
command and returns its ITT; it ends in one ``CommandDone``. ``discovery=True`` logs in a discovery
session; then ``send_targets()`` ends in a ``Targets`` event.

Login: SecurityNegotiation (AuthMethod=None) -> LoginOperationalNegotiation (the operational keys
of ``offer``, answered per their result functions, ``iscsi.apply_answer``) -> FullFeaturePhase;
a target that does not transit yet gets empty Login Requests until it does (at most 8).
Writes send immediate data and unsolicited Data-Out as negotiated (ImmediateData, InitialR2T,
FirstBurstLength) and answer each R2T with Data-Out PDUs no longer than the target's
MaxRecvDataSegmentLength. Commands wait while CmdSN would pass the target's MaxCmdSN.

Invariant owned here: each command gets exactly one ``CommandDone`` (status, data, sense), or the
session fails with a ``Failed`` event naming the violation (login refused, digest error, a
Reject, a PDU for no task).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

from . import iscsi
from .scsi import encode_lun


@dataclass
class LoggedIn:
    params: iscsi.Params
    tsih: int


@dataclass
class CommandDone:
    itt: int
    status: int
    data: bytes
    sense: bytes
    residual: int = 0


@dataclass
class Targets:
    targets: list[tuple[str, str]]   # (TargetName, TargetAddress)


@dataclass
class Failed:
    reason: str
    detail: str


@dataclass
class NopIn:
    itt: int
    data: bytes


class _Cmd:
    __slots__ = ("itt", "cdb", "lun", "data_out", "read_bytes", "buf", "got")

    def __init__(self, itt, cdb, lun, data_out, read_bytes):
        self.itt, self.cdb, self.lun, self.data_out, self.read_bytes = itt, cdb, lun, data_out, read_bytes
        self.buf = bytearray(read_bytes)
        self.got = 0


class IscsiInitiator:
    def __init__(self, initiator_name: str, target_name: str = "", *, discovery: bool = False,
                 header_digest: str = "None", data_digest: str = "None", offer: iscsi.Params | None = None,
                 isid: bytes | None = None):
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.discovery = discovery
        self.offer = offer or iscsi.Params(InitialR2T=False, ImmediateData=True, MaxRecvDataSegmentLength=262144,
                                           FirstBurstLength=65536, MaxBurstLength=262144)
        self.offer.HeaderDigest, self.offer.DataDigest = header_digest, data_digest
        self.params = iscsi.Params(MaxRecvDataSegmentLength=self.offer.MaxRecvDataSegmentLength)
        self.isid = isid or (b"\x80" + os.urandom(5))   # random format (RFC 7143 11.12.5)
        self.reader = iscsi.PduReader(max(8192, self.offer.MaxRecvDataSegmentLength))
        self.out = bytearray()
        self.state = "idle"
        self.stage = iscsi.STAGE_SECURITY
        self.tsih = 0
        self.cmd_sn = 1
        self.exp_stat_sn = 0
        self.max_cmd_sn = 1
        self.next_itt = 1
        self.login_rounds = 0
        self.cmds: dict[int, _Cmd] = {}
        self.waiting: deque = deque()
        self.failed: Failed | None = None
        self._digests = (False, False)

    # -- I/O surface -----------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        b = bytes(self.out)
        self.out.clear()
        return b

    def _send(self, p: iscsi.Pdu) -> None:
        p.ExpStatSN = self.exp_stat_sn
        self.out += iscsi.encode_pdu(p, *self._digests)

    def _itt(self) -> int:
        t = self.next_itt
        self.next_itt = (self.next_itt + 1) & 0x7FFFFFFF or 1
        return t

    def start(self) -> None:
        keys = [("InitiatorName", self.initiator_name),
                ("SessionType", "Discovery" if self.discovery else "Normal")]
        if not self.discovery:
            keys.append(("TargetName", self.target_name))
        keys.append(("AuthMethod", "None"))
        self.state = "login"
        self.stage = iscsi.STAGE_SECURITY
        self._login(keys, iscsi.STAGE_SECURITY, iscsi.STAGE_OPERATIONAL)

    def _login(self, keys, csg, nsg) -> None:
        self.login_itt = self._itt()
        self._send(iscsi.Pdu(iscsi.LOGIN_REQUEST, True, Flags=iscsi.login_stage_flags(True, csg, nsg), ISID=self.isid,
                             TSIH=self.tsih, ITT=self.login_itt, CID=0, CmdSN=self.cmd_sn,
                             data=iscsi.encode_text(keys)))

    def _operational_keys(self) -> list:
        keys = [("HeaderDigest", self.offer.HeaderDigest), ("DataDigest", self.offer.DataDigest)]
        if not self.discovery:
            keys += iscsi.offer_pairs(self.offer, ["InitialR2T", "ImmediateData", "MaxBurstLength",
                                                   "FirstBurstLength", "MaxOutstandingR2T", "ErrorRecoveryLevel",
                                                   "DefaultTime2Wait", "DefaultTime2Retain", "MaxConnections",
                                                   "DataPDUInOrder", "DataSequenceInOrder"])
        keys.append(("MaxRecvDataSegmentLength", str(self.offer.MaxRecvDataSegmentLength)))
        return keys

    def command(self, cdb: bytes, *, lun: int = 0, data_out: bytes = b"", read_bytes: int = 0) -> int:
        if self.state != "full_feature":
            raise RuntimeError(f"SCSI command in state {self.state}")
        c = _Cmd(self._itt(), cdb, lun, data_out, read_bytes)
        self.cmds[c.itt] = c
        self.waiting.append(c)
        self._issue()
        return c.itt

    def nop(self, data: bytes = b"") -> int:
        itt = self._itt()
        self._send(iscsi.Pdu(iscsi.NOP_OUT, True, Flags=iscsi.FLAG_F, ITT=itt, TTT=iscsi.RESERVED_TAG,
                             CmdSN=self.cmd_sn, data=data))
        return itt

    def send_targets(self) -> None:
        self._send(iscsi.Pdu(iscsi.TEXT_REQUEST, True, Flags=iscsi.FLAG_F, ITT=self._itt(), TTT=iscsi.RESERVED_TAG,
                             CmdSN=self.cmd_sn, data=iscsi.encode_text([("SendTargets", "All")])))

    def logout(self) -> None:
        self._send(iscsi.Pdu(iscsi.LOGOUT_REQUEST, True, Flags=iscsi.FLAG_F | iscsi.LOGOUT_CLOSE_SESSION,
                             ITT=self._itt(), CmdSN=self.cmd_sn))
        self.state = "logging_out"

    def _issue(self) -> None:
        while self.waiting and iscsi.sn_le(self.cmd_sn, self.max_cmd_sn):
            c = self.waiting.popleft()
            p = self.params
            flags = iscsi.ATTR_SIMPLE
            edtl = len(c.data_out) if c.data_out else c.read_bytes
            imm = b""
            if c.data_out:
                flags |= iscsi.CMD_W
                if p.ImmediateData:
                    imm = c.data_out[: min(p.FirstBurstLength, p.PeerMaxRecvDataSegmentLength)]
            if c.read_bytes:
                flags |= iscsi.CMD_R
            unsolicited_end = 0 if p.InitialR2T else min(p.FirstBurstLength, len(c.data_out))
            more_unsolicited = bool(c.data_out) and unsolicited_end > len(imm)
            if not more_unsolicited:
                flags |= iscsi.FLAG_F
            lun = int.from_bytes(encode_lun(c.lun), "big")
            self._send(iscsi.Pdu(iscsi.SCSI_COMMAND, Flags=flags, LUN=lun, ITT=c.itt, ExpectedDataTransferLength=edtl,
                                 CmdSN=self.cmd_sn, CDB=c.cdb, data=imm))
            self.cmd_sn = (self.cmd_sn + 1) & 0xFFFFFFFF
            if more_unsolicited:
                self._data_out(c, iscsi.RESERVED_TAG, len(imm), unsolicited_end - len(imm))

    def _data_out(self, c: _Cmd, ttt: int, offset: int, length: int) -> None:
        seg = self.params.PeerMaxRecvDataSegmentLength
        end, sn = offset + length, 0
        lun = int.from_bytes(encode_lun(c.lun), "big")
        while offset < end:
            n = min(seg, end - offset)
            self._send(iscsi.Pdu(iscsi.SCSI_DATA_OUT, Flags=iscsi.FLAG_F if offset + n >= end else 0, LUN=lun,
                                 ITT=c.itt, TTT=ttt, DataSN=sn, BufferOffset=offset,
                                 data=c.data_out[offset : offset + n]))
            offset += n
            sn += 1

    # -- input -----------------------------------------------------------------------------------
    def receive(self, data: bytes | bytearray | memoryview) -> list:
        if self.failed:
            return []
        self.reader.buf += data
        events: list = []
        try:
            while True:
                p = self.reader.next_pdu()
                if p is None:
                    break
                self._pdu(p, events)
        except iscsi.IscsiProtocolError as e:
            self.failed = Failed(e.reason, str(e))
            events.append(self.failed)
        return events

    def _status(self, p: iscsi.Pdu) -> None:
        self.exp_stat_sn = (p.StatSN + 1) & 0xFFFFFFFF
        self._window(p)

    def _window(self, p: iscsi.Pdu) -> None:
        if iscsi.sn_le(p.ExpCmdSN, (p.MaxCmdSN + 1) & 0xFFFFFFFF):
            self.max_cmd_sn = p.MaxCmdSN

    def _pdu(self, p: iscsi.Pdu, events: list) -> None:
        op = p.opcode
        if self.state == "login":
            if op != iscsi.LOGIN_RESPONSE:
                raise iscsi.IscsiProtocolError("unexpected_pdu", f"{p.name} during login", None)
            self._status(p)
            status = (p.StatusClass << 8) | p.StatusDetail
            if status != iscsi.LOGIN_SUCCESS:
                self.failed = Failed("login_" + iscsi.LOGIN_STATUS_NAMES.get(status, f"{status:#06x}"),
                                     f"Login Response status {status:#06x}")
                events.append(self.failed)
                self.state = "failed"
                return
            transit, _c, csg, nsg = iscsi.login_stages(p.Flags)
            answer = iscsi.decode_text(p.data)
            problems = iscsi.apply_answer(answer, self.offer, self.params)
            if problems:
                raise iscsi.IscsiProtocolError("bad_negotiation", "; ".join(problems), None)
            self.login_rounds += 1
            if self.login_rounds > 8:
                raise iscsi.IscsiProtocolError("login_stalled", "target never transits", None)
            if not transit:
                return self._login([], self.stage, iscsi.STAGE_FULL_FEATURE if self.stage else iscsi.STAGE_OPERATIONAL)
            if nsg == iscsi.STAGE_OPERATIONAL:
                self.stage = iscsi.STAGE_OPERATIONAL
                return self._login(self._operational_keys(), iscsi.STAGE_OPERATIONAL, iscsi.STAGE_FULL_FEATURE)
            if nsg == iscsi.STAGE_FULL_FEATURE:
                self.tsih = p.TSIH
                self.state = "full_feature"
                hd, dd = self.params.HeaderDigest == "CRC32C", self.params.DataDigest == "CRC32C"
                self._digests = (hd, dd)
                self.reader.header_digest, self.reader.data_digest = hd, dd
                self.reader.max_data_segment_bytes = self.offer.MaxRecvDataSegmentLength
                events.append(LoggedIn(self.params, self.tsih))
                self._issue()
            return
        if op == iscsi.SCSI_DATA_IN:
            c = self.cmds.get(p.ITT)
            if c is None or p.BufferOffset + len(p.data) > c.read_bytes:
                raise iscsi.IscsiProtocolError("bad_data_in", f"Data-In ITT {p.ITT:#x} at {p.BufferOffset}", None)
            c.buf[p.BufferOffset : p.BufferOffset + len(p.data)] = p.data
            c.got += len(p.data)
            self._window(p)
            if p.Flags & iscsi.DATAIN_S:
                self._status(p)
                del self.cmds[p.ITT]
                events.append(CommandDone(p.ITT, p.Status, bytes(c.buf[: c.got]), b"", p.ResidualCount))
                self._issue()
            return
        if op == iscsi.R2T:
            self._window(p)
            c = self.cmds.get(p.ITT)
            if c is None or p.BufferOffset + p.DesiredDataTransferLength > len(c.data_out):
                raise iscsi.IscsiProtocolError("bad_r2t", f"R2T ITT {p.ITT:#x} {p.BufferOffset}+"
                                               f"{p.DesiredDataTransferLength}", None)
            self._data_out(c, p.TTT, p.BufferOffset, p.DesiredDataTransferLength)
            self._issue()
            return
        if op == iscsi.SCSI_RESPONSE:
            self._status(p)
            c = self.cmds.pop(p.ITT, None)
            if c is None:
                raise iscsi.IscsiProtocolError("bad_response", f"SCSI Response for ITT {p.ITT:#x}", None)
            sense = b""
            if len(p.data) >= 2:
                n = int.from_bytes(p.data[:2], "big")
                sense = p.data[2 : 2 + n]
            events.append(CommandDone(p.ITT, p.Status, bytes(c.buf[: c.got]), sense, p.ResidualCount))
            self._issue()
            return
        if op == iscsi.NOP_IN:
            self._window(p)
            if p.ITT != iscsi.RESERVED_TAG:
                self._status(p)
                events.append(NopIn(p.ITT, p.data))
            elif p.TTT != iscsi.RESERVED_TAG:  # a ping from the target: answer it (RFC 7143 11.18)
                self._send(iscsi.Pdu(iscsi.NOP_OUT, True, Flags=iscsi.FLAG_F, LUN=p.LUN, ITT=iscsi.RESERVED_TAG,
                                     TTT=p.TTT, CmdSN=self.cmd_sn))
            return
        if op == iscsi.TEXT_RESPONSE:
            self._status(p)
            pairs = iscsi.decode_text(p.data)
            tg, name = [], None
            for k, v in pairs:
                if k == "TargetName":
                    name = v
                elif k == "TargetAddress" and name is not None:
                    tg.append((name, v))
            events.append(Targets(tg))
            return
        if op == iscsi.LOGOUT_RESPONSE:
            self._status(p)
            self.state = "logged_out"
            return
        if op == iscsi.REJECT:
            self._status(p)
            raise iscsi.IscsiProtocolError("reject_" + iscsi.REJECT_NAMES.get(p.Reason, str(p.Reason)),
                                           f"target rejected a PDU: reason {p.Reason:#x}", None)
        if op == iscsi.ASYNC_MESSAGE:
            self._status(p)
            return
        if op == iscsi.TASK_MGMT_RESPONSE:
            self._status(p)
            return
        raise iscsi.IscsiProtocolError("unexpected_pdu", f"{p.name} from a target", None)
