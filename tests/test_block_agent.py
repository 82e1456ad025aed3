"""NBD and iSCSI swap devices of the agent (client_agent/drivers/block/nbd.py,
drivers/scsi/iscsi_tcp.py over drivers/tcp_block.py) against nas-server's target cores served
over the NAS stack's own TCP (testbed/nas_block.py), on the in-memory wire with a manual clock.
The four scenarios per protocol are pinned by tests/test_sim_baseline.py (scenarios/nbd-*.toml,
iscsi-*.toml); here: the device surface, durability modes, R2T, activation errors, memory
marking, recovery from a target restart and from a silent target."""

import socket as _pysocket

import pytest

from client_agent.host import Host
from client_agent.loop import Loop, ManualClock
from client_agent.mm.page_alloc import PageAllocator
from client_agent.mm.page_io import PAGE_SIZE, ActivateError, WriteError
from client_agent.net.stack import Stack
from client_agent.phy.wire_pair import WirePair
from client_agent.tasks import Scheduler
from nas_server.iscsi_target import IscsiTarget
from nas_server.nbd_target import NbdTarget
from nas_server.store import MemoryStore
from testbed import scenario as S
from testbed.nas_block import ISCSI_PORT, NBD_PORT, StackBlockServer, block_device_spec

A, N = "198.18.0.2", "198.18.0.1"
MA, MN = b"\x02\x00\xc6\x12\x00\x02", b"\x02\x00\xc6\x12\x00\x01"


class Rig:
    """Agent host + NAS stack serving one protocol's target core; ``run(gen)`` runs a task."""

    def __init__(self, proto: str, pages: int = 64, service_s: float = 0.002):
        self.loop = loop = Loop(ManualClock())
        wire = WirePair(loop, latency_s=0.0002, mac_a=MA, mac_b=MN)
        self.host = Host(loop, wire.a, ip=A, prefix_len=24, pool_pages=2048, seed=3)
        self.host.stack.neigh.add_permanent(_pysocket.inet_aton(N), MN, 0.0)
        self.store = MemoryStore()
        self.store.add_export("swap", [])
        self.img = self.store.create_image("swap", "swap.img", pages * PAGE_SIZE)
        self.nas = Stack(PageAllocator(1 << 14, 128), wire.b, MN, N, 24,
                         Scheduler(PageAllocator(1 << 14, 128)), seed=4)
        self.nas.neigh.add_permanent(_pysocket.inet_aton(A), MA, 0.0)
        self.target = NbdTarget(self.store) if proto == "nbd" else IscsiTarget(self.store)
        self.srv = StackBlockServer(self.nas, self.target, NBD_PORT if proto == "nbd" else ISCSI_PORT,
                                    proto, service_s=service_s)
        self.proto = proto
        self.timer = None
        wire.b.on_rx = lambda: loop.call_soon(self.pump)

    def pump(self):
        now = self.loop.time()
        self.nas.poll(now, 4096)
        self.srv.pump(now)
        d = [x for x in (self.nas.next_deadline(), self.srv.next_due()) if x is not None]
        if d and (self.timer is None or min(d) < self.timer):
            self.timer = min(d)
            self.loop.call_at(self.timer, self._fire)

    def _fire(self):
        self.timer = None
        self.pump()

    def device(self, **over):
        spec = {**block_device_spec(self.proto, N, "swap", "swap.img"), **over}
        return self.host.storage(spec)

    def run(self, gen, timeout_s: float = 60.0):
        task = self.host.run_task("t", gen, timeout_s)
        if task.state == "crashed":
            raise AssertionError(task.error)
        return task.result


def _page(i: int) -> bytes:
    return bytes([i % 251]) * PAGE_SIZE


@pytest.mark.parametrize("proto,durability", [("nbd", "fua"), ("nbd", "flush"),
                                              ("iscsi", "fua"), ("iscsi", "sync")])
