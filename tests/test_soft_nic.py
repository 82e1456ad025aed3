"""The simulation's software NIC (client_agent/phy/soft_nic.py): a scenario's ``offloads`` on the
in-memory wire. What it puts on the wire must be what the kernel puts there for a packet socket's
virtio header -- checked against the stack's own output without offloads (byte for byte) and
against the independent tcp_gso_segment model of tests/test_tcp_offload.py."""

import struct

import pytest

from client_agent.mm.page_alloc import PageAllocator
from client_agent.net import Stack
from client_agent.phy.caps import NO_OFFLOADS, parse_offloads
from client_agent.phy.soft_nic import SoftNic
from client_agent.wire.checksum import fold, ones_sum
from client_agent.wire.ipv4 import emit_header
from test_tcp_offload import gso_segment
from testbed import scenario
from testbed.scenario import ScenarioError

SRC, DST = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


class Recorder:
    """An in-memory device without offloads that keeps what it is asked to send."""
    mtu = 1500
    mac = MAC_B

    def __init__(self):
        self.sent = []
        self.rx = []

    def transmit(self, frame, now):
        assert len(frame) <= self.mtu + 14
        self.sent.append(bytes(frame))
        return True

    def receive(self, now, budget):
        out, self.rx = self.rx[:budget], self.rx[budget:]
        return out

    def poll_at(self):
        return None


def _udp_stack(dev):
    alloc = PageAllocator(256)
    st = Stack(alloc, dev, MAC_B, "198.18.0.2", 24)
    st.neigh.add_permanent(DST, MAC_A, 0.0)
    sk = st.udp_socket()
    sk.bind(("0.0.0.0", 5000))
    return alloc, st, sk


