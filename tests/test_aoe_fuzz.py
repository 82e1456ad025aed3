"""100,000 seeded malformed AoE frames into nas-server's target core and 100,000 into the initiator core.

Each frame is malformed by construction in one of the ways listed below, and must end in the drop
or error reply named for it: 0 crashes (no ``internal_error``), every frame counted exactly once,
the image byte-identical afterwards, and the initiator's outstanding request neither completed
nor failed by any of them -- it still finishes with the right data once the target answers.
"""

import hashlib
import random
import time

from aoe_wire_kit import MAC_INI, MAC_TGT, SHELF, SLOT, AoeWire
from protocols import aoe

N_FRAMES = 100_000
OTHER_MAC = b"\x02\0\0\0\0\x77"
_POOL = random.Random(7).randbytes(1 << 18)   # random payloads are slices of it: generating, not handling, was the cost


class Rng(random.Random):
    def randbytes(self, n: int) -> bytes:
        o = self.randrange(len(_POOL) - n + 1)
        return _POOL[o:o + n]


def _ata(rng, **kw):
    args = dict(aflags=aoe.AOEAFL_EXT, cmd_status=aoe.ATA_CMD_PIO_READ_EXT, lba=rng.randrange(2048), scnt=rng.randint(1, 2))
    args.update(kw)
    return aoe.encode_ata(kw.pop("dst", MAC_TGT), MAC_INI, SHELF, SLOT, rng.getrandbits(32), **args)


def _cfg(rng, **kw):
    return aoe.encode_cfg(aoe.BROADCAST_MAC, MAC_INI, SHELF, SLOT, rng.getrandbits(32), **kw)


def _set(frame: bytes, off: int, value: bytes) -> bytes:
    return frame[:off] + value + frame[off + len(value):]


def target_case(rng: random.Random) -> tuple[str, bytes, set]:
    """(category, frame, the dispositions that frame may end in)."""
    k = rng.randrange(15)
    write = dict(aflags=aoe.AOEAFL_EXT | aoe.AOEAFL_WRITE, cmd_status=aoe.ATA_CMD_PIO_WRITE_EXT)
    if k == 0:
        return "runt", rng.randbytes(rng.randrange(24)), {"drop_runt"}
    if k == 1:
        return "not_aoe", _set(_ata(rng), 12, rng.choice([b"\x08\x00", b"\x86\xdd", b"\x88\xa3", b"\x00\x00"])), {"drop_not_aoe"}
    if k == 2:
        return "ata_runt", _ata(rng)[:rng.randrange(24, 36)], {"drop_ata_runt"}
    if k == 3:
        return "cfg_runt", _cfg(rng)[:rng.randrange(24, 32)], {"drop_cfg_runt"}
    if k == 4:
        f = _cfg(rng, ccmd=rng.choice([aoe.AOECCMD_SET, aoe.AOECCMD_FSET]), config=b"x" * rng.randrange(40))
        n = rng.choice([rng.randrange(len(f) - 31, 1025), rng.randrange(1025, 65536)])
        return "cfg_len", _set(f, 30, n.to_bytes(2, "big")), {"drop_cfg_len"}
    if k == 5:
        scnt = rng.randint(1, 2)
        return "short_write", _ata(rng, **write, scnt=scnt, data=rng.randbytes(rng.randrange(scnt * 512)))[:36 + scnt * 512 - 1], \
            {"error_short_write"}
    if k == 6:
        scnt = rng.choice([0] + list(range(3, 256)))
        return "sector_count", _ata(rng, **rng.choice([write, {}]), scnt=scnt, data=rng.randbytes(scnt * 512)), {"error_sector_count"}
    if k == 7:
        wrong = rng.choice([dict(aflags=aoe.AOEAFL_EXT, cmd_status=aoe.ATA_CMD_PIO_WRITE_EXT),
                            dict(aflags=0, cmd_status=aoe.ATA_CMD_PIO_WRITE),
                            dict(aflags=aoe.AOEAFL_EXT | aoe.AOEAFL_WRITE, cmd_status=aoe.ATA_CMD_PIO_READ_EXT)])
        return "write_flag", _ata(rng, **wrong, data=rng.randbytes(1024)), {"error_write_flag"}
    if k == 8:
        f = _ata(rng, **write, data=rng.randbytes(1024))
        return "bad_version", _set(f, 14, bytes([rng.choice([0, *range(2, 16)]) << 4])), {"error_bad_version"}
    if k == 9:
        f = _ata(rng, **write, data=rng.randbytes(1024))
        return "bad_cmd", _set(f, 19, bytes([rng.randrange(2, 256)])), {"error_cmd_mask", "error_cmd_reserve", "error_cmd_unknown"}
    if k == 10:
        f = _ata(rng, **write, data=rng.randbytes(1024))
        return "response", _set(f, 14, bytes([0x10 | aoe.AOEFL_RSP | rng.choice([0, aoe.AOEFL_ERR])])), {"ignored_response"}
    if k == 11:
        shelf = rng.choice([s for s in (0, 2, 7, 0xFFFE) if s != SHELF])
        f = _ata(rng, **write, data=rng.randbytes(1024))
        return "not_addressed", _set(f, 16, shelf.to_bytes(2, "big")), {"ignored_not_addressed"}
    if k == 12:
        return "other_host", _set(_ata(rng, **write, data=rng.randbytes(1024)), 0, OTHER_MAC), {"ignored_other_host"}
    if k == 13:
        f = _ata(rng, **write, data=rng.randbytes(1024))
        return "ata_broadcast", _set(f, 16, rng.choice([b"\xff\xff\x00", b"\x00\x01\xff", b"\xff\xff\xff"])), {"drop_ata_broadcast"}
    # random ATA argument bytes behind a valid header; a write command is never whole (no W flag or
    # no data), so nothing here may write -- anything else it may do (read, identify, flush, abort)
    body = bytearray(rng.randbytes(rng.randrange(12, 1100)))
    if body[3] in (aoe.ATA_CMD_PIO_WRITE, aoe.ATA_CMD_PIO_WRITE_EXT):
        body[0] &= ~aoe.AOEAFL_WRITE
    f = aoe.encode_ata(MAC_TGT, MAC_INI, SHELF, SLOT, 0, aflags=0, cmd_status=0)[:24] + bytes(body)
    return "random_ata", f, None