def test_write_durably_then_read_back_through_the_device_and_the_store(proto, durability):
    rig = Rig(proto)
    dev = rig.device(durability=durability)
    dev.set_memalloc(True)

    def io():
        pages = yield from dev.activate()
        errs = []
        for i in range(8):
            errs.append((yield from dev.write_page(i * PAGE_SIZE, lambda i=i: _page(i))))
        back = []
        for i in range(8):
            back.append((yield from dev.read_page(i * PAGE_SIZE)))
        return pages, errs, back

    pages, errs, back = rig.run(io())
    assert pages == 64 and errs == [None] * 8
    assert back == [_page(i) for i in range(8)]
    # durable on the target: nothing held back in the store's write cache
    assert rig.img.pending_bytes == 0
    assert [rig.img.read(i * PAGE_SIZE, PAGE_SIZE) for i in range(8)] == back
    c = dev.snapshot()
    # the socket is SOCK_MEMALLOC with the protocol's own sk_allocation
    assert dev.sk.memalloc and rig.host.alloc.memalloc_socks == 1
    if proto == "nbd":
        assert c["via"] == "NBD_OPT_GO" and c["NBD_CMD_WRITE"] == 8 and c["NBD_CMD_READ"] == 8
        assert c["NBD_CMD_FLAG_FUA"] == (8 if durability == "fua" else 0)
        assert c["NBD_CMD_FLUSH"] == (0 if durability == "fua" else 8)
        assert rig.target.counters["NBD_CMD_WRITE_FUA"] == c["NBD_CMD_FLAG_FUA"]
    else:
        assert c["WRITE_10"] == 8 and c["READ_10"] == 8 and c["INQUIRY"] == 1
        assert c["REPORT_LUNS"] == 1 and c["SERVICE_ACTION_IN_16"] == 1
        assert c.get("SYNCHRONIZE_CACHE", 0) == (0 if durability == "fua" else 8)
        assert rig.target.counters["WRITE_10_FUA"] == (8 if durability == "fua" else 0)
        # one SCSI Command PDU per command: 3 probes, 8 writes, 8 reads (+ 8 syncs)
        assert c["scsicmd_pdus"] == 3 + 8 + 8 + (0 if durability == "fua" else 8)
        assert c["datain_pdus"] >= 3 + 8          # the probes' and reads' data
    dev.set_memalloc(False)                       # swapoff's sk_clear_memalloc
    dev.close()
    assert rig.host.alloc.memalloc_socks == 0


def test_iscsi_initial_r2t_sends_data_out_after_each_r2t():
    rig = Rig("iscsi")
    dev = rig.device(initial_r2t=True, immediate_data=False)

    def io():
        yield from dev.activate()
        for i in range(4):
            assert (yield from dev.write_page(i * PAGE_SIZE, lambda i=i: _page(i))) is None

    rig.run(io())
    c = dev.snapshot()
    assert dev.params.InitialR2T is True and dev.params.ImmediateData is False
    assert c["r2t_pdus"] == 4 and c["dataout_pdus"] == 4
    assert rig.img.read(3 * PAGE_SIZE, PAGE_SIZE) == _page(3)


@pytest.mark.parametrize("proto,over,text", [
    ("nbd", {"export": "swap/nope"}, "NBD_REP_ERR_UNKNOWN"),
    ("iscsi", {"target": "iqn.2025-01.org.nsdeadlock.nas:swap.nope"}, "login_"),
    ("iscsi", {"lun": 3}, "LUN 3 not in REPORT LUNS"),
])
def test_activation_errors_name_what_failed(proto, over, text):
    rig = Rig(proto)
    dev = rig.device(**over)

    def act():
        try:
            yield from dev.activate()
        except ActivateError as e:
            return str(e)
        return None

    msg = rig.run(act())
    assert msg is not None and text in msg, msg
    dev.close()


