"""Two stacks on a WirePair, and a stack against a scripted peer sending scapy-built frames."""

import errno
import random

from client_agent.phy.fault import FaultInjector
from client_agent.phy.wire_pair import WirePair
from client_agent.wire import ipv4
from test_stack_kit import IP_A, IP_B, MAC_A, MAC_B, kit, run, udp_frame  # noqa: F401


def test_arp_and_icmp_echo_round_trip(kit):
    w, sa, sb = kit.pair()
    assert sa.ping(IP_B, ident=7, seq=1, data=b"hello", now=0.0) == 0
    assert sa.neigh.lookup(ipv4.ip_aton(IP_B)).state == "INCOMPLETE"
    run(0.0, sa, sb)
    assert list(sa.ping_replies) == [(IP_B, 7, 1, b"hello", 0.0)]
    assert sa.neigh.lookup(ipv4.ip_aton(IP_B)).state == "REACHABLE"
    # a request to us makes the asker's entry STALE (arp_process -> neigh_event_ns); only a
    # reply to our MAC asserts reachability
    assert sb.neigh.lookup(ipv4.ip_aton(IP_A)).state == "STALE"
    assert sb.snmp["Icmp"]["InEchos"] == 1 and sb.snmp["Icmp"]["OutEchoReps"] == 1
    assert sa.snmp["Icmp"]["InEchoReps"] == 1 and sa.snmp["Icmp"]["OutEchos"] == 1
    # request, reply (ARP) + echo, echo reply
    assert sa.counters["tx_packets"] == 2 and sb.counters["tx_packets"] == 2
    assert sb.snmp["ArpCache"]["rcv_probes_mcast"] == 1
    assert sum(sa.drop_reasons.values()) == 0 == sum(sb.drop_reasons.values())


def test_udp_round_trip_and_socket_api(kit):
    w, sa, sb = kit.pair()
    srv = sb.udp_socket()
    srv.bind(("0.0.0.0", 2049))
    cli = sa.udp_socket()
    cli.connect((IP_B, 2049))
    assert srv.recvfrom() is None
    assert cli.send(b"request", 0.0) == 7
    run(0.0, sa, sb)
    data, addr = srv.recvfrom()
    assert data == b"request" and addr == (IP_A, cli.getsockname()[1])
    assert srv.sendto(b"reply", addr, 0.0) == 5
    run(0.0, sa, sb)
    assert cli.recvfrom() == (b"reply", (IP_B, 2049))
    assert sb.snmp["Udp"]["InDatagrams"] == 1 and sb.snmp["Udp"]["OutDatagrams"] == 1
    assert srv.rmem_alloc == 0 and cli.getsockname()[1] >= 32768
    # a datagram from another peer does not reach a connected socket
    other = sb.udp_socket()
    other.bind(("", 9))
    assert other.sendto(b"z", (IP_A, cli.getsockname()[1]), 0.0) == 1
    run(0.0, sa, sb)
    assert cli.recvfrom() is None and sa.drop_reasons["NO_SOCKET"] == 1
    assert cli.sendto(b"x" * 65508, (IP_B, 1), 0.0) == -errno.EMSGSIZE


def test_udp_blocking_recv_in_a_task(kit):
    from client_agent.tasks import Scheduler
    w = WirePair()
    a1, a2 = kit.alloc(), kit.alloc()
    sched = Scheduler(a2)
    sa = kit.stack(a1, w.a, MAC_A, IP_A)
    sb = kit.stack(a2, w.b, MAC_B, IP_B, sched=sched)
    srv = sb.udp_socket()
    srv.bind(("", 111))
    got = []

    def reader():
        for _ in range(2):
            got.append((yield from srv.recvfrom_wait()))
    t = sched.spawn("reader", reader())
    sched.run(0.0)
    assert got == [] and "recvfrom sk:udp:198.18.0.2:111" in str(sched.snapshot())
    cli = sa.udp_socket()
    cli.sendto(b"one", (IP_B, 111), 0.0)
    cli.sendto(b"two", (IP_B, 111), 0.0)
    run(0.0, sa, sb)
    sched.run(0.0)
    assert [g[0] for g in got] == [b"one", b"two"] and t.state == "done"


