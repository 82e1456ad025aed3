"""What the testbed reads of a client host under test -- the one interface a *kind* of client
implements (the userspace agent today: agent.py; a real Linux kernel in a VM next).

The runner, the watchdog, the benchmarks and the simulation see a client only through these
calls. Every implementation keeps these invariants:

Lifecycle
- ``start(rig, host, **placement)`` starts the client inside ``host``'s namespace of the rig's
  topology (testbed/rig.py: placement on CPU 0, permanent neighbour entries for the NAS and noise
  hosts, its log under the run directory) and returns once it is ready to take requests; a client
  that cannot start raises ``ClientError`` with one line saying why. ``stop()`` stops it and
  returns a final summary dict; it is idempotent and never raises for a client already gone.

Setup (scenario), each returning what the client reports, raising ``ClientError`` when refused
- ``sinks(ports, reader, rcvbuf_bytes)``: datagram sockets on ``ports`` that the flood fills
  (``reader``: "none" | "fast" | "ordinary", testbed/scenario.py READERS).
- ``attach(consumer, device, *, memalloc, policy, dirty_ratio, dirty_background_ratio)``: swap
  (``consumer`` "swap": swapon on the device; ``memalloc`` marks its sockets SOCK_MEMALLOC) or a
  file-backed consumer ("mmap" | "write": the file's mapping, ``policy`` "linux" | "extended").
  ``device`` is a device spec: ``{"kind": "nfs", "server": IP, "port": 2049, "export": "swap",
  "image": "swap.img", "slots": 16, "wsize": 4096, "timeo_s", "timeo_max_s", "retrans",
  "stable": "FILE_SYNC" | "UNSTABLE" | "DATA_SYNC"}`` (client_agent/host.py STORAGE_KINDS; a
  Linux client maps it to mount options and ``swapon``).
- ``set(key, value)``: ``pfmemalloc_demux_drop`` (bool), ``min_free_kbytes``,
  ``watermark_scale_factor``, ``budget`` (the agent's NAPI weight; a kernel: net.core.dev_weight).
- ``start_workload(consumer, pages, seed, rate_pps)``: the anonymous toucher (swap) or the file
  writer/mapper; its page contents are ``client_agent.mm.anon.page_bytes(seed, page_id, gen)``
  resp. ``client_agent.mm.filemap.file_page_bytes(seed, index, gen)`` so the target can be read
  back and compared.

Observation (no side effects on the client beyond reading)
- ``snapshot(traces=False)`` -> a dict shaped after /proc, the keys the watchdog and the runner's
  timeline read (testbed/watchdog.py, testbed/runner.py ``compact``); a kind that lacks a figure
  leaves its key out (never a made-up value):
    ``time_s``; ``valid`` (bool) and ``invalid_reasons`` (list of sentences);
    ``alloc``: ``zoneinfo`` {free, min, low, high, managed, min_free_kbytes} (pages, /proc/zoneinfo),
              ``vmstat`` {pswpout, pgscan_kswapd, pgsteal_kswapd, nr_writeback, nr_anon_pages,
              allocstall, pgscan_direct_throttle, nr_written, nr_dirtied, ...} (/proc/vmstat),
              ``reserve`` {atomic_floor, nr_free_lowwater, reserve_in_use, memalloc_socks},
              ``kswapd`` {wanted};
    ``stack``: ``counters`` {rx_packets, rx_nobuf, rx_pfmemalloc, PFMemallocDrop, ...},
              ``snmp`` {Ip, Udp, Icmp, TcpExt: /proc/net/snmp and netstat names},
              ``drop_reasons`` {SKB_DROP_REASON suffix: count};
    ``nfs`` / ``file_nfs``: the consumer's RPC client {counters {rpc_calls, rpc_retrans,
              rpc_replies, ...}, not_responding, socket {drops, memalloc}, xids_sent/xids_replied
              (traces only)};
    ``swap`` {active, nr_slots, acked, writeback, resident, + the protocol's writeback counters};
    ``filemap`` (file consumers) {active, nr_dirty, nr_writeback, throttled_writers, workload,
              ...}; ``workload`` {allocated, target, done};
    ``tasks``: [{name, pid, state, wait, reason, waited_s, kthread}] (the hung-task report);
    ``swap_devices`` / ``filemaps``: every device and mapping, whatever its protocol.
- ``workload_map()`` -> {"page_size": 4096, "seed": S, "acked": {slot_or_index: [page_id, gen]},
  "content": "swap" | "file"}: every page the target acknowledged durably, for read-back.
"""

from __future__ import annotations


class ClientError(Exception):
    """A client refused a request or could not be started: one line, what and why."""


class Client:
    """Base of the client kinds: the interface above, with ``NotImplementedError`` for what a
    kind must provide."""

    kind = "?"

    def start(self, rig, host: str, **placement) -> None:     # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> dict:                                   # pragma: no cover - interface
        raise NotImplementedError

    def sinks(self, ports, reader: str, rcvbuf_bytes: int) -> list[dict]:   # pragma: no cover
        raise NotImplementedError

    def attach(self, consumer: str, device: dict, *, memalloc: bool, policy: str = "linux",
               dirty_ratio: int = 20, dirty_background_ratio: int = 10) -> dict:   # pragma: no cover
        raise NotImplementedError

    def set(self, key: str, value) -> dict:                   # pragma: no cover - interface
        raise NotImplementedError

    def start_workload(self, consumer: str, pages: int, seed: int, rate_pps: float = 0) -> dict:
        raise NotImplementedError                             # pragma: no cover - interface

    def snapshot(self, traces: bool = False) -> dict:         # pragma: no cover - interface
        raise NotImplementedError

    def workload_map(self) -> dict:                           # pragma: no cover - interface
        raise NotImplementedError
