"""The NAS's iSCSI target (RFC 7143, error recovery level 0) over the NFS core's image store. Sans-I/O.

``IscsiTarget(store)`` serves each image of each export as the target ``<iqn_prefix>:<export>.<image>``
with one LU (LUN 0, a ``ScsiDisk``). ``target.connect(peer, local)`` returns an ``IscsiConnection``;
``feed(data, now)`` takes the initiator's bytes and returns the bytes to send; ``eof(now)`` says
the initiator closed; ``closed`` tells the driver to close after sending.

What is spoken: login (security stage with AuthMethod=None, operational stage with the RFC 7143
section 13 keys and their result functions, HeaderDigest/DataDigest None or CRC32C), discovery
sessions (SendTargets), SCSI Command with immediate data, unsolicited Data-Out (InitialR2T=No),
R2T/Data-Out up to MaxOutstandingR2T, Data-In with phase-collapsed status, SCSI Response with
sense, NOP-Out/NOP-In, Text, Task Management (ABORT TASK, LOGICAL UNIT RESET, TARGET WARM RESET),
Logout, Reject. One connection per session (MaxConnections=1); ERL 0, so SNACK is rejected.

Invariants owned here:
- A command executes only once all its data has arrived (immediate + unsolicited + solicited), so a
  malformed or abandoned write never reaches the image. Durability is ``ScsiDisk``'s (FUA and
  SYNCHRONIZE CACHE are durable, other writes stay in memory until then).
- Every PDU ends in a response the RFC prescribes (Login Response with a status class, Reject with a
  reason, CHECK CONDITION with sense), a silent discard the RFC prescribes and this module counts
  (``drop_<reason>``: e.g. a CmdSN outside the window), or a connection close counted the same way
  (header digest error, oversized data segment). Nothing raises out of ``feed``.
- Commands are accepted only with ``ExpCmdSN <= CmdSN <= MaxCmdSN``; MaxCmdSN advertises a queue
  of ``queue_depth`` commands, which bounds the tasks (and their buffers) a connection holds.

Counters use Linux's ``struct iscsi_stats`` names (``scsicmd_pdus``, ``dataout_pdus``, ``r2t_pdus``,
``datain_pdus``, ``rjt_pdus``, ``digest_err``, ``txdata_octets``/``rxdata_octets``), LIO's login
statistic names (``login_accepts``, ``login_negotiate_fails``, ...), and the LU's SCSI opcode names.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from protocols import iscsi, scsi

from .nbd_target import _allowed
from .scsi_disk import BLOCK_BYTES, MAX_TRANSFER_BLOCKS, ScsiDisk
from .store import Store

DEFAULT_IQN_PREFIX = "iqn.2025-01.org.nsdeadlock.nas"
TARGET_PORTAL_GROUP_TAG = 1
MAX_LOGIN_TEXT_BYTES = 65536      # login text accumulated over C-bit PDUs
MAX_TASK_BUFFER_BYTES = 64 << 20  # data-out buffered per connection across its tasks
MAX_TRANSFER_BYTES = MAX_TRANSFER_BLOCKS * BLOCK_BYTES  # one command's data, as VPD Block Limits says
_IQN_BAD = re.compile(r"[^a-z0-9.\-:]")


def iqn_for(prefix: str, export: str, image: str) -> str:
    """IQNs are lower case from [a-z0-9.-:] (RFC 3722 stringprep); other characters become '-'."""
    return _IQN_BAD.sub("-", f"{prefix}:{export}.{image}".lower())


@dataclass
class Task:
    pdu: iscsi.Pdu
    cdb: bytes
    lun: int
    edtl: int
    want_bytes: int                      # bytes of Data-Out the command takes
    buf: bytearray | None = None
    received: int = 0                    # bytes placed (no overlap is accepted)
    ranges: list = field(default_factory=list)
    next_r2t_offset: int = 0
    r2ts: dict = field(default_factory=dict)  # TTT -> (offset, length, received in it)
    r2tsn: int = 0
    failed: tuple | None = None         # (sense key, asc) to report once data stops


class IscsiTarget:
    def __init__(self, store: Store, *, iqn_prefix: str = DEFAULT_IQN_PREFIX, queue_depth: int = 32,
                 max_recv_data_segment_bytes: int = 262144, first_burst_bytes: int = 65536,
                 max_burst_bytes: int = 1 << 20, log: Callable[[str], None] | None = None):
        self.store = store
        self.iqn_prefix = iqn_prefix
        self.queue_depth = queue_depth
        self.ours = iscsi.Params(HeaderDigest="CRC32C,None", DataDigest="CRC32C,None", InitialR2T=False,
                                 ImmediateData=True, MaxRecvDataSegmentLength=max_recv_data_segment_bytes,
                                 FirstBurstLength=first_burst_bytes, MaxBurstLength=max_burst_bytes,
                                 MaxOutstandingR2T=8, DefaultTime2Wait=2, DefaultTime2Retain=0)
        self.log = log
        self.counters: Counter = Counter()
        self._next_tsih = 1
        self._ttt = 0x100

    def targets(self, host: str) -> dict[str, tuple[str, str]]:
        """IQN -> (export, image) for the images ``host`` may use."""
        out = {}
        for exp in self.store.exports.values():
            if _allowed(exp.networks, host):
                for name in exp.images:
                    out.setdefault(iqn_for(self.iqn_prefix, exp.name, name), (exp.name, name))
        return out

    def connect(self, peer: tuple, local: tuple = ("0.0.0.0", iscsi.ISCSI_PORT), now: float = 0.0) -> "IscsiConnection":
        self.counters["connections"] += 1
        return IscsiConnection(self, peer, local)

    def new_tsih(self) -> int:
        t = self._next_tsih
        self._next_tsih = self._next_tsih % 0xFFFF + 1
        return t

    def new_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF or 1
        return self._ttt

    def snapshot(self) -> dict:
        return {"counters": dict(self.counters), "iqn_prefix": self.iqn_prefix, "queue_depth": self.queue_depth}


LOGIN = "login"
FULL_FEATURE = "full_feature"
CLOSED = "closed"


class _Close(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class IscsiConnection:
    def __init__(self, target: IscsiTarget, peer: tuple, local: tuple):
        self.t = target
        self.c = target.counters
        self.peer, self.local = peer, local
        self.state = LOGIN
        self.reader = iscsi.PduReader(max(8192, target.ours.MaxRecvDataSegmentLength))
        self.params = iscsi.Params()
        self.login_text = bytearray()
        self.login_keys: dict[str, str] = {}
        self.login_started = False
        self.first_response_sent = False
        self.session_type = "Normal"
        self.target_name = ""
        self.initiator_name = ""
        self.disk: ScsiDisk | None = None
        self.isid = b"\0" * 6
        self.tsih = 0
        self.stat_sn = 0
        self.exp_cmd_sn = 0
        self.tasks: dict[int, Task] = {}
        self.task_bytes = 0
        self.closed = False
        self.close_reason = ""
        self._tx_digests = (False, False)

    def initial(self) -> bytes:
        return b""

    # -- plumbing --------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.t.log is not None:
            self.t.log(f"iscsi {self.peer[0]}:{self.peer[1]} {text}")

    @property
    def max_cmd_sn(self) -> int:
        return (self.exp_cmd_sn + self.t.queue_depth - 1) & 0xFFFFFFFF

    def _send(self, out: bytearray, p: iscsi.Pdu, status: bool = True) -> None:
        """Stamp StatSN/ExpCmdSN/MaxCmdSN and encode. ``status``: this PDU consumes a StatSN."""
        if p.opcode in (iscsi.NOP_IN, iscsi.SCSI_RESPONSE, iscsi.TASK_MGMT_RESPONSE, iscsi.LOGIN_RESPONSE,
                        iscsi.TEXT_RESPONSE, iscsi.SCSI_DATA_IN, iscsi.LOGOUT_RESPONSE, iscsi.R2T,
                        iscsi.ASYNC_MESSAGE, iscsi.REJECT):
            p.StatSN = self.stat_sn if (status or p.opcode == iscsi.R2T) else 0
            if status:
                self.stat_sn = (self.stat_sn + 1) & 0xFFFFFFFF
            p.ExpCmdSN, p.MaxCmdSN = self.exp_cmd_sn, self.max_cmd_sn
        self.c[iscsi.STATS_NAMES[p.opcode]] += 1
        self.c["txdata_octets"] += len(p.data)
        hd, dd = self._tx_digests
        out += iscsi.encode_pdu(p, hd, dd)

    def _reject(self, out: bytearray, reason: int, bad, detail: str) -> None:
        """Reject PDU whose data is the rejected PDU's BHS (``bad``: a ``Pdu`` or its 48 bytes)."""
        self.c["reject_" + iscsi.REJECT_NAMES.get(reason, str(reason))] += 1
        self._log(f"Reject ({iscsi.REJECT_NAMES.get(reason, reason)}): {detail}")
        data = bad if isinstance(bad, bytes) else bad.encode_bhs()
        self._send(out, iscsi.Pdu(iscsi.REJECT, Flags=iscsi.FLAG_F, Reason=reason, ITT=iscsi.RESERVED_TAG,
                                  data=data))

    def _drop(self, reason: str, detail: str) -> None:
        self.c["drop_" + reason] += 1
        self._log(f"discard ({reason}): {detail}")

    def _close(self, reason: str, counted_drop: bool = False) -> None:
        self.closed = True
        self.close_reason = reason
        self.state = CLOSED
        self.c[("drop_" if counted_drop else "close_") + reason] += 1
        self.tasks.clear()
        self.task_bytes = 0

    # -- input -----------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> bytes:
        if self.closed:
            return b""
        out = bytearray()
        self.reader.buf += data
        try:
            while not self.closed:
                try:
                    p = self.reader.next_pdu()
                except iscsi.IscsiProtocolError as e:
                    if e.reject is None:
                        if e.reason == "header_digest_error":
                            self.c["digest_err"] += 1
                        raise _Close(e.reason, str(e)) from None
                    # data digest error (RFC 7143 7.8) or unknown opcode: the PDU was consumed; reject it
                    if e.reason == "data_digest_error":
                        self.c["digest_err"] += 1
                    if self.state == LOGIN:
                        raise _Close("login_" + e.reason, str(e)) from None
                    self._reject(out, e.reject, e.bhs, str(e))
                    task = self.tasks.get(e.pdu.ITT) if e.pdu is not None and e.pdu.opcode == iscsi.SCSI_DATA_OUT \
                        else None
                    if task is not None:
                        task.failed = (scsi.ABORTED_COMMAND, scsi.ASC_PROTOCOL_SERVICE_CRC_ERROR)
                        self._finish_failed(out, task)
                    continue
                if p is None:
                    break
                self.c[iscsi.STATS_NAMES[p.opcode]] += 1
                self.c["rxdata_octets"] += len(p.data)
                if self.state == LOGIN:
                    self._login(p, out, now)
                else:
                    self._full_feature(p, out, now)
        except _Close as e:
            self._log(f"connection closed ({e.reason}) in {self.state}: {e}")
            self._close(e.reason, counted_drop=True)
            self.reader.buf.clear()
        except Exception as e:  # a bug must not take the server down
            self.c["internal_errors"] += 1
            self._log(f"internal error {type(e).__name__}: {e}")
            self._close("internal_error", counted_drop=True)
        return bytes(out)

    def eof(self, now: float = 0.0) -> None:
        if self.closed:
            return
        if self.reader.pending():
            self._close("truncated", counted_drop=True)
        elif self.tasks:
            self._close("tasks_abandoned", counted_drop=True)
        else:
            self._close("peer_closed")

    # -- login -----------------------------------------------------------------------------------
    def _login_fail(self, out: bytearray, p: iscsi.Pdu, status: int, detail: str) -> None:
        name = iscsi.LOGIN_STATUS_NAMES.get(status, f"{status:#06x}")
        self.c["login_" + ("authenticate_fails" if status == iscsi.LOGIN_AUTH_FAILURE else
                           "authorize_fails" if status == iscsi.LOGIN_FORBIDDEN else
                           "negotiate_fails" if status in (iscsi.LOGIN_INITIATOR_ERROR, iscsi.LOGIN_INVALID_REQUEST)
                           else "other_fails")] += 1
        self._log(f"login refused ({name}): {detail}")
        self._send(out, iscsi.Pdu(iscsi.LOGIN_RESPONSE, Flags=p.Flags & 0x0C, VersionMax=0, VersionActive=0,
                                  ISID=p.ISID if p.opcode == iscsi.LOGIN_REQUEST else self.isid, TSIH=0, ITT=p.ITT,
                                  StatusClass=status >> 8, StatusDetail=status & 0xFF))
        raise _Close("login_" + name, detail)

    def _login(self, p: iscsi.Pdu, out: bytearray, now: float) -> None:
        if p.opcode != iscsi.LOGIN_REQUEST:
            # RFC 7143 6.3: anything but a Login Request during login is a protocol error
            self._login_fail(out, p, iscsi.LOGIN_INVALID_REQUEST, f"{p.name} during login")
        transit, cont, csg, nsg = iscsi.login_stages(p.Flags)
        if not self.login_started:
            self.login_started = True
            self.isid, self.stat_sn, self.exp_cmd_sn = p.ISID, p.ExpStatSN, p.CmdSN
            if p.TSIH != 0:
                self._login_fail(out, p, iscsi.LOGIN_INITIATOR_ERROR + 0x0A,
                                 f"TSIH {p.TSIH}: adding a connection to a session is not supported (MaxConnections=1)")
        if p.VersionMin > 0:
            self._login_fail(out, p, iscsi.LOGIN_UNSUPPORTED_VERSION, f"VersionMin {p.VersionMin} (we speak 0)")
        if csg == 2 or (transit and (nsg == 2 or nsg <= csg)):
            self._login_fail(out, p, iscsi.LOGIN_INITIATOR_ERROR, f"stages CSG={csg} NSG={nsg} T={int(transit)}")
        if transit and cont:
            self._login_fail(out, p, iscsi.LOGIN_INITIATOR_ERROR, "T and C both set")
        self.login_text += p.data
        if len(self.login_text) > MAX_LOGIN_TEXT_BYTES:
            self._login_fail(out, p, iscsi.LOGIN_INITIATOR_ERROR, f"login text over {MAX_LOGIN_TEXT_BYTES} bytes")
        if cont:  # more text follows in the next Login Request: answer with an empty response
            self._send(out, iscsi.Pdu(iscsi.LOGIN_RESPONSE, Flags=csg << 2, ISID=p.ISID, ITT=p.ITT, TSIH=0))
            return
        try:
            pairs = iscsi.decode_text(bytes(self.login_text))
        except iscsi.IscsiProtocolError as e:
            self._login_fail(out, p, iscsi.LOGIN_INITIATOR_ERROR, str(e))
        self.login_text.clear()
        resp: list[tuple[str, str]] = []
        for k, v in pairs:
            self.login_keys[k] = v
        if not self.first_response_sent:
            self.initiator_name = self.login_keys.get("InitiatorName", "")
            if not self.initiator_name:
                self._login_fail(out, p, iscsi.LOGIN_MISSING_PARAMETER, "no InitiatorName in the first Login Request")
            self.session_type = self.login_keys.get("SessionType", "Normal")
            if self.session_type not in ("Normal", "Discovery"):
                self._login_fail(out, p, iscsi.LOGIN_SESSION_TYPE_UNSUPPORTED, f"SessionType={self.session_type}")
            if self.session_type == "Normal":
                self.target_name = self.login_keys.get("TargetName", "")
                if not self.target_name:
                    self._login_fail(out, p, iscsi.LOGIN_MISSING_PARAMETER, "no TargetName in a Normal session")
                found = self.t.targets(self.peer[0]).get(self.target_name.lower())
                if found is None:
                    self._login_fail(out, p, iscsi.LOGIN_NOT_FOUND, f"no target {self.target_name!r} for this initiator")
                exp, img = found
                self.disk = ScsiDisk(self.t.store.exports[exp].images[img], self.target_name, self.c)
                resp.append(("TargetPortalGroupTag", str(TARGET_PORTAL_GROUP_TAG)))
        for k, v in pairs:
            if k in ("InitiatorName", "TargetName", "SessionType", "InitiatorAlias"):
                continue
            if k == "AuthMethod":
                if csg != iscsi.STAGE_SECURITY:
                    resp.append((k, "Irrelevant"))
                elif "None" in v.split(","):
                    resp.append((k, "None"))
                else:
                    self._login_fail(out, p, iscsi.LOGIN_AUTH_FAILURE, f"AuthMethod={v}: only None is offered")
            elif k in iscsi.KEYS:
                if csg == iscsi.STAGE_SECURITY:
                    self._login_fail(out, p, iscsi.LOGIN_INITIATOR_ERROR, f"operational key {k} in the security stage")
                resp += iscsi.negotiate([(k, v)], self.t.ours, self.params)
            elif k in ("IFMarker", "OFMarker", "OFMarkInt", "IFMarkInt"):
                resp.append((k, "No" if k.endswith("Marker") else "Reject"))
            else:
                resp.append((k, "NotUnderstood"))
        if csg == iscsi.STAGE_OPERATIONAL:
            declared = ("MaxRecvDataSegmentLength", str(self.t.ours.MaxRecvDataSegmentLength))
            if declared not in resp:
                resp.append(declared)
        self.first_response_sent = True
        flags = csg << 2
        final = False
        if transit:
            flags |= iscsi.LOGIN_T | nsg
            final = nsg == iscsi.STAGE_FULL_FEATURE
        if final:
            self.tsih = self.t.new_tsih()
        self._send(out, iscsi.Pdu(iscsi.LOGIN_RESPONSE, Flags=flags, VersionMax=0, VersionActive=0, ISID=p.ISID,
                                  TSIH=self.tsih, ITT=p.ITT, data=iscsi.encode_text(resp)))
        if final:
            self.state = FULL_FEATURE
            self.c["login_accepts"] += 1
            self.c["sessions_" + self.session_type] += 1
            self.params.MaxRecvDataSegmentLength = self.t.ours.MaxRecvDataSegmentLength
            hd, dd = self.params.HeaderDigest == "CRC32C", self.params.DataDigest == "CRC32C"
            self._tx_digests = (hd, dd)
            self.reader.header_digest, self.reader.data_digest = hd, dd
            self.reader.max_data_segment_bytes = self.params.MaxRecvDataSegmentLength
            self._log(f"logged in: {self.initiator_name} -> {self.target_name or 'discovery'} "
                      f"(HeaderDigest={self.params.HeaderDigest} DataDigest={self.params.DataDigest} "
                      f"MaxRecvDataSegmentLength {self.params.PeerMaxRecvDataSegmentLength}/"
                      f"{self.params.MaxRecvDataSegmentLength} InitialR2T={self.params.InitialR2T} "
                      f"ImmediateData={self.params.ImmediateData} FirstBurstLength={self.params.FirstBurstLength} "
                      f"MaxBurstLength={self.params.MaxBurstLength})")

    # -- full feature phase ----------------------------------------------------------------------
    def _check_cmd_sn(self, p: iscsi.Pdu) -> bool:
        """Advance ExpCmdSN for an in-order non-immediate command; False: discard it (counted)."""
        if p.immediate:
            return True
        if p.CmdSN == self.exp_cmd_sn:
            self.exp_cmd_sn = (self.exp_cmd_sn + 1) & 0xFFFFFFFF
            return True
        if iscsi.sn_lt(p.CmdSN, self.exp_cmd_sn) or iscsi.sn_lt(self.max_cmd_sn, p.CmdSN):
            self._drop("cmdsn_outside_window", f"{p.name} CmdSN {p.CmdSN} outside {self.exp_cmd_sn}..{self.max_cmd_sn}")
        else:  # a gap: with one connection this only happens when the initiator skipped a number
            self._drop("cmdsn_gap", f"{p.name} CmdSN {p.CmdSN}, expected {self.exp_cmd_sn}")
        return False

    def _full_feature(self, p: iscsi.Pdu, out: bytearray, now: float) -> None:
        op = p.opcode
        if op == iscsi.SCSI_DATA_OUT:
            return self._data_out(p, out, now)
        if op not in (iscsi.NOP_OUT, iscsi.SCSI_COMMAND, iscsi.TASK_MGMT_REQUEST, iscsi.TEXT_REQUEST,
                      iscsi.LOGOUT_REQUEST, iscsi.SNACK_REQUEST):
            return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p, f"{p.name} from an initiator in full feature phase")
        if op == iscsi.SNACK_REQUEST:
            return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p, "SNACK at ErrorRecoveryLevel 0")
        if not self._check_cmd_sn(p):
            return
        if op == iscsi.NOP_OUT:
            if p.ITT == iscsi.RESERVED_TAG:
                return  # the answer to a NOP-In ping of ours (we send none); nothing to say
            if p.TTT != iscsi.RESERVED_TAG:
                return self._reject(out, iscsi.REJECT_INVALID_PDU_FIELD, p, f"NOP-Out TTT {p.TTT:#x} we never sent")
            return self._send(out, iscsi.Pdu(iscsi.NOP_IN, Flags=iscsi.FLAG_F, LUN=p.LUN, ITT=p.ITT,
                                             TTT=iscsi.RESERVED_TAG, data=p.data))
        if op == iscsi.SCSI_COMMAND:
            return self._scsi_command(p, out, now)
        if op == iscsi.TEXT_REQUEST:
            return self._text(p, out)
        if op == iscsi.LOGOUT_REQUEST:
            reason = p.Flags & 0x7F
            resp = iscsi.LOGOUT_SUCCESS if reason in (iscsi.LOGOUT_CLOSE_SESSION, iscsi.LOGOUT_CLOSE_CONNECTION) \
                else iscsi.LOGOUT_CID_NOT_FOUND
            self._send(out, iscsi.Pdu(iscsi.LOGOUT_RESPONSE, Flags=iscsi.FLAG_F, Response=resp, ITT=p.ITT,
                                      Time2Wait=0, Time2Retain=0))
            self._close("logout")
            return
        # TASK_MGMT_REQUEST
        func = p.Flags & 0x7F
        self.c[f"tmf_{func}"] += 1
        if func == iscsi.TMF_ABORT_TASK:
            task = self.tasks.pop(p.ReferencedTaskTag, None)
            if task is not None:
                self._drop_task_buffer(task)
            resp = iscsi.TMF_COMPLETE if task is not None else iscsi.TMF_TASK_DOES_NOT_EXIST
        elif func in (iscsi.TMF_ABORT_TASK_SET, iscsi.TMF_CLEAR_TASK_SET, iscsi.TMF_LOGICAL_UNIT_RESET,
                      iscsi.TMF_TARGET_WARM_RESET):
            self.tasks.clear()
            self.task_bytes = 0
            resp = iscsi.TMF_COMPLETE
        else:
            resp = iscsi.TMF_NOT_SUPPORTED
        self._send(out, iscsi.Pdu(iscsi.TASK_MGMT_RESPONSE, Flags=iscsi.FLAG_F, Response=resp, ITT=p.ITT))

    def _text(self, p: iscsi.Pdu, out: bytearray) -> None:
        if p.Flags & iscsi.TEXT_C:
            return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p, "multi-PDU Text Requests are not supported")
        try:
            pairs = iscsi.decode_text(p.data)
        except iscsi.IscsiProtocolError as e:
            return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p, str(e))
        resp = []
        for k, v in pairs:
            if k == "SendTargets":
                tg = self.t.targets(self.peer[0])
                names = sorted(tg) if v == "All" and self.session_type == "Discovery" else \
                    [n for n in sorted(tg) if n == (v.lower() if v not in ("", "All") else self.target_name.lower())]
                for n in names:
                    resp += [("TargetName", n),
                             ("TargetAddress", f"{self.local[0]}:{self.local[1]},{TARGET_PORTAL_GROUP_TAG}")]
            elif k in iscsi.KEYS:  # renegotiation in full feature phase is not offered
                resp.append((k, "Reject"))
            else:
                resp.append((k, "NotUnderstood"))
        data = iscsi.encode_text(resp)
        if len(data) > self.params.PeerMaxRecvDataSegmentLength:
            return self._reject(out, iscsi.REJECT_LONG_OP_REJECT, p,
                                f"Text Response of {len(data)} bytes over the initiator's MaxRecvDataSegmentLength")
        self._send(out, iscsi.Pdu(iscsi.TEXT_RESPONSE, Flags=iscsi.FLAG_F, LUN=p.LUN, ITT=p.ITT,
                                  TTT=iscsi.RESERVED_TAG, data=data))

    # -- SCSI ------------------------------------------------------------------------------------
    def _respond(self, out: bytearray, task: Task, status: int, data_in: bytes, sense: bytes) -> None:
        """Data-In PDUs (status collapsed into the last) or a SCSI Response."""
        p = task.pdu
        edtl = task.edtl
        if status == scsi.GOOD and data_in and p.Flags & iscsi.CMD_R:
            sent = data_in[:edtl]
            flags_res, residual = 0, 0
            if len(data_in) < edtl:
                flags_res, residual = iscsi.DATAIN_U, edtl - len(data_in)
            elif len(data_in) > edtl:
                flags_res, residual = iscsi.DATAIN_O, len(data_in) - edtl
            seg = self.params.PeerMaxRecvDataSegmentLength
            burst = self.params.MaxBurstLength
            off, sn = 0, 0
            while True:
                n = min(seg, len(sent) - off, burst - off % burst)
                last = off + n >= len(sent)
                flags = 0
                if last or (off + n) % burst == 0:
                    flags |= iscsi.FLAG_F
                if last:
                    flags |= iscsi.DATAIN_S | flags_res
                dp = iscsi.Pdu(iscsi.SCSI_DATA_IN, Flags=flags, LUN=p.LUN, ITT=p.ITT, TTT=iscsi.RESERVED_TAG,
                               DataSN=sn, BufferOffset=off, ResidualCount=residual if last else 0,
                               Status=scsi.GOOD if last else 0, data=sent[off : off + n])
                self._send(out, dp, status=last)
                off += n
                sn += 1
                if last:
                    return
        flags = iscsi.FLAG_F
        residual = 0
        if status == scsi.GOOD:
            done = task.want_bytes if p.Flags & iscsi.CMD_W else len(data_in)
            if done < edtl:
                flags, residual = flags | iscsi.RSP_U, edtl - done
        data = len(sense).to_bytes(2, "big") + sense if sense else b""
        self._send(out, iscsi.Pdu(iscsi.SCSI_RESPONSE, Flags=flags, Response=iscsi.RESPONSE_COMPLETED, Status=status,
                                  ITT=p.ITT, ExpDataSN=task.r2tsn, ResidualCount=residual, data=data))

    def _check(self, out: bytearray, task: Task, key: int, asc: tuple, detail: str) -> None:
        self.c["CHECK_CONDITION"] += 1
        self.c["sense_" + scsi.SENSE_KEY_NAMES.get(key, str(key))] += 1
        self._log(f"ITT={task.pdu.ITT:#x} CHECK CONDITION {scsi.SENSE_KEY_NAMES.get(key)} "
                  f"{scsi.ASC_NAMES.get(asc, asc)}: {detail}")
        self._respond(out, task, scsi.CHECK_CONDITION, b"", scsi.fixed_sense(key, asc))

    def _scsi_command(self, p: iscsi.Pdu, out: bytearray, now: float) -> None:
        if self.session_type != "Normal" or self.disk is None:
            return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p, "SCSI Command in a discovery session")
        if p.ITT == iscsi.RESERVED_TAG or p.ITT in self.tasks:
            return self._reject(out, iscsi.REJECT_TASK_IN_PROGRESS if p.ITT in self.tasks else
                                iscsi.REJECT_INVALID_PDU_FIELD, p, f"ITT {p.ITT:#x} in use or reserved")
        lun = scsi.decode_lun(p.LUN)
        task = Task(p, bytes(p.CDB), lun, p.ExpectedDataTransferLength, 0)
        try:
            cdb = scsi.decode_cdb(task.cdb)
        except scsi.ScsiError as e:
            return self._check(out, task, e.key, e.asc, str(e))
        if lun != 0 and cdb.opcode not in (scsi.REPORT_LUNS, scsi.INQUIRY):
            return self._check(out, task, scsi.ILLEGAL_REQUEST, scsi.ASC_LOGICAL_UNIT_NOT_SUPPORTED,
                                                 f"LUN {lun}")
        want = self.disk.data_out_bytes(cdb)
        task.want_bytes = want
        if want and not p.Flags & iscsi.CMD_W:
            return self._check(out, task, scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB,
                                                 f"{cdb.name} without the W bit")
        if want > task.edtl or want > MAX_TRANSFER_BYTES:
            return self._check(out, task, scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB,
                                                 f"{cdb.name} of {want} bytes, ExpectedDataTransferLength {task.edtl}")
        if p.data and (not self.params.ImmediateData or len(p.data) > self.params.FirstBurstLength
                       or not p.Flags & iscsi.CMD_W or len(p.data) > task.edtl):
            return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p, f"{len(p.data)} bytes of immediate data not "
                                f"allowed (ImmediateData={self.params.ImmediateData}, "
                                f"FirstBurstLength={self.params.FirstBurstLength}, EDTL={task.edtl})")
        if not want:
            if lun != 0:  # INQUIRY of an absent LU: peripheral qualifier 3, type 0x1f (SPC-4 6.6.2)
                status, data, sense = (scsi.GOOD, bytes([0x7F]) + bytes(35), b"") if cdb.opcode == scsi.INQUIRY \
                    else self.disk.execute(task.cdb, b"", now)
            else:
                status, data, sense = self.disk.execute(task.cdb, b"", now)
            if p.Flags & iscsi.CMD_W and task.edtl:  # data the command does not take: counted, ignored
                self.c["dataout_unwanted_cmds"] += 1
            return self._respond(out, task, status, data, sense)
        if self.task_bytes + want > MAX_TASK_BUFFER_BYTES:
            return self._respond(out, task, scsi.TASK_SET_FULL, b"", b"")
        task.buf = bytearray(want)
        self.task_bytes += want
        self.tasks[p.ITT] = task
        if p.data:
            self._place(task, 0, p.data)
        # Without InitialR2T and with F clear, unsolicited Data-Out follows up to FirstBurstLength
        # (immediate data included, RFC 7143 13.14); R2Ts ask for the rest.
        unsolicited = not self.params.InitialR2T and not p.Flags & iscsi.FLAG_F
        task.next_r2t_offset = max(len(p.data), min(self.params.FirstBurstLength, want) if unsolicited else 0)
        self._progress(task, out, now)

    def _place(self, task: Task, offset: int, data: bytes) -> bool:
        end = offset + len(data)
        if end > len(task.buf):
            return False
        for lo, hi in task.ranges:
            if offset < hi and lo < end:
                return False
        task.ranges.append((offset, end))
        task.buf[offset:end] = data
        task.received += len(data)
        return True

    def _progress(self, task: Task, out: bytearray, now: float) -> None:
        """Execute a task whose data is complete, else keep MaxOutstandingR2T R2Ts out."""
        if task.received == task.want_bytes:
            self.tasks.pop(task.pdu.ITT, None)
            data_out = bytes(task.buf)
            self._drop_task_buffer(task)
            status, data, sense = self.disk.execute(task.cdb, data_out, now)
            return self._respond(out, task, status, data, sense)
        while len(task.r2ts) < self.params.MaxOutstandingR2T and task.next_r2t_offset < task.want_bytes:
            off = task.next_r2t_offset
            n = min(self.params.MaxBurstLength, task.want_bytes - off)
            ttt = self.t.new_ttt()
            task.r2ts[ttt] = [off, n, 0]
            self._send(out, iscsi.Pdu(iscsi.R2T, Flags=iscsi.FLAG_F, LUN=task.pdu.LUN, ITT=task.pdu.ITT, TTT=ttt,
                                      R2TSN=task.r2tsn, BufferOffset=off, DesiredDataTransferLength=n), status=False)
            task.r2tsn += 1
            task.next_r2t_offset = off + n

    def _drop_task_buffer(self, task: Task) -> None:
        if task.buf is not None:
            self.task_bytes -= len(task.buf)
            task.buf = None

    def _finish_failed(self, out: bytearray, task: Task) -> None:
        self.tasks.pop(task.pdu.ITT, None)
        self._drop_task_buffer(task)
        key, asc = task.failed
        self._check(out, task, key, asc, "task failed during its data transfer")

    def _data_out(self, p: iscsi.Pdu, out: bytearray, now: float) -> None:
        task = self.tasks.get(p.ITT)
        if task is None:
            return self._drop("dataout_unknown_task", f"Data-Out ITT {p.ITT:#x} for no open write")
        if p.TTT == iscsi.RESERVED_TAG:
            limit = 0 if self.params.InitialR2T else min(self.params.FirstBurstLength, task.want_bytes)
            if p.BufferOffset + len(p.data) > limit:
                return self._reject(out, iscsi.REJECT_PROTOCOL_ERROR, p,
                                    f"unsolicited Data-Out at {p.BufferOffset}+{len(p.data)} past FirstBurstLength {limit}")
            r2t = None
        else:
            r2t = task.r2ts.get(p.TTT)
            if r2t is None or not (r2t[0] <= p.BufferOffset and p.BufferOffset + len(p.data) <= r2t[0] + r2t[1]):
                return self._reject(out, iscsi.REJECT_INVALID_PDU_FIELD, p,
                                    f"Data-Out TTT {p.TTT:#x} offset {p.BufferOffset}+{len(p.data)} matches no R2T")
        if not self._place(task, p.BufferOffset, p.data):
            return self._reject(out, iscsi.REJECT_INVALID_PDU_FIELD, p,
                                f"Data-Out offset {p.BufferOffset}+{len(p.data)} overlaps or overruns "
                                f"{task.want_bytes} bytes")
        if r2t is not None:
            r2t[2] += len(p.data)
            if r2t[2] == r2t[1]:
                del task.r2ts[p.TTT]
        self._progress(task, out, now)
