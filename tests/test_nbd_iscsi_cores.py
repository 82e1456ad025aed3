"""NBD and iSCSI codecs and target cores in memory: byte fixtures, the fixed-newstyle haggle with
its fallbacks, iSCSI login and key negotiation, R2T/Data-Out, and the restart semantics (a crash
loses only what was neither FUA nor flushed)."""

import os

from nas_server.iscsi_target import IscsiTarget
from nas_server.nbd_target import NbdTarget
from protocols import iscsi, nbd, scsi
from protocols.iscsi_initiator import CommandDone, LoggedIn, Targets
from protocols.nbd_client import Ready, Reply
from tests.nbd_iscsi_kit import IQN, iscsi_pair, nbd_pair, pump, store

# -- byte fixtures -----------------------------------------------------------------------------
NBD_GREETING = bytes.fromhex("4e42444d41474943" "49484156454f5054" "0003")
NBD_READ_REQUEST = bytes.fromhex("25609513" "0000" "0000" "0000000000000007" "0000000000001000" "00000200")
# A Login Request as libiscsi sends its first one: I, T, CSG=0, NSG=1, ISID, ITT 0, CmdSN 0, no data.
ISCSI_LOGIN = bytes.fromhex("43810000" "00000000" "800000000001" "0000" "00000000" "0000" "0000"
                            "00000000" "00000000") + bytes(16)


def test_nbd_fixtures_parse_and_emit():
    assert nbd.encode_greeting() == NBD_GREETING
    assert nbd.decode_greeting(NBD_GREETING) == nbd.NBD_FLAG_FIXED_NEWSTYLE | nbd.NBD_FLAG_NO_ZEROES
    r = nbd.decode_request(NBD_READ_REQUEST)
    assert (r.type, r.handle, r.offset, r.length) == (nbd.NBD_CMD_READ, 7, 4096, 512)
    assert nbd.encode_request(nbd.NBD_CMD_READ, 7, 4096, 512) == NBD_READ_REQUEST
    assert nbd.decode_go_data(nbd.encode_go_data(b"swap/img", (3, 1))) == (b"swap/img", [3, 1])


def test_iscsi_fixture_parse_and_emit_and_crc32c():
    p = iscsi.decode_bhs(ISCSI_LOGIN)
    assert p.opcode == iscsi.LOGIN_REQUEST and p.immediate and iscsi.login_stages(p.Flags) == (True, False, 0, 1)
    assert p.ISID == bytes.fromhex("800000000001") and p.DataSegmentLength == 0
    assert p.encode_bhs() == ISCSI_LOGIN
    assert iscsi.crc32c(b"123456789") == 0xE3069283  # RFC 3385's check value
    # RFC 7143 B.4 example: 32 bytes of zeros -> CRC32C 0x8a9136aa
    assert iscsi.crc32c(bytes(32)) == 0x8A9136AA


