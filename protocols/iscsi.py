"""iSCSI (RFC 7143) PDUs: Basic Header Segments, framing with CRC32C digests, text keys and their negotiation.

Sources: RFC 7143 sections 11.1-11.19 (PDU formats), 11.2.1 (BHS), 6.1 + 13 (text keys and their
result functions), 12.1 (CRC32C digests), 11.12-11.13 (login), Appendix "Login Phase Keys".
Field names are the RFC's (``CmdSN``, ``ExpStatSN``, ``ITT``, ``TTT``, ``DataSN``, ``R2TSN``,
``BufferOffset``, ``DesiredDataTransferLength``, ...). All integers are big-endian; a digest is the
CRC32C of the covered bytes, sent least significant byte first (as Linux's ``crc32c`` digest and
libiscsi write it).

Invariants owned here:
- ``decode_bhs`` accepts any 48 bytes whose opcode is one the RFC defines and returns a ``Pdu`` with
  every field of that opcode's layout; anything else raises ``IscsiProtocolError`` with a
  counter-ready ``reason``. ``PduReader`` never buffers more than one PDU and refuses a data
  segment longer than the negotiated ``MaxRecvDataSegmentLength`` (a protocol error, not a buffer).
- Text data is strictly ``key=value\\0`` records (RFC 7143 6.1): keys of at most 63 bytes from the
  RFC's alphabet, values of at most 8192 bytes; a violation raises ``IscsiProtocolError``.
- ``negotiate`` implements the result functions (OR, AND, Minimum, Maximum, list selection,
  declarative) of the operational keys both for the responder and to check an answer.
Sans-I/O: bytes in, values out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import crc32c as _crc32c

ISCSI_PORT = 3260
BHS_BYTES = 48
DIGEST_BYTES = 4

# -- opcodes (RFC 7143 11.2.1.2) ------------------------------------------------------------------
NOP_OUT = 0x00
SCSI_COMMAND = 0x01
TASK_MGMT_REQUEST = 0x02
LOGIN_REQUEST = 0x03
TEXT_REQUEST = 0x04
SCSI_DATA_OUT = 0x05
LOGOUT_REQUEST = 0x06
SNACK_REQUEST = 0x10
NOP_IN = 0x20
SCSI_RESPONSE = 0x21
TASK_MGMT_RESPONSE = 0x22
LOGIN_RESPONSE = 0x23
TEXT_RESPONSE = 0x24
SCSI_DATA_IN = 0x25
LOGOUT_RESPONSE = 0x26
R2T = 0x31
ASYNC_MESSAGE = 0x32
REJECT = 0x3F
OPCODE_NAMES = {
    NOP_OUT: "NOP-Out", SCSI_COMMAND: "SCSI Command", TASK_MGMT_REQUEST: "Task Management Function Request",
    LOGIN_REQUEST: "Login Request", TEXT_REQUEST: "Text Request", SCSI_DATA_OUT: "SCSI Data-Out",
    LOGOUT_REQUEST: "Logout Request", SNACK_REQUEST: "SNACK Request", NOP_IN: "NOP-In",
    SCSI_RESPONSE: "SCSI Response", TASK_MGMT_RESPONSE: "Task Management Function Response",
    LOGIN_RESPONSE: "Login Response", TEXT_RESPONSE: "Text Response", SCSI_DATA_IN: "SCSI Data-In",
    LOGOUT_RESPONSE: "Logout Response", R2T: "Ready To Transfer", ASYNC_MESSAGE: "Asynchronous Message",
    REJECT: "Reject",
}
# Linux's struct iscsi_stats (include/scsi/scsi_transport_iscsi.h) names, per opcode.
STATS_NAMES = {
    NOP_OUT: "noptx_pdus", SCSI_COMMAND: "scsicmd_pdus", TASK_MGMT_REQUEST: "tmfcmd_pdus",
    LOGIN_REQUEST: "login_pdus", TEXT_REQUEST: "text_pdus", SCSI_DATA_OUT: "dataout_pdus",
    LOGOUT_REQUEST: "logout_pdus", SNACK_REQUEST: "snack_pdus", NOP_IN: "noprx_pdus",
    SCSI_RESPONSE: "scsirsp_pdus", TASK_MGMT_RESPONSE: "tmfrsp_pdus", LOGIN_RESPONSE: "loginrsp_pdus",
    TEXT_RESPONSE: "textrsp_pdus", SCSI_DATA_IN: "datain_pdus", LOGOUT_RESPONSE: "logoutrsp_pdus",
    R2T: "r2t_pdus", ASYNC_MESSAGE: "async_pdus", REJECT: "rjt_pdus",
}

# -- flags in byte 1 ------------------------------------------------------------------------------
FLAG_F = 0x80                 # Final
# SCSI Command
CMD_R = 0x40
CMD_W = 0x20
CMD_ATTR_MASK = 0x07
ATTR_SIMPLE = 1
# SCSI Data-In
DATAIN_A = 0x40               # Acknowledge
DATAIN_O = 0x04               # residual overflow
DATAIN_U = 0x02               # residual underflow
DATAIN_S = 0x01               # status present
# SCSI Response
RSP_BIDI_o = 0x10
RSP_BIDI_u = 0x08
RSP_O = 0x04
RSP_U = 0x02
# Login
LOGIN_T = 0x80                # Transit
LOGIN_C = 0x40                # Continue
TEXT_C = 0x40
STAGE_SECURITY = 0            # SecurityNegotiation
STAGE_OPERATIONAL = 1         # LoginOperationalNegotiation
STAGE_FULL_FEATURE = 3        # FullFeaturePhase
I_BIT = 0x40                  # byte 0: immediate delivery
RESERVED_TAG = 0xFFFFFFFF

# SCSI Response "Response" field
RESPONSE_COMPLETED = 0x00
RESPONSE_TARGET_FAILURE = 0x01
# Login status classes / details (RFC 7143 11.13.5)
LOGIN_SUCCESS = 0x0000
LOGIN_INITIATOR_ERROR = 0x0200
LOGIN_AUTH_FAILURE = 0x0201
LOGIN_FORBIDDEN = 0x0202
LOGIN_NOT_FOUND = 0x0203
LOGIN_UNSUPPORTED_VERSION = 0x0205
LOGIN_MISSING_PARAMETER = 0x0207
LOGIN_SESSION_TYPE_UNSUPPORTED = 0x0209
LOGIN_INVALID_REQUEST = 0x020B
LOGIN_TARGET_ERROR = 0x0300
LOGIN_STATUS_NAMES = {
    0x0000: "success", 0x0200: "initiator_error", 0x0201: "authentication_failure",
    0x0202: "authorization_failure", 0x0203: "not_found", 0x0204: "target_removed",
    0x0205: "unsupported_version", 0x0206: "too_many_connections", 0x0207: "missing_parameter",
    0x0208: "cant_include_in_session", 0x0209: "session_type_not_supported",
    0x020A: "session_does_not_exist", 0x020B: "invalid_during_login", 0x0300: "target_error",
    0x0301: "service_unavailable", 0x0302: "out_of_resources",
}
# Logout reason codes and responses
LOGOUT_CLOSE_SESSION = 0
LOGOUT_CLOSE_CONNECTION = 1
LOGOUT_REMOVE_FOR_RECOVERY = 2
LOGOUT_SUCCESS = 0
LOGOUT_CID_NOT_FOUND = 1
# Task management functions and responses (RFC 7143 11.5.1, 11.6.1)
TMF_ABORT_TASK = 1
TMF_ABORT_TASK_SET = 2
TMF_CLEAR_ACA = 3
TMF_CLEAR_TASK_SET = 4
TMF_LOGICAL_UNIT_RESET = 5
TMF_TARGET_WARM_RESET = 6
TMF_TARGET_COLD_RESET = 7
TMF_TASK_REASSIGN = 8
TMF_COMPLETE = 0
TMF_TASK_DOES_NOT_EXIST = 1
TMF_LUN_DOES_NOT_EXIST = 2
TMF_NOT_SUPPORTED = 5
TMF_REJECTED = 255
# Reject reasons (RFC 7143 11.17.1)
REJECT_DATA_DIGEST_ERROR = 0x02
REJECT_SNACK_REJECT = 0x03
REJECT_PROTOCOL_ERROR = 0x04
REJECT_COMMAND_NOT_SUPPORTED = 0x05
REJECT_IMMEDIATE_COMMAND_REJECT = 0x06
REJECT_TASK_IN_PROGRESS = 0x07
REJECT_INVALID_DATA_ACK = 0x08
REJECT_INVALID_PDU_FIELD = 0x09
REJECT_LONG_OP_REJECT = 0x0A
REJECT_WAITING_FOR_LOGOUT = 0x0C
REJECT_NAMES = {0x02: "data_digest_error", 0x03: "snack_reject", 0x04: "protocol_error",
                0x05: "command_not_supported", 0x06: "immediate_command_reject", 0x07: "task_in_progress",
                0x08: "invalid_data_ack", 0x09: "invalid_pdu_field", 0x0A: "long_op_reject",
                0x0C: "waiting_for_logout"}

# -- BHS layouts: bytes 0-7 are common; bytes 8-47 per opcode (RFC 7143 section 11) -------------
_HEAD = struct.Struct(">BBBBB3s")    # opcode|I, byte 1, byte 2, byte 3, TotalAHSLength, DataSegmentLength
# name of byte 1, byte 2, byte 3 (None: reserved, must be 0 on send), then the 40-byte tail
_LAYOUTS: dict[int, tuple[tuple, str, tuple]] = {
    NOP_OUT: (("Flags", None, None), ">QIIII16x", ("LUN", "ITT", "TTT", "CmdSN", "ExpStatSN")),
    SCSI_COMMAND: (("Flags", None, None), ">QIIII16s",
                   ("LUN", "ITT", "ExpectedDataTransferLength", "CmdSN", "ExpStatSN", "CDB")),
    TASK_MGMT_REQUEST: (("Flags", None, None), ">QIIIIII8x",
                        ("LUN", "ITT", "ReferencedTaskTag", "CmdSN", "ExpStatSN", "RefCmdSN", "ExpDataSN")),
    LOGIN_REQUEST: (("Flags", "VersionMax", "VersionMin"), ">6sHIH2xII16x",
                    ("ISID", "TSIH", "ITT", "CID", "CmdSN", "ExpStatSN")),
    TEXT_REQUEST: (("Flags", None, None), ">QIIII16x", ("LUN", "ITT", "TTT", "CmdSN", "ExpStatSN")),
    SCSI_DATA_OUT: (("Flags", None, None), ">QII4xI4xII4x",
                    ("LUN", "ITT", "TTT", "ExpStatSN", "DataSN", "BufferOffset")),
    LOGOUT_REQUEST: (("Flags", None, None), ">8xIH2xII16x", ("ITT", "CID", "CmdSN", "ExpStatSN")),
    SNACK_REQUEST: (("Flags", None, None), ">QII4xI8xII",
                    ("LUN", "ITT", "TTT", "ExpStatSN", "BegRun", "RunLength")),
    NOP_IN: (("Flags", None, None), ">QIIIII12x", ("LUN", "ITT", "TTT", "StatSN", "ExpCmdSN", "MaxCmdSN")),
    SCSI_RESPONSE: (("Flags", "Response", "Status"), ">8xIIIIIIII",
                    ("ITT", "SNACKTag", "StatSN", "ExpCmdSN", "MaxCmdSN", "ExpDataSN",
                     "BidiReadResidualCount", "ResidualCount")),
    TASK_MGMT_RESPONSE: (("Flags", "Response", None), ">8xI4xIII12x", ("ITT", "StatSN", "ExpCmdSN", "MaxCmdSN")),
    LOGIN_RESPONSE: (("Flags", "VersionMax", "VersionActive"), ">6sHI4xIIIBB10x",
                     ("ISID", "TSIH", "ITT", "StatSN", "ExpCmdSN", "MaxCmdSN", "StatusClass", "StatusDetail")),
    TEXT_RESPONSE: (("Flags", None, None), ">QIIIII12x", ("LUN", "ITT", "TTT", "StatSN", "ExpCmdSN", "MaxCmdSN")),
    SCSI_DATA_IN: (("Flags", None, "Status"), ">QIIIIIIII",
                   ("LUN", "ITT", "TTT", "StatSN", "ExpCmdSN", "MaxCmdSN", "DataSN", "BufferOffset",
                    "ResidualCount")),
    LOGOUT_RESPONSE: (("Flags", "Response", None), ">8xI4xIII4xHH4x",
                      ("ITT", "StatSN", "ExpCmdSN", "MaxCmdSN", "Time2Wait", "Time2Retain")),
    R2T: (("Flags", None, None), ">QIIIIIIII",
          ("LUN", "ITT", "TTT", "StatSN", "ExpCmdSN", "MaxCmdSN", "R2TSN", "BufferOffset",
           "DesiredDataTransferLength")),
    ASYNC_MESSAGE: (("Flags", None, None), ">QI4xIIIBBHHH4x",
                    ("LUN", "ITT", "StatSN", "ExpCmdSN", "MaxCmdSN", "AsyncEvent", "AsyncVCode",
                     "Parameter1", "Parameter2", "Parameter3")),
    REJECT: (("Flags", "Reason", None), ">8xI4xIIII8x", ("ITT", "StatSN", "ExpCmdSN", "MaxCmdSN", "DataSN")),
}
_TAILS = {op: struct.Struct(fmt) for op, (_b, fmt, _n) in _LAYOUTS.items()}
for _op, _s in _TAILS.items():
    assert _s.size == 40, (_op, _s.size)
_FIELD_NAMES = frozenset({"TotalAHSLength", "DataSegmentLength"}
                         | {n for b, _f, names in _LAYOUTS.values() for n in (*b, *names) if n})


class IscsiProtocolError(ValueError):
    """The peer broke RFC 7143; ``reason`` is a counter-ready name, ``reject`` the Reject reason
    code a target answers with (None: the connection cannot continue)."""

    def __init__(self, reason: str, msg: str, reject: int | None = REJECT_PROTOCOL_ERROR):
        super().__init__(msg)
        self.reason = reason
        self.reject = reject


class Pdu:
    """One PDU: ``opcode``, ``immediate``, the opcode's BHS fields as attributes, ``ahs`` and ``data``.

    Unset fields encode as 0. ``Pdu(R2T, ITT=5, TTT=9, ...)``.
    """

    def __init__(self, opcode: int, immediate: bool = False, data: bytes = b"", ahs: bytes = b"", **fields):
        self.opcode = opcode
        self.immediate = immediate
        self.data = data
        self.ahs = ahs
        self.Flags = 0
        self.__dict__.update(fields)

    def __getattr__(self, name):  # an unset field of a layout reads as 0; a typo still raises
        if name in _FIELD_NAMES:
            return 0
        raise AttributeError(name)

    @property
    def name(self) -> str:
        return OPCODE_NAMES.get(self.opcode, f"opcode {self.opcode:#x}")

    def __repr__(self) -> str:
        f = {k: v for k, v in self.__dict__.items() if k[:1].isupper()}
        return f"Pdu({self.name}, I={int(self.immediate)}, {f}, data={len(self.data)}B)"

    def encode_bhs(self) -> bytes:
        (n1, n2, n3), _fmt, names = _LAYOUTS[self.opcode]
        b1 = getattr(self, n1) if n1 else 0
        b2 = getattr(self, n2) if n2 else 0
        b3 = getattr(self, n3) if n3 else 0
        if len(self.ahs) % 4:
            raise ValueError(f"AHS of {len(self.ahs)} bytes is not a multiple of 4")
        head = _HEAD.pack((I_BIT if self.immediate else 0) | self.opcode, b1, b2, b3, len(self.ahs) // 4,
                          len(self.data).to_bytes(3, "big"))
        vals = []
        for n in names:
            v = getattr(self, n)
            if n == "ISID":
                v = v if isinstance(v, (bytes, bytearray)) else int(v).to_bytes(6, "big")
            elif n == "CDB":
                v = bytes(v).ljust(16, b"\0")
            vals.append(v)
        return head + _TAILS[self.opcode].pack(*vals)


def decode_bhs(bhs: bytes | bytearray | memoryview) -> Pdu:
    """48 bytes -> ``Pdu`` (without AHS and data; ``TotalAHSLength``/``DataSegmentLength`` set)."""
    if len(bhs) < BHS_BYTES:
        raise IscsiProtocolError("short_bhs", f"BHS of {len(bhs)} bytes", None)
    b0, b1, b2, b3, ahs_words, dsl = _HEAD.unpack_from(bhs)
    op = b0 & 0x3F
    layout = _LAYOUTS.get(op)
    if layout is None:
        raise IscsiProtocolError("bad_opcode", f"opcode {op:#04x} is not defined by RFC 7143",
                                 REJECT_COMMAND_NOT_SUPPORTED)
    (n1, n2, n3), _fmt, names = layout
    p = Pdu(op, bool(b0 & I_BIT))
    p.Flags = b1
    if n2:
        setattr(p, n2, b2)
    if n3:
        setattr(p, n3, b3)
    p.TotalAHSLength = ahs_words * 4
    p.DataSegmentLength = int.from_bytes(dsl, "big")
    for n, v in zip(names, _TAILS[op].unpack_from(bhs, 8)):
        setattr(p, n, v)
    return p


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C (Castagnoli), RFC 7143 12.1 / RFC 3385; ``crc32c(b"123456789") == 0xE3069283``."""
    return _crc32c.crc32c(data)