@pytest.mark.parametrize("offloads", ["tx", "tx,ufo"])
@pytest.mark.parametrize("size", [100, 1472, 1473, 4200, 8000])
def test_udp_frames_on_the_wire_are_the_ones_the_stack_makes_without_offloads(offloads, size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    plain = Recorder()
    _, _, sk = _udp_stack(plain)
    assert sk.sendto(payload, ("198.18.0.1", 7), 0.0) >= 0
    inner = Recorder()
    nic = SoftNic(inner, parse_offloads(offloads))
    alloc, st, sk = _udp_stack(nic)
    assert sk.sendto(payload, ("198.18.0.1", 7), 0.0) >= 0
    # the same fragments, the same checksums: the NIC finished what the stack left partial
    assert inner.sent == plain.sent
    assert len(inner.sent) == -(-(size + 8) // 1480)
    big = size + 8 + 20 > 1500
    if offloads == "tx,ufo" and big:
        assert nic.soft_counters["soft_gso"] == 1 and nic.soft_counters["soft_gso_segs"] == len(plain.sent)
        assert st.snmp["Ip"]["FragCreates"] == 0          # the device fragmented, not ip_fragment
    else:
        assert nic.soft_counters["soft_gso"] == 0
        assert nic.soft_counters["soft_csum"] == (0 if big else 1)
    assert alloc.nr_free == alloc.nr_pages


def _tso_frame(payload_len: int, flags: int) -> bytes:
    """An Ethernet/IPv4/TCP GSO buffer as the stack hands it to a TSO device: the pseudo-header
    sum (for the whole buffer's length) in the TCP checksum field (CHECKSUM_PARTIAL)."""
    payload = bytes((i * 7) & 0xFF for i in range(payload_len))
    tcp = bytearray(struct.pack("!HHIIBBHHH", 800, 2049, 0xFFFFF000, 77, 8 << 4, flags, 64240, 0, 0)
                    + b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6))
    tcp[16:18] = fold(ones_sum(SRC + DST) + 6 + len(tcp) + payload_len).to_bytes(2, "big")
    ip = emit_header(SRC, DST, 6, len(tcp) + payload_len, ident=0xFFFE, flags=0x4000)
    return MAC_A + MAC_B + b"\x08\x00" + ip + bytes(tcp) + payload


@pytest.mark.parametrize("payload_len,flags", [(1448 * 3, 0x18), (1448 * 7 + 104, 0x19), (1449, 0x98)])
def test_a_tso_buffer_is_cut_as_tcp_gso_segment_cuts_it(payload_len, flags):
    frame = _tso_frame(payload_len, flags)
    inner = Recorder()
    nic = SoftNic(inner, parse_offloads("tx,tso"))
    assert nic.transmit(frame, 0.0, 1448)
    assert inner.sent == gso_segment(frame, 1448)         # the independent model, byte for byte
    n = -(-payload_len // 1448)
    assert len(inner.sent) == n and nic.soft_counters == {"soft_csum": 0, "soft_gso": 1, "soft_gso_segs": n,
                                                          "soft_rx_csum_bad": 0}
    seqs = [struct.unpack_from("!I", f, 38)[0] for f in inner.sent]
    assert seqs == [(0xFFFFF000 + i * 1448) & 0xFFFFFFFF for i in range(n)]     # wraps past 2**32
    ids = [struct.unpack_from("!H", f, 18)[0] for f in inner.sent]
    assert ids == [(0xFFFE + i) & 0xFFFF for i in range(n)]
    assert [f[47] & 0x89 for f in inner.sent] == [flags & 0x80] + [0] * (n - 2) + [flags & 0x09] \
        if n > 1 else True                                  # CWR first only, FIN/PSH last only


def test_rx_reports_a_checksum_valid_only_when_it_is():
    inner = Recorder()
    nic = SoftNic(inner, parse_offloads("rx"))
    _, st, sk = _udp_stack(nic)
    # the reply as the peer would send it: swap addresses and ports, recompute the checksum
    ip = emit_header(DST, SRC, 17, 13, ident=9)
    udp = bytearray(struct.pack("!HHHH", 7, 5000, 13, 0) + b"hello")
    udp[6:8] = (~fold(ones_sum(DST + SRC) + 17 + 13 + ones_sum(bytes(udp))) & 0xFFFF).to_bytes(2, "big")
    reply = MAC_B + MAC_A + b"\x08\x00" + ip + bytes(udp)
    bad = bytearray(reply)
    bad[-1] ^= 0xFF
    inner.rx = [reply, bytes(bad)]
    items = nic.receive(0.0, 64)
    assert [ok for _f, ok in items] == [True, False] and nic.soft_counters["soft_rx_csum_bad"] == 1
    for it in items:
        st.rx_frame(it, 0.0)
    # the good one reached the socket; the bad one the stack verified itself and dropped
    assert sk.recvfrom()[0] == b"hello" and sk.recvfrom() is None
    assert st.snmp["Udp"]["InCsumErrors"] == 1


def test_the_simulation_honours_a_scenarios_offloads():
    from testbed.sim import run_sim
    sc = scenario.load("memalloc", {"transport": "tcp", "max_duration_s": 20.0})
    base = run_sim(sc.to_dict(), seed=1)
    tso = run_sim({**sc.to_dict(), "offloads": "tx,rx,tso"}, seed=1)
    assert base["outcome"] == tso["outcome"] == "recovered"
    assert base["nic"] == {"kind": "in-memory wire", "offloads": []}
    nic = tso["nic"]
    assert nic["kind"] == "in-memory wire (soft NIC)" and nic["offloads"] == ["tx", "rx", "tso"] and nic["soft_gso"] > 0
    assert nic["soft_gso_segs"] >= 2 * nic["soft_gso"] and nic["soft_rx_csum_bad"] == 0
    # one GSO buffer where there were several frames: fewer reserve allocations for the same pages
    assert tso["acked_pages"] == tso["pages_verified"] and tso["verify_failures"] == 0
    assert tso["pgalloc_pfmemalloc"] < base["pgalloc_pfmemalloc"]


@pytest.mark.parametrize("overrides,message", [
    ({"offloads": "tso"}, "needs 'tx'"),
    ({"offloads": "tx,lro"}, "unknown offload 'lro'"),
    ({"offloads": "none,tx"}, "'none' stands alone"),
    ({"nic": "ring-v9"}, "not one of socket, ring-v3, ring-v2, ring-v3-send"),
    ({"client": "linux", "offloads": "tx"}, "the Linux VM's is guest_nic"),
    ({"offloads": "tx,rx,gro"}, r"gro needs a TPACKET_V3 ring .* NIC is ring-v2 \(the default\); add nic = \"ring-v3\""),
    ({"offloads": "gro", "nic": "socket"}, "gro needs a TPACKET_V3 ring .* NIC is socket;"),
])
def test_scenario_nic_and_offloads_are_checked(overrides, message):
    with pytest.raises(ScenarioError, match=message):
        scenario.load("memalloc", overrides)
    ok = scenario.load("memalloc", {"nic": "ring-v3", "offloads": "tx,rx,tso,ufo,gro"})
    assert (ok.nic, ok.offloads) == ("ring-v3", "tx,rx,tso,ufo,gro")
    assert NO_OFFLOADS.names() == []


def test_a_program_that_did_not_start_is_one_line_with_its_own_reason():
    """The rig's error for an agent that refused its arguments ends with what the agent said
    (it used to end at "ends with:", the reason cut off with the log's tail)."""
    from netns_setup.process import _not_ready

    class Proc:
        record = {"argv": ["python", "-m", "client_agent.agent", "--offload", "gro"], "host": "client"}
        log_path = "/run/x/logs/client.client-agent.log"

        def log_tail(self):
            return "starting\nclient-agent: offload gro needs the TPACKET_V3 ring (a merged frame is up to 64 KiB)\n\n"

    e = _not_ready(Proc(), "closed --ready-fd without signalling readiness (exit code 1)")
    assert e.one_line() == ("in host client it closed --ready-fd without signalling readiness (exit code 1); "
                            "it said: client-agent: offload gro needs the TPACKET_V3 ring (a merged frame is up "
                            "to 64 KiB) (log /run/x/logs/client.client-agent.log)")
    assert "--offload gro" in str(e) and "starting" in str(e)          # the whole story stays in the message


def test_the_simulation_honours_a_scenarios_client_faults():
    """client_faults (client-agent --fault on real packets: both directions of the client's NIC)
    in the simulation too -- it used to be ignored there, the run reporting no fault at all."""
    from testbed.sim import run_sim
    sc = scenario.load("memalloc", {"transport": "udp", "client_faults": "loss=0.02,seed=5", "max_duration_s": 30.0,
                                    "workload_pages": 9000})
    r = run_sim(sc.to_dict(), seed=1)
    f = r["faults"]
    assert f["tx"]["lost"] > 0 and f["rx"]["lost"] > 0                 # both ways, as BothWays
    assert abs(f["tx"]["lost"] / f["tx"]["tx_frames"] - 0.02) < 0.01
    assert r["rpc_retrans"] > 0 and r["verify_failures"] == 0 and r["acked_pages"] == r["pages_verified"]
    again = run_sim({**sc.to_dict(), "client_faults": "loss=0.02,seed=6"}, seed=1)
    assert again["faults"]["tx"]["lost"] != f["tx"]["lost"]             # the spec's seed seeds them


@pytest.mark.parametrize("nic,message", [
    ("ring-v3", "--nic ring-v3: --nic is the Linux guest's NIC model (virtio-net-pci, e1000, "),
    ("e1001", "--nic e1001: not a guest NIC model; pick one of virtio-net-pci, e1000, "),
])
def test_run_nic_is_the_guests_and_says_so(nic, message, capsys):
    from testbed.cli import main
    assert main(["run", "memalloc", "--sim", "--nic", nic]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"testbed: {message}")
    if nic == "ring-v3":
        assert err[0].endswith("the agent's NIC is the scenario key nic: use --set nic=ring-v3")
