"""NBD wire format: fixed-newstyle handshake, option haggling, requests, simple and structured replies.

Source: the NBD protocol document (NetworkBlockDevice/nbd ``doc/proto.md``, sections "Fixed newstyle
negotiation", "Transmission", "Values"). Names are the document's (``NBD_OPT_GO``, ``NBD_REP_ACK``,
``NBD_CMD_FLAG_FUA``, ``NBD_FLAG_SEND_FLUSH``, ...). All integers are big-endian ("network byte order").

Invariant owned here: a decoder either returns a value whose every field is within what the document
allows for that message's *shape* (lengths consistent, magic right) or raises ``NbdProtocolError``
whose ``reason`` names the violation; whether a well-formed request makes sense for an export
(range, flags negotiated) is the state machine's business. Encoders never raise on values they
produced themselves. Sans-I/O: bytes in, values out; values in, bytes out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# -- magic numbers --------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943           # "NBDMAGIC", the INIT_PASSWD
IHAVEOPT = 0x49484156454F5054           # "IHAVEOPT": newstyle magic and option magic
NBD_OPT_REPLY_MAGIC = 0x3E889045565A9
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF
NBD_DEFAULT_PORT = 10809                # IANA

# -- handshake flags (16 bits, server) and client flags (32 bits) ---------------------------------
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# -- transmission flags (16 bits) -----------------------------------------------------------------
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_RESIZE = 1 << 9
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11
TRANSMISSION_FLAG_NAMES = {
    NBD_FLAG_HAS_FLAGS: "HAS_FLAGS", NBD_FLAG_READ_ONLY: "READ_ONLY", NBD_FLAG_SEND_FLUSH: "SEND_FLUSH",
    NBD_FLAG_SEND_FUA: "SEND_FUA", NBD_FLAG_ROTATIONAL: "ROTATIONAL", NBD_FLAG_SEND_TRIM: "SEND_TRIM",
    NBD_FLAG_SEND_WRITE_ZEROES: "SEND_WRITE_ZEROES", NBD_FLAG_SEND_DF: "SEND_DF",
    NBD_FLAG_CAN_MULTI_CONN: "CAN_MULTI_CONN", NBD_FLAG_SEND_RESIZE: "SEND_RESIZE",
    NBD_FLAG_SEND_CACHE: "SEND_CACHE", NBD_FLAG_SEND_FAST_ZERO: "SEND_FAST_ZERO",
}

# -- options --------------------------------------------------------------------------------------
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_PEEK_EXPORT = 4
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10
NBD_OPT_EXTENDED_HEADERS = 11
OPT_NAMES = {1: "NBD_OPT_EXPORT_NAME", 2: "NBD_OPT_ABORT", 3: "NBD_OPT_LIST", 4: "NBD_OPT_PEEK_EXPORT",
             5: "NBD_OPT_STARTTLS", 6: "NBD_OPT_INFO", 7: "NBD_OPT_GO", 8: "NBD_OPT_STRUCTURED_REPLY",
             9: "NBD_OPT_LIST_META_CONTEXT", 10: "NBD_OPT_SET_META_CONTEXT", 11: "NBD_OPT_EXTENDED_HEADERS"}

# -- option reply types ---------------------------------------------------------------------------
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3
NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6
NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7
NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9
REP_NAMES = {1: "NBD_REP_ACK", 2: "NBD_REP_SERVER", 3: "NBD_REP_INFO", 4: "NBD_REP_META_CONTEXT",
             NBD_REP_ERR_UNSUP: "NBD_REP_ERR_UNSUP", NBD_REP_ERR_POLICY: "NBD_REP_ERR_POLICY",
             NBD_REP_ERR_INVALID: "NBD_REP_ERR_INVALID", NBD_REP_ERR_PLATFORM: "NBD_REP_ERR_PLATFORM",
             NBD_REP_ERR_TLS_REQD: "NBD_REP_ERR_TLS_REQD", NBD_REP_ERR_UNKNOWN: "NBD_REP_ERR_UNKNOWN",
             NBD_REP_ERR_SHUTDOWN: "NBD_REP_ERR_SHUTDOWN", NBD_REP_ERR_BLOCK_SIZE_REQD: "NBD_REP_ERR_BLOCK_SIZE_REQD",
             NBD_REP_ERR_TOO_BIG: "NBD_REP_ERR_TOO_BIG"}

# -- NBD_INFO types (in NBD_REP_INFO) -------------------------------------------------------------
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# -- commands and command flags -------------------------------------------------------------------
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7
NBD_CMD_RESIZE = 8
CMD_NAMES = {0: "NBD_CMD_READ", 1: "NBD_CMD_WRITE", 2: "NBD_CMD_DISC", 3: "NBD_CMD_FLUSH", 4: "NBD_CMD_TRIM",
             5: "NBD_CMD_CACHE", 6: "NBD_CMD_WRITE_ZEROES", 7: "NBD_CMD_BLOCK_STATUS", 8: "NBD_CMD_RESIZE"}
NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

# -- structured replies ---------------------------------------------------------------------------
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) + 1
NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# -- errors (errno values on the wire) ------------------------------------------------------------
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108
ERROR_NAMES = {0: "OK", 1: "NBD_EPERM", 5: "NBD_EIO", 12: "NBD_ENOMEM", 22: "NBD_EINVAL", 28: "NBD_ENOSPC",
               75: "NBD_EOVERFLOW", 95: "NBD_ENOTSUP", 108: "NBD_ESHUTDOWN"}

# -- sizes ----------------------------------------------------------------------------------------
MAX_STRING_BYTES = 4096                 # "MUST be no longer than 4096 bytes" (export names, messages)
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 25     # 32 MiB: "SHOULD NOT be considered a denial of service attack"
MAX_OPTION_BYTES = 4 + MAX_STRING_BYTES + 2 + 2 * 16  # GO/INFO with the longest name and a few info requests

_GREETING = struct.Struct(">QQH")       # NBDMAGIC, IHAVEOPT, handshake flags
_OPT = struct.Struct(">QII")            # IHAVEOPT, option, length
OPTION_HEADER_BYTES = _OPT.size         # 16
_OPT_REPLY = struct.Struct(">QIII")     # magic, option, reply type, length
OPTION_REPLY_HEADER_BYTES = _OPT_REPLY.size  # 20
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_REQUEST = struct.Struct(">IHHQQI")     # magic, command flags, type, handle, offset, length
REQUEST_BYTES = _REQUEST.size           # 28
_SIMPLE_REPLY = struct.Struct(">IIQ")   # magic, error, handle
SIMPLE_REPLY_BYTES = _SIMPLE_REPLY.size  # 16
_CHUNK = struct.Struct(">IHHQI")        # magic, flags, type, handle, length
CHUNK_HEADER_BYTES = _CHUNK.size        # 20
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class NbdProtocolError(ValueError):
    """The peer sent something the NBD document forbids; ``reason`` is a counter-ready name."""

    def __init__(self, reason: str, msg: str):
        super().__init__(msg)
        self.reason = reason


def transmission_flag_names(flags: int) -> list[str]:
    return [n for bit, n in TRANSMISSION_FLAG_NAMES.items() if flags & bit]


# -- handshake: server side -----------------------------------------------------------------------
def encode_greeting(handshake_flags: int = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES) -> bytes:
    """S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags (18 bytes)."""
    return _GREETING.pack(NBDMAGIC, IHAVEOPT, handshake_flags)


def decode_greeting(buf: bytes | memoryview) -> int:
    """The server's 18-byte greeting -> handshake flags; oldstyle or garbage raises."""
    magic, opt_magic, flags = _GREETING.unpack_from(buf)
    if magic != NBDMAGIC:
        raise NbdProtocolError("bad_magic", f"greeting magic {magic:#x} is not NBDMAGIC")
    if opt_magic != IHAVEOPT:
        raise NbdProtocolError("oldstyle", f"second magic {opt_magic:#x}: oldstyle negotiation is not spoken")
    return flags