def test_target_core_counts_100k_malformed_frames_and_never_writes():
    w = AoeWire(image_bytes=1 << 20)
    tgt = w.tgt
    w.img.data[:] = random.Random(1).randbytes(len(w.img.data))
    before = hashlib.sha256(w.img.data).hexdigest()
    rng = Rng(20260617)
    per_cat: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(N_FRAMES):
        cat, frame, allowed = target_case(rng)
        tgt.handle(frame, i * 1e-3)
        how = tgt.last_disposition
        assert how != "internal_error" and how != "ata_write", (cat, how, frame[:48].hex())
        assert allowed is None or how in allowed, (cat, how, frame[:48].hex())
        per_cat[cat] = per_cat.get(cat, 0) + 1
    elapsed = time.perf_counter() - t0
    assert tgt.frames_in == N_FRAMES and sum(tgt.dispositions.values()) == N_FRAMES
    assert hashlib.sha256(w.img.data).hexdigest() == before and not w.img.pending
    assert min(per_cat.values()) > N_FRAMES // 20          # every category exercised
    print(f"target: {N_FRAMES} frames in {elapsed:.2f} s; {dict(sorted(tgt.dispositions.items()))}")


def initiator_case(rng: random.Random, live: list[int]) -> tuple[str, bytes, str]:
    """(category, frame, the drop reason it must be counted under)."""
    k = rng.randrange(16)
    tag = rng.choice(live)

    def rsp(src=MAC_TGT, **kw):
        args = dict(aflags=aoe.AOEAFL_EXT, cmd_status=aoe.ATA_DRDY, flags=aoe.AOEFL_RSP)
        args.update(kw)
        return aoe.encode_ata(MAC_INI, src, SHELF, SLOT, kw.pop("tag", tag), **{k: v for k, v in args.items() if k != "tag"})
    if k == 0:
        return "runt", rng.randbytes(rng.randrange(24)), "runt"
    if k == 1:
        return "not_aoe", _set(rsp(), 12, b"\x08\x00"), "not_aoe"
    if k == 2:
        return "other_host", _set(rsp(data=bytes(1024)), 0, OTHER_MAC), "other_host"
    if k == 3:
        return "bad_version", _set(rsp(data=bytes(1024)), 14, bytes([(rng.choice([0, 2, 15]) << 4) | aoe.AOEFL_RSP])), "bad_version"
    if k == 4:
        return "not_response", _set(rsp(data=bytes(1024)), 14, b"\x10"), "not_response"
    if k == 5:
        return "other_device", _set(rsp(data=bytes(1024)), 16, rng.choice([b"\x00\x02", b"\xff\xff", b"\x00\x00"])), "other_device"
    if k == 6:
        # an AoE error response, even for a live tag, is logged and dropped (aoenet_rcv): it fails nothing
        return "error_rsp", rsp(flags=aoe.AOEFL_RSP | aoe.AOEFL_ERR, error=rng.randrange(0, 256)), "error_rsp"
    if k == 7:
        return "unknown_cmd", _set(rsp(), 19, bytes([rng.randrange(2, 256)])), "unknown_cmd"
    if k == 8:
        return "wrong_mac", rsp(src=OTHER_MAC, data=rng.randbytes(1024)), "wrong_mac"
    if k == 9:
        return "ata_runt", rsp()[:rng.randrange(24, 36)], "ata_runt"
    if k == 10:
        bad = rng.getrandbits(31)
        while bad in live:
            bad = rng.getrandbits(31)
        return "unexpected_rsp", rsp(tag=bad, data=rng.randbytes(1024)), "unexpected_rsp"
    if k == 11:
        return "runt_read", rsp(data=rng.randbytes(rng.randrange(24, 1024)))[:36 + rng.randrange(1024)], "runt_read"
    if k == 12:
        f = aoe.encode_cfg(MAC_INI, MAC_TGT, SHELF, SLOT, 0, bufcnt=16, scnt=2, flags=aoe.AOEFL_RSP)
        return "cfg_len", _set(f, 30, rng.randrange(29, 65536).to_bytes(2, "big")), "cfg_len"
    if k == 13:
        src = rng.choice([OTHER_MAC, b"\x03\0\0\0\0\x01", aoe.BROADCAST_MAC])
        f = aoe.encode_cfg(MAC_INI, src, SHELF, SLOT, 0, bufcnt=rng.randrange(1, 65536), scnt=2, flags=aoe.AOEFL_RSP)
        return "cfg_src", f, "cfg_other_target" if src == OTHER_MAC else "cfg_multicast_src"
    if k == 15:
        return "userland_tag", rsp(tag=tag | 1 << 31, data=rng.randbytes(1024)), "userland_tag"
    return "cfg_bufcnt_zero", aoe.encode_cfg(MAC_INI, MAC_TGT, SHELF, SLOT, 0, bufcnt=0, scnt=2, flags=aoe.AOEFL_RSP), "cfg_bufcnt_zero"