def test_iscsi_negotiation_result_functions():
    ours = iscsi.Params(InitialR2T=False, ImmediateData=True, MaxBurstLength=1 << 20, FirstBurstLength=65536,
                        HeaderDigest="CRC32C,None", DataDigest="CRC32C,None", DefaultTime2Wait=2)
    agreed = iscsi.Params()
    offer = [("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "262144"),
             ("FirstBurstLength", "999999999"), ("HeaderDigest", "None,CRC32C"), ("DataDigest", "CRC32C"),
             ("DefaultTime2Wait", "5"), ("MaxRecvDataSegmentLength", "65536")]
    resp = dict(iscsi.negotiate(offer, ours, agreed))
    assert resp["InitialR2T"] == "Yes" and resp["ImmediateData"] == "No"          # OR, AND
    assert resp["MaxBurstLength"] == "262144" and resp["DefaultTime2Wait"] == "5"  # Minimum, Maximum
    assert resp["FirstBurstLength"] == "Reject"                                    # out of range
    assert resp["HeaderDigest"] == "None" and resp["DataDigest"] == "CRC32C"       # first of theirs we have
    assert "MaxRecvDataSegmentLength" not in resp and agreed.PeerMaxRecvDataSegmentLength == 65536
    problems = iscsi.apply_answer([("MaxBurstLength", "999999")], iscsi.Params(MaxBurstLength=262144), iscsi.Params())
    assert problems and "Minimum" in problems[0]


def test_nbd_haggle_go_structured_and_fallbacks():
    st, img = store()
    t = NbdTarget(st)
    c, conn, ev = nbd_pair(t)
    assert isinstance(ev[0], Ready) and ev[0].via == "NBD_OPT_GO" and ev[0].structured
    assert ev[0].block_size == (1, 4096, nbd.DEFAULT_MAX_PAYLOAD_BYTES) and ev[0].size_bytes == 1 << 20
    c, conn, ev = nbd_pair(t, structured=False, use_go=False)
    assert ev[0].via == "NBD_OPT_EXPORT_NAME" and not ev[0].structured
    t.structured_replies = False
    c, conn, ev = nbd_pair(t)
    assert ev[0].via == "NBD_OPT_GO" and not ev[0].structured
    c, conn, ev = nbd_pair(t, export=b"swap/none")
    assert ev[0].reason == "NBD_REP_ERR_UNKNOWN" and t.counters["NBD_REP_ERR_UNKNOWN"] == 1


def test_nbd_fua_flush_and_crash_semantics():
    st, img = store()
    t = NbdTarget(st)
    c, conn, _ = nbd_pair(t)
    a, b, x = b"A" * 4096, b"B" * 4096, b"X" * 4096
    c.write(0, a, fua=True)
    c.write(4096, b)
    c.flush()
    c.write(8192, x)
    h = c.read(0, 12288)
    replies = {e.handle: e for e in pump(c, conn) if isinstance(e, Reply)}
    assert all(r.error == 0 for r in replies.values()) and replies[h].data == a + b + x
    assert t.counters["NBD_CMD_WRITE_FUA"] == 1 and t.counters["NBD_CMD_FLUSH"] == 1
    st.crash(b"newverf1")
    assert img.read(0, 12288) == a + b + bytes(4096)  # the unflushed write is gone, the rest is not


def test_iscsi_login_discovery_and_data_paths():
    st, img = store(4 << 20)
    t = IscsiTarget(st)
    i, conn, ev = iscsi_pair(t, "", discovery=True)
    i.send_targets()
    assert [e for e in pump(i, conn) if isinstance(e, Targets)][0].targets == [(IQN, "198.18.0.1:3260,1")]
    for hd, ir2t in (("None", True), ("CRC32C", False)):
        offer = iscsi.Params(InitialR2T=ir2t, ImmediateData=not ir2t, MaxRecvDataSegmentLength=8192,
                             FirstBurstLength=16384, MaxBurstLength=65536)
        i, conn, ev = iscsi_pair(t, header_digest=hd, data_digest=hd, offer=offer)
        li = [e for e in ev if isinstance(e, LoggedIn)][0]
        assert (li.params.HeaderDigest, li.params.InitialR2T, li.params.PeerMaxRecvDataSegmentLength) == \
            (hd, ir2t, 262144)
        data = os.urandom(300 * 512)  # > FirstBurstLength and > MaxBurstLength: several R2Ts
        itt = i.command(scsi.cdb_rw(True, 8, 300, fua=True), data_out=data)
        done = [e for e in pump(i, conn) if isinstance(e, CommandDone)]
        assert [(d.itt, d.status) for d in done] == [(itt, scsi.GOOD)]
        itt = i.command(scsi.cdb_rw(False, 8, 300), read_bytes=len(data))
        done = [e for e in pump(i, conn) if isinstance(e, CommandDone)]
        assert done[0].data == data and img.data[4096 : 4096 + len(data)] == data  # FUA: durable
        itt = i.command(scsi.cdb_rw(False, 8192, 1), read_bytes=512)
        done = [e for e in pump(i, conn) if isinstance(e, CommandDone)][0]
        assert done.status == scsi.CHECK_CONDITION
        assert scsi.decode_sense(done.sense) == (scsi.ILLEGAL_REQUEST, scsi.ASC_LBA_OUT_OF_RANGE)
    assert t.counters["r2t_pdus"] >= 6 and t.counters["WRITE_10_FUA"] == 2


def test_iscsi_sync_cache_and_crash_semantics():
    st, img = store(1 << 20)
    t = IscsiTarget(st)
    i, conn, _ = iscsi_pair(t)
    a, b, x = b"a" * 4096, b"b" * 4096, b"x" * 4096
    for cdb, data in ((scsi.cdb_rw(True, 0, 8, fua=True), a), (scsi.cdb_rw(True, 8, 8), b),
                      (scsi.cdb_sync_cache(), b""), (scsi.cdb_rw(True, 16, 8, sixteen=True), x)):
        i.command(cdb, data_out=data)
        assert [e.status for e in pump(i, conn) if isinstance(e, CommandDone)] == [scsi.GOOD]
    st.crash(b"newverf2")
    assert img.read(0, 12288) == a + b + bytes(4096)
    assert t.counters["SYNCHRONIZE_CACHE"] == 1 and t.counters["WRITE_16"] == 1
