"""AoE: the r11 codec against scapy (bytes) and tshark (decode), and the initiator and target cores on an
in-memory wire with a manual clock: discovery, IDENTIFY, MTU-sized frames, FLUSH, retransmission
with Linux's timer and window, service time, bufcnt, restart, aoe_deadsecs."""

import os
import random
import shutil
import subprocess

import pytest
from scapy.contrib.aoe import AOE, IssueATACommand, QueryConfigInformation
from scapy.layers.l2 import Ether

from aoe_wire_kit import MAC_INI, MAC_TGT, SHELF, SLOT, AoeWire
from client_agent.drivers.block import aoe as drv
from client_agent.phy.pcap import PcapWriter
from protocols import aoe

DATA = bytes(range(256)) * 4


def scapy_ata(**kw) -> bytes:
    hdr = {"tag": kw.pop("tag")}
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") /
                 AOE(version=1, major=SHELF, minor=SLOT, cmd=0, i_ata_cmd=IssueATACommand(**kw), **hdr))


# Byte fixture: a READ SECTORS EXT request, 2 sectors at LBA 0x0102030405, tag 0x12345678
# (Ether(...)/AOE(cmd=0, i_ata_cmd=IssueATACommand(flags=0x40, sector_count=2, cmd_status=0x24, lba...))).
READ_EXT_BYTES = bytes.fromhex("020000000001" "020000000002" "88a2" "10" "00" "0001" "00" "00" "12345678"
                               "40" "00" "02" "24" "050403020100" "0000") + bytes(24)


def test_ata_request_parse_and_emit_match_scapy():
    ref = scapy_ata(tag=0x12345678, flags=0x40, sector_count=2, cmd_status=0x24,
                    lba0=5, lba1=4, lba2=3, lba3=2, lba4=1, lba5=0)
    ours = aoe.encode_ata(MAC_TGT, MAC_INI, SHELF, SLOT, 0x12345678, aflags=aoe.AOEAFL_EXT,
                          cmd_status=aoe.ATA_CMD_PIO_READ_EXT, lba=0x0102030405, scnt=2)
    assert ours[:len(ref)] == ref and ours == READ_EXT_BYTES and len(ours) == aoe.ETH_ZLEN  # padded like a NIC
    h = aoe.decode_header(READ_EXT_BYTES)
    assert (h.ver, h.flags, h.major, h.minor, h.cmd, h.tag) == (1, 0, SHELF, SLOT, 0, 0x12345678)
    a = aoe.decode_ata(READ_EXT_BYTES)
    assert (a.aflags, a.scnt, a.cmd_status, a.lba) == (0x40, 2, 0x24, 0x0102030405)


