"""The agent's sans-I/O network stack, split along Linux's seams.

    stack.py        Stack: one interface, one IPv4 address; composes core + ipv4 (struct net)
    core/           protocol-free: dev.py (NAPI receive, dev_add_pack EtherType table,
                    skb_pfmemalloc_protocol, taps, transmit, buffer accounting), sock.py (the
                    Sock base: rmem/truesize, SOCK_MEMALLOC, sk_gfp_mask, page frag, sk_filter --
                    the ONE pfmemalloc refusal), skbuff.py, drop.py (reasons, SNMP tables),
                    timer.py (the protocol timer heap), neighbour.py (the neighbour table),
                    page_frag.py
    ipv4/           ip_input (inet_add_protocol table), ip_output, ip_fragment, arp, icmp, udp
    sunrpc/         the RPC client: xprt (slots, xids, backlog), xprtsock (UDP), clnt

Invariant: every receive buffer is paid for from the agent's page pool before its headers are
read, and goes back to it exactly once (net/core/dev.py).
"""

from .core.dev import StackPolicy
from .ipv4.udp import UdpSocket
from .stack import Stack

__all__ = ["Stack", "StackPolicy", "UdpSocket"]
