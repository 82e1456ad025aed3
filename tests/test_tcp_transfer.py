"""Two agent TCPs over the in-memory wire with seeded loss, duplication, reordering and bit
corruption in both directions: the bytes arrive exactly, both ways, and every page returns."""

import hashlib

import pytest

from client_agent.phy.fault import FaultInjector
from tcp_kit import IP_B, Duo


def _transfer(duo: Duo, size: int, both_ways: bool) -> tuple[bytes, bytes]:
    srv = duo.b.tcp.socket()
    srv.bind(("", 2049))
    srv.listen()
    cli = duo.a.tcp.socket()
    assert cli.connect((IP_B, 2049), duo.now) == 0
    up = hashlib.sha256(b"up").digest() * (size // 32)
    down = hashlib.sha256(b"down").digest() * (size // 32) if both_ways else b""
    st = {"child": None, "up_sent": 0, "down_sent": 0, "up": bytearray(), "down": bytearray(),
          "fin": False}

    def apps(now):
        if st["child"] is None:
            st["child"] = srv.accept()
        child = st["child"]
        if cli.state == 1 and st["up_sent"] < len(up):
            n = cli.send(up[st["up_sent"]:st["up_sent"] + 32768], now)
            st["up_sent"] += max(n, 0)
        if child is not None:
            if st["down_sent"] < len(down):
                n = child.send(down[st["down_sent"]:st["down_sent"] + 32768], now)
                st["down_sent"] += max(n, 0)
            r = child.recv(now)
            if isinstance(r, bytes):
                st["up"] += r
        r = cli.recv(now)
        if isinstance(r, bytes):
            st["down"] += r
        if (not st["fin"] and st["up_sent"] == len(up) and child is not None
                and st["down_sent"] == len(down)):
            cli.close(now)
            child.close(now)
            st["fin"] = True

    duo.run_until(lambda: len(st["up"]) == len(up) and len(st["down"]) == len(down)
                  and st["fin"] and not duo.a.tcp.sockets or False, limit_s=900, each=apps)
    return bytes(st["up"]) == up, bytes(st["down"]) == down


@pytest.mark.parametrize("seed", [1, 2])
def test_exact_bytes_through_loss_dup_reorder_corruption(seed):
    def wrap(end, i):
        return FaultInjector(end, seed * 10 + i, loss=0.05, dup=0.02, reorder=0.05,
                             corrupt=0.01, reorder_gap_s=0.003)
    duo = Duo(wrap=wrap, seed=seed)
    ok_up, ok_down = _transfer(duo, 300_000, both_ways=True)
    assert ok_up and ok_down
    mib_a, mib_b = duo.a.snmp["Tcp"], duo.b.snmp["Tcp"]
    ext_a = duo.a.snmp["TcpExt"]
    assert mib_a["RetransSegs"] > 0 and mib_b["RetransSegs"] > 0      # losses were repaired
    assert mib_a["InCsumErrors"] + mib_b["InCsumErrors"] > 0          # corruption was caught
    assert ext_a["TCPSackRecovery"] + ext_a["TCPTimeouts"] > 0
    faults = duo.a.dev.counters
    assert faults["lost"] and faults["duplicated"] and faults["reordered"]
    duo.finish()


def test_clean_wire_replays_identically():
    runs = []
    for _ in range(2):
        duo = Duo(seed=5)
        assert _transfer(duo, 200_000, both_ways=False) == (True, True)
        runs.append((duo.now, dict(duo.a.snmp["Tcp"]), dict(duo.b.snmp["TcpExt"])))
        duo.finish()
    assert runs[0] == runs[1]