def test_ata_write_with_data_and_config_match_scapy():
    ref = scapy_ata(tag=7, flags=0x41, sector_count=2, cmd_status=0x34, lba0=9, data=DATA)
    ours = aoe.encode_ata(MAC_TGT, MAC_INI, SHELF, SLOT, 7, aflags=0x41, cmd_status=0x34, lba=9, scnt=2, data=DATA)
    assert ours == ref and bytes(aoe.decode_ata(ours).data) == DATA
    cfg = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") /
                AOE(version=1, flags=0, major=SHELF, minor=SLOT, cmd=1, tag=0,
                    q_conf_info=QueryConfigInformation(buffer_count=16, firmware=0x100, sector_count=2, aoe=1,
                                                       ccmd=aoe.AOECCMD_FSET, config=b"swap-of-a")))
    ours = aoe.encode_cfg(aoe.BROADCAST_MAC, MAC_TGT, SHELF, SLOT, 0, ccmd=aoe.AOECCMD_FSET, config=b"swap-of-a",
                          bufcnt=16, fwver=0x100, scnt=2)
    assert ours[:len(cfg)] == cfg and not any(ours[len(cfg):])
    c = aoe.decode_cfg(ours)
    assert (c.bufcnt, c.fwver, c.scnt, c.aoever, c.ccmd, c.config) == (16, 0x100, 2, 1, 4, b"swap-of-a")
    # scapy names the header flags bit 0 "Response" (it is bit 3, 0x08, in r11 2.2 and Linux AOEFL_RSP):
    # the raw nibble is what is compared, and tshark (below) is the oracle for the flag meanings.
    assert Ether(aoe.encode_cfg(MAC_INI, MAC_TGT, 1, 0, 0, flags=aoe.AOEFL_RSP))[AOE].flags.value == 0x8


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is in APT_PACKAGES (scripts/bootstrap.sh)")
def test_tshark_decodes_our_frames_as_we_do(tmp_path):
    frames = [
        aoe.encode_cfg(aoe.BROADCAST_MAC, MAC_INI, SHELF, SLOT, 0),
        aoe.encode_cfg(MAC_INI, MAC_TGT, SHELF, SLOT, 0, bufcnt=16, fwver=0x100, scnt=2, flags=aoe.AOEFL_RSP),
        aoe.encode_ata(MAC_TGT, MAC_INI, SHELF, SLOT, 0x10001, aflags=0x41, cmd_status=0x34, lba=(1 << 40) + 3, scnt=2, data=DATA),
        aoe.encode_ata(MAC_INI, MAC_TGT, SHELF, SLOT, 0x10001, aflags=0x41, cmd_status=0x40, lba=(1 << 40) + 5, flags=aoe.AOEFL_RSP),
        aoe.encode_error_reply(aoe.encode_ata(MAC_TGT, MAC_INI, 1, 0, 9, aflags=0, cmd_status=0x24, scnt=9), MAC_TGT, 1, 0, aoe.AOEERR_BADARG),
    ]
    w = PcapWriter(str(tmp_path / "aoe.pcap"))
    for i, f in enumerate(frames):
        w.write(f, 1.0 + i)
    w.close()
    out = subprocess.run(["tshark", "-r", str(tmp_path / "aoe.pcap"), "-T", "fields", "-E", "separator=,",
                          "-e", "aoe.version", "-e", "aoe.response", "-e", "aoe.flags_error", "-e", "aoe.error",
                          "-e", "aoe.major", "-e", "aoe.minor", "-e", "aoe.cmd", "-e", "aoe.tag",
                          "-e", "aoe.aflags.e", "-e", "aoe.aflags.w", "-e", "aoe.sector_count", "-e", "aoe.ata.cmd",
                          "-e", "aoe.ata.status", "-e", "aoe.lba", "-e", "_ws.malformed"],
                         capture_output=True, text=True, timeout=60).stdout.splitlines()
    rows = [r.split(",") for r in out]
    assert len(rows) == len(frames)
    assert rows[0][:8] == ["1", "0", "0", "", "0x0001", "0x00", "1", "0x00000000"]
    assert rows[1][:8] == ["1", "1", "0", "", "0x0001", "0x00", "1", "0x00000000"]
    assert rows[2][:14] == ["1", "0", "0", "", "0x0001", "0x00", "0", "0x00010001", "1", "1", "2", "0x34", "", f"{(1 << 40) + 3:#018x}"]
    assert rows[3][1] == "1" and rows[3][12] == "0x40" and rows[3][13] == f"{(1 << 40) + 5:#018x}"
    assert rows[4][1:4] == ["1", "1", "2"]
    assert all(r[-1] == "" for r in rows)  # no malformed frame


def test_decode_errors_name_their_drop_reason():
    ok = aoe.encode_cfg(aoe.BROADCAST_MAC, MAC_INI, 1, 0, 0, config=b"abc")
    cases = [(ok[:23], "runt"), (ok[:12] + b"\x08\x00" + ok[14:], "not_aoe")]
    for frame, reason in cases:
        with pytest.raises(aoe.AoeError) as e:
            aoe.decode_header(frame)
        assert e.value.reason == reason
    with pytest.raises(aoe.AoeError) as e:
        aoe.decode_cfg(ok[:30])
    assert e.value.reason == "cfg_runt"
    bad = bytearray(ok)
    bad[30:32] = (1025).to_bytes(2, "big")
    with pytest.raises(aoe.AoeError) as e:
        aoe.decode_cfg(bytes(bad) + bytes(2000))
    assert e.value.reason == "cfg_len"
    with pytest.raises(aoe.AoeError) as e:
        aoe.decode_ata(READ_EXT_BYTES[:35])
    assert e.value.reason == "ata_runt"


