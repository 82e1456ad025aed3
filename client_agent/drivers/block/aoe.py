"""The AoE initiator (Linux ``drivers/block/aoe/``) as a sans-I/O core: frames in, frames and completions out.

One ``AoeDev`` is one ``e<shelf>.<slot>`` device with one target (one MAC). It is driven by
``receive(frame, now)``, ``timer(now)`` (due at ``next_timer()``) and the submit calls; it puts
frames to send on ``outbox`` and finished requests on ``completed``. It never touches a socket
or a clock, so the same core runs on an in-memory wire and, through a thin AF_PACKET driver, on a
veth -- and later behind the agent's EtherType table (``dev_add_pack(ETH_P_AOE)``).

Mirrored from Linux (``aoecmd.c``, ``aoe.h``; names as there):
- discovery: a config query (``aoecmd_cfg``) to the device's shelf.slot, broadcast; the response
  (``aoecmd_cfg_rsp``) gives the target's MAC, ``nframes = min(bufcnt, aoe_maxout)`` and
  ``maxbcnt = min((mtu - 36) // 512, scnt) * 512`` (``DEFAULTBCNT`` if 0); then ATA IDENTIFY
  (``aoecmd_ata_id``, with ``rttavg``/``rttdev`` reset to ``RTTAVG_INIT``/``RTTDEV_INIT``), and the
  device is up with ``ssize`` sectors (LBA48 if IDENTIFY word 83|86 bit 10, ``ataid_complete``).
- I/O: READ/WRITE SECTORS EXT in frames of ``maxbcnt`` bytes; at most ``maxout`` frames out, the
  window opened by ``calc_rttavg`` (slow start to ``ssthresh``, then one per window) and closed to
  1 on a timeout (``ssthresh = maxout / 2``).
- tags: ``newtag`` = ``(++lasttag & 0x7fff) << 16 | (jiffies & 0xffff)`` with ``HZ`` = 1000; a
  response is matched by tag among active frames, then among deferred retransmissions
  (``getframe_deferred``); an unknown tag is an "unexpected rsp" whose age, read from the tag's
  jiffies bits, still feeds ``calc_rttavg`` -- which is how late replies back the timer off.
- retransmission: ``rexmit_timer`` every ``TIMERTICK`` (100 ms) resends, with a new tag, each
  frame older than ``rto = 2*rttavg + 8*rttdev`` (Jacobson/Karels, ``RTTSCALE``/``RTTDSCALE``
  fixed point, microseconds); a frame unanswered for ``aoe_deadsecs`` (180 s) in total takes the
  device down (``aoedev_downdev``: every request fails with EIO) until a config response revives it.
- receive filter (``aoenet_rcv``): requests, tags with bit 31 set (userland's tag space) and AoE
  error responses are dropped -- an error response is only logged, its frame is retransmitted
  until answered or ``aoe_deadsecs``; an ATA status with any of BSY/DF/DRQ/ERR fails the request.
- counters as the driver shows them: sysfs ``state``, ``mac``, ``netif``, ``firmware-version``,
  ``payload``; debugfs ``rttavg``, ``rttdev``, ``kicked``, ``maxbcnt`` and per target ``maxout``,
  ``nframes``, ``nout``, ``ssthresh``, ``taint``, ``r``/``w`` (packets), ``lost``; the character
  device's "retransmit" and "unexpected rsp" messages as counts.

Where this core differs from Linux, on purpose (each counted under ``drops``):
- a response whose source MAC is not the device's target is dropped (``wrong_mac``); Linux
  matches ATA responses by shelf.slot and tag only;
- a header version other than 1 is dropped (``bad_version``, r11 2.2); Linux's ``aoenet_rcv``
  does not look at it. vblade 25's start-up announcement carries version 0 (``aoead`` sets only
  the R flag) and is dropped here; vblade answers our query with version 1;
- a read or IDENTIFY response with too little data keeps its frame outstanding (``runt_read``,
  ``runt_identify``) so the retransmission recovers, as Linux's older ``aoecmd_ata_rsp`` did;
  today's ``ktiocomplete`` fails the bio with EIO -- a malformed frame must not fail I/O here;
- one target per device (no multipath ``ifrotate``/``scorn`` between targets; ``taint`` is kept
  and reported);
- FLUSH: Linux's aoe never sends one (no write cache is declared to the block layer, so AoE
  writes count as durable when acknowledged). Here ``write_page`` is durable only after
  FLUSH CACHE EXT (0xEA; FLUSH CACHE 0xE7 if IDENTIFY offers only that) when IDENTIFY offers a
  flush and ``flush_writes`` is True; ``flush_writes=False`` is Linux's write-through assumption.
- the discovery query is re-sent every ``DISCOVER_INTERVAL_S`` until a target answers (Linux
  relies on ``aoe-discover`` and on targets' own announcements).
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field

from protocols import aoe

HZ = 1000                       # jiffies per second for tags (CONFIG_HZ_1000)
USEC_PER_SEC = 1_000_000
TIMERTICK_S = 0.1               # HZ / 10
RTTSCALE = 8
RTTDSCALE = 3
RTTAVG_INIT = (USEC_PER_SEC // 4) << RTTSCALE
RTTDEV_INIT = RTTAVG_INIT // 4
DEFAULTBCNT = 2 * 512
HARD_SCORN_SECS = 10
MAX_TAINT = 1000
AOE_DEADSECS = 60 * 3           # module parameter aoe_deadsecs
AOE_MAXOUT = 64                 # module parameter aoe_maxout
DISCOVER_INTERVAL_S = 1.0
EIO = 5
PAGE_BYTES = 4096

STATE_DOWN = "down"             # not discovered, or failed by aoedev_downdev
STATE_DISCOVER = "discovering"
STATE_IDENTIFY = "identifying"
STATE_UP = "up"
STATE_CLOSED = "closed"


@dataclass(eq=False)
class AoeRequest:
    """One block request (Linux ``struct buf``): done when every frame of it is answered.

    ``status`` is None while pending, 0 on success, -EIO on failure (``error`` says why).
    ``data`` holds read data; ``durable`` is True for a write whose flush (if any) completed."""
    op: str                     # "read", "write", "flush", "identify"
    lba: int = 0
    nsect: int = 0
    data: bytearray | bytes = b""
    flush_after: bool = False
    submitted_at: float = 0.0
    completed_at: float | None = None
    status: int | None = None
    error: str = ""
    durable: bool = False
    next_lba: int = 0           # next sector not yet put in a frame
    nframesout: int = 0
    tag: object = None          # caller's cookie (e.g. a swap slot)
    flush_for: "AoeRequest | None" = None   # an internal FLUSH issued to make this write durable

    @property
    def done(self) -> bool:
        return self.status is not None


@dataclass(eq=False)
class _Frame:
    req: AoeRequest | None
    lba: int
    scnt: int
    cmd: int
    pkt: bytearray
    tag: int = 0
    sent_us: int = 0
    sent_jiffs: int = 0
    waited_us: int = 0
    waited_total_us: int = 0


@dataclass
class _Target:
    addr: bytes
    nframes: int
    maxout: int = 1
    ssthresh: int = 0
    next_cwnd: int = 0
    nout: int = 0
    taint: int = 0
    wpkts: int = 0
    rpkts: int = 0
    lost: int = 0

    def wreset(self) -> None:
        """``aoecmd_wreset``."""
        self.maxout = 1
        self.ssthresh = self.nframes // 2
        self.next_cwnd = self.nframes


@dataclass
class Identity:
    sectors: int = 0
    lba48: bool = False
    serial: str = ""
    model: str = ""
    firmware: str = ""
    flush_cmd: int | None = None
    write_cache: bool = False
    raw: bytes = field(default=b"", repr=False)


class AoeDev:
    def __init__(self, mac: bytes, shelf: int, slot: int, *, mtu: int, netif: str = "",
                 aoe_deadsecs: int = AOE_DEADSECS, aoe_maxout: int = AOE_MAXOUT, flush_writes: bool = True):
        if len(mac) != 6:
            raise ValueError(f"MAC address of {len(mac)} bytes; expected 6")
        if not 0 <= shelf < aoe.SHELF_BROADCAST or not 0 <= slot < aoe.SLOT_BROADCAST:
            raise ValueError(f"AoE address {shelf}.{slot}: shelf 0..65534, slot 0..254")
        if aoe.sectors_per_frame(mtu) < 1:
            raise ValueError(f"MTU {mtu} carries no sector in an AoE frame")
        self.mac = bytes(mac)
        self.aoemajor, self.aoeminor = shelf, slot
        self.mtu = mtu
        self.netif = netif
        self.aoe_deadsecs = aoe_deadsecs
        self.aoe_maxout = aoe_maxout
        self.flush_writes = flush_writes
        self.state = STATE_DOWN
        self.target: _Target | None = None
        self.ident = Identity()
        self.fw_ver = 0
        self.maxbcnt = 0
        self.rttavg = RTTAVG_INIT
        self.rttdev = RTTDEV_INIT
        self.lasttag = 0
        self.kicked = 0
        self.factive: dict[int, _Frame] = {}
        self.rexmitq: list[_Frame] = []
        self.bufq: deque[AoeRequest] = deque()       # requests with sectors not yet framed
        self.waiting_flush: deque[AoeRequest] = deque()  # writes whose data is acknowledged, flush pending
        self.outbox: deque[bytes] = deque()
        self.completed: deque[AoeRequest] = deque()
        self.counters: Counter = Counter()
        self.drops: Counter = Counter()
        self.frames_in = 0
        self.last_drop = ""
        self._next_tick: float | None = None
        self._next_discover: float | None = None

    # -- the storage interface ----------------------------------------------------------------
    def activate(self, now: float) -> None:
        """Start discovery: a config query for this shelf.slot, broadcast (``aoecmd_cfg``)."""
        if self.state == STATE_CLOSED:
            raise RuntimeError(f"e{self.aoemajor}.{self.aoeminor} is closed")
        self.state = STATE_DISCOVER
        self._send_discover(now)

    def write_page(self, index: int, data, now: float, tag=None) -> AoeRequest:
        """Write one page at sector ``index * 8``; done (and ``durable``) after its flush, if any."""
        if len(data) != PAGE_BYTES:
            raise ValueError(f"a page is {PAGE_BYTES} bytes, got {len(data)}")
        return self.submit_write(index * (PAGE_BYTES // aoe.SECTOR_BYTES), data, now, flush=self.flush_writes, tag=tag)

    def read_page(self, index: int, now: float, tag=None) -> AoeRequest:
        return self.submit_read(index * (PAGE_BYTES // aoe.SECTOR_BYTES), PAGE_BYTES // aoe.SECTOR_BYTES, now, tag=tag)

    def close(self, now: float) -> None:
        for r in self._all_pending():
            self._complete(r, now, -EIO, "device closed")
        self.factive.clear()
        self.rexmitq.clear()
        self.state = STATE_CLOSED

    def snapshot(self) -> dict:
        """What ``/sys/block/etherd!eX.Y/`` and the aoe debugfs file show, plus this core's drops."""
        t = self.target
        snap = {
            "device": f"e{self.aoemajor}.{self.aoeminor}",
            "state": self.state,
            "mac": t.addr.hex() if t else "none",
            "netif": self.netif or "none",
            "firmware-version": f"0x{self.fw_ver:04x}",
            "payload": self.maxbcnt,
            "size_sectors": self.ident.sectors,
            "flush": {None: "none", aoe.ATA_CMD_FLUSH_EXT: "FLUSH CACHE EXT", aoe.ATA_CMD_FLUSH: "FLUSH CACHE"}[self.ident.flush_cmd]
                     if self.flush_writes else "none (write-through assumed, as Linux)",
            "rttavg": self.rttavg >> RTTSCALE, "rttdev": self.rttdev >> RTTDSCALE, "rto_us": self._rto(),
            "kicked": self.kicked, "maxbcnt": self.maxbcnt,
            "frames_in": self.frames_in, "counters": dict(self.counters), "drops": dict(self.drops),
            "queued_requests": len(self.bufq), "rexmitq": len(self.rexmitq),
        }
        if t:
            snap["target"] = {"addr": t.addr.hex(), "maxout": t.maxout, "nframes": t.nframes, "nout": t.nout,
                              "ssthresh": t.ssthresh, "taint": t.taint, "r": t.rpkts, "w": t.wpkts, "lost": t.lost}
        return snap

    # -- requests -----------------------------------------------------------------------------
    def submit_read(self, lba: int, nsect: int, now: float, tag=None) -> AoeRequest:
        r = AoeRequest("read", lba, nsect, bytearray(nsect * aoe.SECTOR_BYTES), submitted_at=now, next_lba=lba, tag=tag)
        return self._submit(r, now)

    def submit_write(self, lba: int, data, now: float, *, flush: bool = False, tag=None) -> AoeRequest:
        if len(data) % aoe.SECTOR_BYTES or not data:
            raise ValueError(f"a write is whole 512-byte sectors; got {len(data)} bytes")
        r = AoeRequest("write", lba, len(data) // aoe.SECTOR_BYTES, bytes(data), flush_after=flush,
                       submitted_at=now, next_lba=lba, tag=tag)
        return self._submit(r, now)

    def submit_flush(self, now: float, tag=None) -> AoeRequest:
        return self._submit(AoeRequest("flush", submitted_at=now, tag=tag), now)

    def _submit(self, r: AoeRequest, now: float) -> AoeRequest:
        if self.state != STATE_UP:
            self._complete(r, now, -EIO, f"device e{self.aoemajor}.{self.aoeminor} is not up (state {self.state})")
            return r
        if r.op != "flush" and (r.lba < 0 or r.lba + r.nsect > self.ident.sectors):
            self._complete(r, now, -EIO, f"sectors {r.lba}+{r.nsect} beyond the device's {self.ident.sectors}")
            return r
        if r.op == "flush" and self.ident.flush_cmd is None:
            r.durable = True
            self._complete(r, now, 0, "")
            return r
        self.bufq.append(r)
        self._work(now)
        return r

    def _all_pending(self) -> list[AoeRequest]:
        seen, out = set(), []
        for r in [f.req for f in list(self.factive.values()) + self.rexmitq] + list(self.bufq) + list(self.waiting_flush):
            if r is not None and not r.done and id(r) not in seen:
                seen.add(id(r))
                out.append(r)
        return out

    def _complete(self, r: AoeRequest, now: float, status: int, error: str) -> None:
        """Finish ``r``. Internal requests (IDENTIFY, the FLUSH behind a durable write) are not
        handed to the caller; a FLUSH behind a write finishes that write instead."""
        if r.done:
            return
        r.status, r.error, r.completed_at = status, error, now
        self.counters[f"{r.op}_{'ok' if status == 0 else 'eio'}"] += 1
        if r.op == "identify":
            return
        if r.flush_for is not None:
            w = r.flush_for
            if w in self.waiting_flush:
                self.waiting_flush.remove(w)
            w.durable = status == 0
            self._complete(w, now, status, error)
            return
        if status == 0 and r.op == "write" and not r.durable:
            r.durable = not (r.flush_after and self.flush_writes and self.ident.flush_cmd is not None)
        if status == 0 and r.op == "flush":
            r.durable = True
        self.completed.append(r)

    # -- timing -------------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When ``timer`` must next run (None: nothing outstanding)."""
        times = [t for t in (self._next_tick if (self.factive or self.rexmitq) else None, self._next_discover) if t is not None]
        return min(times) if times else None

    def _rto(self) -> int:
        """``rto``: microseconds."""
        t = 2 * self.rttavg >> RTTSCALE
        t += 8 * self.rttdev >> RTTDSCALE
        return t or 1

    def _calc_rttavg(self, t: _Target | None, rtt_us: int) -> None:
        n = rtt_us - (self.rttavg >> RTTSCALE)
        self.rttavg += n
        n = abs(n) - (self.rttdev >> RTTDSCALE)
        self.rttdev += n
        if t is None or t.maxout >= t.nframes:
            return
        if t.maxout < t.ssthresh:
            t.maxout += 1
        elif t.nout == t.maxout:
            if t.next_cwnd == 0:
                t.maxout += 1
                t.next_cwnd = t.maxout
            else:
                t.next_cwnd -= 1

    def _newtag(self, now: float) -> int:
        self.lasttag = (self.lasttag + 1) & 0xFFFF
        return ((self.lasttag & 0x7FFF) << 16) | (int(now * HZ) & 0xFFFF)

    @staticmethod
    def _tsince_us(tag: int, now: float) -> int:
        """``tsince``: the age of a tag from its jiffies bits (wraps at 65536 jiffies)."""
        n = ((int(now * HZ) & 0xFFFF) - (tag & 0xFFFF)) % (1 << 16)
        return (n + 1) * (USEC_PER_SEC // HZ)

    def timer(self, now: float) -> None:
        """``rexmit_timer`` (and the discovery resend): run when ``next_timer()`` is due."""
        if self._next_discover is not None and now >= self._next_discover:
            if self.state == STATE_DISCOVER:
                self._send_discover(now)
            else:
                self._next_discover = None
        if self._next_tick is None or now < self._next_tick:
            return
        self._next_tick = now + TIMERTICK_S
        t = self.target
        if t is None or not (self.factive or self.rexmitq):
            return
        timeout = self._rto()
        now_us = int(now * USEC_PER_SEC)
        expired = [f for f in self.factive.values() if now_us - f.sent_us >= timeout]
        for f in expired:
            since = now_us - f.sent_us
            if self.aoe_deadsecs and (f.waited_total_us + since) // USEC_PER_SEC > self.aoe_deadsecs:
                self._downdev(now, f"no response for {self.aoe_deadsecs} s (aoe_deadsecs)")
                return
            if self.aoe_deadsecs and ((f.waited_us + since) // USEC_PER_SEC > self.aoe_deadsecs
                                      or (f.waited_us + since) // USEC_PER_SEC > HARD_SCORN_SECS):
                self._scorn(t)
            if t.maxout != 1:
                t.ssthresh = t.maxout // 2
                t.maxout = 1
            t.lost += 1
            del self.factive[f.tag]
            self.rexmitq.append(f)
            t.nout -= 1
        self._rexmit_deferred(now)

    @staticmethod
    def _scorn(t: _Target) -> None:
        n = t.taint
        t.taint += 1
        t.taint += t.taint * 2
        if n > t.taint:
            t.taint = n
        t.taint = min(t.taint, MAX_TAINT)

    def _rexmit_deferred(self, now: float) -> None:
        t = self.target
        now_us = int(now * USEC_PER_SEC)
        keep = []
        for f in self.rexmitq:
            if t.nout >= t.maxout:
                keep.append(f)
                continue
            t.nout += 1
            since = now_us - f.sent_us
            f.waited_us += since
            f.waited_total_us += since
            self.counters["retransmit"] += 1
            self._send_frame(f, now)
        self.rexmitq = keep

    def _downdev(self, now: float, why: str) -> None:
        """``aoedev_downdev``: fail everything outstanding; the device is down until rediscovered."""
        self.counters["downdev"] += 1
        for r in self._all_pending():
            self._complete(r, now, -EIO, why)
        self.factive.clear()
        self.rexmitq.clear()
        self.bufq.clear()
        self.waiting_flush.clear()
        if self.target:
            self.target.nout = 0
        self.state = STATE_DOWN

    # -- transmit -----------------------------------------------------------------------------
    def _send_discover(self, now: float) -> None:
        self.outbox.append(aoe.encode_cfg(aoe.BROADCAST_MAC, self.mac, self.aoemajor, self.aoeminor, 0))
        self.counters["cfg_query"] += 1
        self._next_discover = now + DISCOVER_INTERVAL_S

    def _send_frame(self, f: _Frame, now: float) -> None:
        f.tag = self._newtag(now)
        struct.pack_into("!I", f.pkt, 20, f.tag)
        f.sent_us = int(now * USEC_PER_SEC)
        f.sent_jiffs = int(now * HZ)
        self.factive[f.tag] = f
        self.outbox.append(bytes(f.pkt))
        if self._next_tick is None or self._next_tick < now:
            self._next_tick = now + TIMERTICK_S

    def _new_ata_frame(self, req: AoeRequest | None, cmd: int, lba: int, scnt: int, payload=b"", aflags: int = 0) -> _Frame:
        t = self.target
        pkt = bytearray(aoe.encode_ata(t.addr, self.mac, self.aoemajor, self.aoeminor, 0, aflags=aflags,
                                       cmd_status=cmd, lba=lba, scnt=scnt, data=payload))
        return _Frame(req, lba, scnt, cmd, pkt)

    def _work(self, now: float) -> None:
        """``aoecmd_work``: deferred retransmissions first, then new frames while the window allows."""
        t = self.target
        if t is None or self.state != STATE_UP:
            return
        self._rexmit_deferred(now)
        per_frame = max(1, self.maxbcnt // aoe.SECTOR_BYTES)
        while self.bufq:
            if t.nout >= t.maxout:
                if t.nout == 0:
                    self.kicked += 1
                return
            r = self.bufq[0]
            if r.op == "flush":
                f = self._new_ata_frame(r, self.ident.flush_cmd, 0, 0)
                self.bufq.popleft()
            else:
                n = min(per_frame, r.lba + r.nsect - r.next_lba)
                ext = aoe.AOEAFL_EXT if self.ident.lba48 else 0
                if r.op == "read":
                    cmd = aoe.ATA_CMD_PIO_READ_EXT if ext else aoe.ATA_CMD_PIO_READ
                    f = self._new_ata_frame(r, cmd, r.next_lba, n, aflags=ext)
                    t.rpkts += 1
                else:
                    off = (r.next_lba - r.lba) * aoe.SECTOR_BYTES
                    cmd = aoe.ATA_CMD_PIO_WRITE_EXT if ext else aoe.ATA_CMD_PIO_WRITE
                    f = self._new_ata_frame(r, cmd, r.next_lba, n, memoryview(r.data)[off:off + n * aoe.SECTOR_BYTES],
                                            aflags=ext | aoe.AOEAFL_WRITE)
                    t.wpkts += 1
                r.next_lba += n
                if r.next_lba >= r.lba + r.nsect:
                    self.bufq.popleft()
            r.nframesout += 1
            t.nout += 1
            self._send_frame(f, now)

    # -- receive ------------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1
        self.last_drop = reason

    def receive(self, frame, now: float) -> None:
        """One frame from the wire (``aoenet_rcv``). Every frame is either used or counted in ``drops``."""
        self.frames_in += 1
        try:
            self._receive(frame, now)
        except Exception as e:  # a bug must not take the host down; counted, and visible in the snapshot
            self._drop("internal_error")
            self.counters["last_internal_error"] = f"{type(e).__name__}: {e}"

    def _receive(self, frame, now: float) -> None:
        try:
            h = aoe.decode_header(frame)
        except aoe.AoeError as e:
            return self._drop(e.reason)
        if h.dst != self.mac and h.dst != aoe.BROADCAST_MAC:
            return self._drop("other_host")
        if not h.is_response:
            return self._drop("not_response")            # aoenet_rcv: a request; we are no target
        if h.tag & (1 << 31):
            return self._drop("userland_tag")            # aoenet_rcv: bit 31 is userland's tag space (aoeping)
        if h.ver != aoe.AOE_VERSION:
            return self._drop("bad_version")             # r11 2.2; Linux does not look (see the module docstring)
        if h.major != self.aoemajor or h.minor != self.aoeminor:
            return self._drop("other_device")
        if h.is_error:                                   # aoenet_rcv: "error packet from %d.%d", then dropped:
            self.counters[f"aoe_error_{aoe.ERROR_NAMES.get(h.error, 'unknown')}"] += 1
            return self._drop("error_rsp")               # the frame stays out and is retransmitted
        if h.cmd == aoe.AOECMD_CFG:
            return self._cfg_rsp(h, frame, now)
        if h.cmd != aoe.AOECMD_ATA:
            return self._drop("unknown_cmd")
        return self._ata_rsp(h, frame, now)

    def _cfg_rsp(self, h: aoe.AoeHeader, frame, now: float) -> None:
        """``aoecmd_cfg_rsp``."""
        try:
            c = aoe.decode_cfg(frame)
        except aoe.AoeError as e:
            return self._drop(e.reason)
        if h.src == aoe.BROADCAST_MAC or h.src[0] & 1:
            return self._drop("cfg_multicast_src")
        n = min(c.bufcnt, self.aoe_maxout)
        if n < 1:
            return self._drop("cfg_bufcnt_zero")
        t = self.target
        if t is not None and t.addr != h.src:
            return self._drop("cfg_other_target")        # one target per device here (Linux adds a path)
        if t is None:
            t = self.target = _Target(h.src, n)
            t.wreset()
            t.maxout = max(1, t.nframes // 2)            # addtgt
        else:
            t.nframes = n
            if n < t.maxout:
                t.wreset()
        per = min(aoe.sectors_per_frame(self.mtu), c.scnt)
        self.maxbcnt = per * aoe.SECTOR_BYTES if per else DEFAULTBCNT
        self.counters["cfg_rsp"] += 1
        if self.state in (STATE_DISCOVER, STATE_DOWN):   # d->nopen == 0: (re)identify
            self.fw_ver = c.fwver
            self.state = STATE_IDENTIFY
            self._next_discover = None
            self.rttavg, self.rttdev = RTTAVG_INIT, RTTDEV_INIT
            r = AoeRequest("identify", submitted_at=now)
            f = self._new_ata_frame(r, aoe.ATA_CMD_ID_ATA, 0, 1)
            f.pkt[aoe.AOE_HDR_BYTES + 7] = 0xA0          # lba3: obsolete bits, as aoecmd_ata_id
            r.nframesout = 1
            t.nout += 1
            self._send_frame(f, now)

    def _ata_rsp(self, h: aoe.AoeHeader, frame, now: float) -> None:
        """``aoecmd_ata_rsp`` + ``ktiocomplete``."""
        t = self.target
        if t is None or h.src != t.addr:
            return self._drop("wrong_mac")
        try:
            a = aoe.decode_ata(frame)
        except aoe.AoeError as e:
            return self._drop(e.reason)
        f = self.factive.get(h.tag)
        deferred = False
        if f is None:
            for i, g in enumerate(self.rexmitq):
                if g.tag == h.tag:
                    f, deferred = g, True
                    break
        if f is None:
            self._calc_rttavg(None, self._tsince_us(h.tag, now))
            self.counters["unexpected_rsp"] += 1
            return self._drop("unexpected_rsp")
        need = f.scnt * aoe.SECTOR_BYTES if f.cmd in (aoe.ATA_CMD_PIO_READ, aoe.ATA_CMD_PIO_READ_EXT) else \
            512 if f.cmd == aoe.ATA_CMD_ID_ATA else 0
        if not (a.cmd_status & aoe.ATA_STATUS_FAIL_MASK) and len(a.data) < need:
            return self._drop("runt_identify" if f.cmd == aoe.ATA_CMD_ID_ATA else "runt_read")
        ident = None
        if f.cmd == aoe.ATA_CMD_ID_ATA and not (a.cmd_status & aoe.ATA_STATUS_FAIL_MASK):
            try:
                ident = aoe.parse_identify(a.data[:512])
            except aoe.AoeError as e:
                return self._drop(e.reason)
        # the frame is answered
        rtt = int(now * USEC_PER_SEC) - f.sent_us
        if deferred:
            self.rexmitq.remove(f)
            self._calc_rttavg(None, rtt)
        else:
            del self.factive[f.tag]
            self._calc_rttavg(t, rtt)
            t.nout -= 1
        if t.taint > 0:
            t.taint -= 1
        if a.cmd_status & aoe.ATA_STATUS_FAIL_MASK:
            self.counters["ata_error"] += 1
            self._end_frame(f, now, ok=False, why=f"ATA error cmd={f.cmd:#04x} stat={a.cmd_status:#04x} err={a.err_feature:#04x}")
        else:
            if f.cmd in (aoe.ATA_CMD_PIO_READ, aoe.ATA_CMD_PIO_READ_EXT):
                off = (f.lba - f.req.lba) * aoe.SECTOR_BYTES
                f.req.data[off:off + need] = a.data[:need]
            elif f.cmd == aoe.ATA_CMD_ID_ATA:
                self._ataid_complete(ident, bytes(a.data[:512]), now)
            self._end_frame(f, now, ok=True)
        self._work(now)

    def _end_frame(self, f: _Frame, now: float, ok: bool, why: str = "") -> None:
        r = f.req
        if r is None:
            return
        r.nframesout -= 1
        if not ok:
            if r.op == "identify":
                self.state = STATE_DOWN
            self._fail(r, now, why)
            return
        if r.done or r.nframesout > 0 or (r.op in ("read", "write") and r.next_lba < r.lba + r.nsect):
            return
        if r.op == "write" and r.flush_after and self.ident.flush_cmd is not None and self.flush_writes:
            self.waiting_flush.append(r)                 # data acknowledged; durable after the flush
            self.bufq.append(AoeRequest("flush", submitted_at=now, flush_for=r))
            return
        self._complete(r, now, 0, "")

    def _fail(self, r: AoeRequest, now: float, why: str) -> None:
        if r in self.bufq:
            self.bufq.remove(r)
        self._complete(r, now, -EIO, why)

    def _ataid_complete(self, ident: aoe.Identify, raw: bytes, now: float) -> None:
        """``ataid_complete``: size and features from IDENTIFY; the device is up."""
        flush = aoe.ATA_CMD_FLUSH_EXT if ident.flush_ext else aoe.ATA_CMD_FLUSH if ident.flush else None
        self.ident = Identity(ident.sectors, ident.lba48, ident.serial, ident.model, ident.firmware, flush,
                              ident.write_cache, raw)
        self.state = STATE_UP
        self.counters["identify"] += 1