def test_per_flow_sent_equals_delivered_plus_drops_with_loss(kit):
    w = WirePair()
    fa = FaultInjector(w.a, seed=3, loss=0.2, dup=0.1, reorder=0.1)
    sa = kit.stack(kit.alloc(), fa, MAC_A, IP_A)
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    sa.neigh.add_permanent(ipv4.ip_aton(IP_B), MAC_B)
    srv = sb.udp_socket()
    srv.bind(("", 2049))
    srv.rcvbuf = 40 * 4672                              # some SOCKET_RCVBUFF drops too
    cli = sa.udp_socket()
    sent = delivered = 0
    t = 0.0
    for i in range(500):
        assert cli.sendto(i.to_bytes(4, "big"), (IP_B, 2049), t) == 4
        sent += 1
        t += 0.001
        run(t, sa, sb)
        if i % 100 == 99:
            while srv.recvfrom() is not None:
                delivered += 1
    run(t + 1, sa, sb)
    while srv.recvfrom() is not None:
        delivered += 1
    assert delivered == sb.snmp["Udp"]["InDatagrams"]
    c = fa.counters
    drops = sb.drop_reasons["SOCKET_RCVBUFF"]
    assert drops > 0 and c["lost"] > 50
    # every datagram the sender sent: delivered, dropped at the socket, or lost on the wire;
    # duplicates are extra arrivals on top
    assert sent + c["duplicated"] == delivered + drops + c["lost"]
    assert sb.counters["rx_packets"] == sent - c["lost"] + c["duplicated"]


def test_scripted_peer_with_scapy_frames(kit):
    from scapy.all import ARP, ICMP, IP, UDP, Ether
    w = WirePair()
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    srv = sb.udp_socket()
    srv.bind(("", 2049))
    peer = w.a
    peer.transmit(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01")
                        / ARP(op=1, hwsrc="02:00:00:00:00:01", psrc=IP_A, pdst=IP_B)), 0.0)
    peer.transmit(bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
                        / IP(src=IP_A, dst=IP_B, id=9) / UDP(sport=800, dport=2049) / b"nfs"), 0.0)
    peer.transmit(bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
                        / IP(src=IP_A, dst=IP_B, id=10) / ICMP(id=5, seq=6) / b"abc"), 0.0)
    sb.poll(0.0)
    out = [Ether(f) for f in peer.receive(0.0, 10)]
    assert out[0][ARP].op == 2 and out[0][ARP].hwsrc == "02:00:00:00:00:02" \
        and out[0][ARP].psrc == IP_B and out[0][ARP].pdst == IP_A and out[0].dst == "02:00:00:00:00:01"
    assert out[1][ICMP].type == 0 and out[1][ICMP].id == 5 and out[1][ICMP].seq == 6 \
        and bytes(out[1][ICMP].payload) == b"abc" and out[1][IP].dst == IP_A
    # scapy recomputes the checksums: ours must equal them
    echo = out[1][IP]
    ref = IP(bytes(echo))
    del ref.chksum
    del ref[ICMP].chksum
    assert bytes(ref.__class__(bytes(ref))) == bytes(echo)
    assert srv.recvfrom() == (b"nfs", (IP_A, 800))


def test_fragmentation_and_out_of_order_reassembly_with_duplicates(kit):
    w = WirePair()
    sa = kit.stack(kit.alloc(), w.a, MAC_A, IP_A)
    sb = kit.stack(kit.alloc(), w.b, MAC_B, IP_B)
    sa.neigh.add_permanent(ipv4.ip_aton(IP_B), MAC_B)
    srv = sb.udp_socket()
    srv.bind(("", 2049))
    payload = bytes(random.Random(1).randbytes(20000))
    assert sa.udp_socket().sendto(payload, (IP_B, 2049), 0.0) == 20000
    frames = w.b.receive(0.0, 100)
    assert len(frames) == 14 and all(len(f) <= 1514 for f in frames)
    assert sa.snmp["Ip"]["FragOKs"] == 1 and sa.snmp["Ip"]["FragCreates"] == 14
    rng = random.Random(2)
    order = frames + [frames[3], frames[0], frames[13]]
    rng.shuffle(order)
    while order[-1] in (frames[3], frames[0], frames[13]) and order.count(order[-1]) == 2:
        rng.shuffle(order)
    for f in order:
        w.a.transmit(f, 0.5)
    run(0.5, sb)
    data, _addr = srv.recvfrom()
    assert data == payload
    ip = sb.snmp["Ip"]
    assert (ip["ReasmReqds"], ip["ReasmOKs"], ip["ReasmFails"]) == (17 - _late_dups(order, frames), 1, 0)
    assert sb.drop_reasons["DUP_FRAG"] == _dups_before_done(order, frames)
    assert sb.rx_fate["ip_frag_merged"] == 13 and sb.rx_fate["udp_read"] == 1


def _completion_index(order, frames):
    seen = set()
    for i, f in enumerate(order):
        seen.add(f)
        if len(seen) == len(frames):
            return i


def _dups_before_done(order, frames):
    done = _completion_index(order, frames)
    return done + 1 - len(frames)


def _late_dups(order, frames):
    return len(order) - 1 - _completion_index(order, frames)
