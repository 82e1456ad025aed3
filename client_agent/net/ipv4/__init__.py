"""IPv4 transport protocols of the agent's stack (net/ipv4/ in Linux).

Invariant: each protocol here is a sans-I/O object driven by ``(segment, now)`` and
``run_timers(now)``; it reaches the rest of the stack only through the host interface it is
given (``ip_output``, ``kfree_skb``/``consume_skb``, the page allocator, the SNMP tables).
"""
