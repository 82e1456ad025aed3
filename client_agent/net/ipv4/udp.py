"""UDP (RFC 768): sockets, the port table, receive, transmit, and UDP's early demux
(net/ipv4/udp.c). Registered in the IP protocol table as IPPROTO_UDP.

Invariants owned here:
- ``rmem_alloc`` == Σ truesize of the datagrams queued on the socket; a datagram is admitted
  only while ``rmem_alloc <= rcvbuf`` before it (__udp_enqueue_schedule_skb: one datagram may
  overshoot), otherwise dropped SOCKET_RCVBUFF (Udp RcvbufErrors + InErrors, ``drops``).
  The limit applies to every socket, SOCK_MEMALLOC ones included.
- Every datagram for a socket, on the table path and the early demux alike, goes through
  ``udp_queue_rcv_skb``: the socket's ``sk_filter`` (net/core/sock.py: the one pfmemalloc
  refusal), then the rcvbuf check, then the queue. A refusal counts Udp InErrors and ``drops``.
- A queued datagram's pages are freed when the application reads it (``recvfrom``) or the
  socket is closed (SOCKET_CLOSE).
- The early demux (``udp_fast_rcv``) takes only a unicast IPv4/UDP datagram for us,
  unfragmented, with a 20-byte header, valid, to a bound socket; it makes the same checks in the
  same order as the table path (ip_rcv -> ip_local_deliver -> udp_rcv) and counts the same
  counters; anything else -- a failed check included -- leaves it before counting anything and
  takes the table path, which then counts it.

Errors to the caller are values, as in smoltcp: ``sendto`` returns the bytes sent or a negative
errno (-ENOBUFS: no transmit buffer at this socket's GFP context; -EMSGSIZE; -ENETUNREACH).
"""

from __future__ import annotations

import errno
import socket as _pysocket
import struct as _struct
from collections import deque
from functools import partial

from ...tasks import TIMEOUT, WaitEvent
from ...wire import WireError
from ...wire.ipv4 import IPPROTO_UDP
from ...wire.udp import UdpPacket
from ..core.sock import SK_RMEM_DEFAULT, Sock
from .ip_output import ip_queue_xmit

EPHEMERAL_PORTS = (32768, 60999)  # net.ipv4.ip_local_port_range
UDP_MAX_PAYLOAD = 65535 - 20 - 8
ANY = b"\0\0\0\0"
_UDP_HDR = _struct.Struct("!HHHH")

__all__ = ["EPHEMERAL_PORTS", "SK_RMEM_DEFAULT", "UDP_MAX_PAYLOAD", "UdpSocket", "udp_init"]


