"""Devices under the stack (smoltcp's phy): the ``Device`` interface (device.py) and its
implementations -- AfPacketDevice on a real veth (afpacket.py), the in-memory WirePair
(wire_pair.py), seeded fault injection (fault.py), pcap taps (pcap.py). The only part of the
agent, with loop.py, that touches the operating system.
"""