def decode_client_flags(buf: bytes | memoryview, handshake_flags: int) -> int:
    """C: 32-bit client flags; unknown bits or bits the server did not offer raise (the server MUST
    then drop the connection)."""
    (flags,) = _U32.unpack_from(buf)
    allowed = NBD_FLAG_C_FIXED_NEWSTYLE | (NBD_FLAG_C_NO_ZEROES if handshake_flags & NBD_FLAG_NO_ZEROES else 0)
    if flags & ~allowed:
        raise NbdProtocolError("bad_client_flags", f"client flags {flags:#x} set bits outside {allowed:#x}")
    return flags


def decode_option_header(buf: bytes | memoryview) -> tuple[int, int]:
    """C: IHAVEOPT, option, length (16 bytes) -> (option, length)."""
    magic, opt, length = _OPT.unpack_from(buf)
    if magic != IHAVEOPT:
        raise NbdProtocolError("bad_option_magic", f"option magic {magic:#x} is not IHAVEOPT")
    return opt, length


def encode_option(opt: int, data: bytes = b"") -> bytes:
    return _OPT.pack(IHAVEOPT, opt, len(data)) + data


def encode_option_reply(opt: int, rep_type: int, data: bytes = b"") -> bytes:
    """S: reply magic, option, reply type, length, data."""
    return _OPT_REPLY.pack(NBD_OPT_REPLY_MAGIC, opt, rep_type, len(data)) + data


