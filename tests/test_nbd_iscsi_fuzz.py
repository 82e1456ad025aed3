"""100,000 seeded malformed NBD and iSCSI messages into nas-server's target cores (in memory).

Each message is malformed by construction (one class of violation per message: bad magic, unknown
command or opcode, flags not valid for the command, ranges past the image's end, oversized
payloads, truncation, bad option data, bad text keys, CmdSN outside the window, digest errors,
Data-Out that matches no R2T, ...), is fed to a fresh connection (handshake or transmission /
full feature phase) and then the client hangs up. Asserted for every message: no exception
escapes, ``internal_errors`` stays 0, and the sum of the protocol-error counters (``drop_*``,
``NBD_E*``, ``NBD_REP_ERR_*``, ``reject_*``, ``CHECK_CONDITION``, ``login_*_fails``) grew -- every
one is counted. At the end the image is byte-identical and holds no pending data.
"""

import hashlib
import random
import struct

from nas_server.iscsi_target import IscsiTarget
from nas_server.nbd_target import NbdTarget
from protocols import iscsi, nbd, scsi
from tests.nbd_iscsi_kit import IQN, PEER, LOCAL, iscsi_in_full_feature, nbd_in_transmission, store

N_NBD = 50_000
N_ISCSI = 50_000
IMG_BYTES = 1 << 20
BLOCKS = IMG_BYTES // 512


def _errors(counters) -> int:
    return sum(v for k, v in counters.items()
               if k.startswith(("drop_", "NBD_E", "NBD_REP_ERR_", "reject_", "CHECK_CONDITION"))
               or (k.startswith("login_") and k.endswith("fails")))


def _image_state(img) -> tuple:
    return hashlib.sha256(img.data).hexdigest(), img.pending_bytes


def _fuzz(target, n: int, r: random.Random, case) -> None:
    """Feed ``n`` cases (``case(r) -> (bytes, connection)``), each split at a random point and followed
    by the client hanging up; every one must raise an error counter, none an internal error."""
    uncounted = []
    for i in range(n):
        msg, conn = case(r)
        e0 = _errors(target.counters)
        cut = r.randrange(0, len(msg) + 1)
        conn.feed(msg[:cut])
        conn.feed(msg[cut:])
        conn.eof()
        if _errors(target.counters) == e0:
            uncounted.append((i, msg[:64].hex()))
    assert not uncounted, (len(uncounted), uncounted[:5])
    assert target.counters["internal_errors"] == 0


# -- NBD ----------------------------------------------------------------------------------------
def _nbd_transmission_case(r: random.Random) -> bytes:
    kind = r.randrange(8)
    h = r.getrandbits(64)
    if kind == 0:   # bad request magic
        magic = r.choice([0, 0xFFFFFFFF, nbd.NBD_SIMPLE_REPLY_MAGIC, r.getrandbits(32) | 1])
        return struct.pack(">IHHQQI", magic if magic != nbd.NBD_REQUEST_MAGIC else 0, 0, 1, h, 0, 0)
    if kind == 1:   # command the export does not offer (TRIM, CACHE, BLOCK_STATUS, RESIZE, unknown)
        return nbd.encode_request(r.choice([4, 5, 7, 8, r.randrange(9, 65536)]), h, 0, 512)
    if kind == 2:   # command flags not valid for the command
        typ = r.choice([nbd.NBD_CMD_READ, nbd.NBD_CMD_FLUSH, nbd.NBD_CMD_WRITE])
        bad = r.choice([nbd.NBD_CMD_FLAG_NO_HOLE, nbd.NBD_CMD_FLAG_REQ_ONE, nbd.NBD_CMD_FLAG_FAST_ZERO, 1 << r.randrange(5, 16)])
        if typ == nbd.NBD_CMD_READ and bad == nbd.NBD_CMD_FLAG_DF:
            bad = nbd.NBD_CMD_FLAG_NO_HOLE
        data = bytes(64) if typ == nbd.NBD_CMD_WRITE else b""
        return nbd.encode_request(typ, h, 0, len(data), bad, data)
    if kind == 3:   # range past the export's end
        off = r.randrange(IMG_BYTES - 64, IMG_BYTES + (1 << 40))
        if r.random() < 0.5:
            return nbd.encode_request(nbd.NBD_CMD_READ, h, off, r.randrange(65, 4096))
        n = r.randrange(65, 4096)
        return nbd.encode_request(nbd.NBD_CMD_WRITE, h, off, n, data=r.randbytes(n))
    if kind == 4:   # payload larger than the maximum
        n = r.randrange(nbd.DEFAULT_MAX_PAYLOAD_BYTES + 1, 1 << 32)
        typ = r.choice([nbd.NBD_CMD_WRITE, nbd.NBD_CMD_READ])
        return nbd.encode_request(typ, h, 0, n) + (r.randbytes(r.randrange(0, 256)) if typ == nbd.NBD_CMD_WRITE else b"")
    if kind == 5:   # a valid WRITE cut short, then the client hangs up
        n = r.randrange(1, 4096)
        msg = nbd.encode_request(nbd.NBD_CMD_WRITE, h, r.randrange(0, IMG_BYTES - n), n, data=r.randbytes(n))
        return msg[: r.randrange(1, len(msg))]
    if kind == 6:   # FLUSH with an offset or length
        return nbd.encode_request(nbd.NBD_CMD_FLUSH, h, r.randrange(1, 1 << 20), r.randrange(0, 512))
    return nbd.encode_request(nbd.NBD_CMD_WRITE_ZEROES, h, IMG_BYTES - r.randrange(0, 512), r.randrange(513, 1 << 20))


