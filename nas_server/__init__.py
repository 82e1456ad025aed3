"""The targets: an NFSv3 server (and an AoE target) over a store of image files, on kernel sockets.

    core.py        NasCore: one RPC call in, replies out (NFSv3, MOUNT, portmap); sans-I/O
    drc.py         the duplicate request cache
    store.py       exports and images (DirStore on disk, MemoryStore for tests and the sim)
    server.py      UDP + TCP (record marking) driver of the core; connection limits
    main.py        the ``nas-server`` command
    aoe_target.py, aoe_server.py   the AoE target core and its raw-socket driver
    refclient.py   a kernel-socket reference client on the same codecs (read-back, benchmarks)
    bench.py, netpair.py           the NAS's own benchmark and its namespace pair
The codecs are the neutral ``protocols`` package's.
"""
