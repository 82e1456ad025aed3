"""NFS over the agent's TCP (sunrpc xprtsock's TCP transport) against NasCore on an in-memory
wire: portmap GETPORT for MOUNT and NFS, MNT on its own connection, FSINFO, AUTH_SYS, record
marking, SOCK_MEMALLOC before connect and on every reconnect, the reconnect backoff, and the hard
mount's TCP timeouts (no RPC resend on a minor timeout)."""

from client_agent.fs.nfs.nfs3proc import NfsTransport
from client_agent.loop import Loop, ManualClock
from client_agent.mm.anon import page_bytes
from client_agent.mm.page_alloc import PageAllocator
from client_agent.net.ipv4.tcp import TcpSock
from client_agent.net.stack import Stack
from client_agent.phy.fault import FaultInjector
from client_agent.phy.wire_pair import WirePair
from client_agent.tasks import Scheduler
from protocols import nfs3, rpc
from tests.nas_wire_kit import nas_pumped

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def _setup(handle=None, loss=0.0, seed=5, **kw):
    loop = Loop(ManualClock())
    w = WirePair(loop, latency_s=0.0005, mac_a=MAC_A, mac_b=MAC_B)
    dev_a = FaultInjector(w.a, seed, loss=loss, dup=loss, reorder=loss) if loss else w.a
    dev_b = FaultInjector(w.b, seed + 1, loss=loss, dup=loss, reorder=loss) if loss else w.b
    alloc = PageAllocator(2048)
    sched = Scheduler(alloc)
    sched.attach_loop(loop)
    st = Stack(alloc, dev_a, MAC_A, "198.18.0.2", 24, sched, seed=seed)
    box = {}
    store, img = nas_pumped(loop, st, dev_b, handle=handle, tcp_box=box)
    logs = []
    t = NfsTransport(st, sched, "198.18.0.1", None, slots=4, log=logs.append, proto="tcp",
                     timeo_s=kw.get("timeo_s", 60.0), retrans=kw.get("retrans", 2))
    return loop, alloc, sched, st, t, img, box, logs


def _swap_like(t, n, out, memalloc=True):
    if memalloc:
        t.set_memalloc(True)                 # swapon: before the mount connects anything
    root = yield from t.mount("swap")
    fh, size = yield from t.lookup(root, "swap.img")
    out["fh"] = fh
    for i in range(n):
        r = yield from t.write(fh, i * 4096, page_bytes(1, i, 0), nfs3.FILE_SYNC)
        out.setdefault("committed", []).append(r.committed)
    out["read"] = yield from t.read(fh, 4096, 4096)


def test_portmap_mount_fsinfo_auth_sys_and_memalloc_before_connect(monkeypatch):
    calls = []
    at_connect = []
    real_connect = TcpSock.connect

    def connect(sk, addr, now):
        at_connect.append((addr[1], sk.memalloc))
        return real_connect(sk, addr, now)
    monkeypatch.setattr(TcpSock, "connect", connect)

    def spy(core, msg, peer, now):
        calls.append(rpc.decode_call(msg))
        return core(msg, peer, now)

    loop, alloc, sched, st, t, img, box, logs = _setup(handle=spy)
    out = {}
    task = sched.spawn("swapon", _swap_like(t, 8, out))
    assert loop.run_until(lambda: task.state == "done", 30.0), task.error
    assert all(img.read(i * 4096, 4096) == page_bytes(1, i, 0) for i in range(8))
    assert out["read"] == page_bytes(1, 1, 0)
    # GETPORT MOUNT, MNT, GETPORT NFS, FSINFO, LOOKUP, 8 WRITEs, READ -- all AUTH_SYS
    progs = [(c.prog, c.proc) for c in calls]
    assert progs[:3] == [(100000, 3), (100005, 1), (100000, 3)]
    assert progs[3] == (nfs3.NFS_PROGRAM, nfs3.NFSPROC3_FSINFO)
    assert all(c.cred_flavor == rpc.AUTH_SYS for c in calls)
    assert t.port == 2049 and t.mount_port == 2049 and t.fsinfo[1] >= 4096
    # the NFS socket was SOCK_MEMALLOC from before its SYN; rpcbind's and mountd's were not
    assert t.sk.memalloc and alloc.memalloc_socks == 1 and t.xprt.counters["connect_count"] == 1
    srv = box["server"]
    assert srv.counters["accepted"] == 4 and srv.counters["record_errors"] == 0
    assert at_connect == [(111, False), (2049, False), (111, False), (2049, True)]
    assert t.counters["rpc_retrans"] == 0 and logs == []
    t.close()
    loop.run_until(lambda: False, 200.0)                 # FIN handshakes, TIME_WAIT
    assert alloc.nr_free == alloc.nr_pages, alloc.owner_pages()
    assert alloc.memalloc_socks == 0