def test_identify_block_round_trip_words_and_checksum():
    sectors = (3 << 32) + 17                              # needs LBA48: the LBA28 words say 0x0FFFFFFF
    block = aoe.build_identify(sectors, serial="NAS1.0", model="nas-server AoE target", firmware="0100")
    assert len(block) == 512 and sum(block) % 256 == 0 and block[510] == 0xA5
    assert int.from_bytes(block[200:208], "little") == sectors and int.from_bytes(block[120:124], "little") == 0x0FFFFFFF
    assert block[54:60] == b"an-ses"                       # ATA strings swap each word: "nas-se" -> "an-se s"
    ident = aoe.parse_identify(block)
    assert (ident.sectors, ident.lba48, ident.serial, ident.model, ident.firmware) == \
        (sectors, True, "NAS1.0", "nas-server AoE target", "0100")
    assert ident.flush and ident.flush_ext and not ident.write_cache
    corrupt = bytearray(block)
    corrupt[100] ^= 1
    with pytest.raises(aoe.AoeError, match="identify_checksum"):
        aoe.parse_identify(bytes(corrupt))
    assert aoe.sectors_per_frame(1500) == 2 and aoe.sectors_per_frame(9000) == 17


# -- the cores on an in-memory wire -----------------------------------------------------------
def pages(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(4096) for _ in range(n)]


def write_pages(w: AoeWire, data: list[bytes], first: int = 0):
    reqs = [w.dev.write_page(first + i, p, w.now) for i, p in enumerate(data)]
    w.run_until(lambda: all(r.done for r in reqs))
    return reqs


def read_pages(w: AoeWire, n: int, first: int = 0):
    reqs = [w.dev.read_page(first + i, w.now) for i in range(n)]
    w.run_until(lambda: all(r.done for r in reqs))
    return reqs


def test_discover_identify_write_flush_read_byte_exact():
    w = AoeWire().up()
    d = w.dev.snapshot()
    assert d["state"] == "up" and d["size_sectors"] == 2048 and d["payload"] == 1024 and d["mac"] == MAC_TGT.hex()
    assert d["firmware-version"] == "0x0100" and d["flush"] == "FLUSH CACHE EXT" and d["target"]["nframes"] == 16
    data = pages(32, seed=1)
    syncs0 = w.img.syncs
    ws = write_pages(w, data)
    assert all(r.status == 0 and r.durable for r in ws)
    assert bytes(w.img.data[:32 * 4096]) == b"".join(data)          # the image itself, read independently
    rs = read_pages(w, 32)
    assert [bytes(r.data) for r in rs] == data
    t = w.tgt.snapshot()["disks"]["e1.0"]
    assert t["ata_write"] == 32 * 4 and t["ata_read"] == 32 * 4 and t["ata_flush"] == 32   # 1 KiB frames on 1500
    assert w.img.syncs - syncs0 == 32 * 4 + 32        # write-through: each write frame fdatasynced, then each flush
    assert all(len(f) <= 1500 + 14 for _, _, f in w.sent)


def test_jumbo_mtu_carries_a_page_in_one_frame():
    w = AoeWire(mtu=9000).up()
    assert w.dev.maxbcnt == 17 * 512
    data = pages(4, seed=2)
    write_pages(w, data)
    assert [bytes(r.data) for r in read_pages(w, 4)] == data
    assert w.tgt.snapshot()["disks"]["e1.0"]["ata_write"] == 4