def test_initiator_core_counts_100k_malformed_frames_and_its_request_survives():
    w = AoeWire(image_bytes=1 << 20, aoe_deadsecs=0).up()   # aoe_deadsecs 0: never give up (as Linux allows)
    w.img.data[:] = random.Random(2).randbytes(len(w.img.data))
    w.target_up = False                                   # requests go out, nothing answers during the fuzz
    r = w.dev.read_page(5, w.now)
    w.step()
    live = list(w.dev.factive)
    assert len(live) == 4
    rto0 = w.dev._rto()
    rng = Rng(20260618)
    n0 = w.dev.frames_in
    per_cat: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(N_FRAMES):
        cat, frame, reason = initiator_case(rng, live)
        w.dev.receive(frame, w.now)
        assert w.dev.last_drop == reason, (cat, w.dev.last_drop, frame[:40].hex())
        per_cat[cat] = per_cat.get(cat, 0) + 1
    elapsed = time.perf_counter() - t0
    d = w.dev
    assert d.frames_in - n0 == N_FRAMES and sum(d.drops.values()) == N_FRAMES and "internal_error" not in d.drops
    assert not r.done and d.state == "up" and set(d.factive) == set(live)
    assert min(per_cat.values()) > N_FRAMES // 20
    rto1 = d._rto()
    w.target_up = True                                    # the retransmission at the (now larger) rto completes it
    w.run_until(lambda: r.done, limit_s=3600)
    assert r.status == 0 and bytes(r.data) == bytes(w.img.data[5 * 4096:6 * 4096])
    print(f"initiator: {N_FRAMES} frames in {elapsed:.2f} s; rto {rto0 / 1e6:.2f} s -> {rto1 / 1e6:.2f} s after "
          f"{d.counters['unexpected_rsp']} forged stale tags (calc_rttavg); {dict(sorted(d.drops.items()))}")
