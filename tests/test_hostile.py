"""Hostile traffic on the in-memory wire (no root): each crafted frame is counted by its named
counter and the scenario's outcome does not change. Real packets: tests/test_netns_hostile.py."""

import pytest

from testbed import chaos, hostile
from testbed.sim import AGENT_IP, MAC_AGENT, MAC_NAS, MAC_NOISE, NAS_IP, NOISE_IP, run_sim

ADDRS = dict(agent_ip=AGENT_IP, agent_mac=MAC_AGENT, nas_ip=NAS_IP, nas_mac=MAC_NAS, noise_ip=NOISE_IP,
             noise_mac=MAC_NOISE)
N = 3


def _params(name):
    return dict(chaos.scaled(name), export_networks=[f"{AGENT_IP}/32"], ipfrag_time_s=0.5)


def test_frames_are_what_they_claim_scapy_oracle():
    from scapy.layers.inet import IP
    from scapy.layers.l2 import ARP, Ether
    got = {k: hostile.frames(k, seq=1, **ADDRS)[0] for k in hostile.KINDS}
    assert IP(got["ip_inhdr"][14:]).ihl == 4
    fresh = Ether(got["ip_csum"])
    del fresh[IP].chksum                                      # scapy recomputes it: must differ
    assert Ether(bytes(fresh))[IP].chksum != Ether(got["ip_csum"])[IP].chksum
    a = Ether(got["arp_spoof"])[ARP]
    assert a.op == 2 and a.psrc == NAS_IP and a.hwsrc == "02:00:c6:12:00:03"
    f = Ether(got["frag_orphan"])[IP]
    assert f.flags.MF and f.frag == 0
    assert Ether(got["ethertype"]).type == 0x88B5 and len(got["ethertype"]) == 60
    for k in ("mnt_outside", "nfs_outside"):
        assert Ether(got[k])[IP].dst == NAS_IP and Ether(got[k])[IP].src == NOISE_IP
    with pytest.raises(ValueError, match="unknown"):
        hostile.frames("nope", seq=0, **ADDRS)


def test_memalloc_outcome_unchanged_and_every_counter_exact():
    p = _params("memalloc")
    events = hostile.schedule(7, 0.01, 0.08, N, **ADDRS)      # before the pool runs low: plain pages
    quiet, loud = run_sim(p), run_sim(dict(p, hostile_events=events))
    assert quiet["outcome"] == loud["outcome"] == "recovered"
    assert loud["pages_verified"] == loud["acked_pages"] > 0 and loud["leaked_pages"] == 0
    h, q = loud["hostile"], quiet["hostile"]
    ip, drops = h["agent"]["Ip"], h["agent"]["drop_reasons"]
    assert ip["InCsumErrors"] == N and drops["IP_CSUM"] == N
    assert ip["InHdrErrors"] == 2 * N and drops["IP_INHDR"] == N          # csum errors count as header errors too
    assert drops["UNHANDLED_PROTO"] == N
    assert ip["ReasmTimeout"] == N and drops["FRAG_REASM_TIMEOUT"] == N and h["agent"]["ipfrag_queued"] == 0
    assert h["agent"]["ArpCache"]["permanent_update_refused"] == N
    assert h["nas"]["counters"]["mnt_MNT3ERR_ACCES"] == N and h["nas"]["nfs_status"]["NFS3ERR_ACCES"] == N
    # and none of these without the hostile sender
    assert q["agent"]["Ip"]["InHdrErrors"] == 0 and q["agent"]["ArpCache"]["permanent_update_refused"] == 0
    assert "mnt_MNT3ERR_ACCES" not in q["nas"]["counters"]


def test_hostile_frames_under_pressure_do_not_change_a_deadlock():
    p = _params("no-reserve")
    events = hostile.schedule(8, 0.05, 3.0, N, **ADDRS)
    quiet, loud = run_sim(p), run_sim(dict(p, hostile_events=events))
    assert quiet["outcome"] == loud["outcome"] == "deadlock"
    assert loud["pages_verified"] == loud["acked_pages"] and loud["leaked_pages"] == 0
    # the NAS (big pool) counts every call from outside the export; the agent's counters show only
    # the frames that found a receive page (an exhausted pool drops the rest as NOMEM first)
    assert loud["hostile"]["nas"]["counters"]["mnt_MNT3ERR_ACCES"] == N
    assert loud["hostile"]["nas"]["nfs_status"]["NFS3ERR_ACCES"] == N
    assert loud["hostile"]["agent"]["ArpCache"]["permanent_update_refused"] <= N


def test_open_export_lets_noise_mount():
    p = dict(_params("memalloc"), export_networks=None)
    r = run_sim(dict(p, hostile_events=hostile.schedule(7, 0.01, 0.08, 1, **ADDRS)))
    assert r["hostile"]["nas"]["counters"].get("mnt_MNT3ERR_ACCES", 0) == 0
    assert r["hostile"]["nas"]["counters"]["mnt_MNT3_OK"] == 2              # the agent's and noise's