class UdpSocket(Sock):
    kind = "udp"

    def __init__(self, stack) -> None:
        super().__init__(stack)
        self.local: tuple[bytes, int] | None = None      # (ip or 0.0.0.0, port)
        self.remote: tuple[bytes, int] | None = None
        self.rxq: deque = deque()                        # (skb, payload, (src_ip, sport))
        self._wait_ev = None                             # cached untimed WaitEvent (wait_data)
        self._wait_owner = None                          # ... built for this owner
        self._woken = False                              # readers woken, none has run yet
        self.counters = {"rx_datagrams": 0, "tx_datagrams": 0, "tx_nobufs": 0}

    # -- setup ---------------------------------------------------------------------------
    def bind(self, addr: tuple[str, int]) -> None:
        ip = _pysocket.inet_aton(addr[0] or "0.0.0.0")
        udp_bind(self, ip, addr[1])

    def connect(self, addr: tuple[str, int]) -> None:
        if self.local is None:
            udp_bind(self, ANY, 0)
        self.remote = (_pysocket.inet_aton(addr[0]), addr[1])

    def getsockname(self) -> tuple[str, int] | None:
        return None if self.local is None else (_pysocket.inet_ntoa(self.local[0]), self.local[1])

    # -- transmit ------------------------------------------------------------------------
    def sendto(self, data, addr: tuple[str, int], now: float) -> int:
        return self._send(data, (_pysocket.inet_aton(addr[0]), addr[1]), now)

    def send(self, data, now: float) -> int:
        if self.remote is None:
            return -errno.EDESTADDRREQ
        return self._send(data, self.remote, now)

    def _send(self, data, dst: tuple[bytes, int], now: float) -> int:
        if self.closed:
            return -errno.EBADF
        if len(data) > UDP_MAX_PAYLOAD:
            return -errno.EMSGSIZE
        if self.local is None:
            udp_bind(self, ANY, 0)
        rc = udp_output(self.stack, self, dst, data, now)
        if rc >= 0:
            self.counters["tx_datagrams"] += 1
            return len(data)
        if rc == -errno.ENOBUFS:
            self.counters["tx_nobufs"] += 1
        return rc

    # -- receive -------------------------------------------------------------------------
    def _enqueue(self, skb, payload, src: tuple[bytes, int]) -> None:
        """Called by udp_queue_rcv_skb after sk_filter and the rcvbuf check passed."""
        self.rmem_alloc += skb.truesize
        st = self.stack
        alloc = st.alloc                             # the socket holds these pages now
        alloc.reassign(skb.pages, self.owner)
        if skb.frag_list:
            for f in skb.frag_list:
                alloc.reassign(f.pages, self.owner)
        self.rxq.append((skb, payload, src))
        self.counters["rx_datagrams"] += 1
        if st.rx_trace_hooks:
            st.rx_trace(skb.data, "queued:" + self.owner)
        if self._waiters and not self._woken and st.sched is not None:
            # sk_data_ready: wake the readers once; until one of them runs, the next datagram
            # finds them all off the wait queue already (autoremove_wake_function)
            self._woken = True
            st.sched.wake(self.wait_key)

    def recvfrom(self, bufsize: int = 65535) -> tuple[bytes, tuple[str, int]] | None:
        """Non-blocking: the oldest datagram (truncated to ``bufsize``) or None when empty."""
        if not self.rxq:
            return None
        src = self.rxq[0][2]
        return self.recv(bufsize), (_pysocket.inet_ntoa(src[0]), src[1])

    def recv(self, bufsize: int = 65535) -> bytes | None:
        """``recvfrom`` without the sender's address (recv(2)): the oldest datagram's bytes
        (truncated to ``bufsize``), or None when the queue is empty."""
        if not self.rxq:
            return None
        skb, payload, _src = self.rxq.popleft()
        data = bytes(payload[:bufsize])
        self.rmem_alloc -= skb.truesize
        st = self.stack
        st.snmp["Udp"]["InDatagrams"] += 1              # Linux counts it in udp_recvmsg
        st.consume_skb(skb, "udp_read")
        return data

    def recvfrom_wait(self, bufsize: int = 65535, until: float | None = None):
        """Task-friendly blocking receive: ``data, addr = yield from sk.recvfrom_wait()``.
        Yields ``WaitEvent`` while the queue is empty; returns None at ``until``."""
        if not self.rxq and not (yield from self.wait_data(until)):
            return None
        return self.recvfrom(bufsize)

    def wait_data(self, until: float | None = None):
        """``yield from sk.wait_data()`` in a task: park (WaitEvent on ``wait_key``, reason
        ``recvfrom <owner>``) until a datagram is queued. Returns True then, False if the socket
        is closed or ``until`` passed first."""
        while not self.rxq:
            if self.closed:
                return False
            if until is None:
                # One wait per batch of datagrams: the untimed WaitEvent is built once per owner
                # (the scheduler never changes a Wait it is given).
                w = self._wait_ev
                if w is None or self._wait_owner is not self.owner:
                    w = self._wait_ev = WaitEvent(self.wait_key, reason=f"recvfrom {self.owner}")
                    self._wait_owner = self.owner
            else:
                w = WaitEvent(self.wait_key, until=until, reason=f"recvfrom {self.owner}")
            self._waiters += 1
            try:
                got = yield w
            finally:
                self._waiters -= 1
                self._woken = False
            if got is TIMEOUT:
                return False
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        st = self.stack
        while self.rxq:
            skb, _p, _s = self.rxq.popleft()
            self.rmem_alloc -= skb.truesize
            st.kfree_skb(skb, "SOCKET_CLOSE")
        self.sk_clear_memalloc()
        udp_unbind(self)
        if self._waiters and st.sched is not None:
            st.sched.wake(self.wait_key)

    def snapshot(self) -> dict:
        return {"local": self.getsockname(), **super().snapshot(), "queued": len(self.rxq),
                **self.counters}


