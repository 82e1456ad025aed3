"""A capture of one veth from inside its namespace (AF_PACKET, ETH_P_ALL, this interface only),
for the namespace tests that let tshark judge what was on the wire. No tests here."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class CapturedFrames(list):
    """The (frame, time) list ``veth_capture`` fills; ``drops``: frames the kernel dropped
    because the capture socket was full (PACKET_STATISTICS tp_drops), set when the block ends."""
    drops: int = 0


@contextlib.contextmanager
def veth_capture(ifname: str, pcap_path: str | None = None):
    """Capture ``ifname`` while the block runs; yields the list of (frame, time) it fills, and
    writes them to ``pcap_path`` (if given) when the block ends."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    # a deep queue: this thread shares the GIL with the test's own peer, and with the default
    # rcvbuf (~90 full frames) a descheduled stretch under load dropped frames (CI, 2026-11-30)
    try:
        cap.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)      # SO_RCVBUFFORCE (root)
    except OSError:
        cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    cap.bind((ifname, 3))
    cap.settimeout(0.2)
    frames = CapturedFrames()
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
        # struct tpacket_stats {tp_packets, tp_drops}: what the kernel could not queue for us
        frames.drops = struct.unpack("II", cap.getsockopt(263, 6, 8))[1]    # SOL_PACKET, PACKET_STATISTICS
        cap.close()
        if pcap_path is not None:
            from client_agent.phy.pcap import PcapWriter
            w = PcapWriter(pcap_path)
            for f, ts in frames:
                w.write(f, ts)
            w.close()


class TcpdumpCapture:
    """tcpdump on one side of a NetPair (``side`` "server" or "client"), writing ``path``; ``bpf``:
    an optional capture filter. ``stop()`` keeps tcpdump's own summary in ``stats`` ("N packets
    captured ... M packets dropped by kernel"); ``tshark(*args)`` reads the file back."""

    def __init__(self, net, path: str, *bpf: str, side: str = "server", buffer_kib: int = 65536):
        import subprocess
        ns, ifname = (net.server_ns, net.server_if) if side == "server" else (net.client_ns, net.client_if)
        self.path = path
        self.p = net.popen(ns, ["tcpdump", "-i", ifname, "--immediate-mode", "-B", str(buffer_kib), "-U",
                                "-s", "0", "-w", path, *bpf], stderr=subprocess.PIPE)
        line = self.p.stderr.readline()
        assert b"listening on" in line, line
        self.stats = ""

    def stop(self, settle_s: float = 0.3) -> None:
        import signal
        time.sleep(settle_s)
        self.p.send_signal(signal.SIGINT)
        self.p.wait(5)
        self.stats = self.p.stderr.read().decode()

    def tshark(self, *args: str, timeout_s: float = 120) -> str:
        import subprocess
        return subprocess.run(["tshark", "-r", self.path, *args], capture_output=True, timeout=timeout_s,
                              text=True).stdout