def test_lost_reply_is_retransmitted_with_a_new_tag_and_the_window_closes():
    w = AoeWire().up()
    write_pages(w, pages(8, seed=3))                      # warm up: the window opens (calc_rttavg)
    assert w.dev.target.maxout > 8
    rto_s = w.dev._rto() / 1e6
    lost = []

    def drop(frame, direction):
        if direction == "rsp" and not lost and frame[19] == aoe.AOECMD_ATA:
            lost.append(int.from_bytes(frame[20:24], "big"))
            return True
        return False
    w.drop = drop
    t0 = w.now
    r = w.dev.submit_flush(w.now)                          # one frame: no other reply moves the rto meanwhile
    w.run_until(lambda: r.done)
    assert r.status == 0 and len(lost) == 1
    snap = w.dev.snapshot()
    assert snap["counters"]["retransmit"] == 1 and snap["target"]["lost"] == 1
    assert rto_s <= w.now - t0 <= rto_s + drv.TIMERTICK_S + 0.01   # resent at the first timer tick past the rto
    assert snap["target"]["maxout"] <= 4                  # collapsed to 1 on the timeout, reopening since
    tags = [int.from_bytes(f[20:24], "big") for at, d, f in w.sent if d == "req" and at >= t0]
    assert lost[0] in tags and len(set(tags)) == len(tags)  # the resend carries a new tag


def test_late_reply_to_an_old_tag_is_an_unexpected_rsp_that_backs_the_timer_off():
    w = AoeWire(service_time_s=0.0005).up()
    avg0 = w.dev.rttavg >> drv.RTTSCALE
    stale = aoe.encode_ata(MAC_INI, MAC_TGT, SHELF, SLOT, (0x123 << 16) | ((int(w.now * 1000) - 30_000) & 0xFFFF),
                           aflags=0, cmd_status=aoe.ATA_DRDY, flags=aoe.AOEFL_RSP)
    w.dev.receive(stale, w.now)
    assert w.dev.drops["unexpected_rsp"] == 1 and w.dev.counters["unexpected_rsp"] == 1
    assert (w.dev.rttavg >> drv.RTTSCALE) > avg0           # a 30 s old tag raised the average (calc_rttavg)


def test_service_time_and_the_advertised_buffer_count():
    w = AoeWire(service_time_s=0.050, bufcnt=2).up()
    assert w.dev.target.nframes == 2                      # min(bufcnt, aoe_maxout): the initiator honours it
    t0 = w.now
    r = read_pages(w, 1)[0]
    assert r.status == 0 and w.now - t0 >= 0.050          # the stated service time per request
    data = pages(4, seed=4)
    assert all(x.status == 0 for x in write_pages(w, data))
    assert [bytes(x.data) for x in read_pages(w, 4)] == data
    assert w.tgt.dispositions["drop_bufcnt_full"] == 0
    # a peer that ignores it: the third request in service is dropped, and taken once one is answered
    req = [aoe.encode_ata(MAC_TGT, MAC_INI, 1, 0, tag, aflags=0x40, cmd_status=0x24, lba=0, scnt=1) for tag in (1, 2, 3)]
    now = w.now + 10
    assert [len(w.tgt.handle(f, now)) for f in req] == [1, 1, 0]
    assert w.tgt.dispositions["drop_bufcnt_full"] == 1
    assert len(w.tgt.handle(req[2], now + 0.051)) == 1


def test_target_restart_write_through_keeps_acknowledged_data_write_cache_loses_it():
    for write_cache in (False, True):
        w = AoeWire(write_cache=write_cache, flush_writes=False).up()
        data = pages(2, seed=5)
        ws = write_pages(w, data)
        assert all(x.status == 0 for x in ws)
        w.restart_target()
        got = [bytes(x.data) for x in read_pages(w, 2)]
        assert (got == data) is (not write_cache)          # AoE has no write verifier: the loss is silent
        assert w.dev.state == "up"


def test_flush_makes_write_cache_data_survive_restart():
    w = AoeWire(write_cache=True).up()
    assert w.dev.ident.write_cache and w.dev.snapshot()["flush"] == "FLUSH CACHE EXT"
    data = pages(2, seed=6)
    assert all(x.durable for x in write_pages(w, data))
    w.restart_target()
    assert [bytes(x.data) for x in read_pages(w, 2)] == data


