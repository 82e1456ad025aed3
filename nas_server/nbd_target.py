"""The NAS's NBD target: fixed-newstyle handshake and transmission over the NFS core's image store. Sans-I/O.

``NbdTarget(store)`` serves every image of every export as the NBD export ``EXPORT/IMAGE`` (and, when
the store holds exactly one image, also as the default export ``""``). ``target.connect(peer)``
returns an ``NbdConnection``: ``initial()`` gives the greeting, ``feed(data, now)`` takes bytes from
the client and returns the bytes to send, ``eof(now)`` says the client closed. When
``conn.closed`` is set the driver sends what was returned and closes the socket.

Invariants owned here:
- Durability is the image store's: a WRITE without ``NBD_CMD_FLAG_FUA`` is held in the server's
  memory like an NFS UNSTABLE write (``Image.write(stable=False)``) and is lost if the process is
  killed; a WRITE with FUA, and every write acknowledged before an ``NBD_CMD_FLUSH`` is answered,
  is on disk (``fdatasync``) before its reply. This is the document's "Ordering of messages and
  writes".
- Every input byte sequence ends in a reply the document prescribes (an option error reply such as
  ``NBD_REP_ERR_INVALID``, a request error such as ``NBD_EINVAL``) or in a hard disconnect whose
  reason is counted in ``counters['drop_<reason>']``; nothing raises, and an image changes only
  through a complete, valid WRITE / WRITE_ZEROES inside its bounds.
- Input is bounded: an option longer than ``nbd.MAX_OPTION_BYTES`` or a WRITE payload longer than
  ``max_payload_bytes`` is a hard disconnect (the document allows one for denial of service), so a
  connection never buffers more than one request.

Counters use the document's names: per option (``NBD_OPT_GO``), per option reply error
(``NBD_REP_ERR_UNKNOWN``), per command (``NBD_CMD_WRITE`` calls and ``NBD_CMD_WRITE_bytes``, with
``NBD_CMD_FLAG_FUA`` counted apart), per request error (``NBD_EINVAL``).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Callable

from protocols import nbd

from .store import Image, Store, StoreError

PREFERRED_BLOCK_BYTES = 4096
MIN_BLOCK_BYTES = 1                    # any byte range: images are regular files
ZERO_CHUNK_BYTES = 1 << 20             # WRITE_ZEROES is applied in pieces of this size
TRANSMISSION_FLAGS = (nbd.NBD_FLAG_HAS_FLAGS | nbd.NBD_FLAG_SEND_FLUSH | nbd.NBD_FLAG_SEND_FUA
                      | nbd.NBD_FLAG_SEND_WRITE_ZEROES | nbd.NBD_FLAG_CAN_MULTI_CONN)
# Command flags valid per command (anything else answers NBD_EINVAL, as the document asks).
_VALID_FLAGS = {
    nbd.NBD_CMD_READ: nbd.NBD_CMD_FLAG_FUA | nbd.NBD_CMD_FLAG_DF,
    nbd.NBD_CMD_WRITE: nbd.NBD_CMD_FLAG_FUA,
    nbd.NBD_CMD_FLUSH: nbd.NBD_CMD_FLAG_FUA,
    nbd.NBD_CMD_WRITE_ZEROES: nbd.NBD_CMD_FLAG_FUA | nbd.NBD_CMD_FLAG_NO_HOLE,
    nbd.NBD_CMD_DISC: nbd.NBD_CMD_FLAG_FUA,
}


class NbdTarget:
    def __init__(self, store: Store, *, max_payload_bytes: int = nbd.DEFAULT_MAX_PAYLOAD_BYTES,
                 structured_replies: bool = True, log: Callable[[str], None] | None = None):
        self.store = store
        self.max_payload_bytes = max_payload_bytes
        self.structured_replies = structured_replies
        self.log = log
        self.counters: Counter = Counter()
        self.connections = 0

    def connect(self, peer: tuple, now: float = 0.0) -> "NbdConnection":
        self.counters["connections"] += 1
        return NbdConnection(self, peer, now)

    # -- exports ---------------------------------------------------------------------------------
    def export_names(self, host: str) -> list[str]:
        names = []
        for exp in self.store.exports.values():
            if _allowed(exp.networks, host):
                names += [f"{exp.name}/{img}" for img in exp.images]
        return names

    def lookup(self, name: bytes, host: str) -> tuple[Image | None, int]:
        """Export name -> (image, 0) or (None, NBD_REP_ERR_UNKNOWN / NBD_REP_ERR_POLICY)."""
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            return None, nbd.NBD_REP_ERR_UNKNOWN
        if text == "":
            imgs = [(e, i) for e in self.store.exports.values() for i in e.images.values()]
            if len(imgs) != 1:
                return None, nbd.NBD_REP_ERR_UNKNOWN
            exp, img = imgs[0]
        else:
            ename, _, iname = text.strip("/").partition("/")
            exp = self.store.exports.get(ename)
            img = exp.images.get(iname) if exp is not None else None
            if img is None:
                return None, nbd.NBD_REP_ERR_UNKNOWN
        if not _allowed(exp.networks, host):
            return None, nbd.NBD_REP_ERR_POLICY
        return img, 0

    def canonical_name(self, img: Image) -> str:
        """``EXPORT/IMAGE``: the name NBD_OPT_LIST gives (NBD_INFO_NAME)."""
        for exp in self.store.exports.values():
            if exp.images.get(img.name) is img:
                return f"{exp.name}/{img.name}"
        return img.name

    def snapshot(self) -> dict:
        return {"counters": dict(self.counters), "max_payload_bytes": self.max_payload_bytes,
                "structured_replies": self.structured_replies}


def _allowed(networks: list, host: str) -> bool:
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in n for n in networks)


# Connection states (the document's phases).
CLIENT_FLAGS = "client_flags"      # greeting sent, waiting for the 32-bit client flags
OPTIONS = "options"                # option haggling
TRANSMISSION = "transmission"
CLOSED = "closed"


class NbdConnection:
    def __init__(self, target: NbdTarget, peer: tuple, now: float):
        self.t = target
        self.peer = peer
        self.state = CLIENT_FLAGS
        self.buf = bytearray()
        self.handshake_flags = nbd.NBD_FLAG_FIXED_NEWSTYLE | nbd.NBD_FLAG_NO_ZEROES
        self.client_flags = 0
        self.structured = False
        self.image: Image | None = None
        self.export_name = ""
        self.closed = False
        self.close_reason = ""

    def initial(self) -> bytes:
        return nbd.encode_greeting(self.handshake_flags)

    # -- input -----------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> bytes:
        """Client bytes in, bytes to send out. After ``closed`` is set, further input is ignored."""
        if self.closed:
            return b""
        self.buf += data
        out = bytearray()
        try:
            while not self.closed:
                n = self._step(out, now)
                if n == 0:
                    break
                del self.buf[:n]
        except nbd.NbdProtocolError as e:
            self._hard_disconnect(e.reason, str(e))
        except Exception as e:  # a bug must not take the server down; the connection pays for it
            self.t.counters["internal_errors"] += 1
            self._hard_disconnect("internal_error", f"{type(e).__name__}: {e}")
        return bytes(out)

    def eof(self, now: float = 0.0) -> None:
        """The client closed its side. A partial message is counted as ``drop_truncated``."""
        if self.closed:
            return
        if self.buf:
            self._hard_disconnect("truncated", f"{len(self.buf)} bytes of an incomplete message in {self.state}")
        else:
            self._close("peer_closed")

    # -- internals -------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.t.log is not None:
            self.t.log(f"nbd {self.peer[0]}:{self.peer[1]} {text}")

    def _close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.state = CLOSED
        self.t.counters["close_" + reason] += 1

    def _hard_disconnect(self, reason: str, detail: str) -> None:
        self.t.counters["drop_" + reason] += 1
        self._log(f"hard disconnect ({reason}) in {self.state}: {detail}")
        self.buf.clear()
        self.closed = True
        self.close_reason = reason
        self.state = CLOSED

    def _step(self, out: bytearray, now: float) -> int:
        """Consume one message from ``self.buf`` if complete; return the bytes used (0: need more)."""
        buf = self.buf
        if self.state == CLIENT_FLAGS:
            if len(buf) < 4:
                return 0
            self.client_flags = nbd.decode_client_flags(buf, self.handshake_flags)
            self.state = OPTIONS
            return 4
        if self.state == OPTIONS:
            if len(buf) < nbd.OPTION_HEADER_BYTES:
                return 0
            opt, length = nbd.decode_option_header(buf)
            if length > nbd.MAX_OPTION_BYTES:
                raise nbd.NbdProtocolError("option_too_big",
                                           f"option {opt} of {length} bytes (at most {nbd.MAX_OPTION_BYTES})")
            if len(buf) < nbd.OPTION_HEADER_BYTES + length:
                return 0
            data = bytes(buf[nbd.OPTION_HEADER_BYTES : nbd.OPTION_HEADER_BYTES + length])
            self._option(opt, data, out)
            return nbd.OPTION_HEADER_BYTES + length
        # TRANSMISSION
        if len(buf) < nbd.REQUEST_BYTES:
            return 0
        req = nbd.decode_request(buf)
        if req.type == nbd.NBD_CMD_WRITE:
            if req.length > self.t.max_payload_bytes:
                raise nbd.NbdProtocolError("payload_too_big", f"NBD_CMD_WRITE of {req.length} bytes "
                                           f"(maximum payload {self.t.max_payload_bytes})")
            if len(buf) < nbd.REQUEST_BYTES + req.length:
                return 0
            self._request(req, memoryview(buf)[nbd.REQUEST_BYTES : nbd.REQUEST_BYTES + req.length], out, now)
            return nbd.REQUEST_BYTES + req.length
        self._request(req, None, out, now)
        return nbd.REQUEST_BYTES

    # -- option haggling -------------------------------------------------------------------------
    def _opt_reply(self, out: bytearray, opt: int, rep: int, data: bytes = b"") -> None:
        if rep & nbd.NBD_REP_FLAG_ERROR:
            self.t.counters[nbd.REP_NAMES.get(rep, f"NBD_REP_ERR_{rep:#x}")] += 1
            self._log(f"{nbd.OPT_NAMES.get(opt, opt)}: {nbd.REP_NAMES.get(rep, rep)} {data.decode(errors='replace')}")
        out += nbd.encode_option_reply(opt, rep, data)

    def _option(self, opt: int, data: bytes, out: bytearray) -> None:
        c = self.t.counters
        c[nbd.OPT_NAMES.get(opt, "NBD_OPT_unknown")] += 1
        host = self.peer[0]
        if opt == nbd.NBD_OPT_EXPORT_NAME:
            img, err = self.t.lookup(data, host)
            if img is None:  # the document: the server MUST terminate the session
                raise nbd.NbdProtocolError("export_name_" + nbd.REP_NAMES[err][12:].lower(),
                                           f"NBD_OPT_EXPORT_NAME {data[:64]!r}: {nbd.REP_NAMES[err]}")
            out += nbd.encode_export_name_reply(img.size_bytes, TRANSMISSION_FLAGS,
                                                bool(self.client_flags & nbd.NBD_FLAG_C_NO_ZEROES))
            self._enter_transmission(img, data)
        elif opt == nbd.NBD_OPT_ABORT:
            out += nbd.encode_option_reply(opt, nbd.NBD_REP_ACK)
            self._close("opt_abort")
        elif opt == nbd.NBD_OPT_LIST:
            if data:
                return self._opt_reply(out, opt, nbd.NBD_REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
            for name in self.t.export_names(host):
                out += nbd.encode_option_reply(opt, nbd.NBD_REP_SERVER, nbd.encode_rep_server(name.encode()))
            out += nbd.encode_option_reply(opt, nbd.NBD_REP_ACK)
        elif opt in (nbd.NBD_OPT_INFO, nbd.NBD_OPT_GO):
            try:
                name, infos = nbd.decode_go_data(data)
            except nbd.NbdProtocolError as e:
                return self._opt_reply(out, opt, nbd.NBD_REP_ERR_INVALID, str(e).encode())
            img, err = self.t.lookup(name, host)
            if img is None:
                return self._opt_reply(out, opt, err, b"no export " + name[:256] + b" for this client")
            tflags = TRANSMISSION_FLAGS | (nbd.NBD_FLAG_SEND_DF if self.structured else 0)
            out += nbd.encode_option_reply(opt, nbd.NBD_REP_INFO, nbd.encode_info_export(img.size_bytes, tflags))
            if nbd.NBD_INFO_BLOCK_SIZE in infos:
                out += nbd.encode_option_reply(opt, nbd.NBD_REP_INFO, nbd.encode_info_block_size(
                    MIN_BLOCK_BYTES, PREFERRED_BLOCK_BYTES, self.t.max_payload_bytes))
            if nbd.NBD_INFO_NAME in infos:
                out += nbd.encode_option_reply(opt, nbd.NBD_REP_INFO, nbd.encode_info_string(
                    nbd.NBD_INFO_NAME, self.t.canonical_name(img).encode()))
            if nbd.NBD_INFO_DESCRIPTION in infos:
                out += nbd.encode_option_reply(opt, nbd.NBD_REP_INFO, nbd.encode_info_string(
                    nbd.NBD_INFO_DESCRIPTION, f"nas-server image, {img.size_bytes} bytes".encode()))
            out += nbd.encode_option_reply(opt, nbd.NBD_REP_ACK)
            if opt == nbd.NBD_OPT_GO:
                self._enter_transmission(img, name)
        elif opt == nbd.NBD_OPT_STRUCTURED_REPLY:
            if data:
                return self._opt_reply(out, opt, nbd.NBD_REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")
            if not self.t.structured_replies:
                return self._opt_reply(out, opt, nbd.NBD_REP_ERR_UNSUP, b"structured replies are off")
            self.structured = True
            out += nbd.encode_option_reply(opt, nbd.NBD_REP_ACK)
        elif opt == nbd.NBD_OPT_STARTTLS:
            self._opt_reply(out, opt, nbd.NBD_REP_ERR_POLICY, b"this server does not speak TLS")
        else:  # LIST/SET_META_CONTEXT, EXTENDED_HEADERS, unknown: not supported
            self._opt_reply(out, opt, nbd.NBD_REP_ERR_UNSUP, f"option {opt} is not supported".encode())

    def _enter_transmission(self, img: Image, name: bytes) -> None:
        self.image = img
        self.export_name = name.decode("utf-8", errors="replace")
        self.state = TRANSMISSION
        self.t.counters["transmission_entered"] += 1

    # -- transmission ----------------------------------------------------------------------------
    def _reply_error(self, out: bytearray, req: nbd.Request, error: int, msg: str) -> None:
        c = self.t.counters
        c[nbd.ERROR_NAMES.get(error, f"NBD_E{error}")] += 1
        self._log(f"{nbd.CMD_NAMES.get(req.type, req.type)} handle={req.handle:#x} offset={req.offset} "
                  f"length={req.length}: {nbd.ERROR_NAMES.get(error, error)}: {msg}")
        if self.structured:
            out += nbd.encode_error_chunk(req.handle, error, msg.encode())
        else:
            out += nbd.encode_simple_reply(error, req.handle)

    def _request(self, req: nbd.Request, payload, out: bytearray, now: float) -> None:
        c = self.t.counters
        name = nbd.CMD_NAMES.get(req.type)
        c[name or "NBD_CMD_unknown"] += 1
        img = self.image
        if name is None or req.type not in _VALID_FLAGS:
            return self._reply_error(out, req, nbd.NBD_EINVAL, f"command {req.type} is not supported")
        if req.flags & ~_VALID_FLAGS[req.type]:
            return self._reply_error(out, req, nbd.NBD_EINVAL, f"command flags {req.flags:#x} not valid for {name}")
        if req.flags & nbd.NBD_CMD_FLAG_FUA:
            c[name + "_FUA"] += 1
        if req.type == nbd.NBD_CMD_DISC:
            self._close("disc")
            return
        if req.type == nbd.NBD_CMD_FLUSH:
            if req.offset or req.length:
                return self._reply_error(out, req, nbd.NBD_EINVAL, "NBD_CMD_FLUSH with a nonzero offset or length")
            c["NBD_CMD_FLUSH_bytes"] += img.pending_bytes
            return self._ok(out, req, lambda: img.commit())
        if req.offset + req.length > img.size_bytes:
            err = nbd.NBD_ENOSPC if req.type in (nbd.NBD_CMD_WRITE, nbd.NBD_CMD_WRITE_ZEROES) else nbd.NBD_EINVAL
            return self._reply_error(out, req, err, f"offset {req.offset} + length {req.length} is past the "
                                     f"export's end ({img.size_bytes} bytes)")
        fua = bool(req.flags & nbd.NBD_CMD_FLAG_FUA)
        if req.type == nbd.NBD_CMD_READ:
            if req.length > self.t.max_payload_bytes:
                return self._reply_error(out, req, nbd.NBD_EINVAL, f"read of {req.length} bytes "
                                         f"(maximum payload {self.t.max_payload_bytes})")
            try:
                data = img.read(req.offset, req.length)
            except OSError as e:
                return self._reply_error(out, req, nbd.NBD_EIO, str(e))
            c["NBD_CMD_READ_bytes"] += len(data)
            if self.structured:
                if req.length == 0:
                    out += nbd.encode_chunk(nbd.NBD_REPLY_FLAG_DONE, nbd.NBD_REPLY_TYPE_NONE, req.handle)
                else:
                    out += nbd.encode_offset_data_chunk(req.handle, req.offset, data)
            else:
                out += nbd.encode_simple_reply(0, req.handle, data)
            return
        if req.type == nbd.NBD_CMD_WRITE:
            c["NBD_CMD_WRITE_bytes"] += req.length
            return self._ok(out, req, lambda: img.write(req.offset, bytes(payload), fua, now))

        def zero():  # NBD_CMD_WRITE_ZEROES
            off, end = req.offset, req.offset + req.length
            while off < end:
                n = min(ZERO_CHUNK_BYTES, end - off)
                img.write(off, bytes(n), False, now)
                off += n
            if fua:
                img.commit()
        c["NBD_CMD_WRITE_ZEROES_bytes"] += req.length
        return self._ok(out, req, zero)

    def _ok(self, out: bytearray, req: nbd.Request, action) -> None:
        try:
            action()
        except StoreError as e:
            return self._reply_error(out, req, nbd.NBD_ENOSPC, str(e))
        except OSError as e:
            return self._reply_error(out, req, nbd.NBD_EIO, str(e))
        if self.structured:
            out += nbd.encode_chunk(nbd.NBD_REPLY_FLAG_DONE, nbd.NBD_REPLY_TYPE_NONE, req.handle)
        else:
            out += nbd.encode_simple_reply(0, req.handle)
