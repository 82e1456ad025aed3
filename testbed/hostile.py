"""Hostile traffic for a running scenario: crafted frames a noise host sends besides the flood.

Invariant owned here: every frame kind maps to exactly one named counter on the host that must
discard it, and none of them can change a scenario's outcome (they are few, cost one receive page
each for an instant, and never reach the NFS transport socket):

| kind              | what                                                   | counted as (where)                              |
| ----------------- | ------------------------------------------------------ | ----------------------------------------------- |
| ``ip_csum``       | IPv4 header with a wrong checksum                       | agent Ip InCsumErrors + InHdrErrors, drop IP_CSUM |
| ``ip_inhdr``      | IPv4 header with IHL 4 (< 5 words)                      | agent Ip InHdrErrors, drop IP_INHDR              |
| ``ethertype``     | a 60-byte frame of EtherType 0x88b5 (local experimental) | agent drop UNHANDLED_PROTO (PFMEMALLOC if it took a reserve page) |
| ``frag_orphan``   | first fragment (MF, offset 0) whose rest never comes    | agent ipfrag queue, then ReasmTimeout / FRAG_REASM_TIMEOUT |
| ``arp_spoof``     | ARP reply "198.18.0.1 is at <noise MAC>" (the NAS's IP)  | agent ArpCache permanent_update_refused          |
| ``mnt_outside``   | MOUNT MNT /swap from the noise host                     | NAS counters mnt_MNT3ERR_ACCES (export restricted) |
| ``nfs_outside``   | NFS GETATTR on the export's root fh from the noise host | NAS nfs_status NFS3ERR_ACCES                      |

The last two need the export restricted to the client's /32 (runner ``export_networks``; the sim's
``export_networks``): with the default 198.18.0.0/24 the noise host may mount, and they would succeed.

scapy builds the frames (not the agent's hot path; style.md): the test oracle for them is the agent's
own parser, which must count each one as above. ``send_frames`` sends them from inside the noise
namespace with an AF_PACKET socket.
"""

from __future__ import annotations

import socket

KINDS = ("ip_csum", "ip_inhdr", "ethertype", "frag_orphan", "arp_spoof", "mnt_outside", "nfs_outside")
ETH_P_ALL = 0x0003


def _mac(m) -> str:
    return m if isinstance(m, str) else ":".join(f"{b:02x}" for b in m)


def export_root_fh(export: str = "swap") -> bytes:
    """The NAS's file handle for an export's directory, computed as nas_server does (fsid = crc32)."""
    import zlib

    from nas_server.core import FH_KIND_DIR, make_fh
    return make_fh(FH_KIND_DIR, zlib.crc32(export.encode()) or 1, 1)


