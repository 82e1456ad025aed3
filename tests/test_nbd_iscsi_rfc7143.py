"""The iSCSI target's answers where libiscsi's ``iscsi-test-cu`` iSCSI family found it deviating from
RFC 7143 (in memory, no sockets): a READ with ExpectedDataTransferLength 0, a WRITE whose EDTL is
larger than the command takes, and Data-Out PDUs with out-of-order DataSN."""

from protocols import iscsi, scsi
from tests.nbd_iscsi_kit import iscsi_in_full_feature, store
from nas_server.iscsi_target import IscsiTarget


def _pdus(out: bytes) -> list:
    r = iscsi.PduReader(1 << 24)
    r.buf += out
    got = []
    while (p := r.next_pdu()) is not None:
        got.append(p)
    return got


def _cmd(cdb: bytes, itt: int, cmd_sn: int, edtl: int, flags: int, data: bytes = b"") -> bytes:
    return iscsi.encode_pdu(iscsi.Pdu(iscsi.SCSI_COMMAND, Flags=flags, ITT=itt, CmdSN=cmd_sn, ExpStatSN=1,
                                      ExpectedDataTransferLength=edtl, CDB=cdb.ljust(16, b"\0"), data=data))


def _data_out(itt: int, datasn: int, offset: int, data: bytes, final: bool, ttt: int = iscsi.RESERVED_TAG) -> bytes:
    return iscsi.encode_pdu(iscsi.Pdu(iscsi.SCSI_DATA_OUT, Flags=iscsi.FLAG_F if final else 0, ITT=itt, TTT=ttt,
                                      DataSN=datasn, BufferOffset=offset, data=data))


READ10_1 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
WRITE10_2 = bytes([0x2A, 0, 0, 0, 0, 100, 0, 0, 2, 0])  # LBA 100, 2 blocks


def _session(**kw):
    st, img = store()
    params = iscsi.Params(InitialR2T=False, ImmediateData=True, FirstBurstLength=65536, **kw)
    return img, iscsi_in_full_feature(IscsiTarget(st), img, params)


def test_read_with_edtl_0_answers_a_scsi_response_with_the_overflow_not_an_empty_data_in():
    """libiscsi fails the connection on a Data-In without data (iscsi_add_data of 0 bytes): the
    test tool's Read10Invalid hung on it. The status goes in a SCSI Response, O bit, residual 512."""
    _img, conn = _session()
    (p,) = _pdus(conn.feed(_cmd(READ10_1, 5, 1, 0, iscsi.FLAG_F | iscsi.CMD_R)))
    assert (p.opcode, p.Status, p.Flags & (iscsi.RSP_O | iscsi.RSP_U), p.ResidualCount, p.data) == \
        (iscsi.SCSI_RESPONSE, scsi.GOOD, iscsi.RSP_O, 512, b"")


def test_write_with_edtl_past_the_command_takes_the_unsolicited_data_and_answers_underflow():
    """EDTL 4096 for a one-block WRITE with 4096 bytes of immediate data (Write10Residuals sends
    10000): it never executed (the data did not fit the task buffer) and the test tool hung. Now the
    512 bytes the command takes are written, the rest discarded, and the response has the U bit
    with residual 3584."""
    img, conn = _session()
    data = bytes([0xA6]) * 4096
    cdb = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])
    (p,) = _pdus(conn.feed(_cmd(cdb, 6, 1, 4096, iscsi.FLAG_F | iscsi.CMD_W, data)))
    assert (p.opcode, p.Status, p.Flags & (iscsi.RSP_O | iscsi.RSP_U), p.ResidualCount) == \
        (iscsi.SCSI_RESPONSE, scsi.GOOD, iscsi.RSP_U, 3584)
    assert img.read(8 * 512, 1024) == data[:512] + bytes(512)
    assert conn.tasks == {} and conn.task_bytes == 0


