"""NBD client state machine (fixed newstyle, as Linux's nbd-client and libnbd haggle). Sans-I/O.

``c = NbdClient(b"swap/img")``; feed the server's bytes with ``c.receive(data)`` (returns events),
send ``c.data_to_send()``. Once a ``Ready`` event came, ``read``/``write``/``flush``/``disconnect``
queue requests and return their handle; each ends in one ``Reply``.

Haggling (proto.md "Fixed newstyle negotiation", "NBD_OPT_INFO and NBD_OPT_GO"): client flags
FIXED_NEWSTYLE (+NO_ZEROES when offered); NBD_OPT_STRUCTURED_REPLY if wanted (an
``NBD_REP_ERR_UNSUP`` leaves simple replies); NBD_OPT_GO with NBD_INFO_BLOCK_SIZE; on
``NBD_REP_ERR_UNSUP`` for GO the client falls back to NBD_OPT_EXPORT_NAME, as the document says
clients SHOULD; a server without FIXED_NEWSTYLE gets NBD_OPT_EXPORT_NAME straight away.

Invariant owned here: every request queued gets exactly one ``Reply`` (or the connection fails with
a ``Failed`` event naming the violation); a READ's data is assembled from however many structured
chunks the server sends, and a READ reply is complete only when every byte is covered.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import nbd


@dataclass
class Ready:
    size_bytes: int
    transmission_flags: int
    block_size: tuple[int, int, int] | None
    structured: bool
    via: str            # "NBD_OPT_GO" or "NBD_OPT_EXPORT_NAME"


@dataclass
class Reply:
    handle: int
    error: int          # 0 or NBD_E*
    data: bytes = b""
    message: bytes = b""


@dataclass
class Failed:
    reason: str
    detail: str


class NbdClient:
    def __init__(self, export: bytes, *, structured: bool = True, use_go: bool = True):
        self.export = export
        self.want_structured = structured
        self.use_go = use_go
        self.buf = bytearray()
        self.out = bytearray()
        self.state = "greeting"
        self.structured = False
        self.info = nbd.ExportInfo()
        self.ready: Ready | None = None
        self.no_zeroes = False
        self.next_handle = 1
        self.inflight: dict[int, list] = {}   # handle -> [type, offset, length, bytearray|None, covered, error, msg]
        self.failed: Failed | None = None

    # -- I/O surface -----------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        b = bytes(self.out)
        self.out.clear()
        return b

    def receive(self, data: bytes | bytearray | memoryview) -> list:
        if self.failed:
            return []
        self.buf += data
        events: list = []
        try:
            while self._step(events):
                pass
        except nbd.NbdProtocolError as e:
            self.failed = Failed(e.reason, str(e))
            events.append(self.failed)
        return events

    # -- requests --------------------------------------------------------------------------------
    def _request(self, typ: int, offset: int, length: int, flags: int = 0, data: bytes = b"") -> int:
        if self.ready is None:
            raise RuntimeError(f"NBD request before the handshake finished (state {self.state})")
        h = self.next_handle
        self.next_handle += 1
        self.out += nbd.encode_request(typ, h, offset, length, flags, data)
        if typ != nbd.NBD_CMD_DISC:
            self.inflight[h] = [typ, offset, length, bytearray(length) if typ == nbd.NBD_CMD_READ else None, 0, 0, b""]
        return h

    def read(self, offset: int, length: int) -> int:
        return self._request(nbd.NBD_CMD_READ, offset, length)

    def write(self, offset: int, data: bytes, fua: bool = False) -> int:
        return self._request(nbd.NBD_CMD_WRITE, offset, len(data), nbd.NBD_CMD_FLAG_FUA if fua else 0, data)

    def flush(self) -> int:
        return self._request(nbd.NBD_CMD_FLUSH, 0, 0)

    def disconnect(self) -> None:
        self._request(nbd.NBD_CMD_DISC, 0, 0)
        self.state = "disconnected"

    # -- machine ---------------------------------------------------------------------------------
    def _send_go(self) -> None:
        opt = nbd.NBD_OPT_GO if self.use_go else nbd.NBD_OPT_EXPORT_NAME
        if opt == nbd.NBD_OPT_GO:
            self.out += nbd.encode_option(opt, nbd.encode_go_data(self.export, (nbd.NBD_INFO_BLOCK_SIZE,)))
            self.state = "go"
        else:
            self.out += nbd.encode_option(nbd.NBD_OPT_EXPORT_NAME, self.export)
            self.state = "export_name"

    def _step(self, events: list) -> bool:
        buf = self.buf
        if self.state == "greeting":
            if len(buf) < 18:
                return False
            hflags = nbd.decode_greeting(buf)
            del buf[:18]
            fixed = bool(hflags & nbd.NBD_FLAG_FIXED_NEWSTYLE)
            self.no_zeroes = bool(hflags & nbd.NBD_FLAG_NO_ZEROES)
            cflags = (nbd.NBD_FLAG_C_FIXED_NEWSTYLE if fixed else 0) | (nbd.NBD_FLAG_C_NO_ZEROES if self.no_zeroes else 0)
            self.out += cflags.to_bytes(4, "big")
            if not fixed:
                self.use_go = False
                self._send_go()
            elif self.want_structured:
                self.out += nbd.encode_option(nbd.NBD_OPT_STRUCTURED_REPLY)
                self.state = "structured"
            else:
                self._send_go()
            return True
        if self.state == "export_name":
            need = nbd.EXPORT_NAME_REPLY_BYTES + (0 if self.no_zeroes else 124)
            if len(buf) < need:
                return False
            size, flags = nbd.decode_export_name_reply(buf)
            del buf[:need]
            self.info.size_bytes, self.info.transmission_flags = size, flags
            return self._enter(events, "NBD_OPT_EXPORT_NAME")
        if self.state in ("structured", "go"):
            if len(buf) < nbd.OPTION_REPLY_HEADER_BYTES:
                return False
            opt, rep, length = nbd.decode_option_reply_header(buf)
            if length > 1 << 20:
                raise nbd.NbdProtocolError("option_reply_too_big", f"option reply of {length} bytes")
            if len(buf) < nbd.OPTION_REPLY_HEADER_BYTES + length:
                return False
            data = bytes(buf[nbd.OPTION_REPLY_HEADER_BYTES : nbd.OPTION_REPLY_HEADER_BYTES + length])
            del buf[: nbd.OPTION_REPLY_HEADER_BYTES + length]
            if self.state == "structured":
                if rep == nbd.NBD_REP_ACK:
                    self.structured = True
                elif not rep & nbd.NBD_REP_FLAG_ERROR:
                    raise nbd.NbdProtocolError("unexpected_option_reply", f"{nbd.REP_NAMES.get(rep, rep)} to STRUCTURED_REPLY")
                self._send_go()
                return True
            if rep == nbd.NBD_REP_INFO:
                nbd.decode_info(data, self.info)
                return True
            if rep == nbd.NBD_REP_ACK:
                if self.info.size_bytes is None:
                    raise nbd.NbdProtocolError("no_info_export", "NBD_REP_ACK to NBD_OPT_GO without NBD_INFO_EXPORT")
                return self._enter(events, "NBD_OPT_GO")
            if rep in (nbd.NBD_REP_ERR_UNSUP,):
                self.use_go = False
                self.structured = False  # an old server: keep to what NBD_OPT_EXPORT_NAME gives
                self._send_go()
                return True
            self.failed = Failed(nbd.REP_NAMES.get(rep, f"rep_{rep:#x}"), data.decode(errors="replace"))
            events.append(self.failed)
            self.state = "failed"
            return False
        if self.state in ("transmission", "disconnected"):
            return self._reply(events)
        return False

    def _enter(self, events: list, via: str) -> bool:
        self.state = "transmission"
        self.ready = Ready(self.info.size_bytes, self.info.transmission_flags, self.info.block_size,
                           self.structured, via)
        events.append(self.ready)
        return True

    def _reply(self, events: list) -> bool:
        buf = self.buf
        if len(buf) < 4:
            return False
        magic = nbd.reply_magic(buf)
        if magic == nbd.NBD_SIMPLE_REPLY_MAGIC:
            if len(buf) < nbd.SIMPLE_REPLY_BYTES:
                return False
            error, handle = nbd.decode_simple_reply(buf)
            req = self.inflight.get(handle)
            if req is None:
                raise nbd.NbdProtocolError("unknown_handle", f"simple reply for handle {handle:#x}")
            n = req[2] if (req[0] == nbd.NBD_CMD_READ and error == 0) else 0
            if len(buf) < nbd.SIMPLE_REPLY_BYTES + n:
                return False
            data = bytes(buf[nbd.SIMPLE_REPLY_BYTES : nbd.SIMPLE_REPLY_BYTES + n])
            del buf[: nbd.SIMPLE_REPLY_BYTES + n]
            del self.inflight[handle]
            events.append(Reply(handle, error, data))
            return True
        if len(buf) < nbd.CHUNK_HEADER_BYTES:
            return False
        flags, typ, handle, length = nbd.decode_chunk_header(buf)
        if not self.structured:
            raise nbd.NbdProtocolError("unnegotiated_structured_reply", "structured chunk without negotiation")
        if length > (1 << 26):
            raise nbd.NbdProtocolError("chunk_too_big", f"chunk of {length} bytes")
        if len(buf) < nbd.CHUNK_HEADER_BYTES + length:
            return False
        payload = bytes(buf[nbd.CHUNK_HEADER_BYTES : nbd.CHUNK_HEADER_BYTES + length])
        del buf[: nbd.CHUNK_HEADER_BYTES + length]
        req = self.inflight.get(handle)
        if req is None:
            raise nbd.NbdProtocolError("unknown_handle", f"chunk for handle {handle:#x}")
        if typ == nbd.NBD_REPLY_TYPE_OFFSET_DATA or typ == nbd.NBD_REPLY_TYPE_OFFSET_HOLE:
            if req[0] != nbd.NBD_CMD_READ or length < (9 if typ == 1 else 12):
                raise nbd.NbdProtocolError("bad_chunk", f"chunk type {typ} of {length} bytes for {req[0]}")
            off = int.from_bytes(payload[:8], "big")
            data = payload[8:] if typ == 1 else bytes(int.from_bytes(payload[8:12], "big"))
            rel = off - req[1]
            if rel < 0 or rel + len(data) > req[2]:
                raise nbd.NbdProtocolError("chunk_out_of_range", f"data at {off}+{len(data)} outside the read")
            req[3][rel : rel + len(data)] = data
            req[4] += len(data)
        elif typ & (1 << 15):
            req[5], req[6] = nbd.decode_error_chunk(payload)
        elif typ != nbd.NBD_REPLY_TYPE_NONE:
            raise nbd.NbdProtocolError("bad_chunk_type", f"chunk type {typ}")
        if flags & nbd.NBD_REPLY_FLAG_DONE:
            del self.inflight[handle]
            if req[0] == nbd.NBD_CMD_READ and not req[5] and req[4] != req[2]:
                raise nbd.NbdProtocolError("short_read", f"READ reply covers {req[4]} of {req[2]} bytes")
            events.append(Reply(handle, req[5], bytes(req[3]) if req[3] is not None and not req[5] else b"", req[6]))
        return True
