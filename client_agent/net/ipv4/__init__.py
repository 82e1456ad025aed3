"""IPv4 for the agent's stack (net/ipv4/): the EtherType and IP-protocol handlers and their tables.

    ip_input.py     ip_rcv (ETH_P_IP handler): header checks, our address, reassembly, then the
                    IP protocol table (inet_add_protocol / ip_local_deliver)
    ip_output.py    ip_queue_xmit: route, header, fragmentation, neighbour output
    arp.py          arp_rcv (ETH_P_ARP handler), ARP requests and replies
    icmp.py         IPPROTO_ICMP: echo request/reply
    udp.py          IPPROTO_UDP: UdpSocket (a net.core.sock.Sock), port table, early demux
    tcp.py          IPPROTO_TCP: Tcp (demux, request sockets, tcp_mem) and TcpSock (a Sock)
    ip_fragment.py  reassembly (ip_defrag): queues, overlap rules, ipfrag memory, inet_peer
    (the neighbour table ARP fills is net/core/neighbour.py)

Adding a transport protocol: a module with ``xxx_init(stack)`` that calls
``stack.inet_add_protocol(IPPROTO_XXX, handler)``, defines its socket as a subclass of
``net.core.sock.Sock`` calling ``sk_filter`` before queueing, registers timers on
``stack.timers`` and its held buffers in ``stack.rx_holders``; then one line in ``inet_init``.
"""

from __future__ import annotations

from functools import partial

from ...wire.ethernet import ETH_P_ARP, ETH_P_IP
from ...wire.ipv4 import IPPROTO_ICMP
from .arp import arp_rcv
from .icmp import icmp_rcv
from .ip_input import ip_rcv
from .tcp import tcp_init
from .udp import udp_init


def inet_init(st, seed: int = 0) -> None:
    """Register IPv4, ARP, ICMP, UDP and TCP in ``st``'s tables (af_inet.c's inet_init);
    ``seed`` keys TCP's ISN and timestamp offsets (RFC 6528) so runs replay."""
    st.dev_add_pack(ETH_P_IP, partial(ip_rcv, st))
    st.dev_add_pack(ETH_P_ARP, partial(arp_rcv, st))
    st.inet_add_protocol(IPPROTO_ICMP, partial(icmp_rcv, st))
    udp_init(st)
    tcp_init(st, seed)