# ------------------------------------------------------------------------------ the protocol
def udp_init(st) -> None:
    """Give ``st`` its UDP port table and register UDP: inet_protos[IPPROTO_UDP], the early
    demux, the received datagrams sockets hold."""
    st.udp_ports = {}
    st._udp_next_port = EPHEMERAL_PORTS[0]
    st.inet_add_protocol(IPPROTO_UDP, partial(udp_rcv, st))
    st.fast_rx = partial(udp_fast_rcv, st)
    st.rx_holders.append(lambda: sum(len(s.rxq) for s in st.sockets if s.kind == "udp"))


def udp_queue_rcv_skb(st, sk: UdpSocket, skb, payload, src) -> None:
    """Queue ``skb`` on ``sk`` (udp_queue_rcv_one_skb + __udp_enqueue_schedule_skb): the
    socket's filter, then its rcvbuf -- one datagram may overshoot it."""
    # sk_filter only has something to say about a pfmemalloc buffer: skip the call otherwise
    reason = sk.sk_filter(skb) if skb.pfmemalloc else None
    if reason is None and sk.rmem_alloc > sk.rcvbuf:
        st.snmp["Udp"]["RcvbufErrors"] += 1
        reason = "SOCKET_RCVBUFF"
    if reason is not None:
        st.snmp["Udp"]["InErrors"] += 1
        sk.drops += 1
        st.kfree_skb(skb, reason)
        return
    sk._enqueue(skb, payload, src)


def udp_rcv(st, skb, src: bytes, dst: bytes, bcast: bool, payload, now: float) -> None:
    uc = st.snmp["Udp"]
    try:
        udp = UdpPacket.new_checked(payload)
    except WireError as e:
        uc["InErrors"] += 1
        st.kfree_skb(skb, e.reason)
        return
    if not skb.csum_unnecessary and udp.csum and not udp.verify_checksum(src, dst):
        uc["InCsumErrors"] += 1
        uc["InErrors"] += 1
        st.kfree_skb(skb, "UDP_CSUM")
        return
    sk = st.udp_ports.get(udp.dport)
    if sk is not None:
        lip = sk.local[0]
        if (lip != ANY and lip != st.ip and not bcast) or \
                (sk.remote is not None and sk.remote != (src, udp.sport)):
            sk = None
    if sk is None:
        uc["NoPorts"] += 1
        st.kfree_skb(skb, "NO_SOCKET")
        return
    udp_queue_rcv_skb(st, sk, skb, udp.payload, (src, udp.sport))


def udp_fast_rcv(st, skb, frame, csum_ok: bool, now: float) -> bool:
    """UDP's early demux straight from the device (see the module docstring): True if it took
    the frame, False (nothing counted) to send it down the table path."""
    if not (len(frame) >= 42 and frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45
            and frame[23] == 17 and not (frame[20] & 0x3F) and not frame[21]
            and frame[:6] == st.mac and frame[30:34] == st.ip
            and int.from_bytes(frame[14:34], "big") % 0xFFFF == 0):
        return False
    total_len = frame[16] << 8 | frame[17]
    sport, dport, ulen, ucsum = _UDP_HDR.unpack_from(frame, 34)
    if not (28 <= total_len <= len(frame) - 14 and 8 <= ulen <= total_len - 20):
        return False
    sk = st.udp_ports.get(dport)
    if (sk is None or (sk.local[0] != ANY and sk.local[0] != st.ip)
            or (sk.remote is not None and sk.remote != (frame[26:30], sport))):
        return False
    if ucsum and not csum_ok:
        # RFC 768 sum over pseudo-header + segment, as UdpPacket.verify_checksum: the
        # ones'-complement sum is the value modulo 0xffff.
        seg = int.from_bytes(frame[34:34 + ulen], "big")
        if ulen & 1:
            seg <<= 8
        if (int.from_bytes(frame[26:34], "big") + 17 + ulen + seg) % 0xFFFF != 0:
            return False
    ipc = st.snmp["Ip"]
    ipc["InReceives"] += 1
    ipc["InDelivers"] += 1
    udp_queue_rcv_skb(st, sk, skb, memoryview(frame)[42:34 + ulen], (frame[26:30], sport))
    return True


