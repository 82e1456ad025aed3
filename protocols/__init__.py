"""Sans-I/O codecs of the storage protocols, shared by the targets (nas_server/) and the
initiators (client_agent/, and the protocols' own client state machines here): bytes in, values
out, and back. Neither side imports the other for these; nothing here touches a socket, a file or
a clock. Each module names its fields and constants as the protocol's own document does and
cites it.

    xdr.py               XDR (RFC 4506): Packer/Unpacker with bounded decoding
    rpc.py               ONC RPC v2 (RFC 5531): call/reply headers, AUTH_NONE/AUTH_SYS, TCP
                         record marking
    nfs3.py              NFSv3 (RFC 1813): procedures, arguments and results, nfsstat3
    mount.py             MOUNT v3 (RFC 1813 appendix I) and portmap v2 (RFC 1833)
    aoe.py               ATA over Ethernet r11: header, ATA and config/query commands
    nbd.py               NBD (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle, simple and
                         structured replies;  nbd_client.py: the sans-I/O NBD client
    iscsi.py             iSCSI (RFC 7143): BHS/PDUs, framing with CRC32C digests, text keys;
                         iscsi_initiator.py: the sans-I/O initiator
    scsi.py              SPC-4/SBC-3 CDBs, sense data and parameter data

Invariant for every module: a decoder either returns a fully validated value or raises the
module's error type naming what was wrong (with a drop reason where a frame is dropped); a length
field never makes it read or allocate beyond the bytes it was given (or the caller's stated
maximum).
"""
