"""A hostile sender in the noise host during a real memalloc run (root): the outcome is unchanged
and each crafted frame shows in its named counter, on the agent and on the NAS. ~5 s."""

import os
import stat

from testbed import hostile

N = 3


def test_hostile_sender_during_real_memalloc(tmp_path):
    r = hostile.run_real(str(tmp_path / "h"), per_kind=N, seed=1)
    assert r["send_error"] is None and r["sent"] == {k: N for k in hostile.KINDS}
    assert r["outcome"] == r["expect"] == "recovered"
    assert r["pages_lost"] == 0 and r["pages_verified"] == r["pages_written"] > 0
    a, nas = r["agent"], r["nas"]
    assert a["Ip.InCsumErrors"] == N and a["drop.IP_CSUM"] == N
    assert a["Ip.InHdrErrors"] == 2 * N and a["drop.IP_INHDR"] == N
    assert a["ArpCache.permanent_update_refused"] == N
    # ipfrag_time is 30 s, the run ~3 s: the orphans are still queued when the agent is asked
    assert a["ipfrag.fragments"] + a["Ip.ReasmTimeout"] == N
    # an unknown EtherType that got a reserve page is dropped as PFMEMALLOC (skb_pfmemalloc_protocol)
    # before it could be called unhandled: under this pressure 1..N of them stay UNHANDLED_PROTO
    assert a["drop.UNHANDLED_PROTO"] + a["pfmemalloc_proto_drop"] == N
    assert nas == {"mnt_MNT3ERR_ACCES": N, "NFS3ERR_ACCES": N}
    for h in ("client", "nas", "noise"):
        p = tmp_path / "h" / "pcap" / f"{h}.pcap"
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert stat.S_IMODE(os.stat(tmp_path / "h" / "pcap").st_mode) == 0o700