def test_bad_device_specs_are_refused_with_the_key():
    rig = Rig("nbd")
    with pytest.raises(ValueError, match="unknown key.*wsize"):
        rig.host.storage({"kind": "nbd", "server": N, "wsize": 4096})
    with pytest.raises(ValueError, match="needs target"):
        rig.host.storage({"kind": "iscsi", "server": N})
    with pytest.raises(ValueError, match="durability must be fua or sync"):
        rig.host.storage({"kind": "iscsi", "server": N, "target": "x", "durability": "flush"})


@pytest.mark.parametrize("proto", ["nbd", "iscsi"])
def test_target_restart_mid_write_resends_and_loses_nothing(proto):
    rig = Rig(proto, service_s=0.01)
    dev = rig.device()
    dev.set_memalloc(True)
    done = []

    def writer(i):
        err = yield from dev.write_page(i * PAGE_SIZE, lambda: _page(i))
        done.append((i, err))

    def io():
        yield from dev.activate()
        for i in range(32):
            rig.host.sched.spawn(f"w{i}", writer(i))

    rig.run(io())
    # the target process dies with requests in service; back 0.3 s later
    rig.loop.call_at(rig.loop.time() + 0.005, lambda: (rig.store.crash(b"restart1"),
                                                       rig.srv.restart(rig.loop.time())))
    rig.loop.call_at(rig.loop.time() + 0.3, rig.srv.listen)
    rig.loop.run_until(lambda: len(done) == 32, 30.0)
    assert sorted(done) == [(i, None) for i in range(32)]
    assert all(rig.img.read(i * PAGE_SIZE, PAGE_SIZE) == _page(i) for i in range(32))
    c = dev.snapshot()
    assert c["reconnects"] == 1 and c["requests_requeued"] > 0 and c["connect_fails"] >= 1
    assert rig.srv.counters["reset_at_restart"] == 1 and rig.srv.counters["replies_lost"] > 0
    # the new socket is marked again (nbd_reconnect_socket / iscsi_sw_tcp_conn_bind)
    assert dev.sk.memalloc and rig.host.alloc.memalloc_socks == 1
    dev.close()


def test_iscsi_nop_ping_timeout_reconnects():
    rig = Rig("iscsi")
    dev = rig.device(noop_out_interval_s=1.0, noop_out_timeout_s=1.0)

    def act():
        yield from dev.activate()

    rig.run(act())
    rig.loop.run_until(lambda: dev.counters["noprx_pdus"] >= 1, 5.0)
    assert dev.counters["noptx_pdus"] >= 1 and dev.counters["timeout_err"] == 0
    # the target process hangs (SIGSTOP): its kernel still ACKs, no PDU is answered
    rig.srv.pump = lambda now: None
    rig.loop.run_until(lambda: dev.counters["timeout_err"] >= 1, 10.0)
    assert dev.counters["timeout_err"] == 1 and dev.state in ("down", "connecting")
    dev.close()


def test_storage_view_prints_iscsiadm_and_nbd_counters_and_demo_table_names_protocols():
    from testbed import demo, views
    snap = {"swap": {"backend": "198.18.0.1:3260/iqn.x:swap.swap.img/0", "scsicmd_pdus": 7,
                     "scsirsp_pdus": 7, "txdata_octets": 28672, "reconnects": 1}}
    text = views.storage(snap)
    assert "iSCSI SNMP:\n\ttxdata_octets: 28672\n" in text and "\tscsicmd_pdus: 7\n" in text
    assert "\treconnects: 1\n" in text
    text = views.storage({"swap": {"backend": "n:10809/swap/swap.img", "NBD_CMD_WRITE": 5,
                                   "NBD_CMD_FLAG_FUA": 5, "via": "NBD_OPT_GO", "NBD_EIO": 1}})
    assert "\tNBD_CMD_WRITE: 5\n" in text and "\tNBD_EIO: 1\n" in text and "NBD_OPT_GO" in text
    e = {"name": "nbd-memalloc", "expect": "recovered", "outcome": "recovered", "storage": "nbd",
         "time_to_stall_s": None, "time_to_recover_s": 5.2, "pages_written": 10, "pages_verified": 10,
         "reserve_low_pages": 160, "rpc_retrans": None, "parameters": {"transport": "tcp"},
         "counters": {"PFMemallocDrop": 9, "rx_nobuf": 0,
                      "nbd": {"NBD_CMD_WRITE": 10, "requests_requeued": 0}}}
    t = demo.format_protocol_table([e, {**e, "name": "nfs-tcp-memalloc", "storage": "nfs",
                                        "rpc_retrans": 3, "counters": {"nfs": {"rpc_calls": 12}}}])
    lines = t.splitlines()
    assert lines[0] == demo.PROTOCOL_TABLE_TITLE
    assert lines[3].startswith("NBD ") and "NBD_CMD_WRITE 10" in lines[3] and "requeued 0" in lines[3]
    assert lines[4].startswith("NFS/TCP ") and "rpc_retrans 3" in lines[4] and "rpc_calls 12" in lines[4]
    # every row of the demo is a real, preflight-clean scenario
    for sc, checks, _ in demo.load_all(None, True, demo.PROTOCOL_ROWS):
        assert S.failing(sc, checks) == [], sc.name