def _nbd_handshake_case(r: random.Random) -> bytes:
    flags = (nbd.NBD_FLAG_C_FIXED_NEWSTYLE | nbd.NBD_FLAG_C_NO_ZEROES).to_bytes(4, "big")
    kind = r.randrange(9)
    if kind == 0:   # client flags with unknown bits
        return (r.getrandbits(30) << 2 | 1 << r.randrange(2, 32)).to_bytes(4, "big")
    if kind == 1:   # option magic wrong
        return flags + struct.pack(">QII", r.getrandbits(64) & ~1, nbd.NBD_OPT_GO, 0)
    if kind == 2:   # option longer than any valid option
        return flags + struct.pack(">QII", nbd.IHAVEOPT, r.choice([1, 3, 6, 7, 99]), r.randrange(nbd.MAX_OPTION_BYTES + 1, 1 << 32))
    if kind == 3:   # GO/INFO data inconsistent (name length, info count)
        name = b"swap/img"
        data = struct.pack(">I", len(name) + r.randrange(1, 1000)) + name + struct.pack(">H", r.randrange(0, 4))
        if r.random() < 0.5:
            data = struct.pack(">I", len(name)) + name + struct.pack(">H", r.randrange(5, 100)) + b"\0\3"
        return flags + nbd.encode_option(r.choice([nbd.NBD_OPT_GO, nbd.NBD_OPT_INFO]), data[: r.randrange(0, len(data) + 1)] if r.random() < 0.2 else data)
    if kind == 4:   # GO/INFO for an export that does not exist
        name = r.randbytes(r.randrange(1, 64)).replace(b"/", b"")
        return flags + nbd.encode_option(nbd.NBD_OPT_GO, nbd.encode_go_data(b"swap/x" + name))
    if kind == 5:   # EXPORT_NAME of an export that does not exist: the session ends
        return flags + nbd.encode_option(nbd.NBD_OPT_EXPORT_NAME, b"nope/" + r.randbytes(r.randrange(0, 100)))
    if kind == 6:   # LIST / STRUCTURED_REPLY with data
        return flags + nbd.encode_option(r.choice([nbd.NBD_OPT_LIST, nbd.NBD_OPT_STRUCTURED_REPLY]), r.randbytes(r.randrange(1, 64)))
    if kind == 7:   # unknown option
        return flags + nbd.encode_option(r.randrange(12, 1 << 32), r.randbytes(r.randrange(0, 64)))
    opt = nbd.encode_option(nbd.NBD_OPT_GO, nbd.encode_go_data(b"swap/img"))  # truncated option
    return flags + opt[: r.randrange(1, len(opt))]


def test_50k_malformed_nbd_messages_counted_image_unchanged():
    st, img = store(IMG_BYTES)
    img.data[:] = random.Random(1).randbytes(IMG_BYTES)
    before = _image_state(img)
    t = NbdTarget(st)

    def case(r):
        if r.random() < 0.3:
            return _nbd_handshake_case(r), t.connect(PEER)
        return _nbd_transmission_case(r), nbd_in_transmission(t, img, structured=r.random() < 0.5)
    _fuzz(t, N_NBD, random.Random(2025), case)
    assert _image_state(img) == before
    c = t.counters
    # every class was exercised
    for k in ("drop_bad_request_magic", "drop_payload_too_big", "drop_truncated", "drop_bad_client_flags",
              "drop_bad_option_magic", "drop_option_too_big", "drop_export_name_unknown", "NBD_EINVAL", "NBD_ENOSPC",
              "NBD_REP_ERR_INVALID", "NBD_REP_ERR_UNKNOWN", "NBD_REP_ERR_UNSUP"):
        assert c[k] > 0, (k, dict(c))


