"""ATA over Ethernet (AoE r11) frames and the ATA pieces AoE carries. Sans-I/O.

Sources: the AoE specification r11 (Hopkins & Coile, Feb 2009) sections 2-3; Linux
``drivers/block/aoe/aoe.h`` (``struct aoe_hdr``, ``aoe_atahdr``, ``aoe_cfghdr``); vblade
``dat.h``/``ata.c``; ATA8-ACS for IDENTIFY DEVICE words.

Frame layout (all multi-byte AoE fields big-endian; the LBA is little-endian, lba0 first)::

    0  dst[6] src[6] type=0x88A2
    14 ver:4 flags:4 (R=0x8 response, E=0x4 error) | error | major(shelf):16 | minor(slot) | command
    20 tag:32
    24 ATA (command 0): aflags (E=0x40 LBA48, D=0x10 device, A=0x02 async, W=0x01 write) |
          err/feature | sector count | cmd/status | lba0..lba5 | reserved:16 | data (count*512)
    24 Config (command 1): buffer count:16 | firmware:16 | sector count | aoe version:4 ccmd:4 |
          config string length:16 | config string (<= 1024 bytes)

Invariant owned here: ``decode`` returns only headers whose lengths are consistent with the
frame (an ATA header fits, a config string fits and is at most 1024 bytes); anything else raises
``AoeError`` whose ``reason`` is the drop-counter suffix the caller counts. Sizes follow Linux and
vblade, which count the 14-byte Ethernet header against the MTU: an ATA frame carries
``(mtu - 36) // 512`` sectors (2 on a 1500-byte MTU, 17 on 9000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_P_AOE = 0x88A2
AOE_HVER = 0x10                 # version 1 in the high nibble (Linux AOE_HVER)
AOE_VERSION = 1

AOEFL_RSP = 0x08
AOEFL_ERR = 0x04

AOECMD_ATA = 0
AOECMD_CFG = 1
AOECMD_MASK = 2                 # MAC mask list (r11 3.3): answered "unrecognized" by nas-server
AOECMD_RESREL = 3               # reserve/release (r11 3.4): idem
COMMAND_NAMES = {AOECMD_ATA: "ata", AOECMD_CFG: "config", AOECMD_MASK: "mask", AOECMD_RESREL: "reserve"}

AOEAFL_EXT = 0x40
AOEAFL_DEV = 0x10
AOEAFL_ASYNC = 0x02
AOEAFL_WRITE = 0x01

AOECCMD_READ = 0
AOECCMD_TEST = 1
AOECCMD_PTEST = 2
AOECCMD_SET = 3
AOECCMD_FSET = 4

# AoE header error codes (r11 2.4).
AOEERR_BADCMD = 1               # unrecognized command code
AOEERR_BADARG = 2               # bad argument parameter
AOEERR_DEVUNAVAIL = 3           # device unavailable
AOEERR_CFG_SET = 4              # config string present
AOEERR_BADVER = 5               # unsupported version
AOEERR_RESERVED = 6             # target is reserved
ERROR_NAMES = {1: "BadCmd", 2: "BadArg", 3: "DevUnavailable", 4: "ConfigErr", 5: "BadVersion", 6: "Reserved"}

# ATA commands (<linux/ata.h> names) and status/error register bits.
ATA_CMD_PIO_READ = 0x20
ATA_CMD_PIO_READ_EXT = 0x24
ATA_CMD_PIO_WRITE = 0x30
ATA_CMD_PIO_WRITE_EXT = 0x34
ATA_CMD_FLUSH = 0xE7
ATA_CMD_FLUSH_EXT = 0xEA
ATA_CMD_ID_ATA = 0xEC
ATA_CMD_CHK_POWER = 0xE5
ATA_BUSY = 0x80
ATA_DRDY = 0x40
ATA_DF = 0x20
ATA_DRQ = 0x08
ATA_ERR = 0x01
ATA_STATUS_FAIL_MASK = 0xA9     # BSY|DF|DRQ|ERR: "these bits cleared on success" (aoecmd.c ktiocomplete)
ATA_IDNF = 0x10                 # error register: ID not found (LBA out of range)
ATA_ABORTED = 0x04              # error register: command aborted

SECTOR_BYTES = 512
ETH_HLEN = 14
ETH_ZLEN = 60                   # minimum frame without FCS: encoders pad to it, as a NIC would (a veth
                                # does not, and aoetools' aoeping/aoecfg ignore frames shorter than 60)
AOE_HDR_BYTES = 24              # Ethernet + AoE header (Linux sizeof(struct aoe_hdr))
ATA_HDR_BYTES = 12
CFG_HDR_BYTES = 8
ATA_FRAME_OVERHEAD = AOE_HDR_BYTES + ATA_HDR_BYTES   # 36: what Linux and vblade subtract from the MTU
MAX_CONFIG_BYTES = 1024         # r11 3.2: config string at most 1024 bytes
LBA48_MAX = (1 << 48) - 1
LBA28_MAX = 0x0FFFFFFF
BROADCAST_MAC = b"\xff" * 6
SHELF_BROADCAST = 0xFFFF
SLOT_BROADCAST = 0xFF

_HDR = struct.Struct("!6s6sHBBHBBI")      # dst src type verfl err major minor cmd tag
_ATA = struct.Struct("<BBBB6sH")          # aflags errfeat scnt cmdstat lba[6] res (lba decoded apart)
_CFG = struct.Struct("!HHBBH")            # bufcnt fwver scnt ver|ccmd cslen


class AoeError(ValueError):
    """A frame that does not parse. ``reason`` names the drop counter (``drop_<reason>``)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)