def test_scenario_names_its_storage_and_a_third_party_target_that_serves_it():
    sc = S.load("nbd-memalloc", {"target": "nbdkit"})
    assert (sc.storage, sc.target) == ("nbd", "nbdkit")
    with pytest.raises(S.ScenarioError, match="target: 'tgtd' does not serve storage=nbd; pick one of "
                                               "nas-server, nbdkit, qemu-nbd"):
        S.load("nbd-memalloc", {"target": "tgtd"})
    with pytest.raises(S.ScenarioError, match="storage: 'nvme' is not one of nfs, nbd, iscsi, aoe"):
        S.load("memalloc", {"storage": "nvme"})
    with pytest.raises(S.ScenarioError, match="target: 'nbdkit' does not serve storage=aoe"):
        S.load("memalloc", {"storage": "aoe", "target": "nbdkit"})
    with pytest.raises(S.ScenarioError, match="consumer: 'mmap' with storage=iscsi"):
        S.load("file-mmap-linux", {"storage": "iscsi"})


@pytest.mark.parametrize("storage", ["nbd", "iscsi"])
def test_chaos_over_block_storage_restarts_the_target_mid_write_and_loses_nothing(storage):
    from testbed import chaos
    from testbed.sim import run_sim
    # chaos's scaled memalloc scenario, the target killed (store crash, connections reset, replies
    # in service lost) 0.3 s in and down for 0.4 s, 2 % duplicates both ways
    p = {**chaos.scaled(f"{storage}-memalloc"), "nas_restart_at_s": (0.3,), "nas_down_s": 0.4,
         "fault_tx": {"dup": 0.02}, "fault_rx": {"dup": 0.02}}
    r = run_sim(p, seed=5)
    assert chaos.check(r) == [], chaos.check(r)
    assert r["faults"]["nas_restarts"] == 1 and r["acked_pages"] > 0
    assert r["pages_verified"] == r["acked_pages"] and r["verify_failures"] == 0
    b = r["block"]["agent"]
    assert b["reconnects"] == 1 and b["requests_requeued"] > 0 and b["connect_fails"] >= 1


def test_nbd_export_name_handshake_when_go_is_not_used():
    # nbd-client's fallback path (a server answering NBD_REP_ERR_UNSUP to GO takes the same one)
    rig = Rig("nbd")
    dev = rig.device(use_go=False)

    def io():
        pages = yield from dev.activate()
        return pages, (yield from dev.write_page(0, lambda: _page(7)))

    assert rig.run(io()) == (64, None)
    assert dev.counters["via"] == "NBD_OPT_EXPORT_NAME" and rig.img.read(0, PAGE_SIZE) == _page(7)
    assert rig.target.counters["NBD_OPT_EXPORT_NAME"] == 1 and rig.target.counters["NBD_OPT_GO"] == 0
