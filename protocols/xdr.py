"""XDR (RFC 4506) packer and unpacker: big-endian 4-byte units, strict on the way in.

Invariant owned here: an ``Unpacker`` never reads past the end of its buffer, never accepts an
opaque/string/array longer than the caller's stated maximum, and never accepts non-zero padding
bytes; any violation raises ``XdrError`` with the offset and the values involved. Nothing here
touches a socket, a file or the clock.

The packer appends to a ``bytearray`` (amortised O(1)); the unpacker reads with
``struct.unpack_from`` over a ``memoryview`` so opaque data can be returned without a copy
(``unpack_opaque_view``) on the hot path (WRITE data).
"""

from __future__ import annotations

import struct

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by len % 4

UINT32_MAX = 0xFFFFFFFF


class XdrError(ValueError):
    """The bytes are not valid XDR for the type asked for (the peer sent garbage)."""


def pad_len(n: int) -> int:
    """Bytes of zero padding that follow an opaque of ``n`` bytes."""
    return (4 - (n & 3)) & 3


class Packer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def get_bytes(self) -> bytes:
        return bytes(self.buf)

    def pack_uint(self, v: int) -> None:
        self.buf += _U32.pack(v)

    def pack_int(self, v: int) -> None:
        self.buf += _I32.pack(v)

    def pack_enum(self, v: int) -> None:
        self.buf += _I32.pack(v)

    def pack_bool(self, v: bool) -> None:
        self.buf += _U32.pack(1 if v else 0)

    def pack_uhyper(self, v: int) -> None:
        self.buf += _U64.pack(v)

    def pack_hyper(self, v: int) -> None:
        self.buf += _I64.pack(v)

    def pack_fopaque(self, n: int, data: bytes) -> None:
        """Fixed-length opaque[n]: exactly ``n`` bytes, then padding."""
        if len(data) != n:
            raise XdrError(f"fixed opaque needs {n} bytes, got {len(data)}")
        self.buf += data
        self.buf += _PAD[n & 3]

    def pack_opaque(self, data: bytes | bytearray | memoryview, max_len: int = UINT32_MAX) -> None:
        """Variable-length opaque<max_len>: length, bytes, padding."""
        n = len(data)
        if n > max_len:
            raise XdrError(f"opaque of {n} bytes exceeds its maximum {max_len}")
        self.buf += _U32.pack(n)
        self.buf += data
        self.buf += _PAD[n & 3]

    def pack_string(self, s: str | bytes, max_len: int = UINT32_MAX) -> None:
        self.pack_opaque(s.encode() if isinstance(s, str) else s, max_len)

    def pack_optional(self, value, pack_fn) -> None:
        """XDR optional-data (``*T``): a bool, then the value if present."""
        if value is None:
            self.pack_bool(False)
        else:
            self.pack_bool(True)
            pack_fn(value)

    def pack_raw(self, data: bytes) -> None:
        """Bytes that are already XDR (e.g. a pre-encoded header)."""
        self.buf += data


class Unpacker:
    __slots__ = ("view", "pos", "end")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self.view = memoryview(data)
        if self.view.format != "B" or self.view.ndim != 1:
            self.view = self.view.cast("B")
        self.pos = pos
        self.end = len(self.view)

    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > self.end:
            raise XdrError(
                f"truncated XDR: {what} needs {n} bytes at offset {self.pos}, only {self.end - self.pos} left"
            )

    def unpack_uint(self) -> int:
        self._need(4, "uint32")
        v = _U32.unpack_from(self.view, self.pos)[0]
        self.pos += 4
        return v

    def unpack_int(self) -> int:
        self._need(4, "int32")
        v = _I32.unpack_from(self.view, self.pos)[0]
        self.pos += 4
        return v

    unpack_enum = unpack_int

    def unpack_bool(self) -> bool:
        v = self.unpack_uint()
        if v > 1:
            raise XdrError(f"bool must be 0 or 1, got {v} at offset {self.pos - 4}")
        return v == 1

    def unpack_uhyper(self) -> int:
        self._need(8, "uint64")
        v = _U64.unpack_from(self.view, self.pos)[0]
        self.pos += 8
        return v

    def unpack_hyper(self) -> int:
        self._need(8, "int64")
        v = _I64.unpack_from(self.view, self.pos)[0]
        self.pos += 8
        return v

    def _check_pad(self, n: int) -> None:
        p = pad_len(n)
        if p:
            self._need(p, "padding")
            if any(self.view[self.pos : self.pos + p]):
                raise XdrError(f"non-zero XDR padding at offset {self.pos}")
            self.pos += p

    def unpack_fopaque_view(self, n: int) -> memoryview:
        self._need(n, f"fixed opaque[{n}]")
        v = self.view[self.pos : self.pos + n]
        self.pos += n
        self._check_pad(n)
        return v

    def unpack_fopaque(self, n: int) -> bytes:
        return bytes(self.unpack_fopaque_view(n))

    def unpack_opaque_view(self, max_len: int = UINT32_MAX) -> memoryview:
        """Variable opaque<max_len> as a zero-copy view into the buffer."""
        n = self.unpack_uint()
        if n > max_len:
            raise XdrError(f"opaque length {n} at offset {self.pos - 4} exceeds its maximum {max_len}")
        return self.unpack_fopaque_view(n)

    def unpack_opaque(self, max_len: int = UINT32_MAX) -> bytes:
        return bytes(self.unpack_opaque_view(max_len))

    def unpack_string(self, max_len: int = UINT32_MAX) -> bytes:
        """XDR strings come back as bytes: NFS names are not guaranteed to be UTF-8."""
        return self.unpack_opaque(max_len)

    def unpack_optional(self, unpack_fn):
        return unpack_fn() if self.unpack_bool() else None

    def done(self) -> None:
        """Assert the whole buffer was consumed (trailing bytes are garbage)."""
        if self.pos != self.end:
            raise XdrError(f"{self.end - self.pos} trailing bytes after XDR data at offset {self.pos}")
