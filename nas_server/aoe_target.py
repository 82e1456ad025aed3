"""The NAS as an AoE target: one AoE frame in, zero or more timed reply frames out. Sans-I/O.

``AoeTarget.handle(frame, now)`` answers AoE r11 config queries and ATA commands (IDENTIFY DEVICE,
READ/WRITE SECTORS (EXT), FLUSH CACHE (EXT), CHECK POWER MODE) for fixed-size images of the same
``Store`` the NFS core serves, each image at one shelf.slot address. Replies are returned as
``(send_at, frame)``: ``send_at = now + service_time_s``, the stated service time of every request
(the appliance's disk), which the driver honours with a timer heap, as nas-server does for NFS.

Invariants owned here:
- Every frame handed in ends in exactly one disposition, counted in ``dispositions`` (a reply
  reason, an ignore reason or a ``drop_<reason>``): ``sum(dispositions.values()) == frames_in``.
  No input raises, and no malformed frame writes a byte: a write is executed only when its
  header, flags, sector count, LBA range and payload length are all consistent.
- Writes are write-through by default (``write_cache=False``): the data is ``fdatasync``ed before
  the reply, so an acknowledged sector survives SIGKILL; IDENTIFY says "no volatile write cache"
  and FLUSH CACHE (EXT) only confirms. With ``write_cache=True`` writes stay in the store's
  pending data until FLUSH, a restart loses them, and -- AoE having no write verifier -- the
  initiator cannot tell (the reason nas-server defaults to write-through).
- At most ``bufcnt`` requests are in service at once (the buffer count the config reply
  advertises, r11 3.2); a request beyond it is dropped as ``drop_bufcnt_full`` and the initiator
  retransmits, as with a real target whose buffers are full.

Choices that differ from vblade 25 (the reference target), each counted:
- ATA commands to the broadcast shelf/slot are dropped (``drop_ata_broadcast``); vblade executes
  them. Config queries to broadcast addresses are answered, as r11 says.
- A read/write whose W flag contradicts its command code answers BadArg; vblade ignores W.
- MAC mask list and reserve/release (r11 3.3, 3.4) answer "unrecognized command" (BadCmd).
- A header version other than 1 answers BadVersion (r11 2.4).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from protocols import aoe
from .store import Image

FIRMWARE_VERSION = 0x0100       # nas-server's AoE firmware word (vblade 25 says 0x4019)
DEFAULT_BUFCNT = 16             # vblade's Bufcount: requests a target queues before dropping
SERIAL_PREFIX = "NAS"


@dataclass
class AoeDisk:
    """One image served at ``shelf.slot``; ``config`` is its r11 config string (lost on restart)."""
    shelf: int
    slot: int
    image: Image
    label: str
    config: bytes = b""
    identify: bytes = b""
    counters: Counter = field(default_factory=Counter)

    @property
    def sectors(self) -> int:
        return self.image.size_bytes // aoe.SECTOR_BYTES


class AoeTarget:
    def __init__(self, mac: bytes, mtu: int, *, bufcnt: int = DEFAULT_BUFCNT, service_time_s: float = 0.0,
                 write_cache: bool = False, log: Callable[[str], None] | None = None):
        if len(mac) != 6:
            raise ValueError(f"MAC address of {len(mac)} bytes; expected 6")
        self.mac = bytes(mac)
        self.mtu = mtu
        self.maxscnt = aoe.sectors_per_frame(mtu)
        if self.maxscnt < 1:
            raise ValueError(f"MTU {mtu} carries no 512-byte sector in an AoE frame (needs >= {aoe.ATA_FRAME_OVERHEAD + 512})")
        self.maxscnt = min(self.maxscnt, 255)
        self.bufcnt = bufcnt
        self.service_time_s = service_time_s
        self.write_cache = write_cache
        self.log = log
        self.disks: dict[tuple[int, int], AoeDisk] = {}
        self.frames_in = 0
        self.dispositions: Counter = Counter()
        self.last_disposition = ""           # of the last frame handled (for logs and tests)
        self.counters: Counter = Counter()
        self._in_service: list[float] = []   # send_at of replies not yet due (bounded by bufcnt)

    # -- configuration -------------------------------------------------------------------------
    def add_disk(self, shelf: int, slot: int, image: Image, label: str) -> AoeDisk:
        if not 0 <= shelf < aoe.SHELF_BROADCAST or not 0 <= slot < aoe.SLOT_BROADCAST:
            raise ValueError(f"AoE address {shelf}.{slot}: shelf must be 0..65534 and slot 0..254 (the top values are broadcast)")
        if (shelf, slot) in self.disks:
            raise ValueError(f"AoE address {shelf}.{slot} is already {self.disks[(shelf, slot)].label}")
        if image.size_bytes % aoe.SECTOR_BYTES:
            raise ValueError(f"image {label} has {image.size_bytes} bytes, not a whole number of 512-byte sectors")
        d = AoeDisk(shelf, slot, image, label)
        d.identify = aoe.build_identify(d.sectors, serial=f"{SERIAL_PREFIX}{shelf}.{slot}", model="nas-server AoE target",
                                        firmware=f"{FIRMWARE_VERSION:04x}", write_cache=self.write_cache)
        self.disks[(shelf, slot)] = d
        return d

    def restart(self) -> None:
        """What a process restart does to this core: config strings and requests in service are lost.
        (Unflushed write-cache data is the store's to lose: ``MemoryStore.crash``.)"""
        for d in self.disks.values():
            d.config = b""
        self._in_service.clear()

    def advertise(self, now: float) -> list[tuple[float, bytes]]:
        """Unsolicited broadcast config responses, one per disk, sent at start (vblade ``aoead``)."""
        return [(now, aoe.encode_cfg(aoe.BROADCAST_MAC, self.mac, d.shelf, d.slot, 0, config=d.config,
                                     bufcnt=self.bufcnt, fwver=FIRMWARE_VERSION, scnt=self.maxscnt,
                                     flags=aoe.AOEFL_RSP)) for d in self.disks.values()]

    # -- input ---------------------------------------------------------------------------------
    def handle(self, frame, now: float) -> list[tuple[float, bytes]]:
        """Answer one frame received at ``now`` (seconds). Returns ``[(send_at, reply_frame)]``."""
        self.frames_in += 1
        try:
            return self._handle(frame, now)
        except Exception as e:  # a bug must not take the server down, nor leave the frame uncounted
            self._done("internal_error")
            self._log(f"internal error {type(e).__name__}: {e}")
            return []

    def snapshot(self) -> dict:
        return {
            "mac": ":".join(f"{b:02x}" for b in self.mac), "mtu": self.mtu, "sectors_per_frame": self.maxscnt,
            "bufcnt": self.bufcnt, "service_time_ms": self.service_time_s * 1e3, "write_cache": self.write_cache,
            "frames_in": self.frames_in, "in_service": len(self._in_service),
            "dispositions": dict(self.dispositions), "counters": dict(self.counters),
            "disks": {f"e{d.shelf}.{d.slot}": {"image": d.label, "sectors": d.sectors, "config": d.config.decode("latin-1"),
                                               **dict(d.counters)} for d in self.disks.values()},
        }

    # -- internals -----------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.log is not None:
            self.log("aoe: " + text)

    def _done(self, how: str) -> list:
        self.dispositions[how] += 1
        self.last_disposition = how
        return []

    def _reply(self, how: str, frame: bytes, now: float) -> list[tuple[float, bytes]]:
        self.dispositions[how] += 1
        self.last_disposition = how
        at = now + self.service_time_s
        if self.service_time_s > 0:
            heapq.heappush(self._in_service, at)
        return [(at, frame)]

    def _handle(self, frame, now: float) -> list[tuple[float, bytes]]:
        try:
            h = aoe.decode_header(frame)
        except aoe.AoeError as e:
            return self._done("drop_" + e.reason)
        if h.dst != self.mac and h.dst != aoe.BROADCAST_MAC:
            return self._done("ignored_other_host")
        if h.is_response:
            return self._done("ignored_response")    # another target's reply (or our own, looped)
        if h.major == aoe.SHELF_BROADCAST or h.minor == aoe.SLOT_BROADCAST:
            targets = [d for d in self.disks.values()
                       if h.major in (aoe.SHELF_BROADCAST, d.shelf) and h.minor in (aoe.SLOT_BROADCAST, d.slot)]
        else:
            d = self.disks.get((h.major, h.minor))
            targets = [d] if d is not None else []
        if not targets:
            return self._done("ignored_not_addressed")
        q = self._in_service
        while q and q[0] <= now:
            heapq.heappop(q)
        if len(q) >= self.bufcnt:
            return self._done("drop_bufcnt_full")
        if h.ver != aoe.AOE_VERSION:
            return self._error(frame, targets[0], aoe.AOEERR_BADVER, "bad_version", now)
        if h.cmd == aoe.AOECMD_CFG:
            try:
                c = aoe.decode_cfg(frame)
            except aoe.AoeError as e:
                return self._done("drop_" + e.reason)
            replies = [r for d in targets for r in self._config(h, c, d)]
            if not replies:
                return self._done("cfg_no_match")
            how = "cfg_reply" if all(not (r[14] & aoe.AOEFL_ERR) for r in replies) else "error_cfg"
            out = self._reply(how, replies[0], now)
            return out + [(out[0][0], r) for r in replies[1:]]   # one request in service, however many disks answer
        if h.cmd != aoe.AOECMD_ATA:
            return self._error(frame, targets[0], aoe.AOEERR_BADCMD, f"cmd_{aoe.COMMAND_NAMES.get(h.cmd, 'unknown')}", now)
        if len(targets) != 1 or h.major == aoe.SHELF_BROADCAST or h.minor == aoe.SLOT_BROADCAST:
            return self._done("drop_ata_broadcast")
        try:
            a = aoe.decode_ata(frame)
        except aoe.AoeError as e:
            return self._done("drop_" + e.reason)
        return self._ata(h, a, frame, targets[0], now)

    def _error(self, frame, d: AoeDisk, error: int, why: str, now: float) -> list[tuple[float, bytes]]:
        d.counters["aoe_errors"] += 1
        self.counters[f"err_{aoe.ERROR_NAMES[error]}"] += 1
        n = {aoe.AOECMD_ATA: aoe.AOE_HDR_BYTES + aoe.ATA_HDR_BYTES, aoe.AOECMD_CFG: aoe.AOE_HDR_BYTES + aoe.CFG_HDR_BYTES}
        head = bytes(frame[: min(len(frame), n.get(frame[19], aoe.AOE_HDR_BYTES))])
        return self._reply("error_" + why, aoe.encode_error_reply(head, self.mac, d.shelf, d.slot, error), now)

    def _config(self, h: aoe.AoeHeader, c: aoe.CfgArg, d: AoeDisk) -> list[bytes]:
        """r11 3.2, as vblade ``confcmd``: test/prefix queries that do not match get no reply."""
        cur = d.config
        flags, error = aoe.AOEFL_RSP, 0
        if c.ccmd == aoe.AOECCMD_TEST and c.config != cur:
            return []
        if c.ccmd == aoe.AOECCMD_PTEST and not cur.startswith(c.config):
            return []
        if c.ccmd == aoe.AOECCMD_SET:
            if cur and cur != c.config:
                flags, error = flags | aoe.AOEFL_ERR, aoe.AOEERR_CFG_SET
            else:
                d.config = c.config
        elif c.ccmd == aoe.AOECCMD_FSET:
            d.config = c.config
        elif c.ccmd not in (aoe.AOECCMD_READ, aoe.AOECCMD_TEST, aoe.AOECCMD_PTEST):
            flags, error = flags | aoe.AOEFL_ERR, aoe.AOEERR_BADARG
        d.counters[f"cfg_{c.ccmd}"] += 1
        return [aoe.encode_cfg(h.src, self.mac, d.shelf, d.slot, h.tag, ccmd=c.ccmd, config=d.config,
                               bufcnt=self.bufcnt, fwver=FIRMWARE_VERSION, scnt=self.maxscnt, flags=flags, error=error)]

    def _ata(self, h: aoe.AoeHeader, a: aoe.AtaArg, frame, d: AoeDisk, now: float) -> list[tuple[float, bytes]]:
        cmd = a.cmd_status
        status, err, scnt, lba, data = aoe.ATA_DRDY, 0, a.scnt, a.lba, b""
        if cmd in (aoe.ATA_CMD_PIO_READ, aoe.ATA_CMD_PIO_READ_EXT, aoe.ATA_CMD_PIO_WRITE, aoe.ATA_CMD_PIO_WRITE_EXT):
            write = cmd in (aoe.ATA_CMD_PIO_WRITE, aoe.ATA_CMD_PIO_WRITE_EXT)
            if cmd in (aoe.ATA_CMD_PIO_READ, aoe.ATA_CMD_PIO_WRITE):
                lba &= aoe.LBA28_MAX
            if bool(a.aflags & aoe.AOEAFL_WRITE) != write:
                return self._error(frame, d, aoe.AOEERR_BADARG, "write_flag", now)
            if scnt == 0 or scnt > self.maxscnt:
                return self._error(frame, d, aoe.AOEERR_BADARG, "sector_count", now)
            nbytes = scnt * aoe.SECTOR_BYTES
            if write and len(a.data) < nbytes:
                return self._error(frame, d, aoe.AOEERR_BADARG, "short_write", now)
            if lba + scnt > d.sectors:
                status, err = aoe.ATA_DRDY | aoe.ATA_ERR, aoe.ATA_IDNF
                d.counters["ata_idnf"] += 1
                how = "ata_idnf"
            else:
                try:
                    if write:
                        d.image.write(lba * aoe.SECTOR_BYTES, a.data[:nbytes], not self.write_cache, now)
                        d.counters["write_sectors"] += scnt
                        how = "ata_write"
                    else:
                        data = d.image.read(lba * aoe.SECTOR_BYTES, nbytes)
                        d.counters["read_sectors"] += scnt
                        how = "ata_read"
                    scnt, lba = 0, lba + scnt
                except OSError as e:
                    status, err = aoe.ATA_DRDY | aoe.ATA_ERR, aoe.ATA_ABORTED
                    d.counters["io_errors"] += 1
                    self._log(f"e{d.shelf}.{d.slot} {d.label}: I/O error at lba {lba}: {e}")
                    how = "ata_io_error"
        elif cmd == aoe.ATA_CMD_ID_ATA:
            if scnt != 1:
                return self._error(frame, d, aoe.AOEERR_BADARG, "identify_count", now)
            data, scnt, how = d.identify, 0, "ata_identify"
        elif cmd in (aoe.ATA_CMD_FLUSH, aoe.ATA_CMD_FLUSH_EXT):
            try:
                d.image.commit()
                how = "ata_flush"
            except OSError as e:
                status, err, how = aoe.ATA_DRDY | aoe.ATA_ERR, aoe.ATA_ABORTED, "ata_io_error"
                d.counters["io_errors"] += 1
                self._log(f"e{d.shelf}.{d.slot} {d.label}: flush failed: {e}")
        elif cmd == aoe.ATA_CMD_CHK_POWER:
            scnt, how = 0xFF, "ata_check_power"   # active or idle
        else:
            status, err, how = aoe.ATA_DRDY | aoe.ATA_ERR, aoe.ATA_ABORTED, "ata_aborted"
        d.counters[how] += 1
        reply = aoe.encode_ata(h.src, self.mac, d.shelf, d.slot, h.tag, aflags=a.aflags, err_feature=err,
                               cmd_status=status, lba=lba, scnt=scnt, data=data, flags=aoe.AOEFL_RSP)
        return self._reply(how, reply, now)
