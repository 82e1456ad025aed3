"""Reference NFSv3 client on kernel sockets, built on the shared codecs.

It is the baseline the userspace client agent is measured against, and the verifier that reads an
image back after a run. Invariants owned here:
- Every call is matched to its reply by xid; a reply with an unknown xid is counted and ignored.
- Over UDP a call unanswered for ``timeout_s`` is retransmitted with the same xid (so the server's
  DRC can recognise it), at most ``retries`` times, then ``RpcTimeout`` says which call and how long.
- ``pump`` keeps at most ``window`` calls outstanding, so throughput figures measure the server and
  the path, not one round trip at a time.

Page contents are a pure function of (seed, offset) (``page_data``), so any process can verify
what any other wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import socket
import sys
import time
from typing import Iterable

from protocols import mount as mnt
from protocols import nfs3, rpc
from protocols.xdr import Unpacker

DEFAULT_TIMEOUT_S = 0.5  # UDP retransmit timer: a veth round trip is ~50 us, a fsync a few ms
DEFAULT_RETRIES = 20
DEFAULT_WINDOW = 16  # outstanding calls; 16 x 32 KiB stays inside a 4 MiB server receive buffer


class RpcTimeout(TimeoutError):
    pass


class NfsError(RuntimeError):
    def __init__(self, what: str, status: int):
        super().__init__(f"{what} failed: {nfs3.STATUS_NAMES.get(status, status)}")
        self.status = status


def page_data(seed: int, offset: int, n: int) -> bytes:
    """Deterministic content for ``n`` bytes at ``offset`` of a run seeded ``seed``."""
    return random.Random(seed * 1_000_003 + offset).randbytes(n)


def portmap_ports(host: str, transport: str = "tcp", timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """(NFS v3 port, MOUNT v3 port) of ``host`` from its portmapper (port 111)."""
    with RefClient(host, mnt.PMAP_PORT, transport, timeout_s=timeout_s) as pm:
        return pm.getport(nfs3.NFS_PROGRAM, nfs3.NFS_V3), pm.getport(mnt.MOUNT_PROGRAM, mnt.MOUNT_V3)


class RefClient:
    def __init__(self, host: str, port: int = 2049, transport: str = "udp", *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, mount_port: int | None = None, uid: int = 0, gid: int = 0):
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport {transport!r} is not 'udp' or 'tcp'")
        self.host, self.port, self.transport = host, port, transport
        self.mount_port = mount_port or port
        self.timeout_s, self.retries = timeout_s, retries
        self.cred = rpc.auth_sys_cred(uid, gid, b"refclient")
        self.xid = random.getrandbits(32) & 0x7FFF0000
        self.stats = {"calls": 0, "retransmits": 0, "stray_replies": 0, "bytes_out": 0, "bytes_in": 0}
        self.sock = self._connect(self.port)
        self._rm = rpc.RecordReassembler(8 << 20)
        self._ready: list[bytes] = []

    def _connect(self, port: int) -> socket.socket:
        if self.transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:  # READ replies of a whole window arrive back to back: room for all of them
                s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.connect((self.host, port))
        else:
            s = socket.create_connection((self.host, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        return s

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *e):
        self.close()

    def next_xid(self) -> int:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        return self.xid

    # -- transport ---------------------------------------------------------------------------
    def send_msg(self, msg: bytes) -> None:
        self.stats["bytes_out"] += len(msg)
        if self.transport == "udp":
            self.sock.send(msg)
        else:
            self.sock.setblocking(True)
            try:
                self.sock.sendall(rpc.frame_record(msg))
            finally:
                self.sock.setblocking(False)

    def recv_msgs(self, timeout_s: float) -> list[bytes]:
        if self._ready:
            out, self._ready = self._ready, []
            return out
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        try:
            if not sel.select(timeout_s):
                return []
        finally:
            sel.close()
        out = []
        if self.transport == "udp":
            while True:
                try:
                    m = self.sock.recv(65536)
                except BlockingIOError:
                    break
                self.stats["bytes_in"] += len(m)
                out.append(m)
        else:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return []
            if not data:
                raise ConnectionError(f"server {self.host}:{self.port} closed the TCP connection")
            self.stats["bytes_in"] += len(data)
            out = self._rm.feed(data)
        return out

    def pump(self, calls: Iterable[tuple[int, bytes]], window: int = DEFAULT_WINDOW) -> dict[int, bytes]:
        """Send (xid, msg) calls with at most ``window`` outstanding; return replies by xid."""
        it = iter(calls)
        outstanding: dict[int, list] = {}  # xid -> [msg, deadline, tries]
        replies: dict[int, bytes] = {}
        exhausted = False
        while True:
            while not exhausted and len(outstanding) < window:
                try:
                    xid, msg = next(it)
                except StopIteration:
                    exhausted = True
                    break
                self.send_msg(msg)
                self.stats["calls"] += 1
                outstanding[xid] = [msg, time.monotonic() + self.timeout_s, 0]
            if not outstanding:
                return replies
            now = time.monotonic()
            wait = max(0.0, min(v[1] for v in outstanding.values()) - now)
            for m in self.recv_msgs(wait):
                xid = rpc.peek_xid(m)
                if xid in outstanding:
                    del outstanding[xid]
                    replies[xid] = m
                else:
                    self.stats["stray_replies"] += 1
            now = time.monotonic()
            for xid, v in outstanding.items():
                if v[1] <= now:
                    if self.transport == "tcp" or v[2] >= self.retries:
                        raise RpcTimeout(f"xid {xid:#x}: no reply from {self.host}:{self.port}/{self.transport} "
                                         f"after {v[2] + 1} sends over {(v[2] + 1) * self.timeout_s:.1f} s; "
                                         "is the server running and reachable?")
                    self.send_msg(v[0])
                    self.stats["retransmits"] += 1
                    v[1], v[2] = now + self.timeout_s, v[2] + 1

    def call(self, prog: int, vers: int, proc: int, args: bytes = b"") -> tuple[rpc.Reply, Unpacker]:
        xid = self.next_xid()
        msg = rpc.encode_call(xid, prog, vers, proc, args, self.cred)
        reply = self.pump([(xid, msg)])[xid]
        hdr = rpc.decode_reply(reply)
        if not hdr.ok:
            raise RuntimeError(f"RPC prog {prog} v{vers} proc {proc}: {hdr.describe()}")
        return hdr, Unpacker(reply, hdr.body_offset)

    def nfs(self, proc: int, args=None) -> nfs3.Res:
        _, u = self.call(nfs3.NFS_PROGRAM, nfs3.NFS_V3, proc, nfs3.encode_args(proc, args))
        return nfs3.decode_res(proc, u)

    # -- operations ------------------------------------------------------------------------------
    def getport(self, prog: int, vers: int) -> int:
        """Portmap v2 GETPORT (RFC 1833) for ``prog``/``vers`` over this client's transport --
        call it on a client of port 111. RuntimeError if the program is not registered."""
        proto = mnt.IPPROTO_TCP if self.transport == "tcp" else mnt.IPPROTO_UDP
        _, u = self.call(mnt.PMAP_PROGRAM, mnt.PMAP_V2, mnt.PMAPPROC_GETPORT,
                         mnt.encode_mapping(mnt.Mapping(prog, vers, proto, 0)))
        port = u.unpack_uint()
        if not 0 < port < 65536:
            raise RuntimeError(f"GETPORT {prog}/{vers}/{self.transport} on {self.host}: not registered")
        return port

    def mount(self, path: str) -> bytes:
        if self.mount_port != self.port:  # e.g. nfs-ganesha's mountd port: a short-lived second client
            with RefClient(self.host, self.mount_port, self.transport, timeout_s=self.timeout_s) as m:
                return m.mount(path)
        _, u = self.call(mnt.MOUNT_PROGRAM, mnt.MOUNT_V3, mnt.MOUNTPROC3_MNT, mnt.encode_dirpath(path))
        r = mnt.decode_mnt_res(u)
        if r.status != mnt.MNT3_OK:
            raise NfsError(f"MNT {path}", r.status)
        return r.fh

    def lookup(self, dir_fh: bytes, name: str) -> tuple[bytes, nfs3.Fattr3]:
        r = self.nfs(nfs3.NFSPROC3_LOOKUP, nfs3.DiropArgs(dir_fh, name.encode()))
        if r.status:
            raise NfsError(f"LOOKUP {name}", r.status)
        return r.fh, r.attr

    def create(self, dir_fh: bytes, name: str, mode: int = nfs3.UNCHECKED) -> bytes:
        r = self.nfs(nfs3.NFSPROC3_CREATE, nfs3.CreateArgs(dir_fh, name.encode(), mode))
        if r.status:
            raise NfsError(f"CREATE {name}", r.status)
        return r.fh

    def getattr(self, fh: bytes) -> nfs3.Fattr3:
        r = self.nfs(nfs3.NFSPROC3_GETATTR, nfs3.FhArgs(fh))
        if r.status:
            raise NfsError("GETATTR", r.status)
        return r.attr

    def write(self, fh: bytes, offset: int, data: bytes, stable: int = nfs3.FILE_SYNC) -> nfs3.WriteReply:
        xid = self.next_xid()
        w = nfs3.decode_write_reply(self.pump([(xid, nfs3.encode_write_call(xid, fh, offset, data, stable, self.cred))])[xid])
        if w.status:
            raise NfsError(f"WRITE at {offset}", w.status)
        return w

    def read(self, fh: bytes, offset: int, count: int) -> bytes:
        r = self.nfs(nfs3.NFSPROC3_READ, nfs3.ReadArgs(fh, offset, count))
        if r.status:
            raise NfsError(f"READ at {offset}", r.status)
        return r.data

    def commit(self, fh: bytes) -> bytes:
        xid = self.next_xid()
        msg = nfs3.encode_call(xid, nfs3.NFSPROC3_COMMIT, nfs3.CommitArgs(fh, 0, 0), self.cred)
        c = nfs3.decode_commit_reply(self.pump([(xid, msg)])[xid])
        if c.status:
            raise NfsError("COMMIT", c.status)
        return c.verf

    # -- bulk ------------------------------------------------------------------------------------
    def write_pages(self, fh: bytes, total_bytes: int, io_bytes: int, seed: int, stable: int = nfs3.UNSTABLE,
                    window: int = DEFAULT_WINDOW, start: int = 0) -> dict:
        """Write ``total_bytes`` of ``page_data`` from ``start`` in ``io_bytes`` calls; returns figures."""
        verfs: set[bytes] = set()

        def gen():
            for off in range(start, start + total_bytes, io_bytes):
                xid = self.next_xid()
                n = min(io_bytes, start + total_bytes - off)
                yield xid, nfs3.encode_write_call(xid, fh, off, page_data(seed, off, n), stable, self.cred)

        t0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        replies = self.pump(gen(), window)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        dt = time.perf_counter() - t0
        for m in replies.values():
            w = nfs3.decode_write_reply(m)
            if not w.rpc_ok or w.status:
                raise NfsError("WRITE", w.status)
            verfs.add(w.verf)
        return {"bytes": total_bytes, "seconds": dt, "mib_per_s": total_bytes / dt / (1 << 20) if dt else 0.0,
                "calls": len(replies), "verifiers": sorted(v.hex() for v in verfs),
                "cpu_user_s": ru1.ru_utime - ru0.ru_utime, "cpu_sys_s": ru1.ru_stime - ru0.ru_stime}

    def verify_pages(self, fh: bytes, total_bytes: int, io_bytes: int, seed: int, window: int = DEFAULT_WINDOW,
                     start: int = 0) -> dict:
        """Read back and compare with ``page_data``; returns figures and the offsets that differ."""
        offsets = {}

        def gen():
            for off in range(start, start + total_bytes, io_bytes):
                xid = self.next_xid()
                n = min(io_bytes, start + total_bytes - off)
                offsets[xid] = (off, n)
                yield xid, nfs3.encode_call(xid, nfs3.NFSPROC3_READ, nfs3.ReadArgs(fh, off, n), self.cred)

        t0 = time.perf_counter()
        replies = self.pump(gen(), window)
        dt = time.perf_counter() - t0
        bad = []
        for xid, m in replies.items():
            off, n = offsets[xid]
            _, r = nfs3.decode_reply(nfs3.NFSPROC3_READ, m)
            if r is None or r.status or r.data != page_data(seed, off, n):
                bad.append(off)
        return {"bytes": total_bytes, "seconds": dt, "mib_per_s": total_bytes / dt / (1 << 20) if dt else 0.0,
                "calls": len(replies), "bad_offsets": sorted(bad), "verified": not bad}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nas_server.refclient",
                                description="Write and/or verify seeded pages in an NFS image over UDP or TCP.")
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=2049)
    p.add_argument("--mount-port", type=int, help="MOUNT port when not the NFS port (nfs-ganesha: 20048)")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--export", required=True, help="export path, e.g. /swap")
    p.add_argument("--file", required=True, help="image name inside the export")
    p.add_argument("--bytes", type=int, default=64 << 20)
    p.add_argument("--io-bytes", type=int, default=32 << 10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stable", choices=("unstable", "data_sync", "file_sync"), default="unstable")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--write", action="store_true")
    p.add_argument("--commit", action="store_true")
    p.add_argument("--verify", action="store_true")
    a = p.parse_args(argv)
    out: dict = {}
    try:
        with RefClient(a.server, a.port, a.transport, timeout_s=a.timeout, mount_port=a.mount_port) as c:
            root = c.mount(a.export)
            fh, attr = c.lookup(root, a.file)
            if a.bytes > attr.size:
                raise ValueError(f"--bytes {a.bytes} exceeds image {a.file} of {attr.size} bytes")
            if a.write:
                out["write"] = c.write_pages(fh, a.bytes, a.io_bytes, a.seed,
                                             {"unstable": 0, "data_sync": 1, "file_sync": 2}[a.stable], a.window)
            if a.commit:
                out["commit_verifier"] = c.commit(fh).hex()
            if a.verify:
                out["verify"] = c.verify_pages(fh, a.bytes, a.io_bytes, a.seed, a.window)
            out["client"] = c.stats
    except (OSError, RuntimeError, ValueError) as e:
        print(f"refclient: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0 if out.get("verify", {}).get("verified", True) else 3


if __name__ == "__main__":
    sys.exit(main())
