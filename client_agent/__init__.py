"""The client agent: a userspace "host" under memory pressure -- Linux's allocator, kswapd, a
sans-I/O network stack on AF_PACKET, and storage clients (NFS today) -- laid out along Linux's
own seams (docs/agent-shape.md has the tree, the two interfaces and how to add a protocol).

    host.py      Host: the composition root (allocator, scheduler, stack, kswapd, swap devices,
                 file mappings) used by the client-agent process AND the simulation;
                 STORAGE_KINDS maps a device spec's ``kind`` to its backend
    agent.py     Agent(Host) behind the control socket; the ``client-agent`` command
    loop.py      selector + timer heap + injectable clock;  tasks.py  tasks and wait queues
    bugs.py      switches that put back historic kernel bugs (tests/test_kernel_history.py)
    mm/          memory management, protocol-free (page_alloc, vmscan, anon, swapfile, filemap,
                 page_io: the StorageBackend interface)
    net/         the network stack: core/ (dev, sock, skbuff, timers, neighbour), ipv4/, sunrpc/
    fs/          storage clients as file systems: nfs/
    drivers/     storage clients as block drivers: block/aoe (NBD, iSCSI next)
    wire/        frame views and encoders (Ethernet, ARP, IPv4, ICMP, UDP)
    phy/         devices: AF_PACKET, the in-memory wire, fault injection, pcap taps

Imports go one way: agent -> host -> fs, drivers -> net, mm -> wire; phy depends only on wire;
mm imports no protocol (tests/test_layering.py).
"""
