"""A SCSI direct-access logical unit (SBC-3) over one image of the NAS's store. Sans-I/O.

``ScsiDisk(image, serial)`` executes CDBs: ``execute(cdb, data_out, now) -> (status, data_in, sense)``.
``data_out_bytes(cdb)`` says how many bytes a command takes from the initiator (so the transport
asks for exactly that much before executing it).

Invariants owned here:
- The LU reports a volatile write cache (Caching mode page WCE=1) and DPOFUA=1, so initiators send
  FUA writes and SYNCHRONIZE CACHE as Linux's sd does: a WRITE without FUA is held in the
  server's memory (``Image.write(stable=False)``, lost on a crash, like an NFS UNSTABLE write);
  WRITE with FUA and SYNCHRONIZE CACHE make data durable before GOOD status.
- Every failure is CHECK CONDITION with fixed-format sense naming it (ILLEGAL REQUEST /
  LBA OUT OF RANGE, INVALID FIELD IN CDB, INVALID COMMAND OPERATION CODE, MEDIUM ERROR / WRITE
  ERROR); an image changes only through a WRITE whose whole range lies inside it.
"""

from __future__ import annotations

import zlib
from collections import Counter

from protocols import scsi

from .store import Image, StoreError

BLOCK_BYTES = 512
VENDOR = "NSDLOCK"
PRODUCT = "nas-server disk"
REVISION = "0001"
VPD_PAGES = [0x00, 0x80, 0x83, 0xB0, 0xB1]
MAX_TRANSFER_BLOCKS = (16 << 20) // BLOCK_BYTES   # iscsi_target.MAX_TRANSFER_BYTES
OPTIMAL_TRANSFER_BLOCKS = (1 << 20) // BLOCK_BYTES


