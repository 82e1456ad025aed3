"""TCP header and options (RFC 9293 §3.1, RFC 7323, RFC 2018): view, option parser, encoder.

Invariant: a :class:`TcpPacket` from ``new_checked`` has ``20 <= doff*4 <= len(buf)`` (Linux
tcp_v4_rcv: otherwise PKT_TOO_SMALL, counted Tcp InErrs); its ``payload`` is ``buf[doff*4:]``.
Options are parsed as ``tcp_parse_options`` parses them: a malformed option (length < 2, or past
the header) ends the parse and the options read so far stand; an option with a length its kind
does not allow is ignored; MSS, window scale and SACK-permitted count only on a SYN; a SACK
block list only on a segment without SYN. A bad option is never a reason to drop a segment.

Sequence arithmetic is modulo 2**32 (``before``/``after`` as include/net/tcp.h).
"""

from __future__ import annotations

import struct

from .checksum import fold, ones_sum
from .errors import WireError

TCP_HLEN = 20
TCP_MAX_WSCALE = 14                 # RFC 7323 §2.3: a shift above 14 is used as 14

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

TCPOPT_EOL, TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WINDOW = 0, 1, 2, 3
TCPOPT_SACK_PERM, TCPOPT_SACK, TCPOPT_TIMESTAMP = 4, 5, 8
TCPOLEN_MSS, TCPOLEN_WINDOW, TCPOLEN_SACK_PERM, TCPOLEN_TIMESTAMP = 4, 3, 2, 10

_HDR = struct.Struct("!HHIIBBHHH")
_TS = struct.Struct("!II")

# TCP(sport=1234, dport=2049, seq=1, ack=0, flags="S", window=64240,
#     options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
#              ("WScale", 7)]) between 198.18.0.1 and 198.18.0.2 -- checked against scapy
SYN_BYTES = bytes.fromhex(
    "04d2" "0801" "00000001" "00000000" "a0" "02" "faf0" "b412" "0000"
    "020405b4" "0402" "080a0000000100000000" "01" "030307")
FIXTURE_SRC = bytes([198, 18, 0, 1])
FIXTURE_DST = bytes([198, 18, 0, 2])


def before(a: int, b: int) -> bool:
    """a precedes b in sequence space (include/net/tcp.h before())."""
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def after(a: int, b: int) -> bool:
    return ((b - a) & 0xFFFFFFFF) > 0x7FFFFFFF


def flags_str(flags: int) -> str:
    """tcpdump's letters: S F R P . U E W (ACK is '.')."""
    out = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"),
                                   (ECE, "E"), (CWR, "W")) if flags & bit)
    return out + "." if flags & ACK else out or "none"


class TcpOptions:
    """tcp_options_received, reduced: what the peer's options said on this segment."""

    __slots__ = ("mss", "wscale", "sack_ok", "tsval", "tsecr", "saw_tstamp", "sack")

    def __init__(self) -> None:
        self.mss = 0
        self.wscale = -1          # -1: no window scale option
        self.sack_ok = False
        self.saw_tstamp = False
        self.tsval = 0
        self.tsecr = 0
        self.sack: list[tuple[int, int]] | None = None   # [(start, end)] on non-SYN segments