def test_dead_target_fails_io_after_aoe_deadsecs_and_its_announcement_revives_the_device():
    w = AoeWire(aoe_deadsecs=20).up()
    w.target_up = False
    t0, rto_s = w.now, w.dev._rto() / 1e6
    r = w.dev.read_page(0, w.now)
    w.run_until(lambda: r.done)
    assert r.status == -drv.EIO and "aoe_deadsecs" in r.error and w.dev.state == "down"
    assert 21 <= w.now - t0 <= 21 + 2 * rto_s          # checked when a frame expires: whole seconds past 20
    assert w.dev.write_page(1, bytes(4096), w.now).status == -drv.EIO   # down: refused at once
    w.target_up = True
    w.restart_target()                                     # its announcement: the device comes back
    w.run_until(lambda: w.dev.state == "up")
    assert read_pages(w, 1)[0].status == 0 and w.dev.counters["downdev"] == 1


def test_target_errors_and_config_strings():
    w = AoeWire()
    tgt = w.tgt
    # a read past the end: ATA status ERR, error IDNF
    (_, rsp), = tgt.handle(aoe.encode_ata(MAC_TGT, MAC_INI, 1, 0, 5, aflags=0x40, cmd_status=0x24, lba=2047, scnt=2), 0.0)
    a = aoe.decode_ata(rsp)
    assert a.cmd_status == aoe.ATA_DRDY | aoe.ATA_ERR and a.err_feature == aoe.ATA_IDNF
    # W flag on a read: AoE error BadArg
    (_, rsp), = tgt.handle(aoe.encode_ata(MAC_TGT, MAC_INI, 1, 0, 6, aflags=0x41, cmd_status=0x24, scnt=1), 0.0)
    h = aoe.decode_header(rsp)
    assert h.is_response and h.is_error and h.error == aoe.AOEERR_BADARG and h.tag == 6
    # ATA to the broadcast address: dropped; unknown command: BadCmd
    assert tgt.handle(aoe.encode_ata(MAC_TGT, MAC_INI, 0xFFFF, 0xFF, 7, aflags=0x40, cmd_status=0xEC, scnt=1), 0.0) == []
    (_, rsp), = tgt.handle(aoe.encode_cfg(MAC_TGT, MAC_INI, 1, 0, 8)[:19] + b"\x02" + bytes(40), 0.0)
    assert aoe.decode_header(rsp).error == aoe.AOEERR_BADCMD
    # config strings (r11 3.2, vblade confcmd)
    def cfg(ccmd, s):
        return tgt.handle(aoe.encode_cfg(aoe.BROADCAST_MAC, MAC_INI, 0xFFFF, 0xFF, 9, ccmd=ccmd, config=s), 0.0)
    assert aoe.decode_cfg(cfg(aoe.AOECCMD_SET, b"host-a")[0][1]).config == b"host-a"
    (_, rsp), = cfg(aoe.AOECCMD_SET, b"host-b")
    assert aoe.decode_header(rsp).error == aoe.AOEERR_CFG_SET and aoe.decode_cfg(rsp).config == b"host-a"
    assert cfg(aoe.AOECCMD_TEST, b"host-b") == [] and len(cfg(aoe.AOECCMD_PTEST, b"host")) == 1
    assert aoe.decode_cfg(cfg(aoe.AOECCMD_FSET, b"host-b")[0][1]).config == b"host-b"
    assert sum(tgt.dispositions.values()) == tgt.frames_in
    assert not any(w.img.data)                             # nothing written by any of it


def test_nas_server_aoe_flags_errors_are_one_line(tmp_path, capsys):
    from nas_server.main import main
    base = ["--data-dir", str(tmp_path), "--export", "swap", "--create-image", "img:1M", "--port", "0", "--portmap-port", "0"]
    cases = [(["--aoe-disk", "1.0=swap/img"], "--aoe-disk needs --aoe-interface"),
             (["--aoe-interface", "lo"], "name at least one --aoe-disk"),
             (["--aoe-interface", "lo", "--aoe-disk", "1=swap/img"], "expected SHELF.SLOT=[EXPORT/]IMAGE"),
             (["--aoe-interface", "lo", "--aoe-disk", "1.0=swap/nope"], "no image swap/nope; images: swap/img"),
             (["--aoe-interface", "lo", "--aoe-disk", "1.0=img", "--aoe-bufcnt", "0"], "--aoe-bufcnt 0: expected 1..65535")]
    for extra, text in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err, err