# -- iSCSI --------------------------------------------------------------------------------------
def _cmd(r, cdb, *, flags=iscsi.FLAG_F | iscsi.CMD_W, edtl=None, data=b"", cmd_sn=1, itt=None, immediate=False):
    return iscsi.Pdu(iscsi.SCSI_COMMAND, immediate, Flags=flags | iscsi.ATTR_SIMPLE, ITT=itt if itt is not None else r.randrange(1, 1 << 31),
                     ExpectedDataTransferLength=len(data) if edtl is None else edtl, CmdSN=cmd_sn, CDB=cdb, data=data)


def _iscsi_case(r: random.Random, digests: bool) -> tuple[bytes, bool]:
    """-> (bytes, login_phase). Full-feature cases assume ExpCmdSN 1 and no digests unless ``digests``."""
    enc = lambda p: iscsi.encode_pdu(p, digests, digests)  # noqa: E731
    kind = r.randrange(14)
    if kind == 0:   # opcode RFC 7143 does not define, or a target opcode from an initiator
        op = r.choice([0x07, 0x08, 0x0F, 0x11, 0x1C, 0x20, 0x21, 0x25, 0x31, 0x3F, 0x3C])
        bhs = bytearray(r.randbytes(48))
        bhs[0], bhs[4], bhs[5:8] = op, 0, b"\0\0\0"
        if digests:
            return bytes(bhs) + iscsi.digest_bytes(bhs), False
        return bytes(bhs), False
    if kind == 1:   # CDB opcode the LU does not know
        op = r.choice([0x04, 0x07, 0x42, 0x93, 0xA3, 0x5E, 0x8F, 0xFF])
        return enc(_cmd(r, bytes([op]) + r.randbytes(15), flags=iscsi.FLAG_F | iscsi.CMD_R, edtl=512)), False
    if kind == 2:   # WRITE past the end, with its immediate data
        blocks = r.randrange(1, 64)
        lba = r.randrange(BLOCKS - blocks + 1, 1 << 32)
        return enc(_cmd(r, scsi.cdb_rw(True, lba, blocks, sixteen=r.random() < 0.5), data=r.randbytes(blocks * 512))), False
    if kind == 3:   # WRITE with WRPROTECT on a LU without protection information
        cdb = bytearray(scsi.cdb_rw(True, 0, 1))
        cdb[1] |= r.randrange(1, 8) << 5
        return enc(_cmd(r, bytes(cdb), data=r.randbytes(512))), False
    if kind == 4:   # CmdSN outside the window
        cmd = _cmd(r, scsi.cdb_rw(True, 0, 1), data=r.randbytes(512), cmd_sn=r.choice([0, 1 + 32 + r.randrange(1 << 20)]))
        return enc(cmd), False
    if kind == 5:   # reserved ITT
        return enc(_cmd(r, scsi.cdb_rw(True, 0, 1), data=r.randbytes(512), itt=iscsi.RESERVED_TAG)), False
    if kind == 6:   # immediate data for a command that does not write
        return enc(_cmd(r, scsi.cdb_rw(False, 0, 1), flags=iscsi.FLAG_F | iscsi.CMD_R, edtl=512, data=r.randbytes(512))), False
    if kind == 7:   # data segment longer than MaxRecvDataSegmentLength: the connection closes
        p = _cmd(r, scsi.cdb_rw(True, 0, 1))
        bhs = bytearray(p.encode_bhs())
        bhs[5:8] = r.randrange(262144 + 1, 1 << 24).to_bytes(3, "big")
        return bytes(bhs) + (iscsi.digest_bytes(bhs) if digests else b"") + r.randbytes(r.randrange(0, 512)), False
    if kind == 8:   # Data-Out for no open task
        return enc(iscsi.Pdu(iscsi.SCSI_DATA_OUT, Flags=iscsi.FLAG_F, ITT=r.randrange(1 << 31), TTT=r.getrandbits(32),
                             BufferOffset=r.randrange(1 << 20), data=r.randbytes(512))), False
    if kind == 9:   # a write waiting for R2T gets a Data-Out that matches no R2T, then the initiator leaves
        itt = 77
        cmd = _cmd(r, scsi.cdb_rw(True, 0, 8), data=b"", edtl=4096, itt=itt)
        bad = iscsi.Pdu(iscsi.SCSI_DATA_OUT, Flags=iscsi.FLAG_F, ITT=itt, TTT=r.choice([iscsi.RESERVED_TAG, r.getrandbits(31)]),
                        BufferOffset=r.randrange(0, 4096), data=r.randbytes(512))
        return enc(cmd) + enc(bad), False
    if kind == 10:  # digest errors (only when digests are on) or a truncated PDU
        p = _cmd(r, scsi.cdb_rw(True, 0, 1), data=r.randbytes(512))
        wire = bytearray(iscsi.encode_pdu(p, digests, digests))
        if digests:
            i = r.choice([r.randrange(48, 52), r.randrange(len(wire) - 4, len(wire))])  # header or data digest
            wire[i] ^= 1 << r.randrange(8)
            return bytes(wire), False
        return bytes(wire[: r.randrange(1, len(wire))]), False
    if kind == 11:  # Text Request with malformed key=value data
        data = r.choice([b"SendTargets", b"=All\0", b"Send Targets=All\0", b"x" * 64 + b"=1\0", b"SendTargets=All"])
        return enc(iscsi.Pdu(iscsi.TEXT_REQUEST, True, Flags=iscsi.FLAG_F, ITT=r.randrange(1 << 31), TTT=iscsi.RESERVED_TAG,
                             CmdSN=1, data=data)), False
    if kind == 12:  # SNACK at ERL 0
        return enc(iscsi.Pdu(iscsi.SNACK_REQUEST, Flags=iscsi.FLAG_F, ITT=r.randrange(1 << 31))), False
    # login phase: unknown target, no InitiatorName, bad text, VersionMin > 0, a non-login PDU
    sub = r.randrange(5)
    keys = [("InitiatorName", "iqn.2025-01.test:fuzz"), ("TargetName", IQN), ("AuthMethod", "None")]
    vmin = 0
    data = None
    if sub == 0:
        keys[1] = ("TargetName", "iqn.2025-01.nowhere:" + r.randbytes(8).hex())
    elif sub == 1:
        keys = keys[1:]
    elif sub == 2:
        data = r.choice([b"InitiatorName", b"a=b", b"\xff\xfe=1\0", b"=\0"])
    elif sub == 3:
        vmin = r.randrange(1, 256)
    else:
        return iscsi.encode_pdu(_cmd(r, scsi.cdb_test_unit_ready(), flags=iscsi.FLAG_F, edtl=0)), True
    p = iscsi.Pdu(iscsi.LOGIN_REQUEST, True, Flags=iscsi.login_stage_flags(True, 0, 1), ISID=b"\x80\0\0\0\0\1",
                  VersionMin=vmin, ITT=1, data=data if data is not None else iscsi.encode_text(keys))
    return iscsi.encode_pdu(p), True


