"""In-memory NBD and iSCSI targets over a ``MemoryStore`` and the protocols' clients wired to them
(no sockets, no root): the kit the core and fuzz tests share."""

from nas_server.iscsi_target import FULL_FEATURE, IscsiTarget
from nas_server.nbd_target import TRANSMISSION, NbdTarget
from nas_server.scsi_disk import ScsiDisk
from nas_server.store import MemoryStore
from protocols import iscsi
from protocols.iscsi_initiator import IscsiInitiator
from protocols.nbd_client import NbdClient

PEER = ("198.18.0.2", 40000)
LOCAL = ("198.18.0.1", 3260)
IQN = "iqn.2025-01.org.nsdeadlock.nas:swap.img"


def store(size_bytes: int = 1 << 20) -> tuple[MemoryStore, object]:
    st = MemoryStore()
    st.add_export("swap")
    img = st.create_image("swap", "img", size_bytes)
    return st, img


def pump(machine, conn) -> list:
    """Move bytes between a client machine and a target connection until both are quiet."""
    events = []
    while True:
        d = machine.data_to_send()
        if not d:
            return events
        events += machine.receive(conn.feed(d))


def nbd_pair(target: NbdTarget, export: bytes = b"swap/img", **kw):
    conn = target.connect(PEER)
    c = NbdClient(export, **kw)
    events = c.receive(conn.initial())
    events += pump(c, conn)
    return c, conn, events


def iscsi_pair(target: IscsiTarget, name: str = IQN, **kw):
    conn = target.connect(PEER, LOCAL)
    i = IscsiInitiator("iqn.2025-01.org.nsdeadlock:test", name, **kw)
    i.start()
    return i, conn, pump(i, conn)


def nbd_in_transmission(target: NbdTarget, img, structured: bool = False):
    """A connection already in the transmission phase (what a handshake would leave)."""
    conn = target.connect(PEER)
    conn.state, conn.image, conn.structured = TRANSMISSION, img, structured
    return conn


def iscsi_in_full_feature(target: IscsiTarget, img, params: iscsi.Params | None = None):
    """A logged-in Normal session on ``img`` (what a login would leave), ExpCmdSN 1, StatSN 1."""
    conn = target.connect(PEER, LOCAL)
    conn.state, conn.session_type, conn.target_name = FULL_FEATURE, "Normal", IQN
    conn.disk = ScsiDisk(img, IQN, target.counters)
    conn.params = params or iscsi.Params(InitialR2T=True, ImmediateData=True, FirstBurstLength=65536)
    conn.exp_cmd_sn, conn.stat_sn = 1, 1
    conn.reader.max_data_segment_bytes = conn.params.MaxRecvDataSegmentLength
    hd, dd = conn.params.HeaderDigest == "CRC32C", conn.params.DataDigest == "CRC32C"
    conn._tx_digests = (hd, dd)
    conn.reader.header_digest, conn.reader.data_digest = hd, dd
    return conn
