"""Drop reasons and the SNMP-style counter tables, named as Linux names them.

Invariant: every buffer the stack frees goes through ``Stack.kfree_skb(skb, reason)`` (a drop,
counted once under one of ``DROP_REASONS``) or ``Stack.consume_skb(skb, where)`` (normal end of
life) -- never both, never twice (SkBuff.free raises on a double free). Received frames are also
counted in ``rx_fate``, so Σ rx_fate + frames still held == frames received.

Reasons are ``SKB_DROP_REASON_*`` suffixes (include/net/dropreason-core.h). Where Linux says
NOT_SPECIFIED (or reuses an unrelated reason) the testbed gives the case its own name, listed in
``TESTBED_REASONS`` with the Linux behaviour it stands for, so a report can tell the cases apart.
"""

LINUX_REASONS = (
    "NOMEM",              # no buffer for a received frame (rx_nobuf) or for a transmit
    "PFMEMALLOC",         # reserve-backed frame: not ARP/IP, or for a socket without SOCK_MEMALLOC
    "SOCKET_RCVBUFF",     # the socket's rmem_alloc exceeded its rcvbuf
    "SOCKET_CLOSE",       # still queued on a socket when it was closed
    "NO_SOCKET",          # UDP datagram for a port nobody is bound to
    "UNHANDLED_PROTO",    # EtherType / ARP hardware or opcode / ICMP type we do not handle
    "OTHERHOST",          # IP frame for another MAC (promiscuous reception)
    "PKT_TOO_SMALL",      # truncated header, or a length field beyond the received bytes
    "IP_INHDR",           # bad version / IHL / total length below the header
    "IP_CSUM",            # IPv4 header checksum
    "IP_INADDRERRORS",    # not for this host and we do not forward
    "IP_NOPROTO",         # IP protocol without a handler
    "IP_OUTNOROUTES",     # transmit: no route to the destination
    "UDP_CSUM",
    "ICMP_CSUM",
    "DUP_FRAG",           # fragment wholly inside one already queued
    "FRAG_REASM_TIMEOUT", # queued fragment of a datagram not completed within ipfrag_time
    "FRAG_TOO_FAR",       # ipfrag_max_dist: the queue was reinitialised
    "PKT_TOO_BIG",        # reassembled datagram would exceed 65535 bytes
    "NEIGH_FAILED",       # transmit: the next hop did not answer ARP
    "NEIGH_QUEUEFULL",    # transmit: the unresolved neighbour's queue was full (oldest dropped)
    "NEIGH_CREATEFAIL",   # transmit: no neighbour entry could be made (table at gc_thresh3)
    "FULL_RING",          # transmit: the device refused the frame
)

TESTBED_REASONS = (
    # RFC 5722 overlap: Linux kills the queue (Ip ReasmOverlaps), drops the incoming fragment as
    # NOT_SPECIFIED and purges the queued ones as FRAG_REASM_TIMEOUT; here all are FRAG_OVERLAP.
    "FRAG_OVERLAP",
    # ip_frag_queue's "discard_qp" for inconsistent lengths (a last fragment that disagrees with
    # the known end, data beyond it, an empty fragment): Linux NOT_SPECIFIED + queue killed.
    "FRAG_INVALID",
    # ipfrag_high_thresh exceeded: inet_frag_find() refuses a queue, ip_defrag() kfree_skb()s
    # the fragment as NOT_SPECIFIED and counts ReasmFails.
    "FRAG_MEM_LIMIT",
    # arp_process: an ARP whose target address is multicast or 127/8 (route_localnet 0) is
    # freed (out_free_skb, NOT_SPECIFIED) before it can create or update a neighbour entry.
    "ARP_BAD_TARGET",
)

DROP_REASONS = LINUX_REASONS + TESTBED_REASONS


def snmp_tables() -> dict[str, dict[str, int]]:
    """/proc/net/snmp + netstat-style tables (names as Linux prints them), all zero."""
    return {
        "Ip": dict.fromkeys((
            "InReceives", "InHdrErrors", "InAddrErrors", "InUnknownProtos", "InDiscards",
            "InDelivers", "OutRequests", "OutNoRoutes", "OutDiscards",
            "ReasmTimeout", "ReasmReqds", "ReasmOKs", "ReasmFails", "ReasmOverlaps",
            "FragOKs", "FragFails", "FragCreates", "InCsumErrors", "InTruncatedPkts"), 0),
        "Icmp": dict.fromkeys((
            "InMsgs", "InErrors", "InCsumErrors", "InEchos", "InEchoReps",
            "OutMsgs", "OutErrors", "OutEchos", "OutEchoReps"), 0),
        "Udp": dict.fromkeys((
            "InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors",
            "SndbufErrors", "InCsumErrors"), 0),
        "TcpExt": dict.fromkeys(("PFMemallocDrop", "TCPBacklogDrop"), 0),
        # /proc/net/stat/arp_cache columns the model has
        "ArpCache": dict.fromkeys((
            "entries", "allocs", "destroys", "res_failed", "unresolved_discards",
            "rcv_probes_ucast", "rcv_probes_mcast", "periodic_gc_runs", "forced_gc_runs",
            "table_fulls", "permanent_update_refused"), 0),
    }