def digest_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return crc32c(data).to_bytes(4, "little")


def pad4(n: int) -> int:
    return (-n) & 3


def encode_pdu(p: Pdu, header_digest: bool = False, data_digest: bool = False) -> bytes:
    """BHS + AHS [+ header digest] + data + padding [+ data digest]."""
    hdr = p.encode_bhs() + p.ahs
    out = bytearray(hdr)
    if header_digest:
        out += digest_bytes(hdr)
    if p.data:
        padded = bytes(p.data) + bytes(pad4(len(p.data)))
        out += padded
        if data_digest:
            out += digest_bytes(padded)
    return bytes(out)


class PduReader:
    """Reassembles PDUs from a byte stream. ``feed(data)`` -> list of ``Pdu``; the digests in force
    and the limit on a data segment are attributes the connection sets after login."""

    def __init__(self, max_data_segment_bytes: int = 8192, header_digest: bool = False, data_digest: bool = False):
        self.buf = bytearray()
        self.max_data_segment_bytes = max_data_segment_bytes
        self.header_digest = header_digest
        self.data_digest = data_digest

    def pending(self) -> int:
        return len(self.buf)

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None if more bytes are needed. Raises ``IscsiProtocolError``
        for a header digest error or an oversized data segment (the connection must close:
        ``reject is None``), and for a data digest error or an opcode RFC 7143 does not define
        (``reject`` is the Reject reason; the PDU's bytes have been consumed, its BHS is in
        ``err.bhs`` and, when decodable, the PDU in ``err.pdu``)."""
        buf = self.buf
        if len(buf) < BHS_BYTES:
            return None
        ahs_len = buf[4] * 4
        dlen = int.from_bytes(buf[5:8], "big")
        hd = DIGEST_BYTES if self.header_digest else 0
        hdr_len = BHS_BYTES + ahs_len
        if len(buf) < hdr_len + hd:
            return None
        if hd and bytes(buf[hdr_len : hdr_len + hd]) != digest_bytes(memoryview(buf)[:hdr_len]):
            raise IscsiProtocolError("header_digest_error", "header digest mismatch", None)
        if dlen > self.max_data_segment_bytes:
            raise IscsiProtocolError("data_segment_too_long", f"DataSegmentLength {dlen} > "
                                     f"MaxRecvDataSegmentLength {self.max_data_segment_bytes}", None)
        padded = dlen + pad4(dlen)
        dd = DIGEST_BYTES if (self.data_digest and dlen) else 0
        total = hdr_len + hd + padded + dd
        if len(buf) < total:
            return None
        bhs = bytes(buf[:BHS_BYTES])
        try:
            p = decode_bhs(bhs)
        except IscsiProtocolError as err:  # unknown opcode: the PDU is skipped whole, the caller rejects it
            del buf[:total]
            err.bhs, err.pdu = bhs, None
            raise
        p.ahs = bytes(buf[BHS_BYTES:hdr_len])
        start = hdr_len + hd
        if dd and bytes(buf[start + padded : total]) != digest_bytes(memoryview(buf)[start : start + padded]):
            del buf[:total]
            err = IscsiProtocolError("data_digest_error", f"data digest mismatch on {p.name} ITT={p.ITT:#x}",
                                     REJECT_DATA_DIGEST_ERROR)
            err.bhs, err.pdu = bhs, p
            raise err
        p.data = bytes(buf[start : start + dlen])
        del buf[:total]
        return p


# -- text keys (RFC 7143 6.1, 13) -----------------------------------------------------------------
MAX_KEY_BYTES = 63
MAX_VALUE_BYTES = 8192
_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_")


def decode_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """``key=value\\0...`` -> [(key, value)]. A trailing record without NUL is an error (RFC 7143 6.1:
    every key=value pair, including the last, is terminated by a null)."""
    out = []
    data = bytes(data)
    if not data:
        return out
    if not data.endswith(b"\0"):
        raise IscsiProtocolError("text_not_terminated", "text data does not end with a NUL",
                                 REJECT_PROTOCOL_ERROR)
    for rec in data[:-1].split(b"\0"):
        key, eq, value = rec.partition(b"=")
        if not eq or not key or len(key) > MAX_KEY_BYTES or not set(key) <= _KEY_CHARS:
            raise IscsiProtocolError("bad_text_key", f"text record {rec[:80]!r} is not key=value with an RFC key")
        if len(value) > MAX_VALUE_BYTES:
            raise IscsiProtocolError("bad_text_value", f"value of {key.decode()} is {len(value)} bytes (> 8192)")
        try:
            out.append((key.decode("ascii"), value.decode("utf-8")))
        except UnicodeDecodeError:
            raise IscsiProtocolError("bad_text_value", f"value of {key.decode()} is not UTF-8") from None
    return out


def encode_text(pairs) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


# Operational keys: (result function, default, low, high) per RFC 7143 section 13.
# Kinds: "or"/"and" booleans, "min"/"max" numbers, "list" (digests), "decl" declarative numbers.
KEYS: dict[str, tuple[str, object, int, int]] = {
    "HeaderDigest": ("list", "None", 0, 0),
    "DataDigest": ("list", "None", 0, 0),
    "MaxConnections": ("min", 1, 1, 65535),
    "InitialR2T": ("or", "Yes", 0, 0),
    "ImmediateData": ("and", "Yes", 0, 0),
    "MaxRecvDataSegmentLength": ("decl", 8192, 512, 16777215),
    "MaxBurstLength": ("min", 262144, 512, 16777215),
    "FirstBurstLength": ("min", 65536, 512, 16777215),
    "DefaultTime2Wait": ("max", 2, 0, 3600),
    "DefaultTime2Retain": ("min", 20, 0, 3600),
    "MaxOutstandingR2T": ("min", 1, 1, 65535),
    "DataPDUInOrder": ("or", "Yes", 0, 0),
    "DataSequenceInOrder": ("or", "Yes", 0, 0),
    "ErrorRecoveryLevel": ("min", 0, 0, 2),
}
DIGESTS = ("None", "CRC32C")


@dataclass
class Params:
    """The operational parameters in force on a connection/session (RFC 7143 defaults)."""
    HeaderDigest: str = "None"
    DataDigest: str = "None"
    MaxConnections: int = 1
    InitialR2T: bool = True
    ImmediateData: bool = True
    MaxRecvDataSegmentLength: int = 8192          # what *this side* may receive
    PeerMaxRecvDataSegmentLength: int = 8192      # what the other side declared it may receive
    MaxBurstLength: int = 262144
    FirstBurstLength: int = 65536
    DefaultTime2Wait: int = 2
    DefaultTime2Retain: int = 20
    MaxOutstandingR2T: int = 1
    DataPDUInOrder: bool = True
    DataSequenceInOrder: bool = True
    ErrorRecoveryLevel: int = 0
    other: dict = field(default_factory=dict)


def _value(key: str, text: str):
    kind, _d, lo, hi = KEYS[key]
    if kind in ("or", "and"):
        if text not in ("Yes", "No"):
            raise ValueError(f"{key}={text!r} is not Yes or No")
        return text == "Yes"
    if kind == "list":
        return text.split(",")
    if not text.isdigit() and not (text.startswith("0x") and len(text) > 2):
        raise ValueError(f"{key}={text!r} is not a number")
    n = int(text, 0)
    if not lo <= n <= hi:
        raise ValueError(f"{key}={n} is outside {lo}..{hi}")
    return n


def _text(v) -> str:
    if isinstance(v, bool):
        return "Yes" if v else "No"
    return str(v)


def negotiate(offer: list[tuple[str, str]], ours: Params, agreed: Params,
              supported_digests=DIGESTS) -> list[tuple[str, str]]:
    """Answer an initiator's operational key offers as the responder (RFC 7143 6.2, 13).

    ``ours`` holds what this side would choose for each key; ``agreed`` is updated with each result.
    Returns the response pairs: the result for negotiated keys, ``Reject`` for an out-of-range or
    malformed value, ``NotUnderstood`` for unknown keys; declarative keys the peer declared are not
    answered (``MaxRecvDataSegmentLength`` is declared separately by the caller).
    """
    resp = []
    for key, text in offer:
        if key not in KEYS:
            continue  # the caller handles non-operational keys (InitiatorName, SendTargets, ...)
        kind = KEYS[key][0]
        try:
            theirs = _value(key, text)
        except ValueError:
            resp.append((key, "Reject"))
            continue
        mine = getattr(ours, key)
        if kind == "decl":
            agreed.PeerMaxRecvDataSegmentLength = theirs
            continue
        if kind == "list":
            choice = next((d for d in theirs if d in supported_digests and d in str(mine).split(",")), None)
            result = choice if choice is not None else "Reject"
            if choice is not None:
                setattr(agreed, key, choice)
            resp.append((key, result))
            continue
        if kind == "or":
            result = theirs or mine
        elif kind == "and":
            result = theirs and mine
        elif kind == "min":
            result = min(theirs, mine)
        else:
            result = max(theirs, mine)
        setattr(agreed, key, result)
        resp.append((key, _text(result)))
    return resp


def apply_answer(answer: list[tuple[str, str]], offered: Params, agreed: Params) -> list[str]:
    """Initiator side: take the target's answers to ``offered`` into ``agreed``; returns problems
    (an answer a responder may not give under the result function), empty when all is well."""
    problems = []
    for key, text in answer:
        if key not in KEYS:
            continue
        kind = KEYS[key][0]
        if text in ("Reject", "NotUnderstood", "Irrelevant"):
            continue
        try:
            v = _value(key, text)
        except ValueError as e:
            problems.append(str(e))
            continue
        mine = getattr(offered, key)
        if kind == "decl":
            agreed.PeerMaxRecvDataSegmentLength = v
        elif kind == "list":
            if len(v) != 1 or v[0] not in str(mine).split(","):
                problems.append(f"{key}={text} was not offered ({mine})")
            else:
                setattr(agreed, key, v[0])
        elif kind == "or":
            if mine and not v:
                problems.append(f"{key}=No after we offered Yes (result function OR)")
            setattr(agreed, key, v)
        elif kind == "and":
            if v and not mine:
                problems.append(f"{key}=Yes after we offered No (result function AND)")
            setattr(agreed, key, v)
        elif kind == "min":
            if v > mine:
                problems.append(f"{key}={v} above our offer {mine} (result function Minimum)")
            setattr(agreed, key, min(v, mine))
        else:
            if v < mine:
                problems.append(f"{key}={v} below our offer {mine} (result function Maximum)")
            setattr(agreed, key, max(v, mine))
    return problems


def offer_pairs(p: Params, keys=None) -> list[tuple[str, str]]:
    """The operational keys of ``p`` as an offer (initiator) or declaration."""
    keys = keys or [k for k in KEYS]
    return [(k, _text(getattr(p, k))) for k in keys]


def login_stage_flags(transit: bool, csg: int, nsg: int, cont: bool = False) -> int:
    return (LOGIN_T if transit else 0) | (LOGIN_C if cont else 0) | (csg << 2) | (nsg if transit else 0)


def login_stages(flags: int) -> tuple[bool, bool, int, int]:
    """Login byte 1 -> (T, C, CSG, NSG)."""
    return bool(flags & LOGIN_T), bool(flags & LOGIN_C), (flags >> 2) & 3, flags & 3


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic (RFC 1982, 32 bits), as RFC 7143 4.2.2.1 asks for CmdSN/StatSN."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)