def udp_bind(sk: UdpSocket, ip: bytes, port: int) -> None:
    st = sk.stack
    if sk.local is not None:
        raise OSError(errno.EINVAL, f"socket already bound to {sk.getsockname()}")
    if ip not in (ANY, st.ip):
        raise OSError(errno.EADDRNOTAVAIL, f"{_pysocket.inet_ntoa(ip)} is not this stack's "
                      f"address {_pysocket.inet_ntoa(st.ip)}")
    ports = st.udp_ports
    if port == 0:
        lo, hi = EPHEMERAL_PORTS
        for _ in range(hi - lo + 1):
            p = st._udp_next_port
            st._udp_next_port = lo if p >= hi else p + 1
            if p not in ports:
                port = p
                break
        else:
            raise OSError(errno.EADDRINUSE, "no free ephemeral UDP port")
    elif port in ports:
        raise OSError(errno.EADDRINUSE, f"UDP port {port} is already bound")
    sk.local = (ip, port)
    sk.owner = f"sk:udp:{_pysocket.inet_ntoa(st.ip if ip == ANY else ip)}:{port}"
    ports[port] = sk


def udp_unbind(sk: UdpSocket) -> None:
    st = sk.stack
    if sk.local is not None and st.udp_ports.get(sk.local[1]) is sk:
        del st.udp_ports[sk.local[1]]
    if sk in st.sockets:
        st.sockets.remove(sk)


def udp_output(st, sk: UdpSocket, dst: tuple[bytes, int], data, now: float) -> int:
    # wire.udp.emit, inlined: the checksum over pseudo-header + header + payload in one
    # int.from_bytes of the payload (a sum of 16-bit words is that number modulo 0xffff, so
    # each address and field is added as an int) and one copy of the payload (header +
    # payload); the same bytes as udp_emit(st.ip, dst[0], sport, dport, data).
    payload = data if type(data) is bytes else bytes(data)
    length = 8 + len(payload)
    sport = sk.local[1]
    dip, dport = dst
    mtu = st.dev.mtu
    gso_size = 0
    if st.tx_csum_udp and (20 + length <= mtu or st.ufo):
        # The device fills it (phy/caps.py): CHECKSUM_PARTIAL as udp4_hwcsum leaves it -- the
        # pseudo-header sum, not complemented. A datagram IP fragments is summed here
        # (ip_do_fragment's skb_checksum_help) -- unless the device fragments it (ufo).
        c = (int.from_bytes(st.ip, "big") + int.from_bytes(dip, "big") + 17 + length) % 0xFFFF or 0xFFFF
        if 20 + length > mtu:
            gso_size = (mtu - 20) & ~7
    else:
        n = int.from_bytes(payload, "big")
        if length & 1:
            n <<= 8
        # the small terms first: one addition to the payload's (32768-bit) number, not seven
        c = (n + (int.from_bytes(st.ip, "big") + int.from_bytes(dip, "big") + 17 + length
                  + sport + dport + length)) % 0xFFFF or 0xFFFF
        c = ~c & 0xFFFF or 0xFFFF
    seg = _UDP_HDR.pack(sport, dport, length, c) + payload
    rc = ip_queue_xmit(st, dip, IPPROTO_UDP, seg, now, sk.sk_gfp_mask(sk.sk_allocation), sk.owner,
                       gso_size=gso_size)
    if rc >= 0:
        st.snmp["Udp"]["OutDatagrams"] += 1
    elif rc == -errno.ENOBUFS:
        st.snmp["Udp"]["SndbufErrors"] += 1
    return rc
