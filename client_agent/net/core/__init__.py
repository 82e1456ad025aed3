"""The protocol-free core of the agent's stack (net/core/ in Linux).

    dev.py        NetCore: NAPI receive (allocate before reading, pfmemalloc from the reserve),
                  the dev_add_pack EtherType table, skb_pfmemalloc_protocol, taps (ptype_all),
                  one optional early demux, dev_queue_xmit, kfree_skb/consume_skb accounting,
                  rx_trace_hooks (drop-monitor observers), poll/run_timers/next_deadline
    sock.py       Sock: the socket base (rmem by truesize, SOCK_MEMALLOC, sk_gfp_mask, page frag,
                  sk_filter = the ONE place a pfmemalloc buffer is refused, PFMemallocDrop)
    skbuff.py     SkBuff: a frame's bytes and the pool pages that pay for them
    drop.py       drop reasons and the SNMP counter tables, named as Linux names them
    timer.py      Timer/TimerHeap: deadlines any protocol registers (plus table sources)
    neighbour.py  NeighTable: NUD states, timers, bounded queues, GC (net/core/neighbour.c)
    page_frag.py  page-fragment caches (sk_page_frag), for the §6.3 history model

Nothing here names a protocol above Ethernet except the EtherTypes skb_pfmemalloc_protocol lets
through (as Linux's does).
"""