def parse_options(opts, syn: bool) -> TcpOptions:
    """tcp_parse_options(): never raises on bad bytes (see the module invariant)."""
    o = TcpOptions()
    i = 0
    n = len(opts)
    while i < n:
        kind = opts[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = opts[i + 1]
        if size < 2 or size > n - i:
            break                                  # "don't parse partial options"
        if kind == TCPOPT_MSS:
            if size == TCPOLEN_MSS and syn:
                mss = opts[i + 2] << 8 | opts[i + 3]
                if mss:
                    o.mss = mss
        elif kind == TCPOPT_WINDOW:
            if size == TCPOLEN_WINDOW and syn:
                o.wscale = min(opts[i + 2], TCP_MAX_WSCALE)
        elif kind == TCPOPT_TIMESTAMP:
            if size == TCPOLEN_TIMESTAMP:
                o.saw_tstamp = True
                o.tsval, o.tsecr = _TS.unpack_from(opts, i + 2)
        elif kind == TCPOPT_SACK_PERM:
            if size == TCPOLEN_SACK_PERM and syn:
                o.sack_ok = True
        elif kind == TCPOPT_SACK:
            if size >= 10 and (size - 2) % 8 == 0 and not syn:
                o.sack = [_TS.unpack_from(opts, j) for j in range(i + 2, i + size, 8)]
        i += size
    return o


class TcpPacket:
    """Validated view over one segment. ``seq``/``ack`` are unsigned 32-bit."""

    __slots__ = ("buf", "sport", "dport", "seq", "ack_seq", "doff", "flags", "window", "csum",
                 "urg_ptr")

    @classmethod
    def new_checked(cls, buf) -> "TcpPacket":
        n = len(buf)
        if n < TCP_HLEN:
            raise WireError("PKT_TOO_SMALL", f"TCP segment of {n} bytes")
        p = cls.__new__(cls)
        (p.sport, p.dport, p.seq, p.ack_seq, off, p.flags, p.window, p.csum,
         p.urg_ptr) = _HDR.unpack_from(buf, 0)
        doff = (off >> 4) * 4
        if doff < TCP_HLEN or doff > n:
            raise WireError("PKT_TOO_SMALL", f"data offset {doff} in a segment of {n} bytes")
        p.doff = doff
        p.buf = buf
        return p

    def verify_checksum(self, src: bytes, dst: bytes) -> bool:
        n = len(self.buf)
        return fold(ones_sum(src + dst) + 6 + n + ones_sum(self.buf)) == 0xFFFF

    def options(self) -> TcpOptions:
        return parse_options(self.buf[TCP_HLEN:self.doff], bool(self.flags & SYN))

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[self.doff:]


# ---------------------------------------------------------------------------- options out
def opt_syn(mss: int, wscale: int | None, sack_ok: bool, ts: tuple[int, int] | None) -> bytes:
    """SYN/SYN-ACK options in Linux's order (tcp_options_write): MSS, SACK_PERM folded into the
    timestamp's leading NOPs, timestamp, NOP + window scale."""
    out = bytes((TCPOPT_MSS, TCPOLEN_MSS)) + mss.to_bytes(2, "big")
    if ts is not None:
        head = bytes((TCPOPT_SACK_PERM, TCPOLEN_SACK_PERM)) if sack_ok else b"\x01\x01"
        out += head + bytes((TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP)) + _TS.pack(*ts)
    elif sack_ok:
        out += b"\x01\x01" + bytes((TCPOPT_SACK_PERM, TCPOLEN_SACK_PERM))
    if wscale is not None:
        out += bytes((TCPOPT_NOP, TCPOPT_WINDOW, TCPOLEN_WINDOW, wscale))
    return out


_TS_HEAD = bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP))
_SACK_HEAD = bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK))


def opt_established(ts: tuple[int, int] | None, sack: list[tuple[int, int]] | None) -> bytes:
    """NOP NOP TS (12 bytes) then NOP NOP SACK blocks, as tcp_options_write lays them out."""
    out = _TS_HEAD + _TS.pack(*ts) if ts is not None else b""
    if sack:
        out += _SACK_HEAD + bytes((2 + 8 * len(sack),)) + b"".join(_TS.pack(*b) for b in sack)
    return out


def emit(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
         window: int, options: bytes = b"", payload=b"", urg_ptr: int = 0) -> bytes:
    """One segment with its checksum over the IPv4 pseudo-header. ``options`` are padded with
    EOL to a multiple of 4 bytes (at most 40)."""
    if len(options) & 3:
        options = options + b"\x00" * (4 - (len(options) & 3))
    if len(options) > 40:
        raise ValueError(f"{len(options)} bytes of TCP options: at most 40 fit in a header")
    doff = TCP_HLEN + len(options)
    seg = _HDR.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (doff >> 2) << 4, flags,
                    window, 0, urg_ptr) + options + bytes(payload)
    c = ~fold(ones_sum(src + dst) + 6 + len(seg) + ones_sum(seg)) & 0xFFFF
    return seg[:16] + c.to_bytes(2, "big") + seg[18:]
