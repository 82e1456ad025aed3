"""Scenarios as data: a TOML ``[scenario]`` table -> a validated ``Scenario`` -> preflight checks.

Invariants owned here:
- A scenario file holds exactly the keys of docs/swap-contract.md ("Scenario parameters") plus the
  runner's own (``agent_capacity_pps``, ``budget``, ``swap_rate_pps``); an unknown key or a bad value is refused with
  one line ``FILE: KEY: problem; fix`` before anything is created.
- The preflight decides, from the scenario's figures alone, whether its ``expect`` is physically
  possible, and records each check as ``{name, formula, values, pass}`` for the report. Watermarks
  and floors come from the agent's own allocator code (client_agent.mm), never re-derived here, so
  the preflight and the run can never disagree about what ``min`` is.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields

from testbed.linux_vm.initramfs import NIC_MODULES
from testbed.linux_vm.qemu import ACCELS

SCENARIO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios")
EXPECTS = ("deadlock", "recovered", "completed")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STABLE = ("FILE_SYNC", "UNSTABLE")
READERS = ("none", "fast", "ordinary")
# What fills memory (docs/file-backed.md): anon pages to swap, MAP_SHARED pages of a file, or
# write() pages; and which transports are SOCK_MEMALLOC: "linux" (swap only, xs_set_memalloc) or
# "extended" (the file's transport too -- beyond Linux).
CONSUMERS = ("swap", "mmap", "write")
POLICIES = ("linux", "extended")
# The NFS client's transport: tcp (every Linux since 5.6: CONFIG_NFS_DISABLE_UDP_SUPPORT) or udp
# (the "Linux before 5.6" variant, nas-server's one-port layout).
TRANSPORTS = ("udp", "tcp")
# The swap device's storage: an NFS file (over ``transport``); an NBD export or iSCSI LUN (both over
# the agent's TCP, drivers/block/nbd.py, drivers/scsi/iscsi_tcp.py; nas-server --nbd / --iscsi;
# docs/block.md); or an AoE device e<aoe_shelf>.<aoe_slot> (docs/aoe.md) served by nas-server's AoE
# target (or a third-party target: aoe_target = "vblade"), with ``nfs_swap_pages`` of NFS swap beside
# it (SOCK_MEMALLOC, so memalloc sockets exist); for AoE, ``policy`` linux is the Linux driver,
# extended lets the marked target's frames use the reserve.
STORAGES = ("nfs", "nbd", "iscsi", "aoe")
BLOCK_STORAGES = ("nbd", "iscsi")
AOE_TARGETS = ("nas-server", "vblade")
# Who serves an NBD / iSCSI device on real packets (``target``): nas-server (--nbd / --iscsi), or a
# third-party target on the NAS host serving the same image file (testbed.rig.Rig.start_block_target).
# The simulation always runs nas-server's target core.
TARGETS = {"nas-server": STORAGES, "nbdkit": ("nbd",), "qemu-nbd": ("nbd",), "tgtd": ("iscsi",)}
PAGE_SIZE = 4096
# An NFSv3 WRITE reply on the wire: RPC accepted-reply header 24 + nfsstat 4 + wcc_data
# (pre_op_attr 4+24, post_op_attr 4+84) + count 4 + committed 4 + writeverf 8 = 160 bytes of RPC,
# + UDP 8 + IPv4 20 + Ethernet 14 = 202 bytes: one receive page, never fragmented at MTU 1500.
WRITE_REPLY_FRAME_BYTES = 202
MTU = 1500
ETH_HLEN = 14
UDP_IP_HLEN = 28
# The agent's receive capacity when none is measured: the median of three full `testbed bench` runs
# of the capacity section on the reference 2-core VM, idle (ring-v2 NIC, offloads tx,rx; range
# 80 000-160 000 pps; benchmarks/results/2026-11-30-full-x3/bench.json): the highest flood rate it
# absorbed for 10 s with 0 tp_drops, 0 softnet drops and every datagram read. A loaded machine
# measures less (30-60 kpps in benchmarks/README.md): pass `--bench FILE` (a `testbed bench --json`
# of this machine) or `--set agent_capacity_pps=N`.
DEFAULT_AGENT_CAPACITY_PPS = 149_889
# The fastest kswapd gets pages acknowledged (pages/s): bounded by the NAS (sim: 8 nfsd threads x
# 10 ms = 800/s) and by the agent (real runs: ~750 pages/s measured, memalloc 3672 pages in ~5 s).
# 2000 is a generous bound; the noise-capacity checks below use it.
DEFAULT_SWAP_RATE_PPS = 2000
# The receive/transmit model that runs (client_agent/net/core/dev.py, client_agent/net/sunrpc/):
# - receive allocates per frame, then demuxes it (no NAPI batch is allocated ahead of the demux:
#   ``budget`` only bounds how many frames one poll handles), so a frame from the reserve is
#   dropped at the demux (PFMemallocDrop) or queued before the next frame takes a page;
# - transmit allocates one buffer per IP fragment and frees it as soon as the device took it: one
#   transmit page at a time;
# - every RPC in flight holds one RPC buffer page (rpc_malloc, __GFP_MEMALLOC for a swapper
#   transport) until its reply is read, and a reply waits on the transport socket (one receive
#   page) until rpciod reads it.
RPC_BUFFER_PAGES = 1
TX_FRAME_PAGES = 1
# Over TCP (client_agent/net/ipv4/tcp.py, net/sunrpc/xprtsock.py XsTcp) a call holds more: its
# record (4-byte record mark + the RPC call, AUTH_SYS) is copied by tcp_sendmsg into write-queue
# buffers of one MSS each (one page each, allocated at sk_allocation -- from the reserve for a
# swapper, whose transmit runs under PF_MEMALLOC), which move to the retransmit queue when sent
# and are freed only when the NAS ACKs them; the reply (one segment) waits in the receive queue
# -- or, after a loss, in the out-of-order queue -- until read. ACKs, window probes and FIN are
# built at sk_gfp_mask(GFP_ATOMIC) (the reserve for a SOCK_MEMALLOC socket) and freed when the
# device took them: with data segments they are the one transmit frame at a time; the NAS's pure
# ACKs are received into one page each and consumed at once: one receive frame at a time.
# Sizes of the worst case: the largest NFSv3 file handle (NFS3_FHSIZE 64) and an MSS of
# MTU - IPv4 20 - TCP 20 - timestamps option 12 (every Linux peer offers timestamps).
NFS3_FHSIZE = 64
TCP_HLEN = 20
TCPOLEN_TSTAMP_ALIGNED = 12
IPV4_HLEN = 20
RPC_RECORD_MARK = 4
RX_FRAME_PAGES = 1
# Block protocols over the agent's TCP (drivers/tcp_block.py): a request's bytes sit in TCP's
# write/retransmit queue, one page per segment, until ACKed; its reply is one receive segment (one
# page) until the driver's receive task reads it.
TCP_MSS = MTU - IPV4_HLEN - TCP_HLEN - TCPOLEN_TSTAMP_ALIGNED
# NBD (proto.md): a request header is 28 bytes (+ the WRITE's data); a simple reply 16 bytes.
NBD_REQUEST_HEADER_BYTES = 28
NBD_SIMPLE_REPLY_BYTES = 16
# iSCSI (RFC 7143): every PDU has a 48-byte Basic Header Segment; a WRITE's 4096 bytes ride as
# immediate data of the SCSI Command PDU (ImmediateData=Yes, InitialR2T=No: open-iscsi's and
# nas-server's values), so a write receives only the SCSI Response (48 bytes); with InitialR2T=Yes
# an R2T (48 bytes) would come first and the data go in a Data-Out PDU (48 + 4096).
ISCSI_BHS_BYTES = 48


class ScenarioError(ValueError):
    """A scenario file or override that cannot be used; the message is one line with the fix."""


@dataclass
class Scenario:
    name: str = ""
    description: str = ""
    expect: str = "completed"
    seed: int = 1
    pool_pages: int = 8192
    min_free_kbytes: int = 2048
    watermark_scale_factor: int = 10
    memalloc: bool = True
    pfmemalloc_demux_drop: bool = True
    slots: int = 16
    wsize: int = 4096
    stable: str = "FILE_SYNC"
    timeo_s: float = 0.5
    timeo_max_s: float = 2.0
    retrans: int = 3
    noise_sockets: int = 4
    noise_rcvbuf_bytes: int = 851968
    noise_reader: str = "ordinary"
    flood_pps: int = 4000
    flood_size: int = 64
    # TCP noise (docs/demo.md): kernel TCP senders in noise (testbed/tcp_noise.py), one stream per
    # agent stream sink (reader noise_reader), each paced at noise_tcp_rate_kbps; the sinks'
    # rcvbuf (0: tcp_rmem[1], a socket without SO_RCVBUF). 0 streams: none.
    # A third-party UDP flood generator instead of the built-in flood (docs/demo.md "Another
    # flood"): sh -c in noise with DST, PORTS, RATE_PPS, SIZE, IFACE set. Empty: testbed/flood.py.
    flood_command: str = ""
    noise_tcp_streams: int = 0
    noise_tcp_rate_kbps: int = 2000
    noise_tcp_rcvbuf_bytes: int = 0
    workload_pages: int = 10240
    workload_rate_pps: int = 0
    stall_threshold_s: float = 6.0
    max_duration_s: float = 60.0
    transport: str = "tcp"
    consumer: str = "swap"
    policy: str = "linux"
    dirty_ratio: int = 20
    dirty_background_ratio: int = 10
    storage: str = "nfs"
    target: str = "nas-server"          # who serves an NBD / iSCSI device on real packets (TARGETS)
    aoe_shelf: int = 1
    aoe_slot: int = 0
    aoe_service_ms: float = 4.0
    aoe_bufcnt: int = 16
    aoe_target: str = "nas-server"
    nfs_swap_pages: int = 0
    # The NAS appliance's service time per UDP call (nas-server --write-latency-ms). Stated, so a
    # run's writeback rate does not depend on what fdatasync costs on the host's disk; the NAS
    # data itself lives on tmpfs. The sim models the same with its own nfsd threads.
    nas_write_latency_ms: float = 0.0
    # Seeded packet faults on both directions of the client's NIC on real packets (client-agent
    # --fault; netem is not in this kernel), e.g. "loss=0.05,dup=0.01,seed=7". Empty: none.
    client_faults: str = ""
    # The agent's NIC (client-agent --nic: socket, ring-v2, ring-v3, ring-v3-send) and the offloads
    # it has (--offload, ethtool -K short names: tx, rx, gro, tso, ufo, or "none"; phy/caps.py).
    # "" = client-agent's defaults ($CLIENT_AGENT_NIC / $CLIENT_AGENT_OFFLOAD, else ring-v2 and
    # tx,rx). The simulation honours ``offloads`` through a software NIC (client_agent/phy/
    # soft_nic.py; "" there = none, which behaves as tx,rx: checksum offloads change who computes
    # a checksum, not which frames or buffers exist); ``nic`` is real packets only.
    nic: str = ""
    offloads: str = ""
    # A NAS that is not nas-server (docs/tcp.md "Another NAS"): a shell command the runner starts
    # in the nas namespace with NAS_IP, NAS_DATA (the export directory, image files created in it)
    # and NAS_RUN (scratch) set; it must serve NFSv3 over TCP with MOUNT and NFS registered with
    # portmap on NAS_IP (e.g. scripts/nas-ganesha.sh). Empty: nas-server. ``nas_export``: the path
    # the client mounts (empty: NAS_DATA for a command NAS, "swap" for nas-server).
    nas_command: str = ""
    nas_export: str = ""
    # Runner's own: the agent's receive capacity (frames/s), see `testbed bench`; NAPI budget.
    agent_capacity_pps: int = DEFAULT_AGENT_CAPACITY_PPS
    budget: int = 64
    swap_rate_pps: int = DEFAULT_SWAP_RATE_PPS
    # Which client host runs the scenario: the userspace agent, or a real Linux kernel in a QEMU VM
    # (testbed.linux_vm). The guest_* keys apply to the latter only: its memory, NIC model, extra
    # kernel command line, accelerator, anonymous workload (0: workload_pages / pool_pages of the
    # guest's memory), NFS transport, net.ipv4.udp_mem in pages ("" keeps the kernel's), hung-task timeout, sampler
    # period, and a kernel (vmlinuz/bzImage/vmlinux) + modules directory ("" = the distro's).
    client: str = "agent"
    guest_memory_mib: int = 256
    guest_nic: str = "virtio-net-pci"
    guest_cmdline: str = ""
    guest_accel: str = "auto"
    guest_workload_pages: int = 0
    guest_udp_mem: str = ""
    guest_hung_task_s: int = 10
    guest_sample_ms: int = 500
    guest_nfs_proto: str = "tcp"
    guest_wsize: int = 0        # NFS rsize/wsize of the guest's mount; 0: negotiated (nas-server's 1 MiB)
    guest_kernel: str = ""
    guest_modules: str = ""
    source: str = field(default="<defaults>", compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return d


_FIELDS = {f.name: f for f in fields(Scenario) if f.name != "source"}
_INT_RANGES = {
    "seed": (0, 2**63 - 1), "pool_pages": (64, 1 << 22), "min_free_kbytes": (16, 262144),
    "watermark_scale_factor": (1, 3000), "slots": (1, 1024), "wsize": (512, 1048576),
    "retrans": (0, 100), "noise_sockets": (0, 64), "noise_rcvbuf_bytes": (1024, 1 << 30),
    "noise_tcp_streams": (0, 64), "noise_tcp_rate_kbps": (1, 10_000_000), "noise_tcp_rcvbuf_bytes": (0, 1 << 30),
    "flood_pps": (0, 10_000_000), "flood_size": (12, 1472), "workload_pages": (1, 1 << 24),
    "workload_rate_pps": (0, 10_000_000), "agent_capacity_pps": (1, 100_000_000), "budget": (1, 4096),
    "swap_rate_pps": (0, 100_000_000), "dirty_ratio": (1, 100), "dirty_background_ratio": (0, 100),
    "aoe_shelf": (0, 65534), "aoe_slot": (0, 254), "aoe_bufcnt": (1, 65535), "nfs_swap_pages": (0, 1 << 20),
    "guest_memory_mib": (96, 65536), "guest_workload_pages": (0, 1 << 26), "guest_hung_task_s": (0, 3600),
    "guest_sample_ms": (50, 10000), "guest_wsize": (0, 1 << 20),
}
_FLOAT_RANGES = {"timeo_s": (0.01, 600.0), "timeo_max_s": (0.01, 3600.0), "nas_write_latency_ms": (0.0, 10_000.0),
                 "aoe_service_ms": (0.0, 10_000.0),
                 "stall_threshold_s": (0.1, 3600.0), "max_duration_s": (1.0, 86400.0)}
CLIENTS = ("agent", "linux")
GUEST_NICS = tuple(NIC_MODULES)     # the QEMU NIC models whose guest driver the initramfs carries
GUEST_ACCELS = ACCELS
_CHOICES = {"expect": EXPECTS, "stable": STABLE, "noise_reader": READERS,
            "consumer": CONSUMERS, "policy": POLICIES, "transport": TRANSPORTS,
            "storage": STORAGES, "target": tuple(TARGETS), "aoe_target": AOE_TARGETS, "client": CLIENTS,
            "guest_nic": GUEST_NICS, "guest_nfs_proto": ("tcp", "udp"), "guest_accel": GUEST_ACCELS}


def _check_value(src: str, key: str, value):
    """The value converted to the field's type, or ScenarioError naming file, key and fix."""
    if key not in _FIELDS:
        raise ScenarioError(f"{src}: {key}: unknown key{did_you_mean(key, _FIELDS) or ';'} known keys: {', '.join(_FIELDS)}")
    typ = _FIELDS[key].type
    if typ == "bool":
        if not isinstance(value, bool):
            raise ScenarioError(f"{src}: {key}: expected true or false, got {value!r}; write {key} = true|false")
        return value
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{src}: {key}: expected an integer, got {value!r}; write e.g. {key} = {_FIELDS[key].default}")
        lo, hi = _INT_RANGES[key]
        if not lo <= value <= hi:
            raise ScenarioError(f"{src}: {key}: {value} is outside {lo}..{hi}; pick a value in that range")
        return value
    if typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{src}: {key}: expected a number of seconds, got {value!r}; write e.g. {key} = {_FIELDS[key].default}")
        lo, hi = _FLOAT_RANGES[key]
        if not lo <= value <= hi:
            raise ScenarioError(f"{src}: {key}: {value} is outside {lo}..{hi}; pick a value in that range")
        return float(value)
    if not isinstance(value, str):
        raise ScenarioError(f"{src}: {key}: expected a string, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ScenarioError(f"{src}: {key}: {value!r} is not one of {', '.join(_CHOICES[key])}"
                            f"{did_you_mean(value, _CHOICES[key]) or '; pick one of them'}")
    if key == "guest_udp_mem" and value and value != "kernel" and not re.fullmatch(r"\d+ \d+ \d+", value.strip()):
        raise ScenarioError(f"{src}: {key}: {value!r} is not three page counts; write e.g. {key} = \"4096 8192 65536\" "
                            "(min pressure max, in pages, as net.ipv4.udp_mem), \"kernel\" for the kernel's, or \"\" for no cap")
    if key == "nic" and value:
        from client_agent.phy.ring import NICS
        if value not in NICS:
            raise ScenarioError(f"{src}: {key}: {value!r} is not one of {', '.join(NICS)}; pick one of them "
                                f"(or \"\" for client-agent's default)")
    if key == "offloads" and value:
        from client_agent.phy.caps import parse_offloads
        try:
            parse_offloads(value)
        except ValueError as e:
            raise ScenarioError(f"{src}: {key}: {e}") from None
    if key == "client_faults":
        from client_agent.phy.fault import parse_fault_spec
        try:
            parse_fault_spec(value)
        except ValueError as e:
            raise ScenarioError(f"{src}: {key}: {e}") from None
    return value


