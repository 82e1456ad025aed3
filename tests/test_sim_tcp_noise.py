"""TCP noise on the in-memory wire: the NAS host's stack (its own copy of the agent's TCP) streams
into agent stream sinks (Host.sink kind "tcp", reader as the UDP sinks') beside the UDP flood, in
the memalloc scenario. The sinks' readers block under pressure: their receive queues fill to
rcvbuf (tcp_rmem[1]) and the window they advertise closes (TCPToZeroWindowAdv); the transport,
SOCK_MEMALLOC, still recovers. Segments that came in reserve buffers are dropped at sk_filter for
the noise sockets (PFMemallocDrop), so the reserve is not where the noise is held."""

from testbed import scenario
from testbed.sim import run_sim


def test_tcp_noise_streams_fill_blocked_sinks_and_memalloc_recovers():
    sc = scenario.load("memalloc")
    r = run_sim({**sc.to_dict(), "noise_tcp_streams": 4}, sc.seed)
    assert r["outcome"] == sc.expect == "recovered"
    assert r["verify_failures"] == 0 and r["leaked_pages"] == 0 and r["leaked_sockets"] == 0
    sinks = r["tcp_noise"]
    assert sorted(sinks) == ["tcp:9100", "tcp:9101", "tcp:9102", "tcp:9103"]
    for s in sinks.values():
        assert s["accepted"] == 1 and s["reader"] == "ordinary" and s["bytes"] > 0
        peak = s["held_max"]
        # what a blocked reader's socket held at its most: about rcvbuf (131072) in skb truesize,
        # in page-backed segments
        assert 100_000 < peak["rmem_alloc"] <= 131072 + 4 * 4096
        assert peak["receive_queue_pages"] >= 20
    ext = r["tcp"]["agent"]["TcpExt"]
    # a window closed (advertised 0) and reopened once the reader ran again; the noise never got
    # the reserve
    assert ext["TCPToZeroWindowAdv"] >= 1 and ext["TCPFromZeroWindowAdv"] >= 1
    assert sum(s["held_max"]["zero_window"] for s in sinks.values()) >= 1
    assert ext["PFMemallocDrop"] > 0
    # the senders saw acknowledged at most what the readers read (the last ACKs may be in flight)
    assert 0 < r["tcp_noise_sent"] <= sum(s["bytes"] for s in sinks.values())


def test_tcp_noise_with_nobody_reading_holds_its_zero_window_to_the_end():
    sc = scenario.load("memalloc")
    r = run_sim({**sc.to_dict(), "noise_tcp_streams": 4, "noise_reader": "none"}, sc.seed)
    assert r["outcome"] == "recovered" and r["verify_failures"] == 0 and r["leaked_pages"] == 0
    for s in r["tcp_noise"].values():
        held = s["held"]
        assert s["bytes"] == 0 and held["recv_q_bytes"] > 0 and held["receive_queue_pages"] > 0
        assert held["zero_window"] == 1 and held["min_rcv_wnd"] == 0
    assert r["tcp"]["agent"]["TcpExt"]["TCPToZeroWindowAdv"] >= 4
