"""The runner's pcap reader finds NAS replies by xid (scapy writes the fixture: an independent encoder)."""

import struct

from scapy.all import IP, UDP, Ether, wrpcap

from testbed.runner import compact, nfs_reply_xids


def test_reply_xids_from_pcap(tmp_path):
    nas, cli, noise = "198.18.0.1", "198.18.0.2", "198.18.0.3"
    reply = lambda xid: struct.pack("!II", xid, 1) + b"\0" * 150   # noqa: E731
    call = lambda xid: struct.pack("!II", xid, 0) + b"\0" * 150    # noqa: E731
    pkts = [Ether() / IP(src=cli, dst=nas) / UDP(sport=800, dport=2049) / call(0x11),
            Ether() / IP(src=nas, dst=cli) / UDP(sport=2049, dport=800) / reply(0x11),
            Ether() / IP(src=noise, dst=cli) / UDP(sport=5000, dport=9001) / reply(0x99),   # flood, not NAS
            Ether() / IP(src=nas, dst=cli) / UDP(sport=111, dport=800) / reply(0x77),       # not the NFS port
            Ether() / IP(src=nas, dst=cli) / UDP(sport=2049, dport=800) / reply(0xdeadbeef)]
    p = str(tmp_path / "c.pcap")
    wrpcap(p, pkts)
    assert nfs_reply_xids(p, nas, cli) == [0x11, 0xdeadbeef]
    assert nfs_reply_xids(str(tmp_path / "missing.pcap"), nas, cli) == []


def test_compact_sample_tolerates_a_partial_snapshot():
    c = compact(1.0, {"alloc": {"zoneinfo": {"free": 5, "low": 6}}})
    assert c["free"] == 5 and c["pswpout"] == 0 and c["rpc_retrans"] is None
