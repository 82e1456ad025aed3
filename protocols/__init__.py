"""Wire codecs shared by the client agent and the NAS: sans-I/O, no dependency on either side.

Each module encodes and decodes one storage protocol's frames or PDUs (``aoe``: ATA over
Ethernet r11). Decoders raise the module's error with a drop reason; they never touch a socket.
"""
