"""Two agent TCPs over the in-memory wire with seeded loss, duplication, reordering and bit
corruption in both directions: the bytes arrive exactly, both ways, and every page returns."""

import hashlib
from socket import SHUT_WR

import pytest

from client_agent.net.ipv4 import tcp as T
from client_agent.phy.fault import FaultInjector
from tcp_kit import IP_B, Duo


def _transfer(duo: Duo, size: int, both_ways: bool) -> tuple[bytes, bytes]:
    """Each side sends its bytes, half-closes (shutdown(SHUT_WR): its FIN follows the data),
    reads until the peer's FIN (b""), then closes -- the order Linux needs: data arriving after
    close() is answered with a RST (TCPAbortOnData), so no side closes before its EOF."""
    srv = duo.b.tcp.socket()
    srv.bind(("", 2049))
    srv.listen()
    cli = duo.a.tcp.socket()
    assert cli.connect((IP_B, 2049), duo.now) == 0
    up = hashlib.sha256(b"up").digest() * (size // 32)
    down = hashlib.sha256(b"down").digest() * (size // 32) if both_ways else b""
    st = {"child": None, "up_sent": 0, "down_sent": 0, "up": bytearray(), "down": bytearray(),
          "closed": set()}

    def side(name, sk, out, sent_key, got_key, now):
        if name in st["closed"]:
            return
        if not sk.snd_shutdown and sk.state in (T.ESTABLISHED, T.CLOSE_WAIT):
            if st[sent_key] < len(out):
                n = sk.send(out[st[sent_key]:st[sent_key] + 32768], now)
                st[sent_key] += max(n, 0)
            if st[sent_key] == len(out):
                assert sk.shutdown(SHUT_WR, now) == 0
        r = sk.recv(now)
        if isinstance(r, bytes) and r:
            st[got_key] += r
        elif r == b"" and sk.snd_shutdown:
            sk.close(now)
            st["closed"].add(name)

    def apps(now):
        if st["child"] is None:
            st["child"] = srv.accept()
        if cli.state != T.SYN_SENT:
            side("cli", cli, up, "up_sent", "down", now)
        if st["child"] is not None:
            side("child", st["child"], down, "down_sent", "up", now)

    duo.run_until(lambda: len(st["closed"]) == 2 and not duo.a.tcp.sockets, limit_s=900,
                  each=apps)
    for stack in (duo.a, duo.b):       # nothing arrived after a close()
        ext = stack.snmp["TcpExt"]
        assert (ext["TCPAbortOnData"], ext["TCPAbortOnClose"]) == (0, 0)
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