class AoeHeader:
    dst: bytes
    src: bytes
    ver: int
    flags: int
    error: int
    major: int
    minor: int
    cmd: int
    tag: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & AOEFL_RSP)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & AOEFL_ERR)


@dataclass(slots=True)
class AtaArg:
    aflags: int
    err_feature: int
    scnt: int
    cmd_status: int
    lba: int
    data: memoryview


@dataclass(slots=True)
class CfgArg:
    bufcnt: int
    fwver: int
    scnt: int
    aoever: int
    ccmd: int
    config: bytes


def sectors_per_frame(mtu: int) -> int:
    """Data sectors one ATA frame carries on this MTU (Linux aoecmd_cfg_rsp, vblade aoead)."""
    return max(0, (mtu - ATA_FRAME_OVERHEAD) // SECTOR_BYTES)


def decode_header(frame) -> AoeHeader:
    if len(frame) < AOE_HDR_BYTES:
        raise AoeError("runt", f"{len(frame)} bytes, an AoE header needs {AOE_HDR_BYTES}")
    dst, src, etype, verfl, err, major, minor, cmd, tag = _HDR.unpack_from(frame, 0)
    if etype != ETH_P_AOE:
        raise AoeError("not_aoe", f"EtherType {etype:#06x}")
    return AoeHeader(dst, src, verfl >> 4, verfl & 0x0F, err, major, minor, cmd, tag)


def decode_ata(frame) -> AtaArg:
    """The ATA argument of a frame whose header says command 0; ``data`` is everything after it."""
    if len(frame) < AOE_HDR_BYTES + ATA_HDR_BYTES:
        raise AoeError("ata_runt", f"{len(frame)} bytes, an ATA command needs {AOE_HDR_BYTES + ATA_HDR_BYTES}")
    aflags, errfeat, scnt, cmdstat, lba6, _res = _ATA.unpack_from(frame, AOE_HDR_BYTES)
    return AtaArg(aflags, errfeat, scnt, cmdstat, int.from_bytes(lba6, "little"),
                  memoryview(frame)[AOE_HDR_BYTES + ATA_HDR_BYTES:])


def decode_cfg(frame) -> CfgArg:
    if len(frame) < AOE_HDR_BYTES + CFG_HDR_BYTES:
        raise AoeError("cfg_runt", f"{len(frame)} bytes, a config command needs {AOE_HDR_BYTES + CFG_HDR_BYTES}")
    bufcnt, fwver, scnt, vc, cslen = _CFG.unpack_from(frame, AOE_HDR_BYTES)
    start = AOE_HDR_BYTES + CFG_HDR_BYTES
    if cslen > MAX_CONFIG_BYTES or start + cslen > len(frame):
        raise AoeError("cfg_len", f"config string length {cslen} with {len(frame) - start} bytes present (max {MAX_CONFIG_BYTES})")
    return CfgArg(bufcnt, fwver, scnt, vc >> 4, vc & 0x0F, bytes(frame[start:start + cslen]))


def _hdr(dst: bytes, src: bytes, flags: int, error: int, major: int, minor: int, cmd: int, tag: int) -> bytes:
    return _HDR.pack(dst, src, ETH_P_AOE, AOE_HVER | (flags & 0x0F), error, major, minor, cmd, tag)


def encode_ata(dst: bytes, src: bytes, major: int, minor: int, tag: int, *, aflags: int, cmd_status: int,
               lba: int = 0, scnt: int = 0, data: bytes | memoryview = b"", err_feature: int = 0,
               flags: int = 0, error: int = 0) -> bytes:
    """One ATA command (or, with ``flags=AOEFL_RSP``, its response); ``data`` follows the header."""
    return _pad(b"".join((_hdr(dst, src, flags, error, major, minor, AOECMD_ATA, tag),
                          _ATA.pack(aflags, err_feature, scnt, cmd_status, (lba & LBA48_MAX).to_bytes(6, "little"), 0),
                          data)))


def encode_cfg(dst: bytes, src: bytes, major: int, minor: int, tag: int, *, ccmd: int = AOECCMD_READ,
               config: bytes = b"", bufcnt: int = 0, fwver: int = 0, scnt: int = 0,
               flags: int = 0, error: int = 0) -> bytes:
    """A config query (r11 3.2) or, with ``flags=AOEFL_RSP``, its response."""
    if len(config) > MAX_CONFIG_BYTES:
        raise ValueError(f"config string of {len(config)} bytes; AoE allows at most {MAX_CONFIG_BYTES}")
    return _pad(b"".join((_hdr(dst, src, flags, error, major, minor, AOECMD_CFG, tag),
                          _CFG.pack(bufcnt, fwver, scnt, AOE_HVER | (ccmd & 0x0F), len(config)), config)))


def encode_error_reply(request, src: bytes, major: int, minor: int, error: int) -> bytes:
    """The request's own bytes turned into an error response (r11 2.4: as vblade's doaoe does)."""
    out = bytearray(request)
    out[0:6], out[6:12] = request[6:12], src
    out[14] = AOE_HVER | AOEFL_RSP | AOEFL_ERR
    out[15] = error
    struct.pack_into("!HB", out, 16, major, minor)
    return _pad(bytes(out))


def _pad(frame: bytes) -> bytes:
    return frame if len(frame) >= ETH_ZLEN else frame + bytes(ETH_ZLEN - len(frame))


# -- ATA IDENTIFY DEVICE (ATA8-ACS 7.16: a 512-byte block of 256 little-endian words) ----------
ID_SERIAL_WORDS = (10, 10)       # word 10, 10 words: 20 characters
ID_FIRMWARE_WORDS = (23, 4)
ID_MODEL_WORDS = (27, 20)
ID_W83_LBA48 = 1 << 10
ID_W83_FLUSH = 1 << 12
ID_W83_FLUSH_EXT = 1 << 13
ID_W82_WCACHE = 1 << 5           # word 82 supported / word 85 enabled: volatile write cache


@dataclass(slots=True)
class Identify:
    sectors: int                 # LBA48 words 100-103 when lba48, else LBA28 words 60-61
    lba48: bool
    serial: str
    firmware: str
    model: str
    flush: bool                  # FLUSH CACHE (0xE7) supported: word 83 bit 12
    flush_ext: bool              # FLUSH CACHE EXT (0xEA) supported: word 83 bit 13
    write_cache: bool            # volatile write cache enabled: word 85 bit 5


def _ata_string(text: str, nwords: int) -> bytes:
    raw = text.encode("ascii", "replace")[: 2 * nwords].ljust(2 * nwords, b" ")
    return bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))  # ATA strings swap each word