def from_dict(table: dict, src: str = "<dict>", overrides: dict | None = None) -> Scenario:
    vals = {}
    for k, v in table.items():
        vals[k] = _check_value(src, k, v)
    for k, v in (overrides or {}).items():
        vals[k] = _check_value(f"{src} (--set)", k, v)
    sc = Scenario(**vals, source=src)
    if not sc.name:
        raise ScenarioError(f"{src}: name: missing; add name = \"...\" to [scenario]")
    if not SAFE_NAME.match(sc.name):
        # the name becomes part of report paths (reports/<name>-<time>, pcap prefixes)
        raise ScenarioError(f"{src}: name: {sc.name!r} is not a safe name; use 1-64 letters, digits, '.', '_' "
                            "or '-', starting with a letter or digit (no '/', no '..')")
    from client_agent.mm.page_alloc import zone_watermarks
    wmin, wlow, whigh = zone_watermarks(sc.pool_pages, sc.min_free_kbytes, sc.watermark_scale_factor)
    if whigh > sc.pool_pages:
        raise ScenarioError(f"{src}: pool_pages: a pool of {sc.pool_pages} pages cannot hold its watermarks "
                            f"(min {wmin}, low {wlow}, high {whigh} pages from min_free_kbytes={sc.min_free_kbytes}); "
                            f"raise pool_pages above {whigh} or lower min_free_kbytes")
    if sc.stall_threshold_s < 3 * sc.timeo_max_s:
        raise ScenarioError(f"{src}: stall_threshold_s: {sc.stall_threshold_s} < 3 x timeo_max_s = {3 * sc.timeo_max_s}; "
                            f"raise it to at least {3 * sc.timeo_max_s} (a hard mount may be silent that long)")
    if sc.timeo_max_s < sc.timeo_s:
        raise ScenarioError(f"{src}: timeo_max_s: {sc.timeo_max_s} < timeo_s {sc.timeo_s}; make timeo_max_s >= timeo_s")
    if sc.max_duration_s <= sc.stall_threshold_s:
        raise ScenarioError(f"{src}: max_duration_s: {sc.max_duration_s} <= stall_threshold_s {sc.stall_threshold_s}; "
                            f"a deadlock could never be declared: raise max_duration_s")
    if sc.consumer != "swap" and sc.memalloc != (sc.policy == "extended"):
        raise ScenarioError(f"{src}: memalloc: {sc.memalloc} with consumer={sc.consumer} policy={sc.policy}; "
                            f"for a file consumer the policy marks its transport: write memalloc = "
                            f"{str(sc.policy == 'extended').lower()}")
    if sc.storage in BLOCK_STORAGES and sc.consumer != "swap":
        raise ScenarioError(f"{src}: consumer: {sc.consumer!r} with storage={sc.storage}; a block device "
                            f"backs swap only here: write consumer = \"swap\" or storage = \"nfs\"")
    if sc.storage not in TARGETS[sc.target]:
        ok = [t for t, st in TARGETS.items() if sc.storage in st]
        raise ScenarioError(f"{src}: target: {sc.target!r} does not serve storage={sc.storage}; "
                            f"pick one of {', '.join(ok)}")
    if sc.nas_command and sc.transport != "tcp":
        raise ScenarioError(f"{src}: nas_command: another NAS is reached over TCP with its ports from "
                            f"portmap; set transport = \"tcp\" (got {sc.transport!r})")
    if sc.nas_command and sc.storage != "nfs":
        raise ScenarioError(f"{src}: nas_command: another NAS serves NFS; storage = {sc.storage!r} "
                            f"needs nas-server's target -- remove nas_command or set storage = \"nfs\"")
    if sc.nas_export and not sc.nas_command:
        raise ScenarioError(f"{src}: nas_export: {sc.nas_export!r} is for a NAS named by nas_command; "
                            f"nas-server exports \"swap\" -- remove nas_export or set nas_command")
    if sc.storage == "aoe" and sc.consumer != "swap":
        raise ScenarioError(f"{src}: storage: aoe with consumer={sc.consumer}; the AoE device is a swap "
                            f"device: write consumer = \"swap\"")
    if sc.client == "agent" and "gro" in [o.strip() for o in sc.offloads.split(",")]:
        import os as _os
        from client_agent.phy.ring import DEFAULT_NIC, GRO_NICS
        nic = sc.nic or _os.environ.get("CLIENT_AGENT_NIC") or DEFAULT_NIC
        if nic not in GRO_NICS:
            raise ScenarioError(f"{src}: offloads: gro needs a TPACKET_V3 ring (a merged frame is up to 64 KiB) and "
                                f"the agent's NIC is {nic}{'' if sc.nic else ' (the default)'}; add nic = "
                                f"\"ring-v3\" (or {' / '.join(GRO_NICS[1:])}), or drop gro")
    if sc.client == "linux" and (sc.nic or sc.offloads):
        raise ScenarioError(f"{src}: nic/offloads: they describe the agent's NIC; the Linux VM's is guest_nic "
                            f"(got nic={sc.nic!r}, offloads={sc.offloads!r}) -- remove them or set client = \"agent\"")
    if sc.wsize % PAGE_SIZE:
        raise ScenarioError(f"{src}: wsize: {sc.wsize} is not a multiple of {PAGE_SIZE}; swap writes whole pages")
    return sc


