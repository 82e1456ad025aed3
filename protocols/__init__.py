"""Wire codecs shared by the client agent and nas-server: sans-I/O, bytes in, values or bytes out.

Each module names its fields and constants as the protocol's own document does and cites it:
``aoe`` (ATA over Ethernet r11), ``nbd`` (NBD protocol, NetworkBlockDevice/nbd doc/proto.md),
``iscsi`` (RFC 7143), ``scsi`` (SPC-4/SBC-3 CDBs, sense data and parameter data); the sans-I/O
client state machines ``nbd_client`` and ``iscsi_initiator``. Decoders raise the module's error
with a drop reason. No module here touches a socket, a file or a clock.
"""