def build_identify(sectors: int, *, serial: str, model: str, firmware: str,
                   write_cache: bool = False) -> bytes:
    """An IDENTIFY DEVICE block for a ``sectors``-sector disk with LBA48 and FLUSH CACHE (EXT).

    ``write_cache`` says whether the device has an enabled volatile write cache (word 85 bit 5):
    when False, every acknowledged write is already durable and a flush only confirms it.
    Word 255 carries the integrity signature 0xA5 and checksum (ATA8-ACS 7.16.7.90)."""
    w = [0] * 256
    w[0] = 0x0040                                          # fixed device
    w[47] = 0x8000                                         # as vblade
    w[49] = 0x0200                                         # LBA supported
    w[50] = 0x4000
    w[60], w[61] = min(sectors, LBA28_MAX) & 0xFFFF, min(sectors, LBA28_MAX) >> 16
    w[80] = 0x01F0                                         # ATA/ATAPI-4..8
    w[82] = 0x4000 | (ID_W82_WCACHE if write_cache else 0)
    w[83] = 0x4000 | ID_W83_LBA48 | ID_W83_FLUSH | ID_W83_FLUSH_EXT
    w[84] = 0x4000
    w[85] = ID_W82_WCACHE if write_cache else 0
    w[86] = ID_W83_LBA48 | ID_W83_FLUSH | ID_W83_FLUSH_EXT
    w[87] = 0x4000
    for i in range(4):
        w[100 + i] = (sectors >> (16 * i)) & 0xFFFF
    block = bytearray(struct.pack("<256H", *w))
    for (start, n), text in ((ID_SERIAL_WORDS, serial), (ID_FIRMWARE_WORDS, firmware), (ID_MODEL_WORDS, model)):
        block[2 * start: 2 * (start + n)] = _ata_string(text, n)
    block[510] = 0xA5
    block[511] = (-sum(block[:511])) & 0xFF
    return bytes(block)


def parse_identify(block) -> Identify:
    """Read an IDENTIFY DEVICE block as Linux ``ataid_complete`` does (LBA48 if word 83|86 bit 10)."""
    if len(block) < 512:
        raise AoeError("identify_runt", f"{len(block)} bytes of identify data, need 512")
    block = bytes(block[:512])
    if block[510] == 0xA5 and sum(block) & 0xFF:
        raise AoeError("identify_checksum", f"word 255 checksum {block[511]:#04x} does not sum the block to 0")
    w = struct.unpack("<256H", block)
    lba48 = bool((w[83] | w[86]) & ID_W83_LBA48)
    sectors = (w[100] | w[101] << 16 | w[102] << 32 | w[103] << 48) if lba48 else (w[60] | w[61] << 16)

    def text(start: int, n: int) -> str:
        raw = block[2 * start: 2 * (start + n)]
        return bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i])).decode("ascii", "replace").strip()

    return Identify(sectors, lba48, text(*ID_SERIAL_WORDS), text(*ID_FIRMWARE_WORDS), text(*ID_MODEL_WORDS),
                    bool(w[83] & ID_W83_FLUSH), bool(w[83] & ID_W83_FLUSH_EXT), bool(w[85] & ID_W82_WCACHE))