def test_unsolicited_data_past_what_the_command_takes_is_received_before_the_response():
    img, conn = _session()
    cdb = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])
    assert conn.feed(_cmd(cdb, 7, 1, 2048, iscsi.CMD_W)) == b""  # F clear: 2048 unsolicited bytes follow
    assert conn.feed(_data_out(7, 0, 0, b"x" * 1024, False)) == b""
    (p,) = _pdus(conn.feed(_data_out(7, 1, 1024, b"y" * 1024, True)))
    assert (p.Status, p.Flags & iscsi.RSP_U, p.ResidualCount) == (scsi.GOOD, iscsi.RSP_U, 1536)
    assert img.read(8 * 512, 512) == b"x" * 512


def test_out_of_order_datasn_fails_the_task_once_its_data_is_in_as_rfc7143_7_8():
    """DataSN 1 then 0 (libiscsi's iSCSIDataSnInvalid, case 4): the first implies a lost PDU; the
    task ends with CHECK CONDITION ABORTED COMMAND / PROTOCOL SERVICE CRC ERROR after the F bit,
    nothing reaches the image and the connection stays up for the next command."""
    img, conn = _session()
    before = img.read(100 * 512, 1024)
    assert conn.feed(_cmd(WRITE10_2, 8, 1, 1024, iscsi.CMD_W)) == b""
    assert conn.feed(_data_out(8, 1, 0, b"a" * 512, False)) == b""  # out of order: task failed, waits for F
    (p,) = _pdus(conn.feed(_data_out(8, 0, 512, b"b" * 512, True)))
    assert (p.opcode, p.Status) == (iscsi.SCSI_RESPONSE, scsi.CHECK_CONDITION)
    assert (p.data[2 + 2] & 0x0F, p.data[2 + 12], p.data[2 + 13]) == (scsi.ABORTED_COMMAND, 0x47, 0x05)
    assert img.read(100 * 512, 1024) == before and not conn.closed and conn.task_bytes == 0
    c = conn.t.counters
    assert (c["drop_dataout_datasn_error"], c["drop_dataout_failed_task"], c["dataout_failed_tasks"]) == (1, 1, 1)
    # one PDU with DataSN 27 (case 2) fails at once: it carries F
    (p,) = _pdus(conn.feed(_cmd(WRITE10_2, 9, 2, 1024, iscsi.CMD_W) + _data_out(9, 27, 0, b"c" * 1024, True)))
    assert p.Status == scsi.CHECK_CONDITION
    # in order, the next write lands
    (p,) = _pdus(conn.feed(_cmd(WRITE10_2, 10, 3, 1024, iscsi.CMD_W) + _data_out(10, 0, 0, b"d" * 512, False)
                           + _data_out(10, 1, 512, b"e" * 512, True)))
    assert p.Status == scsi.GOOD and img.read(100 * 512, 1024) == b"d" * 512 + b"e" * 512


def test_idle_session_gets_a_nop_in_ping_and_is_closed_only_when_it_stays_silent():
    """The server's idle sweep asks the core: a NOP-In ping (ITT 0xffffffff, a TTT, StatSN not
    advanced, RFC 7143 11.19); a NOP-Out answer keeps the session; a second silent period closes."""
    _img, conn = _session()
    (ping,) = _pdus(conn.idle(0.0))
    assert (ping.opcode, ping.ITT, ping.StatSN) == (iscsi.NOP_IN, iscsi.RESERVED_TAG, 1) and ping.TTT != iscsi.RESERVED_TAG
    answer = iscsi.Pdu(iscsi.NOP_OUT, True, Flags=iscsi.FLAG_F, ITT=iscsi.RESERVED_TAG, TTT=ping.TTT, CmdSN=1)
    assert conn.feed(iscsi.encode_pdu(answer)) == b""  # the answer: no reply, no Reject
    (ping2,) = _pdus(conn.idle(1.0))  # answered: another period, another ping
    assert ping2.StatSN == 1 and ping2.TTT != ping.TTT
    assert conn.idle(2.0) is None  # not answered
    assert conn.t.counters["nopin_pings"] == 2 and conn.t.counters["close_idle_nopin_unanswered"] == 1