def frames(kind: str, *, seq: int, agent_ip: str, agent_mac, nas_ip: str, nas_mac, noise_ip: str,
           noise_mac) -> list[bytes]:
    """The frames of one hostile event of ``kind`` (``seq`` varies ids/xids/ports)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    from protocols import mount, nfs3, rpc

    a_mac, n_mac, z_mac = _mac(agent_mac), _mac(nas_mac), _mac(noise_mac)
    to_agent = Ether(dst=a_mac, src=z_mac)
    to_nas = Ether(dst=n_mac, src=z_mac)
    if kind == "ip_csum":
        raw = bytearray(bytes(to_agent / IP(src=noise_ip, dst=agent_ip, id=seq) / UDP(sport=40000, dport=9001) / (b"\x5a" * 32)))
        raw[24] ^= 0xFF                                   # IPv4 header checksum, first byte
        return [bytes(raw)]
    if kind == "ip_inhdr":
        raw = bytearray(bytes(to_agent / IP(src=noise_ip, dst=agent_ip, id=seq) / UDP(sport=40000, dport=9001) / (b"\x5a" * 32)))
        raw[14] = 0x44                                    # version 4, IHL 4 words
        return [bytes(raw)]
    if kind == "ethertype":
        return [bytes(Ether(dst=a_mac, src=z_mac, type=0x88B5) / (b"\x00" * 46))]
    if kind == "frag_orphan":
        # 1480 bytes of a 3000-byte datagram; offsets 1480.. never follow
        pkt = to_agent / IP(src=noise_ip, dst=agent_ip, id=0x7000 + (seq & 0xFFF), flags="MF", frag=0, proto=17) / (b"\x33" * 1480)
        return [bytes(pkt)]
    if kind == "arp_spoof":
        return [bytes(Ether(dst=a_mac, src=z_mac) / ARP(op=2, hwsrc=z_mac, psrc=nas_ip, hwdst=a_mac, pdst=agent_ip))]
    if kind == "mnt_outside":
        msg = rpc.encode_call(0x6E000000 + seq, mount.MOUNT_PROGRAM, mount.MOUNT_V3, mount.MOUNTPROC3_MNT,
                              mount.encode_dirpath(b"/swap"), rpc.auth_sys_cred(machinename=b"noise"))
        return [bytes(to_nas / IP(src=noise_ip, dst=nas_ip, id=seq) / UDP(sport=700 + (seq % 200), dport=2049) / msg)]
    if kind == "nfs_outside":
        msg = nfs3.encode_call(0x6F000000 + seq, nfs3.NFSPROC3_GETATTR, nfs3.FhArgs(export_root_fh()),
                               rpc.auth_sys_cred(machinename=b"noise"))
        return [bytes(to_nas / IP(src=noise_ip, dst=nas_ip, id=seq) / UDP(sport=700 + (seq % 200), dport=2049) / msg)]
    raise ValueError(f"hostile frame kind {kind!r} is unknown; kinds: {', '.join(KINDS)}")


def schedule(seed: int, start_s: float, end_s: float, per_kind: int, **addrs) -> list[tuple[float, str, bytes]]:
    """``per_kind`` events of every kind at seeded times in [start_s, end_s): (t, kind, frame), sorted."""
    import random
    rng = random.Random(f"hostile:{seed}")
    out = []
    for kind in KINDS:
        for i in range(per_kind):
            t = round(rng.uniform(start_s, end_s), 6)
            for f in frames(kind, seq=i, **addrs):
                out.append((t, kind, f))
    out.sort(key=lambda e: (e[0], e[1]))
    return out


def expected_counters(per_kind: int) -> dict:
    """What the receivers must count for ``per_kind`` events of every kind (frag timeouts once the
    reassembly timer ran; before that they are in the ipfrag queue)."""
    n = per_kind
    return {"agent": {"Ip.InCsumErrors": n, "Ip.InHdrErrors": 2 * n, "drop.IP_CSUM": n, "drop.IP_INHDR": n,
                      "drop.UNHANDLED_PROTO+PFMEMALLOC": n, "frag_orphans": n, "ArpCache.permanent_update_refused": n},
            "nas": {"mnt_MNT3ERR_ACCES": n, "NFS3ERR_ACCES": n}}


def send_frames(ifname: str, events: list[tuple[float, str, bytes]], t0: float | None = None) -> dict:
    """Send ``events`` (t relative to t0, kind, frame) on ``ifname`` with AF_PACKET; run it inside the
    noise namespace (netns_setup.process.run_in_netns). Returns frames sent per kind."""
    import time
    t0 = time.monotonic() if t0 is None else t0
    sent: dict = {}
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((ifname, 0))
        for t, kind, frame in events:
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s.send(frame)
            sent[kind] = sent.get(kind, 0) + 1
    return sent



def _snap_counters(snap: dict) -> dict:
    st = snap.get("stack", {})
    ip = st.get("snmp", {}).get("Ip", {})
    drops = st.get("drop_reasons", {})
    return {"Ip.InCsumErrors": ip.get("InCsumErrors", 0), "Ip.InHdrErrors": ip.get("InHdrErrors", 0),
            "drop.IP_CSUM": drops.get("IP_CSUM", 0), "drop.IP_INHDR": drops.get("IP_INHDR", 0),
            "drop.UNHANDLED_PROTO": drops.get("UNHANDLED_PROTO", 0),
            # an unknown EtherType that got a reserve page ends at skb_pfmemalloc_protocol instead
            "pfmemalloc_proto_drop": st.get("counters", {}).get("rx_pfmemalloc_proto_drop", 0),
            "ipfrag.fragments": st.get("ipfrag", {}).get("fragments", 0),
            "Ip.ReasmTimeout": ip.get("ReasmTimeout", 0),
            "ArpCache.permanent_update_refused": st.get("snmp", {}).get("ArpCache", {}).get("permanent_update_refused", 0),
            "rx_nobuf": st.get("counters", {}).get("rx_nobuf", 0)}


def run_real(out: str, *, scenario: str = "memalloc", per_kind: int = 3, seed: int = 1,
             window_s: float = 1.5) -> dict:
    """One real run of ``scenario`` with the export restricted to the client's /32 and a hostile sender
    in the noise host (``per_kind`` events of every kind over the first ``window_s`` after the workload
    started). Returns {outcome, expected outcome, counters (agent, nas), sent, pages ...}. Root."""
    import json
    import os
    import threading
    import time

    from netns_setup.process import run_in_netns
    from testbed import scenario as scn
    from testbed.runner import run_scenario

    sc = scn.load(scenario, {"seed": seed, "max_duration_s": 30.0})
    checks, _ = scn.preflight(sc)
    box: dict = {}

    def during(ctx: dict) -> None:
        if "thread" in box:
            # keep the run (and the topology) up until every hostile frame went out
            ctx["hold"] = box["thread"].is_alive()
            return
        st, hosts = ctx["st"], ctx["hosts"]
        ip = {h: str(hosts[h].address.ip) for h in ("client", "nas", "noise")}
        mac = {h: hosts[h].mac for h in ("client", "nas", "noise")}
        events = schedule(seed, 0.0, window_s, per_kind, agent_ip=ip["client"], agent_mac=mac["client"],
                          nas_ip=ip["nas"], nas_mac=mac["nas"], noise_ip=ip["noise"], noise_mac=mac["noise"])

        def send():
            try:
                # (the topology turns br_netfilter's hooks off in the switch: malformed IPv4 reaches the client)
                box["sent"] = run_in_netns(st.host_netns("noise"), send_frames, st.host_iface("noise"), events,
                                           timeout_s=window_s + 10)
            except Exception as e:  # noqa: BLE001 -- reported in the result
                box["error"] = f"{type(e).__name__}: {e}"

        box["thread"] = threading.Thread(target=send, daemon=True)
        box["thread"].start()
        ctx["record"]["hostile_started_t"] = round(ctx["t"], 2)
        ctx["hold"] = True

    os.makedirs(out, mode=0o700, exist_ok=True)
    from netns_setup.topology import default_topology
    addr = {h.name: h.address.ip for h in default_topology().hosts}
    # the client, and the NAS itself (the runner reads the acked slots back from the NAS host)
    cli_net = f"{addr['client']}/32,{addr['nas']}/32"
    entry = run_scenario(sc, checks, out, log=lambda m: None, print_watchdog=False,
                         export_networks=cli_net, during=during)
    if "thread" in box:
        box["thread"].join(window_s + 15)
    entry.pop("_timeline", None)
    with open(os.path.join(out, "final_snapshot.json")) as f:
        final = json.load(f)
    nas = entry.get("nas", {})
    res = {"scenario": scenario, "outcome": entry["outcome"], "expect": sc.expect, "export": cli_net,
           "sent": box.get("sent"), "send_error": box.get("error"), "per_kind": per_kind,
           "agent": _snap_counters(final),
           "nas": {"mnt_MNT3ERR_ACCES": nas.get("counters", {}).get("mnt_MNT3ERR_ACCES", 0),
                   "NFS3ERR_ACCES": nas.get("nfs_status", {}).get("NFS3ERR_ACCES", 0)},
           "pages_written": entry["pages_written"], "pages_verified": entry["pages_verified"],
           "pages_lost": entry["pages_lost"], "report": out}
    with open(os.path.join(out, "hostile.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    return res
