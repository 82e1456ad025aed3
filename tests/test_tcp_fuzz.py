"""100,000 seeded malformed TCP segments (bad data offsets, flag combinations, option bytes,
checksums, sequence and ACK numbers, truncations) into a listener and an established socket:
no crash, every frame ends in exactly one counted fate, no page leaked."""

import random
import struct

from client_agent.wire import ethernet
from client_agent.wire.checksum import fold, ones_sum
from tcp_kit import A, B, DOT, MAC_A, MAC_B, P, Script

N = 100_000
_IPH = struct.Struct("!BBHHHBBH4s4s")


def test_malformed_segments_are_counted_and_leak_nothing():
    sc = Script(nr_pages=2048)
    sk, iss, syn = sc.active_open()
    una, aport, pport = iss + 1, sc.aport, sc.pport
    ln = sc.tcp.socket()
    ln.bind(("", 2049))
    ln.listen(16)
    rng = random.Random(20261127)
    eth = ethernet.emit(MAC_B, MAC_A, ethernet.ETH_P_IP, b"")
    psum = ones_sum(A + B) + 6
    rx = sc.stack.rx_frame
    q = sc.wire.a._rxq
    now = 1.0
    for i in range(N):
        r = rng.random()
        dport = aport if r < 0.6 else (2049 if r < 0.9 else rng.randrange(65536))
        sport = pport if rng.random() < 0.8 else rng.randrange(65536)
        k = rng.random()
        seq = (5001 + rng.randrange(-70000, 70000)) & 0xFFFFFFFF if k < 0.7 \
            else rng.getrandbits(32)
        ack = (una + rng.randrange(-70000, 70000)) & 0xFFFFFFFF if rng.random() < 0.7 \
            else rng.getrandbits(32)
        flags = rng.getrandbits(8) if rng.random() < 0.5 else rng.choice((DOT, DOT | P, 0x11,
                                                                           0x02, 0x04, 0x14))
        opts = rng.randbytes(rng.choice((0, 4, 8, 12, 20, 40)))
        doff = (20 + len(opts)) // 4 if rng.random() < 0.8 else rng.randrange(16)
        data = rng.randbytes(rng.choice((0, 0, 1, 100, 1400)))
        seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags,
                          rng.getrandbits(16), 0, 0) + opts + data
        if rng.random() < 0.05:
            seg = seg[:rng.randrange(len(seg))]                     # truncated
        if rng.random() < 0.9:
            c = ~fold(psum + len(seg) + ones_sum(seg)) & 0xFFFF
            seg = seg[:16] + c.to_bytes(2, "big") + seg[18:] if len(seg) >= 18 else seg
        hdr = _IPH.pack(0x45, 0, 20 + len(seg), i & 0xFFFF, 0, 64, 6, 0, A, B)
        hc = ~ones_sum(hdr) & 0xFFFF
        rx(eth + hdr[:10] + hc.to_bytes(2, "big") + hdr[12:] + seg, now)
        if i % 512 == 0:
            now += 0.05
            q.clear()
            sc.stack.run_timers(now)
    sc.now = now
    st = sc.stack
    mib = st.snmp["Tcp"]
    assert st.counters["rx_packets"] == N + 1                     # + the SYN-ACK
    assert mib["InSegs"] == N + 1
    assert mib["InErrs"] > 1000 and mib["InCsumErrors"] > 1000
    assert sum(st.rx_fate.values()) + st.rx_in_flight() == st.counters["rx_packets"]
    assert st.drop_reasons["PKT_TOO_SMALL"] > 0 and st.drop_reasons["TCP_INVALID_SEQUENCE"] > 0
    q.clear()
    sc.finish()                                                   # pages, fates, memory