class ScsiDisk:
    def __init__(self, image: Image, name: str, counters: Counter | None = None):
        self.image = image
        self.name = name          # SCSI name string (the target's IQN)
        self.serial = f"{zlib.crc32(name.encode()):08x}{image.fileid:08x}"
        self.counters = counters if counters is not None else Counter()

    @property
    def blocks(self) -> int:
        return self.image.size_bytes // BLOCK_BYTES

    def data_out_bytes(self, c: scsi.Cdb) -> int:
        if c.opcode in (scsi.WRITE_10, scsi.WRITE_16):
            return c.blocks * BLOCK_BYTES
        return 0

    def execute(self, cdb: bytes, data_out: bytes, now: float) -> tuple[int, bytes, bytes]:
        """-> (status, data for the initiator, sense data (empty unless CHECK CONDITION))."""
        try:
            c = scsi.decode_cdb(cdb)
            self.counters[c.name] += 1
            return scsi.GOOD, self._execute(c, data_out, now), b""
        except scsi.ScsiError as e:
            self.counters["CHECK_CONDITION"] += 1
            self.counters["sense_" + scsi.SENSE_KEY_NAMES.get(e.key, str(e.key))] += 1
            return scsi.CHECK_CONDITION, b"", scsi.fixed_sense(e.key, e.asc)

    def _range(self, c: scsi.Cdb) -> None:
        if c.opcode in (scsi.READ_10, scsi.READ_16, scsi.WRITE_10, scsi.WRITE_16) and c.flags & 0xE0:
            # RDPROTECT/WRPROTECT without protection information (SBC-3 5.11 table 34)
            raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB,
                                 f"{c.name} RDPROTECT/WRPROTECT {c.flags >> 5} on a LU without protection information")
        if c.lba + c.blocks > self.blocks:
            raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_LBA_OUT_OF_RANGE,
                                 f"{c.name} LBA {c.lba} + {c.blocks} blocks > {self.blocks}")

    def _execute(self, c: scsi.Cdb, data_out: bytes, now: float) -> bytes:
        op = c.opcode
        img = self.image
        if op in (scsi.READ_10, scsi.READ_16):
            self._range(c)
            try:
                data = img.read(c.lba * BLOCK_BYTES, c.blocks * BLOCK_BYTES)
            except OSError:
                raise scsi.ScsiError(scsi.MEDIUM_ERROR, scsi.ASC_UNRECOVERED_READ_ERROR) from None
            self.counters[c.name + "_bytes"] += len(data)
            return data
        if op in (scsi.WRITE_10, scsi.WRITE_16):
            self._range(c)
            if len(data_out) != c.blocks * BLOCK_BYTES:
                raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB,
                                     f"{len(data_out)} bytes of data for {c.blocks} blocks")
            if c.blocks:
                try:
                    img.write(c.lba * BLOCK_BYTES, data_out, c.fua, now)
                except (OSError, StoreError):
                    raise scsi.ScsiError(scsi.MEDIUM_ERROR, scsi.ASC_WRITE_ERROR) from None
            self.counters[c.name + "_bytes"] += len(data_out)
            if c.fua:
                self.counters[c.name + "_FUA"] += 1
            return b""
        if op in (scsi.SYNCHRONIZE_CACHE, scsi.SYNCHRONIZE_CACHE_16):
            self._range(c)
            self.counters["SYNCHRONIZE_CACHE_bytes"] += img.pending_bytes
            try:
                img.commit()
            except OSError:
                raise scsi.ScsiError(scsi.MEDIUM_ERROR, scsi.ASC_WRITE_ERROR) from None
            return b""
        if op == scsi.TEST_UNIT_READY:
            return b""
        if op == scsi.INQUIRY:
            if not c.evpd:
                if c.page:
                    raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB, "page code without EVPD")
                data = scsi.inquiry_standard(VENDOR, PRODUCT, REVISION)
            elif c.page == 0x00:
                data = scsi.vpd_supported(VPD_PAGES)
            elif c.page == 0x80:
                data = scsi.vpd_unit_serial(self.serial)
            elif c.page == 0x83:
                naa = bytes.fromhex("6" + "001405" + self.serial[:9])[:8]  # NAA 6, IEEE OUI-style prefix
                data = scsi.vpd_device_identification(naa, self.name)
            elif c.page == 0xB0:
                data = scsi.vpd_block_limits(MAX_TRANSFER_BLOCKS, OPTIMAL_TRANSFER_BLOCKS, 8)
            elif c.page == 0xB1:
                data = scsi.vpd_block_device_characteristics()
            else:
                raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB, f"VPD page {c.page:#x}")
            return data[: c.allocation_length]
        if op == scsi.READ_CAPACITY:
            return scsi.read_capacity_10(self.blocks, BLOCK_BYTES)
        if op == scsi.SERVICE_ACTION_IN_16:
            if c.service_action != scsi.SAI_READ_CAPACITY_16:
                raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB,
                                     f"SERVICE ACTION IN(16) action {c.service_action:#x}")
            return scsi.read_capacity_16(self.blocks, BLOCK_BYTES)[: c.allocation_length]
        if op in (scsi.MODE_SENSE, scsi.MODE_SENSE_10):
            pc, page = c.page >> 6, c.page & 0x3F
            if pc == 3:
                raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_SAVING_PARAMETERS_NOT_SUPPORTED)
            pages = {0x08: scsi.caching_mode_page(pc != 1), 0x0A: scsi.control_mode_page()}
            if page == 0x3F:
                body = b"".join(pages.values())
            elif page in pages:
                body = pages[page]
            else:
                raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_FIELD_IN_CDB, f"mode page {page:#x}")
            data = scsi.mode_sense_6(body, True) if op == scsi.MODE_SENSE else scsi.mode_sense_10(body, True)
            return data[: c.allocation_length]
        if op == scsi.REPORT_LUNS:
            return scsi.report_luns([0])[: c.allocation_length]
        if op == scsi.REQUEST_SENSE:
            return scsi.fixed_sense(scsi.NO_SENSE, (0, 0))[: c.allocation_length]
        if op in (scsi.START_STOP, scsi.ALLOW_MEDIUM_REMOVAL, scsi.VERIFY):
            return b""
        raise scsi.ScsiError(scsi.ILLEGAL_REQUEST, scsi.ASC_INVALID_COMMAND_OPERATION_CODE, c.name)