def test_50k_malformed_iscsi_pdus_counted_image_unchanged():
    st, img = store(IMG_BYTES)
    img.data[:] = random.Random(3).randbytes(IMG_BYTES)
    before = _image_state(img)
    t = IscsiTarget(st)
    r = random.Random(7143)
    plain = iscsi.Params(InitialR2T=True, ImmediateData=True, FirstBurstLength=65536, MaxRecvDataSegmentLength=262144)
    crc = iscsi.Params(InitialR2T=True, ImmediateData=True, FirstBurstLength=65536, MaxRecvDataSegmentLength=262144,
                       HeaderDigest="CRC32C", DataDigest="CRC32C")

    def case(r):
        digests = r.random() < 0.3
        msg, login = _iscsi_case(r, digests)
        return msg, t.connect(PEER, LOCAL) if login else iscsi_in_full_feature(t, img, crc if digests else plain)
    _fuzz(t, N_ISCSI, r, case)
    assert _image_state(img) == before
    c = t.counters
    for k in ("reject_command_not_supported", "reject_protocol_error", "reject_invalid_pdu_field",
              "reject_data_digest_error", "drop_header_digest_error", "drop_data_segment_too_long",
              "drop_cmdsn_outside_window", "drop_dataout_unknown_task", "drop_truncated", "drop_tasks_abandoned",
              "CHECK_CONDITION", "login_other_fails", "login_negotiate_fails"):
        assert c[k] > 0, (k, dict(c))
