"""A capture of one veth from inside its namespace (AF_PACKET, ETH_P_ALL, this interface only),
for the namespace tests that let tshark judge what was on the wire. No tests here."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def veth_capture(ifname: str, pcap_path: str | None = None):
    """Capture ``ifname`` while the block runs; yields the list of (frame, time) it fills, and
    writes them to ``pcap_path`` (if given) when the block ends."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    cap.bind((ifname, 3))
    cap.settimeout(0.2)
    frames: list = []
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                frames.append((cap.recv(70000), time.time()))
            except socket.timeout:
                pass

    t = threading.Thread(target=run)
    t.start()
    try:
        yield frames
    finally:
        stop.set()
        t.join()
        cap.close()
        if pcap_path is not None:
            from client_agent.phy.pcap import PcapWriter
            w = PcapWriter(pcap_path)
            for f, ts in frames:
                w.write(f, ts)
            w.close()