def test_reconnect_after_nas_restart_marks_the_new_socket_and_backs_off():
    loop, alloc, sched, st, t, img, box, logs = _setup()
    out = {}
    task = sched.spawn("swapon", _swap_like(t, 2, out))
    assert loop.run_until(lambda: task.state == "done", 30.0), task.error
    first = t.xprt.connect_start
    srv = box["server"]
    srv.restart(loop.time())                             # RST every connection, no listener
    loop.call_at(loop.time() + 5.0, srv.listen)          # back 5 s later
    done = {}

    def writer():
        r = yield from t.write(out["fh"], 3 * 4096, page_bytes(1, 3, 1), nfs3.FILE_SYNC)
        done["r"] = r
    w = sched.spawn("w", writer())
    assert loop.run_until(lambda: w.state == "done", 60.0), w.error
    assert img.read(3 * 4096, 4096) == page_bytes(1, 3, 1)
    c = t.xprt.counters
    assert c["rpc_reconnects"] == 1 and c["connect_count"] == 2 and c["connect_fails"] >= 1
    # xs_connect: the reconnects wait reestablish_timeout (3 s, then 6 s) from the last start
    assert t.xprt.connect_start - first >= 3.0 + 6.0
    assert t.xprt.reestablish_timeout == 12.0
    # SOCK_MEMALLOC again on the new socket (xs_tcp_finish_connecting); the old one cleared
    assert t.sk.memalloc and alloc.memalloc_socks == 1
    t.close()


def test_minor_timeouts_send_nothing_major_timeout_resends():
    seen = {"writes": 0}

    def drop_first_write(core, msg, peer, now):
        call = rpc.decode_call(msg)
        if call.prog == nfs3.NFS_PROGRAM and call.proc == nfs3.NFSPROC3_WRITE:
            seen["writes"] += 1
            if seen["writes"] == 1:
                return []                                # the server loses the call
        return core(msg, peer, now)

    loop, alloc, sched, st, t, img, box, logs = _setup(handle=drop_first_write)
    out = {}
    task = sched.spawn("swapon", _swap_like(t, 1, out, memalloc=False))
    assert loop.run_until(lambda: task.state == "done", 600.0), task.error
    c = t.counters
    # timeo 60 s linear, retrans 2: minor timeouts at 60 s and 180 s send nothing (TCP
    # delivered the call); the major timeout at 360 s sends it again
    assert seen["writes"] == 2 and c["rpc_retrans"] == 1 and c["rpc_major_timeouts"] == 1
    assert 360.0 <= loop.time() < 362.0
    assert logs == ["nfs: server 198.18.0.1 not responding, still trying",
                    "nfs: server 198.18.0.1 OK"]
    t.close()


def test_every_page_verifies_under_loss_duplication_reordering():
    loop, alloc, sched, st, t, img, box, logs = _setup(loss=0.08, seed=11)
    out = {}
    task = sched.spawn("swapon", _swap_like(t, 40, out))
    assert loop.run_until(lambda: task.state == "done", 600.0), task.error
    assert all(img.read(i * 4096, 4096) == page_bytes(1, i, 0) for i in range(40))
    assert st.snmp["Tcp"]["RetransSegs"] > 0
    assert t.counters["rpc_retrans"] == 0                # TCP recovered every lost segment
    t.close()