def decode_option_reply_header(buf: bytes | memoryview) -> tuple[int, int, int]:
    """20-byte option reply header -> (option, reply type, length)."""
    magic, opt, rep, length = _OPT_REPLY.unpack_from(buf)
    if magic != NBD_OPT_REPLY_MAGIC:
        raise NbdProtocolError("bad_option_reply_magic", f"option reply magic {magic:#x}")
    return opt, rep, length


def encode_go_data(name: bytes, info_requests: tuple[int, ...] = ()) -> bytes:
    """NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, u16 x count."""
    return _U32.pack(len(name)) + name + _U16.pack(len(info_requests)) + b"".join(_U16.pack(i) for i in info_requests)


def decode_go_data(data: bytes | memoryview) -> tuple[bytes, list[int]]:
    """NBD_OPT_INFO / NBD_OPT_GO data -> (export name, information requests)."""
    if len(data) < 6:
        raise NbdProtocolError("bad_go_length", f"NBD_OPT_GO/INFO data of {len(data)} bytes (at least 6)")
    (nlen,) = _U32.unpack_from(data)
    if nlen > len(data) - 6:
        raise NbdProtocolError("bad_go_name_length", f"name length {nlen} > option length {len(data)} - 6")
    name = bytes(data[4 : 4 + nlen])
    (n,) = _U16.unpack_from(data, 4 + nlen)
    if 6 + nlen + 2 * n != len(data):
        raise NbdProtocolError("bad_go_info_count",
                               f"{n} information requests do not fill the {len(data) - 6 - nlen} bytes left")
    infos = [_U16.unpack_from(data, 6 + nlen + 2 * i)[0] for i in range(n)]
    return name, infos


def encode_info_export(size_bytes: int, transmission_flags: int) -> bytes:
    return struct.pack(">HQH", NBD_INFO_EXPORT, size_bytes, transmission_flags)


def encode_info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum)


def encode_info_string(info: int, text: bytes) -> bytes:
    """NBD_INFO_NAME / NBD_INFO_DESCRIPTION."""
    return _U16.pack(info) + text


@dataclass
class ExportInfo:
    """What NBD_REP_INFO replies said about an export (None: not sent)."""
    size_bytes: int | None = None
    transmission_flags: int | None = None
    name: bytes | None = None
    description: bytes | None = None
    block_size: tuple[int, int, int] | None = None  # minimum, preferred, maximum payload


def decode_info(data: bytes | memoryview, into: ExportInfo) -> None:
    """One NBD_REP_INFO payload into ``into``; unknown types are ignored (the document says MUST)."""
    if len(data) < 2:
        raise NbdProtocolError("bad_info_length", f"NBD_REP_INFO of {len(data)} bytes")
    (kind,) = _U16.unpack_from(data)
    if kind == NBD_INFO_EXPORT:
        if len(data) != 12:
            raise NbdProtocolError("bad_info_length", f"NBD_INFO_EXPORT of {len(data)} bytes (12)")
        _, into.size_bytes, into.transmission_flags = struct.unpack_from(">HQH", data)
    elif kind == NBD_INFO_BLOCK_SIZE:
        if len(data) != 14:
            raise NbdProtocolError("bad_info_length", f"NBD_INFO_BLOCK_SIZE of {len(data)} bytes (14)")
        into.block_size = struct.unpack_from(">III", data, 2)
    elif kind == NBD_INFO_NAME:
        into.name = bytes(data[2:])
    elif kind == NBD_INFO_DESCRIPTION:
        into.description = bytes(data[2:])


def encode_rep_server(name: bytes, description: bytes = b"") -> bytes:
    """NBD_REP_SERVER data: u32 name length, name, optional description."""
    return _U32.pack(len(name)) + name + description


