"""The agent's sans-I/O network stack (Ethernet, ARP, IPv4, ICMP echo, UDP sockets).

Invariant: every receive buffer is paid for from the agent's page pool before its headers are
read, and goes back to it exactly once (see stack.py).
"""

from .stack import Stack, StackPolicy
from .udp import UdpSocket

__all__ = ["Stack", "StackPolicy", "UdpSocket"]
