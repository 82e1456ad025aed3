"""SCSI commands a direct-access block device answers: CDBs, parameter data and sense data.

Sources: SPC-4 (INQUIRY 6.6 with VPD pages 0x00/0x80/0x83 in 7.8, REPORT LUNS 6.33, MODE SENSE
6.13/6.14 with the Caching mode page 7.5.x, TEST UNIT READY 6.37, fixed-format sense data 4.5.3),
SBC-3 (READ/WRITE(10/16) 5.11-5.28 with the FUA bit, READ CAPACITY(10/16) 5.15-5.16, SYNCHRONIZE
CACHE(10/16) 5.22-5.23). Opcode names are Linux's (``include/scsi/scsi_proto.h``: ``READ_10``,
``WRITE_16``, ``SYNCHRONIZE_CACHE``, ``SERVICE_ACTION_IN_16``); status, sense key and ASC/ASCQ
names are SPC's.

Invariant owned here: ``decode_cdb`` returns a ``Cdb`` only for a CDB at least as long as its
opcode's group needs and raises ``ScsiError`` carrying the sense (ILLEGAL REQUEST with the ASC/ASCQ
a device reports) otherwise, so a target can turn any decode failure into CHECK CONDITION.
Sans-I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# -- opcodes (Linux include/scsi/scsi_proto.h) ----------------------------------------------------
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
INQUIRY = 0x12
MODE_SELECT = 0x15
MODE_SENSE = 0x1A
START_STOP = 0x1B
ALLOW_MEDIUM_REMOVAL = 0x1E
READ_CAPACITY = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
VERIFY = 0x2F
SYNCHRONIZE_CACHE = 0x35
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
WRITE_16 = 0x8A
SYNCHRONIZE_CACHE_16 = 0x91
SERVICE_ACTION_IN_16 = 0x9E
SAI_READ_CAPACITY_16 = 0x10
REPORT_LUNS = 0xA0
OPCODE_NAMES = {
    TEST_UNIT_READY: "TEST_UNIT_READY", REQUEST_SENSE: "REQUEST_SENSE", INQUIRY: "INQUIRY",
    MODE_SELECT: "MODE_SELECT", MODE_SENSE: "MODE_SENSE", START_STOP: "START_STOP",
    ALLOW_MEDIUM_REMOVAL: "ALLOW_MEDIUM_REMOVAL", READ_CAPACITY: "READ_CAPACITY", READ_10: "READ_10",
    WRITE_10: "WRITE_10", VERIFY: "VERIFY", SYNCHRONIZE_CACHE: "SYNCHRONIZE_CACHE",
    MODE_SENSE_10: "MODE_SENSE_10", READ_16: "READ_16", WRITE_16: "WRITE_16",
    SYNCHRONIZE_CACHE_16: "SYNCHRONIZE_CACHE_16", SERVICE_ACTION_IN_16: "SERVICE_ACTION_IN_16",
    REPORT_LUNS: "REPORT_LUNS",
}

# -- status (SAM-5) -------------------------------------------------------------------------------
GOOD = 0x00
CHECK_CONDITION = 0x02
BUSY = 0x08
RESERVATION_CONFLICT = 0x18
TASK_SET_FULL = 0x28
STATUS_NAMES = {0x00: "GOOD", 0x02: "CHECK_CONDITION", 0x08: "BUSY", 0x18: "RESERVATION_CONFLICT",
                0x28: "TASK_SET_FULL"}

# -- sense keys and (ASC, ASCQ) (SPC-4 4.5.6, Annex D) ----------------------------------------------
NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
ABORTED_COMMAND = 0xB
SENSE_KEY_NAMES = {0: "NO_SENSE", 1: "RECOVERED_ERROR", 2: "NOT_READY", 3: "MEDIUM_ERROR", 4: "HARDWARE_ERROR",
                   5: "ILLEGAL_REQUEST", 6: "UNIT_ATTENTION", 7: "DATA_PROTECT", 0xB: "ABORTED_COMMAND"}
ASC_WRITE_ERROR = (0x0C, 0x00)
ASC_UNRECOVERED_READ_ERROR = (0x11, 0x00)
ASC_PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
ASC_INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00)
ASC_LBA_OUT_OF_RANGE = (0x21, 0x00)
ASC_INVALID_FIELD_IN_CDB = (0x24, 0x00)
ASC_LOGICAL_UNIT_NOT_SUPPORTED = (0x25, 0x00)
ASC_SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
ASC_POWER_ON_RESET = (0x29, 0x00)
ASC_PROTOCOL_SERVICE_CRC_ERROR = (0x47, 0x05)
ASC_COMMAND_PHASE_ERROR = (0x4A, 0x00)
ASC_DATA_PHASE_ERROR = (0x4B, 0x00)
ASC_NAMES = {
    ASC_WRITE_ERROR: "WRITE_ERROR", ASC_UNRECOVERED_READ_ERROR: "UNRECOVERED_READ_ERROR",
    ASC_PARAMETER_LIST_LENGTH_ERROR: "PARAMETER_LIST_LENGTH_ERROR",
    ASC_INVALID_COMMAND_OPERATION_CODE: "INVALID_COMMAND_OPERATION_CODE",
    ASC_LBA_OUT_OF_RANGE: "LBA_OUT_OF_RANGE", ASC_INVALID_FIELD_IN_CDB: "INVALID_FIELD_IN_CDB",
    ASC_LOGICAL_UNIT_NOT_SUPPORTED: "LOGICAL_UNIT_NOT_SUPPORTED",
    ASC_SAVING_PARAMETERS_NOT_SUPPORTED: "SAVING_PARAMETERS_NOT_SUPPORTED",
    ASC_PROTOCOL_SERVICE_CRC_ERROR: "PROTOCOL_SERVICE_CRC_ERROR", ASC_POWER_ON_RESET: "POWER_ON_RESET",
    ASC_COMMAND_PHASE_ERROR: "COMMAND_PHASE_ERROR", ASC_DATA_PHASE_ERROR: "DATA_PHASE_ERROR",
}

CDB_FUA = 0x08          # READ/WRITE(10/16) byte 1 bit 3: Force Unit Access
CDB_DPO = 0x10


class ScsiError(Exception):
    """A command ends in CHECK CONDITION with this sense key and ASC/ASCQ."""

    def __init__(self, key: int, asc: tuple[int, int], msg: str = ""):
        super().__init__(msg or f"{SENSE_KEY_NAMES.get(key, key)} {ASC_NAMES.get(asc, asc)}")
        self.key = key
        self.asc = asc


def fixed_sense(key: int, asc: tuple[int, int], info: int | None = None) -> bytes:
    """Fixed-format sense data (SPC-4 4.5.3), 18 bytes, current error (response code 0x70)."""
    b = bytearray(18)
    b[0] = 0x70 | (0x80 if info is not None else 0)
    b[2] = key & 0x0F
    if info is not None:
        b[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    b[7] = 10
    b[12], b[13] = asc
    return bytes(b)


def decode_sense(data: bytes) -> tuple[int, tuple[int, int]]:
    """Fixed (0x70/0x71) or descriptor (0x72/0x73) sense -> (sense key, (ASC, ASCQ))."""
    if len(data) < 3:
        raise ValueError(f"sense data of {len(data)} bytes")
    code = data[0] & 0x7F
    if code in (0x70, 0x71):
        if len(data) < 14:
            return data[2] & 0x0F, (0, 0)
        return data[2] & 0x0F, (data[12], data[13])
    if code in (0x72, 0x73):
        return data[1] & 0x0F, (data[2], data[3]) if len(data) >= 4 else (0, 0)
    raise ValueError(f"sense response code {code:#x}")


@dataclass(slots=True)
class Cdb:
    opcode: int
    name: str
    lba: int = 0
    blocks: int = 0                 # transfer length in logical blocks (READ/WRITE/SYNC)
    allocation_length: int = 0      # INQUIRY, MODE SENSE, REPORT LUNS, READ CAPACITY(16)
    fua: bool = False
    evpd: bool = False
    page: int = 0                   # VPD page (INQUIRY) or mode page code (MODE SENSE)
    service_action: int = 0
    control: int = 0
    flags: int = 0                  # byte 1 as sent


_CDB_LEN = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}  # by group code (opcode >> 5)


def cdb_length(opcode: int) -> int:
    return _CDB_LEN.get(opcode >> 5, 16)


def decode_cdb(cdb: bytes) -> Cdb:
    """A CDB (16 bytes as carried by iSCSI, or its own length) -> ``Cdb``; unknown opcodes raise
    ``ScsiError(ILLEGAL_REQUEST, INVALID COMMAND OPERATION CODE)``."""
    if not cdb:
        raise ScsiError(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, "empty CDB")
    op = cdb[0]
    name = OPCODE_NAMES.get(op)
    if name is None:
        raise ScsiError(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, f"opcode {op:#04x}")
    if len(cdb) < cdb_length(op):
        raise ScsiError(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, f"{name} CDB of {len(cdb)} bytes")
    c = Cdb(op, name, flags=cdb[1])
    if op in (READ_10, WRITE_10, VERIFY):
        c.lba, c.blocks = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
        c.fua, c.control = bool(cdb[1] & CDB_FUA), cdb[9]
    elif op in (READ_16, WRITE_16):
        c.lba, c.blocks = struct.unpack_from(">QI", cdb, 2)
        c.fua, c.control = bool(cdb[1] & CDB_FUA), cdb[15]
    elif op == SYNCHRONIZE_CACHE:
        c.lba, c.blocks = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
    elif op == SYNCHRONIZE_CACHE_16:
        c.lba, c.blocks = struct.unpack_from(">QI", cdb, 2)
    elif op == INQUIRY:
        c.evpd, c.page = bool(cdb[1] & 1), cdb[2]
        c.allocation_length = struct.unpack_from(">H", cdb, 3)[0]
    elif op in (MODE_SENSE, MODE_SENSE_10):
        c.page = cdb[2]  # PC (bits 7-6) and page code (bits 5-0)
        c.allocation_length = cdb[4] if op == MODE_SENSE else struct.unpack_from(">H", cdb, 7)[0]
    elif op == REQUEST_SENSE:
        c.allocation_length = cdb[4]
    elif op == READ_CAPACITY:
        c.lba = struct.unpack_from(">I", cdb, 2)[0]
    elif op == SERVICE_ACTION_IN_16:
        c.service_action = cdb[1] & 0x1F
        c.lba = struct.unpack_from(">Q", cdb, 2)[0]
        c.allocation_length = struct.unpack_from(">I", cdb, 10)[0]
    elif op == REPORT_LUNS:
        c.allocation_length = struct.unpack_from(">I", cdb, 6)[0]
    return c


# -- CDB builders (initiator side) ----------------------------------------------------------------
def cdb_rw(write: bool, lba: int, blocks: int, fua: bool = False, sixteen: bool | None = None) -> bytes:
    """READ/WRITE(10) when LBA and length fit, else (or when ``sixteen``) READ/WRITE(16)."""
    if sixteen is None:
        sixteen = lba > 0xFFFFFFFF or blocks > 0xFFFF
    flags = CDB_FUA if fua else 0
    if sixteen:
        return struct.pack(">BBQIBB", WRITE_16 if write else READ_16, flags, lba, blocks, 0, 0)
    return struct.pack(">BBIBHB", WRITE_10 if write else READ_10, flags, lba, 0, blocks, 0)


def cdb_inquiry(allocation_length: int = 255, vpd_page: int | None = None) -> bytes:
    evpd = vpd_page is not None
    return struct.pack(">BBBHB", INQUIRY, 1 if evpd else 0, vpd_page or 0, allocation_length, 0)


def cdb_read_capacity_16(allocation_length: int = 32) -> bytes:
    return struct.pack(">BBQIBB", SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16, 0, allocation_length, 0, 0)


def cdb_read_capacity_10() -> bytes:
    return struct.pack(">BB8x", READ_CAPACITY, 0)


def cdb_sync_cache(sixteen: bool = False) -> bytes:
    if sixteen:
        return struct.pack(">BBQIBB", SYNCHRONIZE_CACHE_16, 0, 0, 0, 0, 0)
    return struct.pack(">BBIBHB", SYNCHRONIZE_CACHE, 0, 0, 0, 0, 0)


def cdb_report_luns(allocation_length: int = 4096) -> bytes:
    return struct.pack(">BB4xIBB", REPORT_LUNS, 0, allocation_length, 0, 0)


def cdb_test_unit_ready() -> bytes:
    return bytes(6)


def cdb_mode_sense_6(page: int = 0x3F, allocation_length: int = 255) -> bytes:
    return struct.pack(">BBBBBB", MODE_SENSE, 0, page, 0, allocation_length, 0)


# -- parameter data ----------------------------------------------------------------------------------
VERSION_DESCRIPTORS = (0x0460, 0x04C0, 0x0960)  # SPC-4, SBC-3, iSCSI (SPC-4 table 150)


def inquiry_standard(vendor: str, product: str, revision: str) -> bytes:
    """Standard INQUIRY data, 96 bytes: direct-access device (0x00), SPC-4 (version 6), response
    data format 2, CmdQue (byte 7 bit 1) so Linux queues commands, and version descriptors
    (bytes 58-73) claiming SPC-4, SBC-3 and iSCSI."""
    b = bytearray(96)
    b[0] = 0x00
    b[2] = 0x06
    b[3] = 0x02
    b[4] = len(b) - 5
    for i, v in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", b, 58 + 2 * i, v)
    b[7] = 0x02
    b[8:16] = vendor.encode()[:8].ljust(8)
    b[16:32] = product.encode()[:16].ljust(16)
    b[32:36] = revision.encode()[:4].ljust(4)
    return bytes(b)


def vpd_page(page: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0x00, page, len(payload)) + payload


def vpd_supported(pages: list[int]) -> bytes:
    return vpd_page(0x00, bytes(sorted(pages)))


def vpd_unit_serial(serial: str) -> bytes:
    return vpd_page(0x80, serial.encode())


def vpd_device_identification(naa: bytes, name: str) -> bytes:
    """Page 0x83: an NAA designator (binary, 8 bytes, association LU) and a SCSI name string
    designator (UTF-8, association target device) -- what Linux's and libiscsi's tools show."""
    d1 = struct.pack(">BBBB", 0x01, 0x03, 0x00, len(naa)) + naa
    nb = name.encode() + b"\0"
    nb += bytes(pad4_len(len(nb)))
    d2 = struct.pack(">BBBB", 0x53, 0xA8, 0x00, len(nb)) + nb
    return vpd_page(0x83, d1 + d2)


def vpd_block_limits(max_transfer_blocks: int, optimal_transfer_blocks: int, granularity_blocks: int = 1) -> bytes:
    """Page 0xB0 (SBC-3 6.5.3), page length 0x3C: transfer limits; no UNMAP, no WRITE SAME."""
    body = bytearray(60)
    struct.pack_into(">HII", body, 2, granularity_blocks, max_transfer_blocks, optimal_transfer_blocks)
    return vpd_page(0xB0, bytes(body))


def vpd_block_device_characteristics(rotation_rate: int = 1) -> bytes:
    """Page 0xB1 (SBC-3 6.5.2), page length 0x3C; medium rotation rate 1 = non-rotating medium."""
    body = bytearray(60)
    struct.pack_into(">H", body, 0, rotation_rate)
    return vpd_page(0xB1, bytes(body))


def pad4_len(n: int) -> int:
    return (-n) & 3


def read_capacity_10(blocks: int, block_bytes: int) -> bytes:
    """Returned LBA is the last block, or 0xFFFFFFFF when it does not fit (use READ CAPACITY(16))."""
    last = blocks - 1
    return struct.pack(">II", last if last < 0xFFFFFFFF else 0xFFFFFFFF, block_bytes)


def read_capacity_16(blocks: int, block_bytes: int) -> bytes:
    return struct.pack(">QI", blocks - 1, block_bytes) + bytes(20)


def decode_read_capacity_16(data: bytes) -> tuple[int, int]:
    """-> (number of blocks, block bytes)."""
    last, bl = struct.unpack_from(">QI", data)
    return last + 1, bl


def decode_read_capacity_10(data: bytes) -> tuple[int, int]:
    last, bl = struct.unpack_from(">II", data)
    return last + 1, bl


def report_luns(luns: list[int]) -> bytes:
    """Single-level LUN addressing (peripheral device method, SAM-5 4.7.7) for LUNs < 256."""
    body = b"".join(encode_lun(lun) for lun in luns)
    return struct.pack(">I4x", len(body)) + body


def encode_lun(lun: int) -> bytes:
    """LUN < 256: peripheral device addressing; else flat space addressing (SAM-5 4.7)."""
    if lun < 256:
        return struct.pack(">BB6x", 0, lun)
    return struct.pack(">H6x", 0x4000 | (lun & 0x3FFF))


def decode_lun(lun8: int) -> int:
    """An iSCSI 8-byte LUN field -> LUN number (peripheral or flat addressing)."""
    first = lun8 >> 48
    method = first >> 14
    if method in (0, 1):
        return first & 0x3FFF if method == 1 else first & 0xFF
    return -1


def caching_mode_page(write_cache: bool) -> bytes:
    """Caching mode page (0x08), 20 bytes; WCE (byte 2 bit 2) says writes are cached until
    SYNCHRONIZE CACHE, which is what makes Linux's sd send FLUSH as SYNCHRONIZE CACHE."""
    b = bytearray(20)
    b[0], b[1] = 0x08, 18
    b[2] = 0x04 if write_cache else 0
    return bytes(b)


def control_mode_page() -> bytes:
    b = bytearray(12)
    b[0], b[1] = 0x0A, 10
    return bytes(b)


def mode_sense_6(pages: bytes, dpofua: bool) -> bytes:
    """MODE SENSE(6) header (mode data length, medium type, device-specific (DPOFUA bit 4), block
    descriptor length 0) + pages."""
    return struct.pack(">BBBB", 3 + len(pages), 0, 0x10 if dpofua else 0, 0) + pages


def mode_sense_10(pages: bytes, dpofua: bool) -> bytes:
    return struct.pack(">HBBxxH", 6 + len(pages), 0, 0x10 if dpofua else 0, 0) + pages