def decode_rep_server(data: bytes | memoryview) -> tuple[bytes, bytes]:
    if len(data) < 4:
        raise NbdProtocolError("bad_rep_server", f"NBD_REP_SERVER of {len(data)} bytes")
    (n,) = _U32.unpack_from(data)
    if n > len(data) - 4:
        raise NbdProtocolError("bad_rep_server", f"name length {n} > reply length {len(data)} - 4")
    return bytes(data[4 : 4 + n]), bytes(data[4 + n :])


def encode_export_name_reply(size_bytes: int, transmission_flags: int, no_zeroes: bool) -> bytes:
    """Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless NBD_FLAG_C_NO_ZEROES."""
    return _EXPORT_NAME_REPLY.pack(size_bytes, transmission_flags) + (b"" if no_zeroes else bytes(124))


def decode_export_name_reply(buf: bytes | memoryview) -> tuple[int, int]:
    return _EXPORT_NAME_REPLY.unpack_from(buf)


EXPORT_NAME_REPLY_BYTES = _EXPORT_NAME_REPLY.size  # 10 (+124 zeroes)


# -- transmission ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Request:
    flags: int      # command flags (NBD_CMD_FLAG_*)
    type: int       # NBD_CMD_*
    handle: int     # the "cookie" of newer revisions of the document
    offset: int
    length: int


def decode_request(buf: bytes | memoryview, offset: int = 0) -> Request:
    """C: 28-byte request header (the WRITE payload follows it on the wire)."""
    magic, flags, typ, handle, off, length = _REQUEST.unpack_from(buf, offset)
    if magic != NBD_REQUEST_MAGIC:
        raise NbdProtocolError("bad_request_magic", f"request magic {magic:#x} is not NBD_REQUEST_MAGIC")
    return Request(flags, typ, handle, off, length)


def encode_request(typ: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0,
                   data: bytes = b"") -> bytes:
    return _REQUEST.pack(NBD_REQUEST_MAGIC, flags, typ, handle, offset, length) + data


def encode_simple_reply(error: int, handle: int, data: bytes | memoryview = b"") -> bytes:
    """S: NBD_SIMPLE_REPLY_MAGIC, error, handle, and the data of a successful READ."""
    return _SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, error, handle) + data


def reply_magic(buf: bytes | memoryview) -> int:
    return _U32.unpack_from(buf)[0]


def decode_simple_reply(buf: bytes | memoryview) -> tuple[int, int]:
    """16-byte simple reply header -> (error, handle)."""
    magic, error, handle = _SIMPLE_REPLY.unpack_from(buf)
    if magic != NBD_SIMPLE_REPLY_MAGIC:
        raise NbdProtocolError("bad_reply_magic", f"reply magic {magic:#x}")
    return error, handle


def encode_chunk(flags: int, typ: int, handle: int, payload: bytes | memoryview = b"") -> bytes:
    """S: one structured reply chunk."""
    return _CHUNK.pack(NBD_STRUCTURED_REPLY_MAGIC, flags, typ, handle, len(payload)) + payload


def decode_chunk_header(buf: bytes | memoryview) -> tuple[int, int, int, int]:
    """20-byte structured chunk header -> (flags, type, handle, length)."""
    magic, flags, typ, handle, length = _CHUNK.unpack_from(buf)
    if magic != NBD_STRUCTURED_REPLY_MAGIC:
        raise NbdProtocolError("bad_reply_magic", f"structured reply magic {magic:#x}")
    return flags, typ, handle, length


def encode_offset_data_chunk(handle: int, offset: int, data: bytes | memoryview, done: bool = True) -> bytes:
    return encode_chunk(NBD_REPLY_FLAG_DONE if done else 0, NBD_REPLY_TYPE_OFFSET_DATA, handle,
                        _U64.pack(offset) + bytes(data))


def encode_error_chunk(handle: int, error: int, message: bytes = b"") -> bytes:
    message = message[:MAX_STRING_BYTES]
    return encode_chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, handle,
                        _U32.pack(error) + _U16.pack(len(message)) + message)


def decode_error_chunk(payload: bytes | memoryview) -> tuple[int, bytes]:
    """NBD_REPLY_TYPE_ERROR / _ERROR_OFFSET payload -> (error, message)."""
    if len(payload) < 6:
        raise NbdProtocolError("bad_error_chunk", f"error chunk of {len(payload)} bytes (at least 6)")
    error, mlen = struct.unpack_from(">IH", payload)
    if mlen > len(payload) - 6:
        raise NbdProtocolError("bad_error_chunk", f"message length {mlen} > chunk length {len(payload)} - 6")
    return error, bytes(payload[6 : 6 + mlen])