def did_you_mean(word: str, choices) -> str:
    """``"; did you mean X?"`` for the closest of ``choices`` (difflib.get_close_matches), or ""."""
    import difflib
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]}?" if close else ""


def check_seed(seed: int | None) -> int | None:
    """``--seed`` as given (None: the scenario's), or ScenarioError naming --seed and its range."""
    lo, hi = _INT_RANGES["seed"]
    if seed is not None and not lo <= seed <= hi:
        raise ScenarioError(f"--seed {seed}: outside {lo}..{hi}; give a seed in that range")
    return seed


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` from ``--set``; VALUE read as TOML (so 30, 2.5, true, "UNSTABLE" work)."""
    if "=" not in text:
        raise ScenarioError(f"--set {text!r}: expected KEY=VALUE, e.g. --set max_duration_s=30")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string (e.g. stable=UNSTABLE)
    return key, value


def resolve_path(name_or_file: str) -> str:
    if os.path.exists(name_or_file):
        return name_or_file
    p = os.path.join(SCENARIO_DIR, f"{name_or_file}.toml")
    if SAFE_NAME.match(name_or_file) and os.path.exists(p):   # a built-in name never leaves SCENARIO_DIR
        return p
    known = sorted(f[:-5] for f in os.listdir(SCENARIO_DIR) if f.endswith(".toml")) if os.path.isdir(SCENARIO_DIR) else []
    raise ScenarioError(f"{name_or_file}: no such scenario file or built-in scenario"
                        f"{did_you_mean(name_or_file, known) or ';'} built-ins: {', '.join(known)}")


def load(name_or_file: str, overrides: dict | None = None) -> Scenario:
    path = resolve_path(name_or_file)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}; fix the syntax") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                            f"a scenario is a TOML file -- save it as UTF-8") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read it ({e.strerror}); pass a scenario file or a built-in name") from None
    extra = [k for k in doc if k != "scenario"]
    if extra:
        raise ScenarioError(f"{path}: {extra[0]}: unknown top-level key; put every parameter in the [scenario] table")
    if "scenario" not in doc or not isinstance(doc["scenario"], dict):
        raise ScenarioError(f"{path}: scenario: missing [scenario] table; start the file with [scenario]")
    return from_dict(doc["scenario"], path, overrides)


def capacity_from_bench(path: str) -> int:
    """The agent's receive capacity from a `testbed bench` JSON: a figure named like
    ``agent_capacity_pps`` / ``agent_rx_pps`` (``{"value": N, "unit": "pps"}``)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ScenarioError(f"{path}: cannot read bench JSON: {e}; pass a file written by `testbed bench --json`") from None

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("agent_capacity_pps", "agent_rx_pps", "rx_capacity_pps") or (isinstance(v, dict) and v.get("name") in ("agent_capacity_pps", "agent_rx_pps")):
                    val = v.get("value") if isinstance(v, dict) else v
                    if isinstance(val, (int, float)) and val > 0:
                        return int(val)
                r = walk(v)
                if r:
                    return r
        elif isinstance(o, list):
            for v in o:
                if isinstance(v, dict) and v.get("name") in ("agent_capacity_pps", "agent_rx_pps") and isinstance(v.get("value"), (int, float)):
                    return int(v["value"])
                r = walk(v)
                if r:
                    return r
        return None
    got = walk(doc)
    if not got:
        raise ScenarioError(f"{path}: no agent_capacity_pps / agent_rx_pps figure in the bench JSON; "
                            f"pass --set agent_capacity_pps=N instead")
    return got


# ------------------------------------------------------------------------------ preflight
@dataclass
class Check:
    name: str
    formula: str
    values: dict
    passed: bool
    applies: str = "all"

    def to_json(self) -> dict:
        return {"name": self.name, "formula": self.formula, "values": self.values, "pass": self.passed,
                "applies": self.applies}

    def line(self, sc: Scenario) -> str:
        vals = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return f"{sc.source}: preflight {self.name} fails for expect={sc.expect}: {self.formula} with {vals}"


def figures(sc: Scenario) -> dict:
    """Watermarks and sizes, from the agent's own allocator and stack rules."""
    from client_agent.mm.gfp import GFP_ATOMIC
    from client_agent.mm.page_alloc import PageAllocator
    from client_agent.net.core.skbuff import PAGE_SIZE as SKB_PAGE, SKB_TRUESIZE_OVERHEAD

    pa = PageAllocator(sc.pool_pages, sc.min_free_kbytes, sc.watermark_scale_factor)
    wmin, low, high = pa.wmark_min, pa.wmark_low, pa.wmark_high
    atomic_floor = pa.watermark_floor(GFP_ATOMIC)
    frame = ETH_HLEN + UDP_IP_HLEN + sc.flood_size
    pages_per_frame = max(1, math.ceil(frame / SKB_PAGE))
    truesize = pages_per_frame * SKB_PAGE + SKB_TRUESIZE_OVERHEAD
    # client_agent/net/ipv4/udp.py: a datagram is admitted while rmem_alloc <= rcvbuf before it, so a
    # socket holds floor(rcvbuf / truesize) + 1 datagrams.
    per_socket = sc.noise_rcvbuf_bytes // truesize + 1
    noise_pages = sc.noise_sockets * per_socket * pages_per_frame
    reply_pages = max(1, math.ceil(WRITE_REPLY_FRAME_BYTES / SKB_PAGE))
    reply_frags = max(1, math.ceil((WRITE_REPLY_FRAME_BYTES - ETH_HLEN - 20) / (MTU - 20)))
    reasm_pages = sc.slots * reply_frags if reply_frags > 1 else 0
    out = {"min": wmin, "low": low, "high": high, "atomic_floor": atomic_floor,
           "flood_truesize": truesize, "flood_pages_per_frame": pages_per_frame,
           "datagrams_per_noise_socket": per_socket, "noise_pages": noise_pages,
           "reply_pages": reply_pages, "reassembly_pages": reasm_pages}
    if sc.storage in BLOCK_STORAGES:
        if sc.storage == "nbd":
            request_bytes, reply_bytes = NBD_REQUEST_HEADER_BYTES + PAGE_SIZE, NBD_SIMPLE_REPLY_BYTES
        else:
            request_bytes, reply_bytes = ISCSI_BHS_BYTES + PAGE_SIZE, ISCSI_BHS_BYTES
        # TCP's write/retransmit queue holds the request's bytes in pages (size_goal buffers,
        # client_agent/net/ipv4/tcp.py TxSkb): at most ceil(request_bytes / PAGE_SIZE) new pages
        out.update(request_bytes=request_bytes, request_tx_pages=math.ceil(request_bytes / SKB_PAGE),
                   reply_bytes=reply_bytes, r2t_pages=0, request_rx_pages=1)
    elif sc.transport == "tcp":
        out.update(tcp_figures(sc))
    return out


def tcp_figures(sc: Scenario) -> dict:
    """What one NFS WRITE holds over TCP: its record's size (encoded by the agent's own codec with
    AUTH_SYS and the largest file handle), the MSS and its segments, the write/retransmit-queue
    pages the record takes until ACKed (its bytes in pages: tcp_sendmsg appends to size_goal
    buffers, so a record starts at most one new page per 4 KiB of it -- client_agent/net/ipv4/
    tcp.py TxSkb), and the reply segment's frame and pages."""
    from client_agent.net.core.skbuff import PAGE_SIZE as SKB_PAGE
    from protocols import nfs3, rpc

    cred = rpc.auth_sys_cred(machinename=b"client-agent")
    call = nfs3.encode_write_call(0, b"\0" * NFS3_FHSIZE, 0, b"\0" * sc.wsize, nfs3.FILE_SYNC, cred)
    record = RPC_RECORD_MARK + len(call)
    mss = MTU - IPV4_HLEN - TCP_HLEN - TCPOLEN_TSTAMP_ALIGNED
    segs = math.ceil(record / mss)
    reply_frame = (WRITE_REPLY_FRAME_BYTES - UDP_IP_HLEN + IPV4_HLEN + TCP_HLEN
                   + TCPOLEN_TSTAMP_ALIGNED + RPC_RECORD_MARK)
    return {"tcp_mss": mss, "write_record_bytes": record, "request_segments": segs,
            "request_skb_pages": math.ceil(record / SKB_PAGE), "tcp_reply_frame_bytes": reply_frame,
            "reply_pages": max(1, math.ceil(reply_frame / SKB_PAGE)), "reassembly_pages": 0}


def _fill(noise_target: int, sc: Scenario) -> tuple[float, float]:
    """Time for the flood to pin ``noise_target`` net pages while kswapd hands pages back at up to
    ``swap_rate_pps`` (every page it frees below min goes to the next flood frame: readers and
    workload are blocked there), and the noise pages that takes: (fill_s, flood_pps x fill_s).
    A flood no faster than kswapd never fills: (math.inf, math.inf)."""
    net = sc.flood_pps - sc.swap_rate_pps
    if net <= 0:
        return math.inf, math.inf
    fill_s = noise_target / net
    return fill_s, math.ceil(sc.flood_pps * fill_s)


NEVER = "never"      # a time that is infinite, as shown in check values (JSON has no infinity)
INFINITE = "inf"     # a page count that is infinite, likewise


def _seconds(x: float) -> float | str:
    return NEVER if x == math.inf else round(x, 3)


def _pages(x: float) -> int | str:
    return INFINITE if x == math.inf else int(x)


def preflight(sc: Scenario) -> tuple[list[Check], dict]:
    """Every check, whether it applies to this ``expect`` or not (``applies`` says which).

    The formulas describe the model that runs (see RPC_BUFFER_PAGES above): per-frame receive
    allocation, one transmit page at a time, one RPC buffer per call in flight, replies queued on
    the transport socket until read."""
    f = figures(sc)
    checks: list[Check] = []
    pin = f["min"] - f["atomic_floor"]
    # 'deadlock' and 'recovered' both need free pinned at the atomic floor (the stall condition);
    # the flood only gets there if the noise queues hold what it must pin, plus every page kswapd
    # frees meanwhile (it goes to the next flood frame, not back to free).
    fill_s, need_pin = _fill(pin, sc)
    f["fill_to_floor_s"] = _seconds(fill_s)
    checks.append(Check(
        "flood_pins_free_at_atomic_floor",
        "noise_pages >= (min - atomic_floor) + swap_rate_pps * fill_s, "
        "fill_s = (min - atomic_floor) / (flood_pps - swap_rate_pps)",
        {"noise_pages": f["noise_pages"], "min": f["min"], "atomic_floor": f["atomic_floor"],
         "flood_pps": sc.flood_pps, "swap_rate_pps": sc.swap_rate_pps, "fill_s": f["fill_to_floor_s"],
         "needed": _pages(need_pin), "sockets": sc.noise_sockets, "rcvbuf_bytes": sc.noise_rcvbuf_bytes,
         "truesize": f["flood_truesize"]},
        f["noise_pages"] >= need_pin, applies="deadlock,recovered"))
    if not sc.pfmemalloc_demux_drop and sc.memalloc:
        # Without the demux filter the flood's reserve buffers are queued too: it must pin all of
        # min (down to 0 free) plus kswapd's pages meanwhile.
        eat_s, need_eat = _fill(f["min"], sc)
        checks.append(Check(
            "flood_eats_whole_reserve",
            "noise_pages >= min + swap_rate_pps * eat_s, eat_s = min / (flood_pps - swap_rate_pps)",
            {"noise_pages": f["noise_pages"], "min": f["min"], "flood_pps": sc.flood_pps,
             "swap_rate_pps": sc.swap_rate_pps,
             "eat_s": _seconds(eat_s), "needed": _pages(need_eat)},
            f["noise_pages"] >= need_eat, applies="deadlock"))
    # Below the atomic floor only ALLOC_NO_WATERMARKS allocations go: RPC buffers of swapper calls,
    # the transport's receive buffers (SOCK_MEMALLOC), transmit fragments under PF_MEMALLOC. Worst
    # case at one instant: every slot holds its buffer and its reply waits on the socket, plus the
    # one transmit frame being built (and reassembly queues if a reply were fragmented).
    # Over TCP each call also holds its record's write/retransmit-queue buffers until the NAS ACKs
    # them (request_skb_pages), the reply may wait in the out-of-order queue instead of the receive
    # queue (same page), and one received pure ACK is in hand at a time (rx_frame_pages); the
    # ACKs the agent sends are the transmit frame (tx_frame_pages), from the reserve for a
    # SOCK_MEMALLOC socket (sk_gfp_mask).
    name = "reserve_covers_slot_table"
    if sc.storage in BLOCK_STORAGES:
        # NBD / iSCSI: every request in flight (``slots`` = the queue depth) holds its segments
        # in TCP's write/retransmit queue until ACKed and one receive page for its reply (NBD:
        # reply header; iSCSI: SCSI Response, + an R2T with InitialR2T=Yes); plus the ACK being
        # sent and one received pure ACK, as for NFS over TCP.
        need = (sc.slots * (f["request_tx_pages"] + f["request_rx_pages"]) + TX_FRAME_PAGES
                + RX_FRAME_PAGES)
        name = "reserve_covers_queue_depth"
        formula = ("slots * (ceil(request_bytes / page_size) + reply_pages + r2t_pages) + tx_frame_pages "
                   "+ rx_frame_pages")
        vals = {"atomic_floor": f["atomic_floor"], "slots": sc.slots, "storage": sc.storage,
                "request_bytes": f["request_bytes"], "tcp_mss": TCP_MSS,
                "request_tx_pages": f["request_tx_pages"], "reply_bytes": f["reply_bytes"],
                "reply_pages": 1, "r2t_pages": f["r2t_pages"], "tx_frame_pages": TX_FRAME_PAGES,
                "rx_frame_pages": RX_FRAME_PAGES, "needed": need}
    elif sc.transport == "tcp":
        need = (sc.slots * (RPC_BUFFER_PAGES + f["request_skb_pages"] + f["reply_pages"])
                + TX_FRAME_PAGES + RX_FRAME_PAGES)
        formula = ("slots * (rpc_buffer_pages + request_skb_pages + reply_pages) + tx_frame_pages "
                   "+ rx_frame_pages, request_skb_pages = ceil(write_record_bytes / page_size)")
        vals = {"atomic_floor": f["atomic_floor"], "slots": sc.slots, "transport": "tcp",
                "rpc_buffer_pages": RPC_BUFFER_PAGES, "write_record_bytes": f["write_record_bytes"],
                "tcp_mss": f["tcp_mss"], "request_skb_pages": f["request_skb_pages"],
                "reply_pages": f["reply_pages"], "tx_frame_pages": TX_FRAME_PAGES,
                "rx_frame_pages": RX_FRAME_PAGES, "needed": need}
    else:
        need = (sc.slots * (RPC_BUFFER_PAGES + f["reply_pages"]) + TX_FRAME_PAGES
                + f["reassembly_pages"])
        formula = "slots * (rpc_buffer_pages + reply_pages) + tx_frame_pages + reassembly_pages"
        vals = {"atomic_floor": f["atomic_floor"], "slots": sc.slots,
                "rpc_buffer_pages": RPC_BUFFER_PAGES, "reply_pages": f["reply_pages"],
                "tx_frame_pages": TX_FRAME_PAGES, "reassembly_pages": f["reassembly_pages"],
                "needed": need}
    f["reserve_needed_pages"] = need
    reserve_ok = f["atomic_floor"] >= need
    if sc.memalloc and sc.pfmemalloc_demux_drop and sc.storage != "aoe":
        checks.append(Check(name, f"atomic_floor >= {formula}", vals, reserve_ok,
                            applies="recovered,completed"))
        # A necessary condition only: below it a deadlock is possible, not certain (buffers are
        # recycled page for page as calls complete; the sim recovers at floor 12, deadlocks at 6).
        checks.append(Check("reserve_undersized", f"atomic_floor < {formula}",
                            dict(vals), not reserve_ok, applies="deadlock"))
    if sc.storage == "aoe":
        # AoE has no socket: with Linux's driver a reserve-backed 0x88A2 frame is dropped at
        # skb_pfmemalloc_protocol whenever a memalloc socket exists (here: the NFS swap beside
        # it), so under the flood every AoE response the atomic floor refuses is lost.
        checks.append(Check(
            "aoe_responses_dropped_at_protocol_filter",
            "policy == linux and nfs_swap_pages > 0 (memalloc_socks > 0: AoE responses from the reserve are dropped)",
            {"policy": sc.policy, "nfs_swap_pages": sc.nfs_swap_pages},
            sc.policy == "linux" and sc.nfs_swap_pages > 0, applies="deadlock"))
        # Beyond Linux: the marked target's responses pass; below the atomic floor each one takes a
        # receive page from the reserve and each request a transmit page, freed as soon as the
        # driver handled / the device took the frame; at most aoe_bufcnt frames are out.
        aoe_need = sc.aoe_bufcnt * f["reply_pages"] + TX_FRAME_PAGES
        checks.append(Check(
            "reserve_covers_aoe_window",
            "policy == extended and atomic_floor >= aoe_bufcnt * reply_pages + tx_frame_pages",
            {"policy": sc.policy, "atomic_floor": f["atomic_floor"], "aoe_bufcnt": sc.aoe_bufcnt,
             "reply_pages": f["reply_pages"], "tx_frame_pages": TX_FRAME_PAGES, "needed": aoe_need},
            sc.policy == "extended" and f["atomic_floor"] >= aoe_need, applies="recovered"))
    cap = sc.agent_capacity_pps // 4
    checks.append(Check("flood_within_agent_capacity", "flood_pps <= agent_capacity_pps / 4",
                        {"flood_pps": sc.flood_pps, "agent_capacity_pps": sc.agent_capacity_pps, "limit": cap},
                        sc.flood_pps <= cap))
    checks.append(Check("flood_fills_noise_in_time", "fill_s < max_duration_s - stall_threshold_s",
                        {"fill_s": f["fill_to_floor_s"], "max_duration_s": sc.max_duration_s,
                         "stall_threshold_s": sc.stall_threshold_s},
                        fill_s < sc.max_duration_s - sc.stall_threshold_s, applies="deadlock,recovered"))
    checks.append(Check("workload_needs_reclaim", "workload_pages > pool_pages - low",
                        {"workload_pages": sc.workload_pages, "pool_pages": sc.pool_pages, "low": f["low"]},
                        sc.workload_pages > sc.pool_pages - f["low"]))
    checks.append(Check("stall_threshold_covers_hard_mount", "stall_threshold_s >= 3 * timeo_max_s",
                        {"stall_threshold_s": sc.stall_threshold_s, "timeo_max_s": sc.timeo_max_s},
                        sc.stall_threshold_s >= 3 * sc.timeo_max_s))
    return checks, f


def failing(sc: Scenario, checks: list[Check]) -> list[Check]:
    """The checks that apply to this scenario's ``expect`` and fail."""
    out = []
    for c in checks:
        if c.applies == "all" or sc.expect in c.applies.split(","):
            if not c.passed:
                out.append(c)
    return out
