"""Sans-I/O codecs of the storage protocols, shared by the targets (nas_server/, and the NBD,
iSCSI and AoE targets to come) and the initiators (client_agent/): bytes in, values out, and back.
Neither side imports the other for these; nothing here touches a socket, a file or a clock.

    xdr.py     XDR (RFC 4506): Packer/Unpacker with bounded decoding
    rpc.py     ONC RPC v2 (RFC 5531): call/reply headers, AUTH_NONE/AUTH_SYS, TCP record marking
    nfs3.py    NFSv3 (RFC 1813): procedures, arguments and results, nfsstat3
    mount.py   MOUNT v3 (RFC 1813 appendix I) and portmap v2 (RFC 1833)
    aoe.py     ATA over Ethernet r11: header, ATA and config/query commands (EtherType 0x88a2)
    (nbd.py    NBD: newstyle negotiation, transmission requests and replies -- being added)
    (iscsi.py  iSCSI (RFC 7143): BHS/PDUs, login, SCSI commands -- being added)

Invariant for every module: a decoder either returns a fully validated value or raises the
module's error type naming what was wrong (with a drop reason where a frame is dropped); a length field never makes it read or allocate beyond
the bytes it was given (or the caller's stated maximum).
"""
