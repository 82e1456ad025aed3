"""TCP (RFC 9293) for the agent's stack: the protocol object and its sockets, sans-I/O.

What is here, and where Linux keeps it (net/ipv4/): the demux and RST replies (tcp_ipv4.c), the
state machine and ACK processing (tcp_input.c), segment building (tcp_output.c), timers
(tcp_timer.c), request sockets (inet_connection_sock.c, tcp_minisocks.c). ``tcp_init(st)``
registers ``Tcp.tcp_v4_rcv(skb, src, dst, bcast, segment, now)`` as IPPROTO_TCP in the stack's
IP protocol table; sockets (``TcpSock``, a ``net.core.sock.Sock``) are driven by it, by the
owner's calls (``connect``/``send``/``recv``/``close`` with ``now``) and by their timers, which
are ``Timer`` objects on the stack's timer heap (``st.timers``).

Invariants owned here:
- Memory: every byte a socket holds is in pool pages charged to the socket's ``owner`` -- the
  receive queue and the out-of-order queue hold the received buffers themselves (their pages
  are re-charged from "rx" to the owner, ``rmem_alloc`` += truesize), the write queue and the
  retransmit queue hold buffers allocated at ``sk_allocation`` when the owner wrote the data
  (``wmem_queued`` += truesize). ``Tcp.memory_allocated`` is the sum over sockets (tcp_mem is
  checked against it). Every buffer goes back to the pool exactly once: acked, read, pruned,
  dropped or purged at close (``TcpSock.check_accounting``).
- Receive memory (tcp_try_rmem_schedule, kernel-mechanism.md §8): a segment is queued only
  while ``rmem_alloc + len <= rcvbuf`` (tcp_can_ingest) and the protocol-wide limit tcp_mem[2]
  holds -- the latter waived for a pfmemalloc buffer on a SOCK_MEMALLOC socket. Otherwise the
  prune path runs (PruneCalled, collapse, OfoPruned, RcvPruned) and in-order data that still does
  not fit is dropped PROTO_MEM + TCPRcvQDrop -- except that an empty receive queue always takes
  the segment; out-of-order data that does not fit is dropped + TCPOFODrop.
- A pfmemalloc buffer reaches a socket only if it has SOCK_MEMALLOC: ``Sock.sk_filter`` is
  called for every segment that found a socket -- the established socket, the listener, or the
  listener of a request socket -- and is the one place PFMemallocDrop is counted; the backlog
  (``lock_sock``) takes nothing past its limit, pfmemalloc or not (TCPBacklogDrop).
- A listener holds at most sk_max_ack_backlog + 1 established children (accept queue,
  sk_max_ack_backlog = min(backlog, somaxconn)) and at most sk_max_ack_backlog + 1 request
  sockets, fewer once tcp_max_syn_backlog's last quarter is reached (no syncookies; every refused
  SYN counts ListenDrops, and TCPReqQFullDrop or ListenOverflows). A request socket holds no
  pages (its SYN-ACK is built per transmission and freed when sent) and 320 bytes of slab
  (``Tcp.reqsk_mem``); it lives at most tcp_synack_retries SYN-ACK timeouts (63 s).
- Transmit contexts: ACKs, window probes, RSTs, SYN-ACKs and FIN-only segments at
  ``sk_gfp_mask(GFP_ATOMIC)``; new data first into the write queue at ``sk_allocation``, then
  sent at ``sk_gfp_mask(GFP_ATOMIC)``; retransmissions at GFP_ATOMIC as clones of the queued
  buffer (skb_clone through its fclone companion: no page allocated -- a retransmission never
  waits for memory, as in Linux, where only the header is cloned); a retransmission that still
  fails (an unresolved next hop without memory) is retried after TCP_RESOURCE_PROBE_INTERVAL
  (TCPRetransFail). A failed ACK allocation sends nothing and retries on the
  delayed-ACK timer after TCP_DELACK_MAX.
- TIME_WAIT (tcp_time_wait): the full socket is replaced in the ehash by a ``TimewaitSock``
  holding no buffer, and tcp_done'd -- an orphan's queues go back to the pool at once, an owner
  that has not closed keeps only what it has not read. The record answers segments
  (tcp_timewait_state_process) for TCP_TIMEWAIT_LEN after the last reschedule.
- Counters are /proc/net/snmp ``Tcp:`` and /proc/net/netstat ``TcpExt:`` names; every segment
  handed to ``tcp_v4_rcv`` ends in exactly one ``kfree_skb(reason)`` or ``consume_skb``, now or
  when the socket lets go of it.

Simplifications (each a statement, not a stub): congestion control is Reno (RFC 5681) with
NewReno partial-ACK recovery (RFC 6582) and Linux's PRR cwnd reduction (RFC 6937) -- not CUBIC;
loss detection is dupthresh (RFC 6675 IsLost with SACK), not RACK-TLP; no DSACK, ECN, TFO, MD5,
urgent data, keepalive or SYN cookies; no tcp_metrics cache (so no peer is "proven" for the
SYN queue's last quarter); an orphaned FIN_WAIT2 keeps its full socket for tcp_fin_timeout (Linux
turns it into a timewait socket of substate FIN_WAIT2) -- it holds no buffer: close() emptied
its receive queue and new data after close() resets the connection.
"""

from __future__ import annotations

import errno
import hashlib
import socket as _pysocket
from bisect import bisect_left
from collections import deque

from ...mm.gfp import GFP_ATOMIC, GFP_KERNEL
from ...wire import WireError
from ...wire.ipv4 import IPPROTO_TCP
from ...wire.tcp import (ACK, FIN, PSH, RST, SYN, TCP_HLEN, TcpPacket, after, before, emit,
                         opt_established, opt_syn, parse_options)
from ..core.skbuff import PAGE_SIZE, SKB_TRUESIZE_OVERHEAD, SkBuff
from ..core.sock import Sock
from ..core.timer import Timer
from ...phy.caps import GSO_MAX_SIZE
from .ip_output import ip_queue_xmit

MASK = 0xFFFFFFFF

# ------------------------------------------------------------------------------- constants
TCP_RTO_MIN = 0.2               # include/net/tcp.h TCP_RTO_MIN (HZ/5)
TCP_RTO_MAX = 120.0             # TCP_RTO_MAX (120*HZ)
TCP_TIMEOUT_INIT = 1.0          # RFC 6298 2.1 initial RTO
TCP_DELACK_MIN = 0.04           # HZ/25
TCP_DELACK_MAX = 0.2            # HZ/5
TCP_ATO_MIN = 0.04              # HZ/25
TCP_RESOURCE_PROBE_INTERVAL = 0.5   # retry after a local allocation failure
TCP_TIMEWAIT_LEN = 60.0         # 2*MSL as Linux has it
TCP_FIN_TIMEOUT = 60.0          # net.ipv4.tcp_fin_timeout (orphaned FIN_WAIT2)
TCP_SYN_RETRIES = 6             # net.ipv4.tcp_syn_retries
TCP_SYNACK_RETRIES = 5          # net.ipv4.tcp_synack_retries
TCP_RETRIES2 = 15               # net.ipv4.tcp_retries2
TCP_ORPHAN_RETRIES = 8          # tcp_orphan_retries() when the sysctl is 0
TCP_INIT_CWND = 10              # RFC 6928
TCP_FASTRETRANS_THRESH = 3      # net.ipv4.tcp_reordering
TCP_MAX_QUICKACKS = 16
TCP_INVALID_RATELIMIT = 0.5     # net.ipv4.tcp_invalid_ratelimit (out-of-window ACKs)
TCP_PAWS_24DAYS = 24 * 86400.0  # a ts_recent older than this is not used for PAWS
TCP_PAWS_MSL = 60.0             # a RST's timestamp is not checked once ts_recent is this old
TCP_TW_KILL_TIMEO = 4.0         # __inet_twsk_schedule: a shorter timewait counts TWKilled
TCP_RMEM = (4096, 131072, 6291456)     # net.ipv4.tcp_rmem
TCP_WMEM = (4096, 16384, 4194304)      # net.ipv4.tcp_wmem
TCP_RMEM_TO_WIN_SCALE = 8
TCP_DEFAULT_SCALING_RATIO = 1 << (TCP_RMEM_TO_WIN_SCALE - 1)   # half of rcvbuf until measured
SOMAXCONN = 4096                # net.core.somaxconn
TCP_MAX_SYN_BACKLOG = 128       # net.ipv4.tcp_max_syn_backlog on a small machine (the floor)
REQSK_SIZE = 320                # request_sock_TCP objsize (/proc/slabinfo, x86_64 6.18)
TCP_OOW_RATELIMIT = 0.5         # tcp_oow_rate_limited (net.ipv4.tcp_invalid_ratelimit)
TCP_MSS_DEFAULT = 536           # RFC 9293 3.7.1: no MSS option
TCP_MIN_MSS = 88
EPHEMERAL_PORTS = (32768, 60999)

# states (include/net/tcp_states.h); ss prints the short names in SS_NAMES
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, \
    LAST_ACK, LISTEN, CLOSING = range(1, 12)
STATE_NAMES = {ESTABLISHED: "ESTABLISHED", SYN_SENT: "SYN_SENT", SYN_RECV: "SYN_RECV",
               FIN_WAIT1: "FIN_WAIT1", FIN_WAIT2: "FIN_WAIT2", TIME_WAIT: "TIME_WAIT",
               CLOSE: "CLOSE", CLOSE_WAIT: "CLOSE_WAIT", LAST_ACK: "LAST_ACK", LISTEN: "LISTEN",
               CLOSING: "CLOSING"}
SS_NAMES = {ESTABLISHED: "ESTAB", SYN_SENT: "SYN-SENT", SYN_RECV: "SYN-RECV",
            FIN_WAIT1: "FIN-WAIT-1", FIN_WAIT2: "FIN-WAIT-2", TIME_WAIT: "TIME-WAIT",
            CLOSE: "UNCONN", CLOSE_WAIT: "CLOSE-WAIT", LAST_ACK: "LAST-ACK", LISTEN: "LISTEN",
            CLOSING: "CLOSING"}
# congestion-avoidance states (enum tcp_ca_state)
CA_OPEN, CA_DISORDER, CA_CWR, CA_RECOVERY, CA_LOSS = range(5)
CA_NAMES = ("Open", "Disorder", "CWR", "Recovery", "Loss")

# /proc/net/snmp "Tcp:" (RtoAlgorithm 1 = "other", as Linux reports)
TCP_MIB = ("RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn", "ActiveOpens", "PassiveOpens",
           "AttemptFails", "EstabResets", "CurrEstab", "InSegs", "OutSegs", "RetransSegs",
           "InErrs", "OutRsts", "InCsumErrors")
# /proc/net/netstat "TcpExt:" -- the ones this TCP moves
TCPEXT_MIB = (
    "PFMemallocDrop", "TCPBacklogDrop", "PruneCalled", "RcvPruned", "OfoPruned",
    "TCPRcvQDrop", "TCPOFODrop", "TCPOFOQueue", "TCPOFOMerge", "TCPZeroWindowDrop",
    "TCPRcvCollapsed", "TCPTimeouts", "TCPFastRetrans", "TCPSlowStartRetrans",
    "TCPRenoRecovery", "TCPSackRecovery", "TCPRenoRecoveryFail", "TCPSackRecoveryFail",
    "TCPRenoFailures", "TCPSackFailures", "TCPLossFailures", "TCPRetransFail", "DelayedACKs",
    "DelayedACKLost", "TCPPureAcks", "TCPWinProbe", "TCPChallengeACK", "TCPSYNChallenge",
    "TCPACKSkippedSeq", "TCPACKSkippedChallenge", "PAWSEstab", "TCPAbortOnData",
    "TCPAbortOnClose", "TCPAbortOnTimeout", "TCPAbortOnLinger", "TCPAbortFailed",
    "TCPSACKDiscard", "TCPWantZeroWindowAdv", "TCPToZeroWindowAdv", "TCPFromZeroWindowAdv",
    "TCPOrigDataSent", "TW", "TWKilled", "TCPACKSkippedTimeWait", "ListenOverflows", "ListenDrops",
    "TCPMemoryPressures", "EmbryonicRsts", "TCPReqQFullDrop", "TCPSynRetrans")

TCP_DROP_REASONS = (
    "TCP_CSUM", "TCP_FLAGS", "TCP_ZEROWINDOW", "TCP_OLD_DATA", "TCP_OVERWINDOW",
    "TCP_OFOMERGE", "TCP_RFC7323_PAWS", "TCP_OLD_SEQUENCE", "TCP_INVALID_SEQUENCE",
    "TCP_RESET", "TCP_INVALID_SYN", "TCP_INVALID_ACK_SEQUENCE", "TCP_CLOSE", "TCP_OLD_ACK", "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA", "TCP_OFO_QUEUE_PRUNE", "TCP_OFO_DROP", "TCP_LISTEN_OVERFLOW",
    "PROTO_MEM", "SOCKET_BACKLOG", "TCP_ABORT_ON_DATA", "TCP_RFC7323_TW_PAWS",
    # testbed name: tcp_conn_request's drop of a SYN when the SYN queue is full (or its last
    # quarter is reserved for proven peers) -- Linux consumes the SYN and counts ListenDrops
    "TCP_REQQ_FULL")

_GFP_ATOMIC = int(GFP_ATOMIC)


def snmp_tables() -> dict[str, dict[str, int]]:
    t = dict.fromkeys(TCP_MIB, 0)
    t.update(RtoAlgorithm=1, RtoMin=int(TCP_RTO_MIN * 1000), RtoMax=int(TCP_RTO_MAX * 1000),
             MaxConn=-1)
    return {"Tcp": t, "TcpExt": dict.fromkeys(TCPEXT_MIB, 0)}


def tcp_model_timeout(boundary: int, rto_base: float) -> float:
    """tcp_model_timeout(): seconds of exponential backoff (capped at TCP_RTO_MAX) that
    ``boundary`` retransmissions take from ``rto_base`` -- 127 s for 6 SYN retries from 1 s,
    924.6 s for tcp_retries2=15 from 200 ms."""
    linear_backoff_thresh = (int(TCP_RTO_MAX / rto_base)).bit_length() - 1
    if boundary <= linear_backoff_thresh:
        return ((2 << boundary) - 1) * rto_base
    return (((2 << linear_backoff_thresh) - 1) * rto_base
            + (boundary - linear_backoff_thresh) * TCP_RTO_MAX)


def _wscale_for(space: int) -> int:
    ws = 0
    while space > 65535 and ws < 14:
        space >>= 1
        ws += 1
    return ws


TCP_RCV_WSCALE = _wscale_for(TCP_RMEM[2])   # tcp_select_initial_window: 7 for 6 MiB


def tcp_select_initial_window(space: int, mss: int) -> int:
    """tcp_select_initial_window: a whole number of MSS within 64 KiB of ``space``."""
    space = min(space, 65535)
    return max(space // mss * mss, mss)


def _pages_for(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) // PAGE_SIZE or 1


class TxSkb:
    """One write-queue buffer (unsent) or retransmit-queue buffer (sent): up to size_goal bytes,
    ``pcount`` MSS-sized segments on the wire (tcp_skb_pcount, set when sent). ``pages`` are
    the pool pages charged to the socket for its bytes; ``truesize`` (pages + the sk_buff) is
    charged to wmem_queued.

    Page ownership (the page-fragment refcount of Linux's skb frags, without counting): the
    bytes lie contiguously in pages from offset ``off`` of the first; a page belongs to the
    buffer holding its last byte. Buffers are freed in sequence order (cumulative ACKs; a purge
    frees them all), so a page goes back to the pool exactly when its last byte is acked, and a
    split (tso_fragment / tcp_fragment) needs no allocation: the head keeps the pages that end
    within it, the rest go with the tail."""

    __slots__ = ("seq", "end_seq", "flags", "data", "pages", "truesize", "sent_time",
                 "first_tx", "ever_retrans", "retrans", "sacked", "lost", "pcount", "off")

    def __init__(self, seq: int, flags: int, pages) -> None:
        self.seq = seq
        self.end_seq = (seq + (1 if flags & (SYN | FIN) else 0)) & MASK
        self.flags = flags          # SYN / FIN carried (data is the bytearray)
        self.data = bytearray()
        self.pages = pages
        self.truesize = len(pages) * PAGE_SIZE + SKB_TRUESIZE_OVERHEAD
        self.pcount = 1             # tcp_skb_pcount
        self.off = 0                # offset of data[0] in its page
        self.sent_time = 0.0
        self.first_tx = 0.0
        self.ever_retrans = False   # Karn: never an RTT sample from this one
        self.retrans = False        # TCPCB_RETRANS: a retransmission is in flight
        self.sacked = False         # TCPCB_SACKED_ACKED
        self.lost = False           # TCPCB_LOST


def _page_ends_within(off: int, n: int) -> int:
    """How many page boundaries lie in (0, n] of data starting at offset ``off`` of a page: the
    pages whose last byte is among the first ``n`` bytes."""
    first = PAGE_SIZE - off
    return 0 if n < first else 1 + (n - first) // PAGE_SIZE


class RxSeg:
    """A received segment held in the receive or out-of-order queue: the buffer (charged to the
    socket) and the part of its payload not yet read."""

    __slots__ = ("skb", "seq", "end_seq", "data", "fin")

    def __init__(self, skb, seq: int, end_seq: int, data, fin: bool) -> None:
        self.skb = skb
        self.seq = seq
        self.end_seq = end_seq      # seq + len(data) (+1 for FIN)
        self.data = data
        self.fin = fin


class Seg:
    """TCP_SKB_CB: what tcp_v4_rcv read from one segment."""

    __slots__ = ("skb", "sport", "dport", "seq", "end_seq", "ack_seq", "flags", "window",
                 "opts", "data", "src")


class TimewaitSock:
    """struct tcp_timewait_sock (inet_timewait_sock): what is left of a connection in TIME_WAIT
    once tcp_time_wait has handed the full socket to tcp_done -- the 4-tuple and port, tw_snd_nxt,
    tw_rcv_nxt, tw_rcv_wnd (and its scale), the timestamps (tw_ts_recent, tw_ts_recent_stamp,
    tw_ts_offset) and tw_timer. It holds no buffer and no pool page: it sits in the ehash in the
    socket's place (inet_twsk_hashdance) and answers for it (``tcp_timewait_state_process``)
    until the timer kills it (inet_twsk_kill) TCP_TIMEWAIT_LEN after the last reschedule.
    Only the TIME_WAIT substate is modelled (an orphaned FIN_WAIT2 keeps its full socket)."""

    kind = "tcp-tw"
    state = TIME_WAIT
    __slots__ = ("proto", "key", "lport", "rip", "rport", "port_held", "snd_nxt", "rcv_nxt",
                 "rcv_wnd", "rcv_wscale", "tstamp_ok", "ts_recent", "ts_recent_stamp",
                 "ts_off", "last_oow_ack_time", "owner", "timer")

    def __init__(self, sk: "TcpSock", now: float, timeo: float) -> None:
        """tcp_time_wait's copy of ``sk`` and inet_twsk_schedule(timeo) + the hashdance: the
        record replaces ``sk`` in the ehash and takes over its hold on the local port."""
        proto = sk.proto
        self.proto = proto
        self.key = sk.hashed
        self.lport, self.rip, self.rport = sk.lport, sk.rip, sk.rport
        self.port_held = sk.port_held
        sk.port_held = False
        self.snd_nxt = sk.snd_nxt
        self.rcv_nxt = sk.rcv_nxt
        self.rcv_wnd = sk._receive_window()
        self.rcv_wscale = sk.rcv_wscale
        self.tstamp_ok = sk.tstamp_ok
        self.ts_recent, self.ts_recent_stamp, self.ts_off = \
            sk.ts_recent, sk.ts_recent_stamp, sk.ts_off
        self.last_oow_ack_time = -1e9
        self.owner = sk.owner
        self.timer = Timer(self._timer_fire, "tcp-timewait")
        proto.ext["TWKilled" if timeo <= TCP_TW_KILL_TIMEO else "TW"] += 1
        proto.st.timers.mod_timer(self.timer, now + timeo)
        proto.ehash[self.key] = self
        proto.tw_count += 1

    def inet_twsk_kill(self) -> None:
        """Out of the ehash, the port released, the timer stopped (inet_twsk_deschedule_put)."""
        proto = self.proto
        proto.st.timers.del_timer(self.timer)
        if proto.ehash.get(self.key) is self:
            del proto.ehash[self.key]
            proto.tw_count -= 1
        if self.port_held:
            proto._put_port(self.lport)
            self.port_held = False

    def _timer_fire(self, now: float) -> None:
        self.inet_twsk_kill()

    def _reschedule(self, now: float) -> None:
        """inet_twsk_reschedule(tw, TCP_TIMEWAIT_LEN): mod_timer_pending."""
        if self.timer.pending:
            self.proto.st.timers.mod_timer(self.timer, now + TCP_TIMEWAIT_LEN)

    def _paws_reject(self, tsval: int, rst: bool, now: float) -> bool:
        """tcp_paws_reject with tcp_paws_check(rx_opt, 0)."""
        d = (self.ts_recent - tsval) & MASK
        if d == 0 or d > 0x7FFFFFFF:
            return False                              # tsval >= ts_recent
        if now - self.ts_recent_stamp >= TCP_PAWS_24DAYS or not self.ts_recent:
            return False
        return not (rst and now - self.ts_recent_stamp >= TCP_PAWS_MSL)

    def _send_ack(self, seg: Seg, now: float) -> None:
        """tcp_v4_timewait_ack -> tcp_v4_send_ack: seq tw_snd_nxt, ack tw_rcv_nxt, the last
        window, timestamps if the connection had them; from the control socket at GFP_ATOMIC."""
        proto = self.proto
        st = proto.st
        ts = ((int(now * 1000) + self.ts_off) & MASK, self.ts_recent) if self.tstamp_ok else None
        out = emit(st.ip, self.rip, self.lport, self.rport, self.snd_nxt, self.rcv_nxt, ACK,
                   min(self.rcv_wnd >> self.rcv_wscale, 65535),
                   opt_established(ts, None) if ts else b"", csum_partial=st.tx_csum_tcp)
        if proto.ip_output(self.rip, out, now, _GFP_ATOMIC, "tcp:ctl") >= 0:
            proto.mib["OutSegs"] += 1

    def tcp_timewait_state_process(self, seg: Seg, now: float) -> int:
        """One segment for a TIME_WAIT record (tcp_timewait_state_process, tcp_rfc1337 = 0,
        and tcp_v4_rcv's do_time_wait). Returns 0 when the segment is dealt with (freed here), or
        the ISN for a new connection (tw_snd_nxt + 65537) when a new SYN may reopen the pair and
        a listener is there to take it (TCP_TW_SYN; the record is gone)."""
        proto = self.proto
        st = proto.st
        f = seg.flags
        o = seg.opts
        saw_ts = self.tstamp_ok and o is not None and o.saw_tstamp
        paws_reject = saw_ts and self._paws_reject(o.tsval, bool(f & RST), now)
        if not paws_reject and seg.seq == self.rcv_nxt and (seg.seq == seg.end_seq or f & RST):
            # in window: only a RST or a bare ACK can be
            if f & RST:
                self.inet_twsk_kill()                 # TIME_WAIT assassination
                st.kfree_skb(seg.skb, "TCP_RESET")
                return 0
            self._reschedule(now)
            if saw_ts:
                self.ts_recent, self.ts_recent_stamp = o.tsval, now
            st.consume_skb(seg.skb, "tcp_tw")
            return 0
        if (f & SYN and not f & (RST | ACK) and not paws_reject
                and (after(seg.seq, self.rcv_nxt)
                     or (saw_ts and ((self.ts_recent - o.tsval) & MASK) > 0x7FFFFFFF))):
            if proto.lhash.get(self.lport) is not None:
                self.inet_twsk_kill()
                return ((self.snd_nxt + 65535 + 2) & MASK) or 1
            self._send_ack(seg, now)                  # no listener: TCP_TW_ACK
            st.consume_skb(seg.skb, "tcp_tw")
            return 0
        if paws_reject:
            proto.ext["PAWSEstab"] += 1
        if f & RST:
            st.kfree_skb(seg.skb, "TCP_RFC7323_TW_PAWS" if paws_reject else "TCP_RESET")
            return 0
        if paws_reject or f & ACK:
            self._reschedule(now)
        # tcp_timewait_check_oow_rate_limit: a segment without data (or a SYN) is answered at
        # most once per tcp_invalid_ratelimit
        if seg.seq != seg.end_seq and not f & SYN or \
                now - self.last_oow_ack_time >= TCP_OOW_RATELIMIT:
            if seg.seq == seg.end_seq or f & SYN:
                self.last_oow_ack_time = now
            self._send_ack(seg, now)
        else:
            proto.ext["TCPACKSkippedTimeWait"] += 1
        if paws_reject:
            st.kfree_skb(seg.skb, "TCP_RFC7323_TW_PAWS")
        else:
            st.consume_skb(seg.skb, "tcp_tw")
        return 0

    def snapshot(self) -> dict:
        """ss -tn's line for a timewait socket (no queues, no skmem: it holds no memory)."""
        return {"state": SS_NAMES[TIME_WAIT],
                "local": (_pysocket.inet_ntoa(self.proto.st.ip), self.lport),
                "peer": (_pysocket.inet_ntoa(self.rip), self.rport),
                "timer": ("timewait", self.timer.expires)}


# ================================================================================ protocol
class Tcp:
    """The protocol: socket tables, demux, RSTs for no socket, counters, tcp_mem, request
    sockets (``tcp_init(st)`` makes one per stack and registers it as IPPROTO_TCP).

    ``st`` is the stack (net/stack.py): its allocator, address, device MTU, SNMP tables,
    ``kfree_skb``/``consume_skb``, timer heap (``st.timers``), ``sockets`` and ``sched``.
    """

    def __init__(self, st, seed: int = 0) -> None:
        self.st = st
        self.alloc = st.alloc
        tables = snmp_tables()
        snmp = st.snmp
        snmp["Tcp"] = tables["Tcp"]
        ext = snmp.setdefault("TcpExt", {})
        for k, v in tables["TcpExt"].items():
            ext.setdefault(k, v)
        self.mib = snmp["Tcp"]
        self.ext = ext
        for r in TCP_DROP_REASONS:
            st.drop_reasons.setdefault(r, 0)
        self.ehash: dict[tuple, object] = {}       # (lport, rip, rport) -> TcpSock/RequestSock
        self.lhash: dict[int, TcpSock] = {}        # lport -> listener
        self.bound: dict[int, int] = {}            # lport -> sockets using it
        self._next_port = EPHEMERAL_PORTS[0]
        # RFC 6528: ISN = M + F(4-tuple, secret); the secret comes from the seed so runs replay.
        self._secret = hashlib.blake2b(f"tcp-isn:{seed}".encode(), digest_size=16).digest()
        # tcp_mem in pages (tcp_init_mem: limit = nr_free_buffer_pages / 16, min 128)
        limit = max(self.alloc.nr_pages // 16, 128)
        self.tcp_mem = [limit // 4 * 3, limit, limit // 4 * 3 * 2]
        self.memory_allocated = 0                  # bytes charged over all TCP sockets
        self.memory_pressure = False
        self.rx_held = 0                           # received buffers held by sockets
        # net.ipv4.tcp_max_syn_backlog (tcp_sk_init: max(128, ehash buckets / 128); the
        # agent's hash is small, so Linux's floor) and net.core.somaxconn
        self.max_syn_backlog = TCP_MAX_SYN_BACKLOG
        self.somaxconn = SOMAXCONN
        # request_sock slab (tcp_request_sock objects): bytes in use, kept out of the page
        # pool as ipfrag keeps its struct ipq -- bounded by max_syn_backlog per listener
        self.reqsk_mem = 0
        self.tw_count = 0                          # TIME_WAIT records (sockstat "tw")
        self.tcp_tw_isn = 0                        # tcp_tw_isn: ISN for a SYN a TIME_WAIT let in

    @property
    def sockets(self) -> list:
        """Every TCP socket of the stack (listeners, children, orphans), in creation order."""
        return [s for s in self.st.sockets if s.kind == "tcp"]

    def ip_output(self, dst: bytes, segment: bytes, now: float, gfp: int, owner: str,
                  gso_size: int = 0, clone_of=None) -> int:
        """ip_queue_xmit for TCP: DF set (path MTU discovery), 0 or -errno. ``gso_size``: a TSO
        segment the device cuts into pieces of that many payload bytes; ``clone_of``: the queued
        buffer's pages a retransmission is cloned from (no allocation)."""
        return ip_queue_xmit(self.st, dst, IPPROTO_TCP, segment, now, gfp, owner, df=True,
                             gso_size=gso_size, clone_of=clone_of)

    # ------------------------------------------------------------------ ISN, ports
    def _hash32(self, tag: bytes, *parts) -> int:
        h = hashlib.blake2b(tag + b"".join(parts), key=self._secret, digest_size=4)
        return int.from_bytes(h.digest(), "big")

    def secure_tcp_seq(self, saddr: bytes, daddr: bytes, sport: int, dport: int,
                       now: float) -> int:
        """secure_tcp_seq(): keyed hash of the 4-tuple plus a 64 ns clock (RFC 6528 M+F)."""
        f = self._hash32(b"seq", saddr, daddr, sport.to_bytes(2, "big"), dport.to_bytes(2, "big"))
        return (f + (int(now * 1e9) >> 6)) & MASK

    def secure_tcp_ts_off(self, saddr: bytes, daddr: bytes) -> int:
        return self._hash32(b"ts", saddr, daddr)

    def socket(self) -> "TcpSock":
        sk = TcpSock(self)
        self.st.sockets.append(sk)
        return sk

    def _bind(self, sk: "TcpSock", port: int, listening: bool = False) -> None:
        if port == 0:
            lo, hi = EPHEMERAL_PORTS
            for _ in range(hi - lo + 1):
                p = self._next_port
                self._next_port = lo if p >= hi else p + 1
                if p not in self.bound:
                    port = p
                    break
            else:
                raise OSError(errno.EADDRINUSE, "no free ephemeral TCP port")
        elif port in self.bound:
            raise OSError(errno.EADDRINUSE, f"TCP port {port} is already in use")
        self.bound[port] = self.bound.get(port, 0) + 1
        sk.lport = port
        sk.owner = f"sk:tcp:{_pysocket.inet_ntoa(self.st.ip)}:{port}"

    def _unhash(self, sk: "TcpSock") -> None:
        if sk.hashed is not None and self.ehash.get(sk.hashed) is sk:
            del self.ehash[sk.hashed]
        sk.hashed = None
        if sk.lport and self.lhash.get(sk.lport) is sk:
            del self.lhash[sk.lport]
        if sk.lport and sk.port_held:
            self._put_port(sk.lport)
            sk.port_held = False

    def _put_port(self, port: int) -> None:
        """inet_put_port: one user of ``port`` fewer."""
        n = self.bound.get(port, 0) - 1
        if n > 0:
            self.bound[port] = n
        else:
            self.bound.pop(port, None)

    def time_wait_socks(self) -> list:
        """The TIME_WAIT records in the ehash (``ss -tn state time-wait``)."""
        return [s for s in self.ehash.values() if type(s) is TimewaitSock]

    def inet_twsk_purge(self) -> None:
        """inet_twsk_purge at netns exit: every TIME_WAIT record killed."""
        for tw in self.time_wait_socks():
            tw.inet_twsk_kill()

    # ------------------------------------------------------------------ memory
    def under_memory_pressure(self) -> bool:
        return self.memory_pressure

    def _mem_charge(self, nbytes: int) -> None:
        m = self.memory_allocated = self.memory_allocated + nbytes
        pages = m >> 12
        if pages > self.tcp_mem[1] and not self.memory_pressure:
            self.memory_pressure = True
            self.ext["TCPMemoryPressures"] += 1
        elif pages <= self.tcp_mem[0]:
            self.memory_pressure = False

    def _mem_uncharge(self, nbytes: int) -> None:
        self.memory_allocated -= nbytes
        if (self.memory_allocated >> 12) <= self.tcp_mem[0]:
            self.memory_pressure = False

    def over_hard_limit(self, nbytes: int) -> bool:
        return (self.memory_allocated + nbytes) >> 12 > self.tcp_mem[2]

    # ------------------------------------------------------------------ receive
    def rx_in_flight(self) -> int:
        return self.rx_held

    def tcp_v4_rcv(self, skb, src: bytes, dst: bytes, bcast: bool, payload, now: float) -> None:
        """tcp_v4_rcv() (the IPPROTO_TCP entry of the IP protocol table): validate, find the
        socket (established, request, listener), ``sk_filter``, then process or backlog."""
        st = self.st
        if bcast:
            st.kfree_skb(skb, "OTHERHOST")             # PACKET_HOST only
            return
        mib = self.mib
        mib["InSegs"] += 1
        try:
            th = TcpPacket.new_checked(payload)
        except WireError as e:
            mib["InErrs"] += 1
            st.kfree_skb(skb, e.reason)
            return
        if not skb.csum_unnecessary and not th.verify_checksum(src, dst):
            mib["InCsumErrors"] += 1
            mib["InErrs"] += 1
            st.kfree_skb(skb, "TCP_CSUM")
            return
        flags = th.flags
        seg = Seg()
        seg.skb = skb
        seg.src = src
        seg.sport = th.sport
        seg.dport = th.dport
        seg.seq = th.seq
        seg.ack_seq = th.ack_seq
        seg.flags = flags
        seg.window = th.window
        data = th.payload
        seg.data = data
        seg.end_seq = (th.seq + len(data) + (1 if flags & SYN else 0)
                       + (1 if flags & FIN else 0)) & MASK
        seg.opts = (parse_options(payload[TCP_HLEN:th.doff], bool(flags & SYN))
                    if th.doff > TCP_HLEN else None)
        sk = self.ehash.get((th.dport, src, th.sport))
        if type(sk) is TimewaitSock:
            # do_time_wait (before the socket filter: a timewait socket has none)
            isn = sk.tcp_timewait_state_process(seg, now)
            if not isn:
                return
            self.tcp_tw_isn = isn                       # TCP_TW_SYN: the listener takes it
            try:
                self._process(self.lhash[th.dport], seg, now)
            finally:
                self.tcp_tw_isn = 0
            return
        if type(sk) is RequestSock:
            # TCP_NEW_SYN_RECV: the listener's filter, then tcp_check_req
            ln = sk.listener
            reason = ln.sk_filter(skb)
            if reason is not None:
                ln.drops += 1
                st.kfree_skb(skb, reason)
                return
            if sk.tcp_check_req(seg, now):
                return
            sk = ln                                     # the listener answers (a RST)
        elif sk is None or sk.state == CLOSE:
            sk = self.lhash.get(th.dport)
            if sk is None:
                self._no_socket(seg, src, now)
                return
        self._process(sk, seg, now)

    def _process(self, sk: "TcpSock", seg: Seg, now: float) -> None:
        """tcp_v4_rcv's ``process:`` -- tcp_filter -> sk_filter_trim_cap: a reserve buffer only
        for SOCK_MEMALLOC sockets (listeners included; PFMemallocDrop is counted there), then
        the backlog if the owner holds the socket, else tcp_v4_do_rcv."""
        skb = seg.skb
        reason = sk.sk_filter(skb)
        if reason is not None:
            sk.drops += 1
            self.st.kfree_skb(skb, reason)
            return
        if sk.owned_by_user:
            sk.add_backlog(seg)
            return
        sk.tcp_rcv(seg, now)

    def _no_socket(self, seg: Seg, src: bytes, now: float) -> None:
        """No socket: answer with a RST (tcp_v4_send_reset) unless the segment is one."""
        self.send_reset(seg, src, now)
        self.st.kfree_skb(seg.skb, "NO_SOCKET")

    def send_reset(self, seg: Seg, src: bytes, now: float) -> None:
        """tcp_v4_send_reset(): RFC 9293 3.10.7.1 -- from the ACK field if there is one, else
        seq 0 with an ACK of everything the segment occupied. Sent at GFP_ATOMIC."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            seq, ack, flags = seg.ack_seq, 0, RST
        else:
            seq, ack, flags = 0, seg.end_seq, RST | ACK
        out = emit(self.st.ip, src, seg.dport, seg.sport, seq, ack, flags, 0,
                   csum_partial=self.st.tx_csum_tcp)
        if self.ip_output(src, out, now, _GFP_ATOMIC, "tcp:ctl") >= 0:
            self.mib["OutSegs"] += 1
            self.mib["OutRsts"] += 1

    def wake(self, key) -> None:
        sched = getattr(self.st, "sched", None)
        if sched is not None:
            sched.wake(key)

    def snapshot(self) -> dict:
        """The protocol's memory (/proc/net/sockstat's "TCP: ... mem") and request sockets;
        the sockets themselves are in the stack's ``sockets`` view (``ss -tinm``)."""
        return {"memory_allocated_pages": (self.memory_allocated + 4095) >> 12,
                "tcp_mem": list(self.tcp_mem), "memory_pressure": self.memory_pressure,
                "request_socks": sum(len(s.reqs) for s in self.sockets if s.state == LISTEN),
                "reqsk_mem_bytes": self.reqsk_mem, "tw": self.tw_count}


# ================================================================================ socket
class TcpSock(Sock):
    """One TCP socket (struct tcp_sock on net.core.sock.Sock). Sequence numbers are unsigned
    32-bit; times are seconds of the caller's clock. Errors to the owner are values: -errno."""

    kind = "tcp"

    def __init__(self, proto: Tcp) -> None:
        super().__init__(proto.st)
        self.proto = proto
        self.alloc = proto.alloc
        self.state = CLOSE
        self.lport = 0
        self.rip = b"\0\0\0\0"
        self.rport = 0
        self.hashed = None
        self.port_held = False
        # -- struct sock (the rest is Sock's)
        self.sk_allocation = int(GFP_KERNEL)      # sock_init_data; sends here never block
        self.rcvbuf = TCP_RMEM[1]
        self.sndbuf = TCP_WMEM[1]
        self.wmem_queued = 0
        self.sk_err = 0
        self.rcv_shutdown = False
        self.snd_shutdown = False
        self.dead = False                         # SOCK_DEAD: the owner closed it (orphan)
        self.owned_by_user = False
        self.backlog: deque = deque()
        self.backlog_len = 0
        self.nodelay = False
        # -- timers on the stack's heap (icsk_retransmit_timer: RTO or probe0;
        #    icsk_delack_timer; sk_timer: orphaned FIN_WAIT2; TIME_WAIT: TimewaitSock.timer)
        self.xmit_timer = Timer(self._xmit_timer_fire, "tcp-retrans")
        self.t_xmit_kind = 0                      # 1 retransmit, 2 probe0
        self.delack_timer = Timer(self._delack_timer, "tcp-delack")
        self.misc_timer = Timer(self._misc_timer_fire, "tcp-keepalive")
        # -- listener
        self.parent: TcpSock | None = None
        self.accept_queue: deque = deque()        # established children (sk_ack_backlog)
        self.max_ack_backlog = 0                  # sk_max_ack_backlog
        self.reqs: dict = {}                      # request sockets (the SYN queue, qlen)
        self.reqs_young = 0                       # requests whose SYN-ACK never timed out
        self.synflood_warned = False              # "Possible SYN flooding on port %d"
        # -- sequence space
        self.iss = self.snd_una = self.snd_nxt = self.write_seq = 0
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.max_window = 0
        self.irs = self.rcv_nxt = self.rcv_wup = self.copied_seq = 0
        self.rcv_wnd = 0
        self.zero_window_advs = 0                 # this socket's share of TCPToZeroWindowAdv
        self.window_clamp = 65535 << 14
        self.rcv_ssthresh = 0
        self.scaling_ratio = TCP_DEFAULT_SCALING_RATIO
        # -- options
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.wscale_ok = False
        self.tstamp_ok = False
        self.sack_ok = False
        self.ts_recent = 0
        self.ts_recent_stamp = 0.0
        self.ts_off = 0
        self.mss_clamp = 65535
        self.advmss = 1460
        self.mss_cache = TCP_MSS_DEFAULT
        self.rcv_mss = TCP_MSS_DEFAULT
        self.selective_acks: list[list[int]] = []   # receiver's SACK blocks, most recent first
        # -- RTT / RTO (integers in µs as tcp_rtt_estimator)
        self.srtt_us = 0
        self.rtt_min_us = 0
        self.mdev_us = 0
        self.mdev_max_us = 0
        self.rttvar_us = 0
        self.rtt_seq = 0
        self.rto = TCP_TIMEOUT_INIT
        self.backoff = 0
        self.retransmits = 0
        self.probes_out = 0
        self.retrans_stamp = 0.0
        self.total_retrans = 0
        # -- congestion control
        self.snd_cwnd = TCP_INIT_CWND
        self.snd_cwnd_cnt = 0
        self.snd_ssthresh = 0x7FFFFFFF
        self.ca_state = CA_OPEN
        self.high_seq = 0
        self.packets_out = 0
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        self.prior_cwnd = 0
        self.prr_delivered = 0
        self.prr_out = 0
        self.max_packets_out = 0
        # -- queues
        self.write_queue: deque[TxSkb] = deque()
        self.rtx_queue: deque[TxSkb] = deque()
        self.receive_queue: deque[RxSeg] = deque()
        self.ofo: list[RxSeg] = []
        self.ofo_seqs: list[int] = []
        self.fin_queued = False                   # FIN is in the write/rtx queue
        self.fin_pending = False                  # FIN buffer not allocated yet
        self.fin_received = False                 # SOCK_DONE: the peer's FIN was read
        self._ack_now = False                     # ICSK_ACK_NOW
        self.is_cwnd_limited = False
        self.cwnd_usage_seq = 0
        # -- delayed ACK (icsk_ack)
        self.ack_pending = False
        self.ato = 0.0
        self.lrcvtime = 0.0
        self.quick = 0
        self.pingpong = 0
        self.last_oow_ack_time = -1e9
        self.counters = {"ack_nomem": 0, "segs_in": 0, "segs_out": 0, "data_segs_in": 0,
                         "data_segs_out": 0, "bytes_acked": 0, "bytes_received": 0,
                         "retrans": 0}

    # ================================================================ owner's API
    def bind(self, addr: tuple[str, int]) -> None:
        if self.lport:
            raise OSError(errno.EINVAL, f"socket already bound to port {self.lport}")
        ip = _pysocket.inet_aton(addr[0] or "0.0.0.0")
        if ip not in (b"\0\0\0\0", self.stack.ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{addr[0]} is not this stack's address")
        self.proto._bind(self, addr[1])
        self.port_held = True

    def listen(self, backlog: int = SOMAXCONN) -> None:
        if self.state not in (CLOSE, LISTEN):
            raise OSError(errno.EINVAL, f"listen() in state {STATE_NAMES[self.state]}")
        if not self.lport:
            self.proto._bind(self, 0)
            self.port_held = True
        if self.proto.lhash.get(self.lport) not in (None, self):
            raise OSError(errno.EADDRINUSE, f"TCP port {self.lport} already has a listener")
        # inet_listen -> __sys_listen: sk_max_ack_backlog = min(backlog, net.core.somaxconn)
        self.max_ack_backlog = max(min(backlog, self.proto.somaxconn), 0)
        self.state = LISTEN
        self.proto.lhash[self.lport] = self

    def accept(self) -> "TcpSock | None":
        """An established child, or None (non-blocking). inet_csk_accept: sk_acceptq_removed."""
        if self.accept_queue:
            child = self.accept_queue.popleft()
            child.parent = None
            child.dead = False
            return child
        return None

    def connect(self, addr: tuple[str, int], now: float) -> int:
        """tcp_v4_connect + tcp_connect: send the SYN. 0 (SYN sent or queued for retry) or
        -errno. The state is SYN_SENT until the handshake completes (``wait_connected``)."""
        if self.state != CLOSE:
            return -errno.EISCONN if self.state == ESTABLISHED else -errno.EALREADY
        rip = _pysocket.inet_aton(addr[0])
        proto = self.proto
        if not self.lport:
            proto._bind(self, 0)
            self.port_held = True
        key = (self.lport, rip, addr[1])
        if key in proto.ehash:
            return -errno.EADDRNOTAVAIL
        self.rip, self.rport = rip, addr[1]
        self.hashed = key
        proto.ehash[key] = self
        self.sk_err = 0
        self.rcv_shutdown = self.snd_shutdown = False
        self._init_conn(now)
        self.iss = proto.secure_tcp_seq(proto.st.ip, rip, self.lport, self.rport, now)
        self.ts_off = proto.secure_tcp_ts_off(proto.st.ip, rip)
        self.snd_una = self.snd_nxt = self.write_seq = self.iss
        self.rcv_wnd = self._initial_window()
        self.state = SYN_SENT
        proto.mib["ActiveOpens"] += 1
        syn = self._new_txskb(SYN, self.sk_gfp_mask(_GFP_ATOMIC), 0)
        if syn is None:
            self._set_state(CLOSE)
            return -errno.ENOBUFS
        self.write_queue.append(syn)
        self.write_seq = syn.end_seq
        self.retrans_stamp = now
        self._write_xmit(now)
        if not self.packets_out:                  # the SYN could not be sent: retry on the RTO
            self._reset_xmit_timer(1, now + TCP_RESOURCE_PROBE_INTERVAL)
        return 0

    def send(self, data, now: float) -> int:
        """tcp_sendmsg_locked: copy as much of ``data`` as sndbuf and the pool allow into the tail
        write-queue buffer while it is below size_goal (``_size_goal``, tcp_send_mss), else into
        a new one (sk_stream_memory_free: only while wmem_queued < sndbuf); the bytes go into
        pages at ``sk_allocation`` charged to the socket (sk_wmem_schedule), the tail's last
        page first. Then push what the windows allow. Bytes queued, or -errno (-EAGAIN: nothing
        fits now, -EPIPE: shut down, -ENOTCONN, -ENOBUFS: no memory)."""
        if self.sk_err:
            return -self.sk_err
        if self.snd_shutdown:
            return -errno.EPIPE
        if self.state not in (ESTABLISHED, CLOSE_WAIT):
            return -errno.ENOTCONN if self.state != SYN_SENT else -errno.EAGAIN
        mv = memoryview(data) if not isinstance(data, memoryview) else data
        n = len(mv)
        done = 0
        size_goal = self._size_goal()
        wq = self.write_queue
        gfp = self.sk_allocation
        err = 0
        while done < n:
            tail = wq[-1] if wq else None
            if tail is not None and not tail.flags & (SYN | FIN) and len(tail.data) < size_goal:
                have = len(tail.data)
                take = size_goal - have
                if take > n - done:
                    take = n - done
                room = -(tail.off + have) % PAGE_SIZE if have else len(tail.pages) * PAGE_SIZE
                if take > room:
                    if not self._wmem_grow(tail, _pages_for(take - room), gfp):
                        err = -errno.ENOBUFS
                        if not room:
                            break
                        take = room                 # what the last page still holds
            else:
                if self.wmem_queued >= self._sndbuf():
                    break
                take = size_goal if size_goal < n - done else n - done
                tail = self._new_txskb(0, gfp, take)
                if tail is None:
                    err = -errno.ENOBUFS
                    break
                wq.append(tail)
            tail.data += mv[done:done + take]
            tail.end_seq = self.write_seq = (tail.end_seq + take) & MASK
            done += take
            if err:
                break
        if done:
            self._push(now)
            return done
        return err or -errno.EAGAIN

    def _size_goal(self) -> int:
        """tcp_send_mss -> tcp_xmit_size_goal with GSO (sk_can_gso: Linux segments in software
        when the device has no TSO, and so does ``_send_skb``): whole MSS up to the largest
        packet the device takes (gso_max_size less headers), bounded by half the peer's largest
        window (tcp_bound_to_half_wnd); at least one MSS. tcp_tso_autosize cuts it at transmit."""
        mss = self.mss_cache
        goal = GSO_MAX_SIZE - 1 - 20 - 60           # gso_max_size - 1 - MAX_TCP_HEADER
        mw = self.max_window
        cutoff = mw >> 1 if mw > TCP_MSS_DEFAULT else mw
        if cutoff and goal > cutoff:
            goal = cutoff
        goal = goal // mss * mss
        return goal if goal > mss else mss

    def recv(self, now: float, bufsize: int = 1 << 20) -> bytes | int | None:
        """tcp_recvmsg: up to ``bufsize`` in-order bytes; b"" after the peer's FIN; None when
        nothing is there yet; -errno after an error (ECONNRESET, ETIMEDOUT) once drained."""
        rq = self.receive_queue
        out = []
        got = 0
        proto = self.proto
        fin = False
        while rq and got < bufsize:
            r = rq[0]
            take = min(len(r.data), bufsize - got)
            if take:
                out.append(bytes(r.data[:take]))
                r.data = r.data[take:]
                got += take
                self.copied_seq = (self.copied_seq + take) & MASK
            if not r.data:
                if r.fin:
                    fin = True
                    self.fin_received = True
                    self.copied_seq = (self.copied_seq + 1) & MASK
                rq.popleft()
                self._uncharge_rx(r)
                proto.st.consume_skb(r.skb, "tcp_read")
                if fin:
                    break
        if got:
            self._cleanup_rbuf(got, now)
            return b"".join(out)
        if fin or self.fin_received:
            return b""
        if self.sk_err:
            return -self.sk_err
        if self.rcv_shutdown:
            return b""
        if self.state in (CLOSE, LISTEN):
            return -errno.ENOTCONN
        return None

    def shutdown(self, how: int, now: float) -> int:
        """shutdown(2) (inet_shutdown -> tcp_shutdown): ``how`` is SHUT_RD (0), SHUT_WR (1) or
        SHUT_RDWR (2). SHUT_RD sets RCV_SHUTDOWN: reads return b"" once the queue is drained,
        and new data arriving in FIN_WAIT1/FIN_WAIT2 resets the connection (TCPAbortOnData);
        SHUT_WR queues a FIN after the data (tcp_close_state: ESTABLISHED -> FIN_WAIT1,
        CLOSE_WAIT -> LAST_ACK, SYN_RECV -> FIN_WAIT1). 0, -EINVAL for another ``how``,
        -ENOTCONN in CLOSE; in LISTEN (with SHUT_RD) and SYN_SENT Linux disconnects
        (tcp_disconnect), which is not modelled here: -EOPNOTSUPP."""
        if how not in (_pysocket.SHUT_RD, _pysocket.SHUT_WR, _pysocket.SHUT_RDWR):
            return -errno.EINVAL
        mask = how + 1                                # 1 RCV_SHUTDOWN, 2 SEND_SHUTDOWN
        st = self.state
        if st == SYN_SENT or (st == LISTEN and mask & 1):
            return -errno.EOPNOTSUPP
        if mask & 1:
            self.rcv_shutdown = True
        if mask & 2:
            self.snd_shutdown = True
            if st in (ESTABLISHED, SYN_RECV, CLOSE_WAIT):
                self._set_state(LAST_ACK if st == CLOSE_WAIT else FIN_WAIT1)
                self._send_fin(now)
        self.proto.wake(self.wait_key)                # sk_state_change
        return -errno.ENOTCONN if st == CLOSE else 0

    def shutdown_wr(self, now: float) -> None:
        """shutdown(SHUT_WR)."""
        self.shutdown(_pysocket.SHUT_WR, now)

    def close(self, now: float) -> None:
        """tcp_close: unread data -> RST (TCPAbortOnClose); else FIN and the socket lives on
        as an orphan until the close handshake ends."""
        proto = self.proto
        if self.dead:
            return
        self.dead = True
        self.rcv_shutdown = self.snd_shutdown = True   # sk_shutdown = SHUTDOWN_MASK
        st = self.state
        if st == LISTEN:
            self._set_state(CLOSE)
            while self.accept_queue:
                child = self.accept_queue.popleft()
                child.parent = None
                child.dead = False
                child.close(now)
            for req in list(self.reqs.values()):     # inet_csk_listen_stop
                req.drop()
            self._destroy()
            return
        unread = any(r.data for r in self.receive_queue)
        self._purge_rx()
        if st in (CLOSE, SYN_SENT):
            self._set_state(CLOSE)
            self._done()
            return
        if unread:
            proto.ext["TCPAbortOnClose"] += 1
            self._set_state(CLOSE)
            self._send_active_reset(now)
            self._done()
            return
        if st in (ESTABLISHED, SYN_RECV):
            self._set_state(FIN_WAIT1)
            self._send_fin(now)
        elif st == CLOSE_WAIT:
            self._set_state(LAST_ACK)
            self._send_fin(now)
        elif st == FIN_WAIT2:
            self._arm_misc(now + TCP_FIN_TIMEOUT)
        self._maybe_destroy()

    def abort(self, now: float) -> None:
        """SO_LINGER 0 / tcp_abort: RST now, drop everything (TCPAbortOnLinger)."""
        if self.state in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, SYN_RECV, CLOSING,
                          LAST_ACK):
            self.proto.ext["TCPAbortOnLinger"] += 1
            self._send_active_reset(now)
        self.dead = True
        self._purge_rx()
        self._set_state(CLOSE)
        self._done()

    # -- locking, waits (SOCK_MEMALLOC and sk_gfp_mask: net.core.sock.Sock)
    def lock_sock(self) -> None:
        """The owner holds the socket: segments go to the backlog until ``release_sock``."""
        self.owned_by_user = True

    def release_sock(self, now: float) -> None:
        """__release_sock: process the backlog (a pfmemalloc buffer under PF_MEMALLOC)."""
        alloc = self.alloc
        while self.backlog:
            seg = self.backlog.popleft()
            self.backlog_len -= seg.skb.truesize
            self.proto.rx_held -= 1
            if seg.skb.pfmemalloc:
                old = alloc.memalloc_noreclaim_save()
                try:
                    self.tcp_rcv(seg, now)
                finally:
                    alloc.memalloc_noreclaim_restore(old)
            else:
                self.tcp_rcv(seg, now)
        self.owned_by_user = False

    def add_backlog(self, seg: Seg) -> None:
        """tcp_add_backlog: limit = 2*rcvbuf + sndbuf/2 + 64 KiB over backlog + rmem_alloc;
        checked before anything else, so a pfmemalloc buffer does not pass it either."""
        limit = 2 * self.rcvbuf + self.sndbuf // 2 + 65536
        if self.backlog_len + self.rmem_alloc > limit:
            self.proto.ext["TCPBacklogDrop"] += 1
            self.drops += 1
            self.stack.kfree_skb(seg.skb, "SOCKET_BACKLOG")
            return
        self.backlog.append(seg)
        self.backlog_len += seg.skb.truesize
        self.proto.rx_held += 1

    @property
    def established(self) -> bool:
        return self.state == ESTABLISHED

    def readable(self) -> bool:
        return bool(self.receive_queue) or self.rcv_shutdown or bool(self.sk_err) \
            or bool(self.accept_queue)

    def getsockname(self) -> tuple[str, int]:
        return (_pysocket.inet_ntoa(self.stack.ip), self.lport)

    def getpeername(self) -> tuple[str, int]:
        return (_pysocket.inet_ntoa(self.rip), self.rport)

    # ================================================================ accounting
    def _sndbuf(self) -> int:
        """tcp_sndbuf_expand: room for two cwnds of full segments, within tcp_wmem."""
        per = _pages_for(self.mss_cache) * PAGE_SIZE + SKB_TRUESIZE_OVERHEAD
        return max(self.sndbuf, min(2 * max(self.snd_cwnd, TCP_INIT_CWND) * per, TCP_WMEM[2]))

    def _new_txskb(self, flags: int, gfp: int, cap: int) -> TxSkb | None:
        """tcp_stream_alloc_skb + sk_wmem_schedule: pages for ``cap`` bytes at ``gfp``, charged
        to this socket; None when the pool or tcp_mem refuses."""
        pages = self._wmem_pages(_pages_for(cap), gfp, SKB_TRUESIZE_OVERHEAD)
        if pages is None:
            return None
        skb = TxSkb(self.write_seq, flags, pages)
        self.wmem_queued += skb.truesize
        self.proto._mem_charge(skb.truesize)
        return skb

    def _wmem_pages(self, n: int, gfp: int, head: int = 0) -> list | None:
        """sk_wmem_schedule + the page-fragment refill: ``n`` pool pages at ``gfp`` (``head``:
        the bytes of a new sk_buff charged with them), or None when tcp_mem's hard limit (past
        tcp_wmem[0] of this socket) or the pool refuses."""
        if self.proto.over_hard_limit(n * PAGE_SIZE + head) and self.wmem_queued >= TCP_WMEM[0]:
            return None
        return self.alloc.alloc(n, gfp, self.owner)

    def _wmem_grow(self, skb: TxSkb, n: int, gfp: int) -> bool:
        """``n`` more pages for the tail buffer's bytes (skb_copy_to_page_nocache's charge)."""
        pages = self._wmem_pages(n, gfp)
        if pages is None:
            return False
        skb.pages += pages
        size = n * PAGE_SIZE
        skb.truesize += size
        self.wmem_queued += size
        self.proto._mem_charge(size)
        return True

    def _free_txskb(self, skb: TxSkb) -> None:
        self.wmem_queued -= skb.truesize
        self.proto._mem_uncharge(skb.truesize)
        self.alloc.free(skb.pages)
        skb.pages = None

    def _charge_rx(self, r: RxSeg) -> None:
        skb = r.skb
        self.rmem_alloc += skb.truesize
        self.proto._mem_charge(skb.truesize)
        self.alloc.reassign(skb.pages, self.owner)
        self.proto.rx_held += 1

    def _uncharge_rx(self, r: RxSeg) -> None:
        skb = r.skb
        self.rmem_alloc -= skb.truesize
        self.proto._mem_uncharge(skb.truesize)
        if skb.rx:
            self.proto.rx_held -= 1

    def _drop_rx(self, r: RxSeg, reason: str) -> None:
        self._uncharge_rx(r)
        self.stack.kfree_skb(r.skb, reason)

    def _purge_rx(self) -> None:
        while self.receive_queue:
            self._drop_rx(self.receive_queue.popleft(), "SOCKET_CLOSE")
        self._purge_ofo("SOCKET_CLOSE")
        while self.backlog:
            seg = self.backlog.popleft()
            self.backlog_len -= seg.skb.truesize
            self.proto.rx_held -= 1
            self.stack.kfree_skb(seg.skb, "SOCKET_CLOSE")

    def _purge_ofo(self, reason: str) -> None:
        for r in self.ofo:
            self._drop_rx(r, reason)
        self.ofo = []
        self.ofo_seqs = []

    def _purge_write_queue(self) -> None:
        """tcp_write_queue_purge."""
        for q in (self.write_queue, self.rtx_queue):
            while q:
                self._free_txskb(q.popleft())
        self.packets_out = self.sacked_out = self.lost_out = self.retrans_out = 0
        self.fin_queued = False

    def check_accounting(self) -> None:
        """Assert the memory invariant (tests call it)."""
        rx = sum(r.skb.truesize for r in self.receive_queue) + sum(r.skb.truesize for r in self.ofo)
        tx = sum(s.truesize for q in (self.write_queue, self.rtx_queue) for s in q)
        assert rx == self.rmem_alloc, (rx, self.rmem_alloc)
        assert tx == self.wmem_queued, (tx, self.wmem_queued)
        rtx = self.rtx_queue
        assert self.packets_out == sum(s.pcount for s in rtx), (self.packets_out, len(rtx))
        assert self.sacked_out == sum(s.pcount for s in rtx if s.sacked) or not self.sack_ok
        assert self.lost_out == sum(s.pcount for s in rtx if s.lost)
        assert self.retrans_out == sum(s.pcount for s in rtx if s.retrans)
        for s in (*self.write_queue, *rtx):           # page ownership (TxSkb)
            n = len(s.data)
            own = _page_ends_within(s.off, n) if n else 0
            assert len(s.pages) in (own, own + 1) or not n, (len(s.pages), own)

    # ================================================================ state
    def _set_state(self, new: int) -> None:
        """tcp_set_state: CurrEstab and EstabResets as Linux counts them."""
        old = self.state
        mib = self.proto.mib
        if old in (ESTABLISHED, CLOSE_WAIT) and new not in (ESTABLISHED, CLOSE_WAIT):
            mib["CurrEstab"] -= 1
            if new == CLOSE:
                mib["EstabResets"] += 1
        if new in (ESTABLISHED, CLOSE_WAIT) and old not in (ESTABLISHED, CLOSE_WAIT):
            mib["CurrEstab"] += 1
        self.state = new

    def _done(self) -> None:
        """tcp_done: CLOSE, out of the tables, write queues freed, owner woken."""
        proto = self.proto
        if self.state in (SYN_SENT, SYN_RECV):
            proto.mib["AttemptFails"] += 1
        if self.state != CLOSE:
            self._set_state(CLOSE)
        self._purge_write_queue()
        self._clear_timers()
        self.ack_pending = False
        self.rcv_shutdown = self.snd_shutdown = True
        proto._unhash(self)
        proto.wake(self.wait_key)
        if self.parent is not None and self in self.parent.accept_queue:
            self.parent.accept_queue.remove(self)
        self._maybe_destroy()

    def _maybe_destroy(self) -> None:
        if self.dead and self.state == CLOSE:
            self._destroy()

    def _destroy(self) -> None:
        """inet_csk_destroy_sock: every buffer back to the pool, SOCK_MEMALLOC dropped."""
        self._purge_rx()
        self._purge_write_queue()
        self.sk_clear_memalloc()
        self.proto._unhash(self)
        socks = self.stack.sockets
        if self in socks:
            socks.remove(self)

    def _write_err(self, err: int, now: float) -> None:
        """tcp_write_err: report ``err`` and close."""
        self.sk_err = err
        self.proto.wake(self.wait_key)
        self._done()

    def _reset(self, now: float) -> None:
        """tcp_reset: the peer reset the connection (RFC 9293 3.10.7.4 per state)."""
        st = self.state
        if st == SYN_SENT:
            self.sk_err = errno.ECONNREFUSED
        elif st == CLOSE_WAIT:
            self.sk_err = errno.EPIPE
        elif st == CLOSE:
            return
        else:
            self.sk_err = errno.ECONNRESET
        self._done()

    def _init_conn(self, now: float) -> None:
        self.advmss = self.stack.dev.mtu - 40
        self.mss_cache = self.rcv_mss = min(self.advmss, TCP_MSS_DEFAULT)
        self.rcv_wscale = TCP_RCV_WSCALE
        self.ato = 0.0
        self.quick = 0

    def _initial_window(self) -> int:
        """tcp_select_initial_window: a whole number of MSS within 64 KiB; rcv_ssthresh starts
        there and grows with the data (tcp_grow_window)."""
        w = tcp_select_initial_window(self._win_from_space(self.rcvbuf), self.advmss)
        self.rcv_ssthresh = w
        return w

    # ================================================================ timers
    @property
    def t_xmit(self) -> float | None:
        """When the retransmit/probe0 timer fires (None: not pending)."""
        return self.xmit_timer.expires

    @property
    def t_delack(self) -> float | None:
        return self.delack_timer.expires

    @property
    def t_misc(self) -> float | None:
        return self.misc_timer.expires

    def _reset_xmit_timer(self, kind: int, when: float) -> None:
        """inet_csk_reset_xmit_timer (ICSK_TIME_RETRANS = 1, ICSK_TIME_PROBE0 = 2)."""
        self.t_xmit_kind = kind
        self.stack.timers.mod_timer(self.xmit_timer, when)

    def _clear_xmit_timer(self) -> None:
        self.t_xmit_kind = 0
        self.stack.timers.del_timer(self.xmit_timer)

    def _arm_misc(self, when: float) -> None:
        self.stack.timers.mod_timer(self.misc_timer, when)

    def _reset_delack_timer(self, when: float) -> None:
        self.stack.timers.mod_timer(self.delack_timer, when)

    def _clear_timers(self) -> None:
        """inet_csk_clear_xmit_timers."""
        timers = self.stack.timers
        self.t_xmit_kind = 0
        timers.del_timer(self.xmit_timer)
        timers.del_timer(self.delack_timer)
        timers.del_timer(self.misc_timer)

    def _xmit_timer_fire(self, now: float) -> None:
        kind = self.t_xmit_kind
        self.t_xmit_kind = 0
        if kind == 2:
            self._probe_timer(now)
        else:
            self._retransmit_timer(now)

    def _misc_timer_fire(self, now: float) -> None:
        """tcp_keepalive_timer's FIN_WAIT2 part: an orphan's FIN_WAIT2 ends (tcp_fin_timeout)."""
        if self.state == FIN_WAIT2:
            self._done()

    def _delack_timer(self, now: float) -> None:
        """tcp_delack_timer_handler: send the pending ACK, inflate ato (not in pingpong)."""
        if not self.ack_pending or self.state in (CLOSE, LISTEN):
            return
        if not self.pingpong:
            self.ato = min(self.ato * 2 if self.ato else TCP_ATO_MIN, self.rto)
        else:
            self.pingpong = 0
            self.ato = TCP_ATO_MIN
        self.proto.ext["DelayedACKs"] += 1
        self.send_ack(now)

    def _retransmit_timer(self, now: float) -> None:
        """tcp_retransmit_timer: give up, or enter Loss, retransmit the head, back off."""
        if not self.rtx_queue or self.state in (CLOSE, LISTEN, TIME_WAIT):
            return
        proto = self.proto
        ext = proto.ext
        if self.state in (SYN_SENT, SYN_RECV):
            limit = TCP_SYN_RETRIES if self.state == SYN_SENT else TCP_SYNACK_RETRIES
            if self.retransmits >= limit:
                self._write_err(errno.ETIMEDOUT, now)
                return
        else:
            boundary = TCP_ORPHAN_RETRIES if self.dead else TCP_RETRIES2
            if self.retransmits and now - self.retrans_stamp >= tcp_model_timeout(
                    boundary, TCP_RTO_MIN):
                ext["TCPAbortOnTimeout"] += 1
                self._write_err(errno.ETIMEDOUT, now)
                return
        ext["TCPTimeouts"] += 1
        if self.retransmits == 0:
            if self.ca_state == CA_RECOVERY:
                ext["TCPSackRecoveryFail" if self.sack_ok else "TCPRenoRecoveryFail"] += 1
            elif self.ca_state == CA_LOSS:
                ext["TCPLossFailures"] += 1
            elif self.ca_state == CA_DISORDER or self.sacked_out:
                ext["TCPSackFailures" if self.sack_ok else "TCPRenoFailures"] += 1
            self.retrans_stamp = self.rtx_queue[0].first_tx
        self._rtx_split()
        self._enter_loss()
        self.retransmits += 1
        if self._retransmit_skb(self.rtx_queue[0], now) < 0:
            # "Retransmission failed because of local congestion": retry soon, no backoff
            self._reset_xmit_timer(1, now + min(self.rto, TCP_RESOURCE_PROBE_INTERVAL))
            return
        self.backoff += 1
        self.rto = min(self.rto * 2, TCP_RTO_MAX)
        self._reset_xmit_timer(1, now + self.rto)

    def _probe_timer(self, now: float) -> None:
        """tcp_probe_timer: a zero-window probe, backed off like the RTO."""
        if self.fin_pending:
            self._send_fin(now)
            return
        if self.packets_out or not self.write_queue or self.state in (CLOSE, LISTEN):
            self.probes_out = 0
            self.backoff = 0
            return
        max_probes = TCP_ORPHAN_RETRIES if self.dead else TCP_RETRIES2
        if self.probes_out >= max_probes:
            self.proto.ext["TCPAbortOnTimeout"] += 1
            self._write_err(errno.ETIMEDOUT, now)
            return
        self._send_probe0(now)

    # ================================================================ output
    def _win_from_space(self, space: int) -> int:
        return (space * self.scaling_ratio) >> TCP_RMEM_TO_WIN_SCALE if space > 0 else 0

    def _full_space(self) -> int:
        return min(self.window_clamp, self._win_from_space(self.rcvbuf))

    def _receive_window(self) -> int:
        """tcp_receive_window: what is left of the window we last advertised."""
        w = (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & MASK
        return 0 if w > 0x7FFFFFFF else w

    def _select_window_raw(self) -> int:
        """__tcp_select_window (without the shrink guard)."""
        mss = self.rcv_mss
        free_space = self._win_from_space(self.rcvbuf - self.rmem_alloc)
        full_space = self._full_space()
        if mss > full_space:
            mss = max(full_space, 1)
        if free_space < (full_space >> 1):
            self.quick = 0
            if self.proto.memory_pressure:
                self.rcv_ssthresh = min(self.rcv_ssthresh, 4 * self.advmss)
            free_space = free_space >> self.rcv_wscale << self.rcv_wscale
            if free_space < (full_space >> 4) or free_space < mss:
                return 0
        if free_space > self.rcv_ssthresh:
            free_space = self.rcv_ssthresh
        if self.rcv_wscale:
            window = free_space
            if (window >> self.rcv_wscale) << self.rcv_wscale != window:
                window = ((window >> self.rcv_wscale) + 1) << self.rcv_wscale
            return window
        window = self.rcv_wnd
        if window <= free_space - mss or window > free_space:
            window = free_space // mss * mss
        return window

    def _select_window(self) -> int:
        """tcp_select_window: never shrink what was offered; remember what is offered now.
        Returns the header's 16-bit field (scaled)."""
        old = self.rcv_wnd
        cur = self._receive_window()
        new = self._select_window_raw()
        ext = self.proto.ext
        if new < cur:
            new = (cur + (1 << self.rcv_wscale) - 1) >> self.rcv_wscale << self.rcv_wscale
        if new == 0 and cur:
            ext["TCPWantZeroWindowAdv"] += 1
        self.rcv_wnd = new
        self.rcv_wup = self.rcv_nxt
        w = new >> self.rcv_wscale
        if w > 65535:
            w = 65535
        if w == 0:
            if old:
                ext["TCPToZeroWindowAdv"] += 1
                self.zero_window_advs += 1
        elif old == 0:
            ext["TCPFromZeroWindowAdv"] += 1
        return w

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self.ts_off) & MASK

    def _options(self, now: float, syn: bool, paylen: int = 0) -> bytes:
        if syn:
            return opt_syn(self.advmss, self.rcv_wscale if (self.wscale_ok or self.state ==
                                                             SYN_SENT) else None,
                           self.sack_ok or self.state == SYN_SENT,
                           (self._ts_now(now), self.ts_recent)
                           if (self.tstamp_ok or self.state == SYN_SENT) else None)
        ts = (self._ts_now(now), self.ts_recent) if self.tstamp_ok else None
        sack = None
        if self.sack_ok and self.selective_acks:
            # as many blocks as the frame has room for: a full-sized data segment carries none
            # (Linux shrinks the data instead, tcp_current_mss; pure ACKs are the same)
            room = self.stack.dev.mtu - 40 - paylen - (12 if ts else 0) - 4
            n = min(3 if ts else 4, room // 8)
            if n > 0:
                sack = [tuple(b) for b in self.selective_acks[:n]]
        if ts is None and not sack:
            return b""
        return opt_established(ts, sack)

    def _xmit(self, seq: int, flags: int, payload, now: float, gfp: int, gso_segs: int = 1,
              clone_of=None) -> int:
        """tcp_transmit_skb: header from the current state, one frame at ``gfp`` (or a clone of
        the queued buffer's pages ``clone_of``). ``gso_segs`` > 1: ``payload`` is that many
        MSS-sized pieces handed to a TSO device as one segment (tcp_skb_pcount: OutSegs counts
        every piece, as Linux does)."""
        proto = self.proto
        syn = bool(flags & SYN)
        opts = self._options(now, syn, len(payload) if gso_segs == 1 else self.mss_cache)
        if flags & ACK:
            ack = self.rcv_nxt
            if syn:
                win = min(self.rcv_wnd, 65535)       # a SYN's window is never scaled
                self.rcv_wup = self.rcv_nxt
            else:
                win = self._select_window()
        else:
            ack = 0
            win = min(self.rcv_wnd, 65535)
        st = proto.st
        seg = emit(st.ip, self.rip, self.lport, self.rport, seq, ack, flags, win, opts,
                   payload, csum_partial=st.tx_csum_tcp)
        rc = proto.ip_output(self.rip, seg, now, gfp, self.owner,
                             gso_size=self.mss_cache if gso_segs > 1 else 0, clone_of=clone_of)
        if rc < 0:
            return rc
        proto.mib["OutSegs"] += gso_segs
        c = self.counters
        c["segs_out"] += gso_segs
        if payload:
            c["data_segs_out"] += gso_segs
        if flags & ACK:
            self._event_ack_sent()
        return 0

    def _event_ack_sent(self) -> None:
        """tcp_event_ack_sent: the ACK went out, so no delayed ACK is pending."""
        if self.quick:
            self.quick -= 1
        self.ack_pending = False
        self.stack.timers.del_timer(self.delack_timer)

    def send_ack(self, now: float) -> int:
        """__tcp_send_ack at sk_gfp_mask(GFP_ATOMIC); on failure back off on the delayed-ACK
        timer (TCP_DELACK_MAX, ato reset to TCP_ATO_MIN) and send nothing."""
        if self.state in (CLOSE, LISTEN, SYN_SENT):
            return 0
        rc = self._xmit(self.snd_nxt, ACK, b"", now, self.sk_gfp_mask(_GFP_ATOMIC))
        if rc < 0:
            self.counters["ack_nomem"] += 1
            self.ack_pending = True
            self.ato = TCP_ATO_MIN
            self._reset_delack_timer(now + TCP_DELACK_MAX)
        return rc

    def _send_challenge_ack(self, now: float) -> None:
        """tcp_send_challenge_ack (RFC 5961 §3-5), rate limited per socket."""
        ext = self.proto.ext
        if now - self.last_oow_ack_time < TCP_INVALID_RATELIMIT:
            ext["TCPACKSkippedChallenge"] += 1
            return
        self.last_oow_ack_time = now
        ext["TCPChallengeACK"] += 1
        self.send_ack(now)

    def _send_dupack(self, seg: Seg, now: float) -> None:
        """Out-of-window segment: ACK it (tcp_send_dupack), rate limited when it carries no
        data (__tcp_oow_rate_limited)."""
        if seg.seq == seg.end_seq and not seg.flags & SYN:
            if now - self.last_oow_ack_time < TCP_INVALID_RATELIMIT:
                self.proto.ext["TCPACKSkippedSeq"] += 1
                return
            self.last_oow_ack_time = now
        if seg.end_seq != seg.seq and before(seg.seq, self.rcv_nxt):
            self.proto.ext["DelayedACKLost"] += 1
            self._enter_quickack_mode()
        self.send_ack(now)

    def _send_active_reset(self, now: float) -> None:
        """tcp_send_active_reset at sk_gfp_mask(GFP_ATOMIC)."""
        seg = emit(self.stack.ip, self.rip, self.lport, self.rport, self.snd_nxt,
                   self.rcv_nxt, RST | ACK, 0, csum_partial=self.stack.tx_csum_tcp)
        if self.proto.ip_output(self.rip, seg, now,
                                     self.sk_gfp_mask(_GFP_ATOMIC), self.owner) >= 0:
            self.proto.mib["OutSegs"] += 1
            self.proto.mib["OutRsts"] += 1
        else:
            self.proto.ext["TCPAbortFailed"] += 1

    def _send_fin(self, now: float) -> None:
        """tcp_send_fin: on the unsent tail if there is one, else a FIN-only buffer at
        sk_gfp_mask(GFP_ATOMIC) (if even that fails, retry on the probe timer)."""
        wq = self.write_queue
        if wq and not wq[-1].flags & (SYN | FIN):
            tail = wq[-1]
            tail.flags |= FIN
            tail.end_seq = (tail.end_seq + 1) & MASK
            self.write_seq = tail.end_seq
            self.fin_queued = True
            self._push(now, force=True)
            return
        skb = self._new_txskb(FIN, self.sk_gfp_mask(_GFP_ATOMIC), 0)
        if skb is None:
            self.fin_pending = True                   # retried from the probe timer
            self._reset_xmit_timer(2, now + TCP_RESOURCE_PROBE_INTERVAL)
            return
        self.fin_pending = False
        skb.seq = self.write_seq
        skb.end_seq = (skb.seq + 1) & MASK
        wq.append(skb)
        self.write_seq = skb.end_seq
        self.fin_queued = True
        self._push(now, force=True)

    def _in_flight(self) -> int:
        """tcp_packets_in_flight: packets_out - (sacked_out + lost_out) + retrans_out."""
        return self.packets_out - (self.sacked_out + self.lost_out) + self.retrans_out

    def _push(self, now: float, force: bool = False) -> None:
        """tcp_push_pending_frames: send, and arm the probe timer if the window stops us with
        nothing in flight (tcp_check_probe_timer)."""
        if self._write_xmit(now, force) and not self.packets_out and self.t_xmit is None:
            self._reset_xmit_timer(2, now + max(self.rto, TCP_RTO_MIN))

    def _write_xmit(self, now: float, force: bool = False) -> bool:
        """tcp_write_xmit: send new data while cwnd and the peer's window allow, a write-queue
        buffer at a time: its segments (tcp_init_tso_segs), as many as tcp_cwnd_test's quota
        (at most half of cwnd, "at least 2 GSO packets in flight"), tcp_tso_autosize and the
        window allow (tcp_mss_split_point); a longer buffer is split there first
        (tso_fragment). True if something is left unsent."""
        wq = self.write_queue
        sent = 0
        cwnd_limited = False
        mss = self.mss_cache
        max_segs = 0
        while wq:
            skb = wq[0]
            dlen = len(skb.data)
            if skb.flags & SYN:
                quota = 1
            else:
                cwnd = self.snd_cwnd
                quota = cwnd - self._in_flight()
                if quota <= 0:
                    cwnd_limited = True
                    break
                half = cwnd >> 1 or 1
                if quota > half:
                    quota = half
                wnd_end = (self.snd_una + self.snd_wnd) & MASK
                if after((skb.seq + mss) & MASK if dlen > mss else skb.end_seq, wnd_end):
                    break                                       # tcp_snd_wnd_test
            if dlen > mss:
                if not max_segs:
                    max_segs = self._tso_segs(mss)
                limit = self._mss_split_point(skb, mss, quota if quota < max_segs else max_segs,
                                              force)
                if dlen > limit:
                    self._split(skb, limit, wq)             # tso_fragment
                    dlen = limit
                pcount = (dlen + mss - 1) // mss
            else:
                pcount = 1
                if (not self.nodelay and not force and not skb.flags & (SYN | FIN)
                        and dlen < mss and self.packets_out and len(wq) == 1):
                    break                                       # Nagle
            skb.pcount = pcount
            if self._send_skb(skb, now, new=True) < 0:
                break
            skb = wq.popleft()
            self.rtx_queue.append(skb)
            pcount = skb.pcount                 # fewer if the device took only part of it
            self.packets_out += pcount
            self.snd_nxt = skb.end_seq
            if self.ca_state == CA_RECOVERY:
                self.prr_out += pcount
            sent += pcount
            if self.t_xmit is None or self.t_xmit_kind == 2:
                self._reset_xmit_timer(1, now + self.rto)
        if sent and self.t_xmit_kind == 2:
            self._reset_xmit_timer(1, now + self.rto)
        cwnd_limited = cwnd_limited or self._in_flight() >= self.snd_cwnd
        if sent or cwnd_limited:
            self._cwnd_validate(cwnd_limited)
        return bool(wq)

    def _tso_segs(self, mss: int) -> int:
        """tcp_tso_segs -> tcp_tso_autosize (min_tso_segs 2): about one ms of the pacing rate
        (sk_pacing_rate >> sk_pacing_shift 10; tcp_update_pacing_rate: mss * cwnd / srtt, x2 in
        slow start below half ssthresh, else x1.2; unlimited before an RTT sample) plus
        gso_max_size >> (min RTT in µs >> tcp_tso_rtt_log 9), within gso_max_size."""
        gso_max = GSO_MAX_SIZE - 1 - 20 - 60
        srtt = self.srtt_us
        if not srtt:
            return gso_max // mss
        cwnd = max(self.snd_cwnd, self.packets_out)
        ratio = 2.0 if self.snd_cwnd < self.snd_ssthresh >> 1 else 1.2
        nbytes = int(mss * cwnd * ratio * 8e6 / srtt) >> 10
        r = self.rtt_min_us >> 9
        if r < 32:
            nbytes += GSO_MAX_SIZE >> r
        if nbytes > gso_max:
            nbytes = gso_max
        segs = nbytes // mss
        return segs if segs > 2 else 2

    def _mss_split_point(self, skb: TxSkb, mss: int, max_segs: int, force: bool) -> int:
        """tcp_mss_split_point: the bytes of ``skb`` to send now -- ``max_segs`` MSS, or what
        the window allows, less a partial last segment Nagle would hold (tcp_nagle_check)."""
        window = ((self.snd_una + self.snd_wnd) & MASK) - skb.seq & MASK
        max_len = mss * max_segs
        tail = skb is self.write_queue[-1]
        if max_len <= window and not tail:
            return max_len
        needed = min(len(skb.data), window)
        if max_len <= needed:
            return max_len
        partial = needed % mss
        if partial and tail and not self.nodelay and not force and self.packets_out:
            return needed - partial
        return needed

    def _split(self, skb: TxSkb, keep: int, q) -> TxSkb:
        """tso_fragment / tcp_fragment: ``skb`` keeps its first ``keep`` bytes, a new buffer
        with the rest goes right after it in ``q`` (the write or the retransmit queue). No page
        is allocated: the pages ending within the first ``keep`` bytes stay, the others move
        (``TxSkb``); the new sk_buff's overhead is charged. FIN, the marks and the times go
        with the tail as tcp_fragment copies them; pcounts by the current MSS (the retransmit
        queue's counters follow, tcp_adjust_pcount)."""
        nh = _page_ends_within(skb.off, keep)
        pages = skb.pages
        tail = TxSkb((skb.seq + keep) & MASK, skb.flags & (FIN | PSH), pages[nh:])
        skb.pages = pages[:nh]
        skb.truesize = nh * PAGE_SIZE + SKB_TRUESIZE_OVERHEAD
        tail.data = skb.data[keep:]
        del skb.data[keep:]
        tail.off = (skb.off + keep) % PAGE_SIZE
        tail.end_seq = skb.end_seq
        skb.flags &= ~(FIN | PSH)
        skb.end_seq = tail.seq
        tail.sent_time, tail.first_tx, tail.ever_retrans = skb.sent_time, skb.first_tx, \
            skb.ever_retrans
        self.wmem_queued += SKB_TRUESIZE_OVERHEAD
        self.proto._mem_charge(SKB_TRUESIZE_OVERHEAD)
        mss = self.mss_cache
        old = skb.pcount
        skb.pcount = (keep + mss - 1) // mss
        tail.pcount = (len(tail.data) + mss - 1) // mss or 1
        if q is self.rtx_queue:
            delta = skb.pcount + tail.pcount - old
            self.packets_out += delta
            for mark, name in ((skb.sacked, "sacked_out"), (skb.lost, "lost_out"),
                               (skb.retrans, "retrans_out")):
                if mark:
                    setattr(self, name, getattr(self, name) + delta)
            tail.sacked, tail.lost, tail.retrans = skb.sacked, skb.lost, skb.retrans
        q.insert(q.index(skb) + 1, tail)
        return tail

    def _rtx_split(self) -> None:
        """Every multi-segment buffer of the retransmit queue cut into MSS-sized ones (Linux
        fragments where SACK, loss marking and retransmission need a segment's own state --
        tcp_match_skb_to_sack, tcp_mark_head_lost, __tcp_retransmit_skb; here the whole queue
        at the first sign of trouble: a dupack, a SACK block, recovery, an RTO)."""
        if self.packets_out == len(self.rtx_queue):
            return
        q = self.rtx_queue
        mss = self.mss_cache
        i = 0
        while i < len(q):
            skb = q[i]
            if skb.pcount > 1 and len(skb.data) > mss:
                self._split(skb, mss, q)
            i += 1

    def _cwnd_validate(self, is_cwnd_limited: bool) -> None:
        """tcp_cwnd_validate (Linux f4ce91ce12a7, "not forget is_cwnd_limited"): at transmit
        time, once per window of data (``cwnd_usage_seq``), remember whether cwnd limited the
        sender -- or, when it did not, the most packets out in the window. A limit seen in the
        window is kept until snd_una passes its right edge; the ACKs of that window then find
        it set (``_cong_avoid``), so cwnd grows even when each ACK covers the whole flight
        (cwnd 2, every second segment ACKed)."""
        if (not before(self.snd_una, self.cwnd_usage_seq) or is_cwnd_limited
                or (not self.is_cwnd_limited and self.packets_out > self.max_packets_out)):
            self.is_cwnd_limited = is_cwnd_limited
            self.max_packets_out = self.packets_out
            self.cwnd_usage_seq = self.snd_nxt

    def _is_cwnd_limited(self) -> bool:
        """tcp_is_cwnd_limited: cwnd-limited in this window, or in slow start below twice the
        most packets out."""
        if self.is_cwnd_limited:
            return True
        if self.snd_cwnd < self.snd_ssthresh:
            return self.snd_cwnd < 2 * self.max_packets_out
        return False

    def _seg_flags(self, skb: TxSkb, new: bool) -> int:
        """SYN (+ACK in SYN_RECV), else ACK + FIN as queued; PSH on the last buffer of what
        was written (tcp_mark_push), kept for its retransmissions."""
        f = skb.flags
        if f & SYN:
            return SYN | ACK if self.state == SYN_RECV else SYN
        if new and skb.data and skb is self.write_queue[-1]:
            f |= PSH
            skb.flags = f
        return f | ACK

    def _send_skb(self, skb: TxSkb, now: float, new: bool) -> int:
        """One transmission of a queued buffer (tcp_transmit_skb): new data at
        sk_gfp_mask(GFP_ATOMIC), retransmissions at GFP_ATOMIC (tcp_retransmit_skb) as a clone
        of the queued buffer: skb_clone takes the buffer's fclone companion, free again once
        the previous transmission completed, so a retransmission allocates no page
        (``clone_of``; a frame at GFP_ATOMIC only when the next hop is unresolved).

        A buffer of ``pcount`` > 1 segments goes to a TSO device as one GSO buffer (gso_size =
        MSS); otherwise it is segmented here as software GSO does (skb_gso_segment ->
        tcp_gso_segment: MSS-sized pieces, PSH and FIN on the last only), one frame each. If the
        device takes only the first pieces, the buffer is split after them (the rest stays
        unsent); if it takes none, -errno."""
        gfp = self.sk_gfp_mask(_GFP_ATOMIC) if new else _GFP_ATOMIC
        flags = self._seg_flags(skb, new)
        pcount = skb.pcount
        if pcount == 1:
            rc = self._xmit(skb.seq, flags, skb.data, now, gfp,
                            clone_of=None if new else skb.pages)
        elif self.stack.tso:
            rc = self._xmit(skb.seq, flags, skb.data, now, gfp, pcount,
                            clone_of=None if new else skb.pages)
        else:
            mss = self.mss_cache
            data = memoryview(skb.data)
            dlen = len(data)
            seq = skb.seq
            inner = flags & ~(FIN | PSH)
            clone = None if new else skb.pages
            xmit = self._xmit
            off = 0
            rc = 0
            while off < dlen:
                end = off + mss
                rc = xmit((seq + off) & MASK, inner if end < dlen else flags, data[off:end],
                          now, gfp, clone_of=clone)
                if rc < 0:
                    break
                off = end
            data.release()
            if rc < 0:
                if not off:
                    return rc
                self._split(skb, off, self.write_queue if new else self.rtx_queue)
        if rc < 0:
            return rc
        skb.sent_time = now
        if new:
            skb.first_tx = now
            if skb.data:
                self.proto.ext["TCPOrigDataSent"] += skb.pcount
        return 0

    def _retransmit_skb(self, skb: TxSkb, now: float) -> int:
        """tcp_retransmit_skb: one segment (a longer buffer is cut to MSS first, as
        __tcp_retransmit_skb fragments to what cwnd allows); RetransSegs; TCPRetransFail when
        the buffer cannot be built."""
        if skb.pcount > 1 and len(skb.data) > self.mss_cache:
            self._split(skb, self.mss_cache, self.rtx_queue)
        if self._send_skb(skb, now, new=False) < 0:
            self.proto.ext["TCPRetransFail"] += 1
            return -1
        self.proto.mib["RetransSegs"] += skb.pcount
        self.counters["retrans"] += 1
        self.total_retrans += 1
        skb.ever_retrans = True
        if not skb.retrans:
            skb.retrans = True
            self.retrans_out += skb.pcount
        return 0

    def _xmit_retransmit_queue(self, now: float) -> None:
        """tcp_xmit_retransmit_queue: resend lost, un-SACKed buffers while cwnd allows."""
        ext = self.proto.ext
        for skb in self.rtx_queue:
            if self._in_flight() >= self.snd_cwnd:
                break
            if not skb.lost or skb.sacked or skb.retrans:
                continue
            if self._retransmit_skb(skb, now) < 0:
                break
            if self.ca_state == CA_RECOVERY:
                self.prr_out += 1
            ext["TCPFastRetrans" if self.ca_state != CA_LOSS else "TCPSlowStartRetrans"] += 1
            if skb is self.rtx_queue[0]:
                self._reset_xmit_timer(1, now + self.rto)

    def _send_probe0(self, now: float) -> None:
        """tcp_send_probe0 -> tcp_write_wakeup: data if the window has room for some (split
        to fit), else a probe with seq snd_una - 1 (TCPWinProbe) at sk_gfp_mask(GFP_ATOMIC)."""
        wq = self.write_queue
        wnd_end = (self.snd_una + self.snd_wnd) & MASK
        err = 0
        if wq and before(wq[0].seq, wnd_end):
            skb = wq[0]
            seg_size = min((wnd_end - skb.seq) & MASK, self.mss_cache)
            if skb.data and seg_size < len(skb.data):
                self._split(skb, seg_size, wq)
            if self._write_xmit(now, force=True) and not self.packets_out:
                err = -1
        else:
            err = self._xmit((self.snd_una - 1) & MASK, ACK, b"", now,
                             self.sk_gfp_mask(_GFP_ATOMIC))
            if err == 0:
                self.proto.ext["TCPWinProbe"] += 1
        if self.packets_out:
            self.probes_out = 0
            self.backoff = 0
            return
        if err == 0:
            if self.backoff < TCP_RETRIES2:
                self.backoff += 1
            self.probes_out += 1
            when = min(max(self.rto, TCP_RTO_MIN) * (1 << self.backoff), TCP_RTO_MAX)
        else:
            when = min(max(self.rto, TCP_RTO_MIN) * (1 << self.backoff),
                       TCP_RESOURCE_PROBE_INTERVAL)
        self._reset_xmit_timer(2, now + when)

    # ================================================================ input
    def tcp_rcv(self, seg: Seg, now: float) -> None:
        """tcp_v4_do_rcv -> tcp_rcv_established / tcp_rcv_state_process."""
        self.counters["segs_in"] += 1
        st = self.state
        if st == LISTEN:
            self._listen_rcv(seg, now)
            return
        if st == SYN_SENT:
            self._rcv_synsent(seg, now)
            return
        if st == CLOSE:
            self.proto.send_reset(seg, seg.src, now)
            self.stack.kfree_skb(seg.skb, "TCP_CLOSE")
            return
        self._rcv_synchronized(seg, now)

    def _drop(self, seg: Seg, reason: str) -> None:
        self.stack.kfree_skb(seg.skb, reason)

    def _consume(self, seg: Seg) -> None:
        self.stack.consume_skb(seg.skb, "tcp")

    # -- LISTEN -------------------------------------------------------------------------
    def sk_acceptq_is_full(self) -> bool:
        """sk_acceptq_is_full: sk_ack_backlog > sk_max_ack_backlog (strictly, since 5.5)."""
        return len(self.accept_queue) > self.max_ack_backlog

    def inet_csk_reqsk_queue_is_full(self) -> bool:
        return len(self.reqs) > self.max_ack_backlog

    def _listen_rcv(self, seg: Seg, now: float) -> None:
        """tcp_rcv_state_process in LISTEN: an ACK gets a RST, a SYN goes to tcp_conn_request."""
        f = seg.flags
        if f & RST:
            self._drop(seg, "TCP_RESET")
            return
        if f & ACK:
            self.proto.send_reset(seg, seg.src, now)
            self._drop(seg, "TCP_FLAGS")
            return
        if not f & SYN or f & FIN:
            self._drop(seg, "TCP_FLAGS")
            return
        self._conn_request(seg, now)

    def _conn_request(self, seg: Seg, now: float) -> None:
        """tcp_conn_request without syncookies (net.ipv4.tcp_syncookies=0): a full SYN queue
        drops the SYN (TCPReqQFullDrop, tcp_syn_flood_action), a full accept queue too
        (ListenOverflows); the last quarter of tcp_max_syn_backlog is kept for proven peers
        -- there is no tcp_metrics cache here, so no peer is proven and the SYN is dropped.
        Every drop counts ListenDrops (tcp_listendrop). Otherwise a request socket is hashed,
        its SYN-ACK sent at GFP_ATOMIC and its timer armed at TCP_TIMEOUT_INIT."""
        proto = self.proto
        ext = proto.ext
        qlen = len(self.reqs)
        reason = None
        if self.inet_csk_reqsk_queue_is_full():
            ext["TCPReqQFullDrop"] += 1
            self.synflood_warned = True
            reason = "TCP_REQQ_FULL"
        elif self.sk_acceptq_is_full():
            ext["ListenOverflows"] += 1
            reason = "TCP_LISTEN_OVERFLOW"
        elif proto.max_syn_backlog - qlen < (proto.max_syn_backlog >> 2):
            reason = "TCP_REQQ_FULL"                 # pr_drop_req: not a proven peer
        if reason is not None:
            ext["ListenDrops"] += 1
            self.drops += 1
            self._drop(seg, reason)
            return
        req = RequestSock(self, seg, now)
        self._consume(seg)
        req.send_synack(now)                         # a failure is retried by the timer
        self.stack.timers.mod_timer(req.timer, now + TCP_TIMEOUT_INIT)

    def _apply_syn_options(self, o, now: float) -> None:
        """tcp_parse_options on a SYN / SYN-ACK: MSS, window scale, SACK, timestamps (each on
        only if both sides sent it)."""
        if o is None:
            o = parse_options(b"", True)
        peer_mss = o.mss or TCP_MSS_DEFAULT
        self.mss_clamp = peer_mss
        self.wscale_ok = o.wscale >= 0
        if self.wscale_ok:
            self.snd_wscale = o.wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = o.sack_ok
        self.tstamp_ok = o.saw_tstamp
        if o.saw_tstamp:
            self.ts_recent = o.tsval
            self.ts_recent_stamp = now
        self._sync_mss()

    def _sync_mss(self) -> None:
        """tcp_sync_mss: the sending MSS from the peer's clamp, our MTU and the options."""
        mss = min(self.mss_clamp, self.advmss) - (12 if self.tstamp_ok else 0)
        self.mss_cache = max(mss, TCP_MIN_MSS - 40)
        self.rcv_mss = min(self.advmss, self.mss_cache)

    # -- SYN_SENT -----------------------------------------------------------------------
    def _rcv_synsent(self, seg: Seg, now: float) -> None:
        """tcp_rcv_synsent_state_process (RFC 9293 3.10.7.3)."""
        f = seg.flags
        proto = self.proto
        if f & ACK:
            if not after(seg.ack_seq, self.iss) or after(seg.ack_seq, self.snd_nxt):
                if not f & RST:
                    proto.send_reset(seg, seg.src, now)
                self._drop(seg, "TCP_INVALID_ACK_SEQUENCE")
                return
            if f & RST:
                self._drop(seg, "TCP_RESET")
                self._reset(now)
                return
            if not f & SYN:
                self._drop(seg, "TCP_FLAGS")
                return
            o = seg.opts
            if o is not None and o.saw_tstamp and o.tsecr and self._ts_echo_bad(o.tsecr, now):
                proto.send_reset(seg, seg.src, now)
                self._drop(seg, "TCP_RFC7323_PAWS")
                return
            self.irs = seg.seq
            self.rcv_nxt = self.rcv_wup = self.copied_seq = (seg.seq + 1) & MASK
            self._apply_syn_options(seg.opts, now)
            self.snd_wnd = seg.window
            self.snd_wl1 = seg.seq
            self.max_window = self.snd_wnd
            self._ack_snd_una(seg, now)
            self._set_state(ESTABLISHED)
            self._established(now)
            if proto.st.rx_trace_hooks:               # observers learn where the stream starts
                proto.st.rx_trace(seg.skb.data, "synack:" + self.owner)
            if seg.data:
                self._data_queue(seg, now)            # data on a SYN-ACK: rare, in order
            else:
                self._consume(seg)
            self.send_ack(now)
            self._push(now)
            return
        if f & RST:
            self._drop(seg, "TCP_RESET")
            return
        if f & SYN:
            # simultaneous open: SYN_RECV, SYN-ACK with our ISN (RFC 9293 3.10.7.3 fourth)
            self.irs = seg.seq
            self.rcv_nxt = self.rcv_wup = self.copied_seq = (seg.seq + 1) & MASK
            self._apply_syn_options(seg.opts, now)
            self.snd_wnd = seg.window
            self.snd_wl1 = seg.seq
            self.max_window = self.snd_wnd
            self._set_state(SYN_RECV)
            self._consume(seg)
            skb = self.rtx_queue[0] if self.rtx_queue else None
            if skb is not None:
                self._retransmit_skb(skb, now)      # the same SYN, now with ACK
            return
        self._drop(seg, "TCP_FLAGS")

    def _ts_echo_bad(self, tsecr: int, now: float) -> bool:
        d = (self._ts_now(now) - tsecr) & MASK
        return d > 0x7FFFFFFF

    def _established(self, now: float) -> None:
        """tcp_finish_connect / tcp_init_transfer."""
        self.snd_cwnd = TCP_INIT_CWND
        if self.srtt_us:
            self.rto = self._rto_from_rtt()
        else:   # RFC 6298 5.7: the SYN was retransmitted (no sample) -> 3 s
            self.rto = 3.0 if self.retransmits else TCP_TIMEOUT_INIT
        self.retransmits = 0
        self.backoff = 0
        self.retrans_stamp = 0.0
        self.lrcvtime = now
        self._incr_quickack()
        self.proto.wake(self.wait_key)

    # -- synchronized states --------------------------------------------------------------
    def _paws_reject(self, o, seg: Seg, now: float) -> bool:
        if not (self.tstamp_ok and o is not None and o.saw_tstamp):
            return False
        d = (self.ts_recent - o.tsval) & MASK
        if d <= 1 or d > 0x7FFFFFFF:
            return False                      # tcp_paws_check: tsval >= ts_recent - 1
        if now - self.ts_recent_stamp > TCP_PAWS_24DAYS:
            return False
        return not seg.flags & RST

    def _sequence_ok(self, seg: Seg) -> str | None:
        """tcp_sequence: None if acceptable (RFC 9293 3.10.7.4 first check), else a reason."""
        if before(seg.end_seq, self.rcv_wup):
            return "TCP_OLD_SEQUENCE"
        if after(seg.seq, (self.rcv_nxt + self._receive_window()) & MASK):
            return "TCP_INVALID_SEQUENCE"
        return None

    def _rcv_synchronized(self, seg: Seg, now: float) -> None:
        """tcp_validate_incoming + tcp_ack + tcp_data_queue for every state past SYN_SENT."""
        proto = self.proto
        ext = proto.ext
        f = seg.flags
        o = seg.opts
        # PAWS (RFC 7323 §5)
        if self._paws_reject(o, seg, now):
            ext["PAWSEstab"] += 1
            self._send_dupack(seg, now)
            self._drop(seg, "TCP_RFC7323_PAWS")
            return
        bad = self._sequence_ok(seg)
        if bad is not None:
            if not f & RST:
                if f & SYN:
                    ext["TCPSYNChallenge"] += 1
                    self._send_challenge_ack(now)
                else:
                    self._send_dupack(seg, now)
            self._drop(seg, bad)
            return
        if f & RST:
            # RFC 5961 §3: exactly rcv_nxt resets; elsewhere in the window a challenge ACK
            if seg.seq == self.rcv_nxt:
                self._drop(seg, "TCP_RESET")
                self._reset(now)
            else:
                self._send_challenge_ack(now)
                self._drop(seg, "TCP_RESET")
            return
        if f & SYN:
            if self.state == SYN_RECV and seg.seq == self.irs and not f & ACK:
                # the peer retransmitted its SYN: send our SYN-ACK again (tcp_check_req)
                if self.rtx_queue:
                    self._retransmit_skb(self.rtx_queue[0], now)
                self._consume(seg)
                return
            ext["TCPSYNChallenge"] += 1           # RFC 5961 §4
            self._send_challenge_ack(now)
            self._drop(seg, "TCP_INVALID_SYN")
            return
        if not f & ACK:
            self._drop(seg, "TCP_FLAGS")
            return
        # update ts_recent (RFC 7323 §4.3: the segment covers rcv_wup)
        if self.tstamp_ok and o is not None and o.saw_tstamp and \
                not after(seg.seq, self.rcv_wup):
            self.ts_recent = o.tsval
            self.ts_recent_stamp = now
        if self.state == SYN_RECV:
            # our SYN is acknowledged (a child from a request socket starts with snd_una past
            # it; a simultaneous open still holds it in the retransmit queue)
            if not (after(seg.ack_seq, self.iss) and not after(seg.ack_seq, self.snd_nxt)):
                proto.send_reset(seg, seg.src, now)
                self._drop(seg, "TCP_INVALID_ACK_SEQUENCE")
                return
            self.snd_wnd = seg.window << self.snd_wscale
            self.snd_wl1 = seg.seq
            self.max_window = max(self.max_window, self.snd_wnd)
            self._ack_snd_una(seg, now)
            self._set_state(ESTABLISHED)
            self._established(now)
            parent = self.parent
            if parent is not None:
                proto.wake(parent.wait_key)
        else:
            r = self._tcp_ack(seg, now)
            if r is not None:
                self._drop(seg, r)
                return
        st = self.state
        # what the ACK of our FIN does
        if self.fin_queued and not self.write_queue and not self.rtx_queue:
            if st == FIN_WAIT1:
                self._set_state(FIN_WAIT2)
                if self.dead:
                    self._arm_misc(now + TCP_FIN_TIMEOUT)
                proto.wake(self.wait_key)
            elif st == CLOSING:
                self._time_wait(now)
                self._consume(seg)
                return
            elif st == LAST_ACK:
                self._consume(seg)
                self._done()
                return
        # step 7, the segment text (tcp_rcv_state_process): after the peer's FIN only a
        # retransmission (seq before rcv_nxt) goes on; once RCV_SHUTDOWN is set -- by close(),
        # shutdown(SHUT_RD) or that FIN -- new data (or an out-of-order FIN) beyond rcv_nxt
        # resets the connection (RFC 1122 4.2.2.13): TCPAbortOnData, tcp_reset, and
        # tcp_v4_do_rcv answers the segment with a RST (tcp_v4_send_reset)
        st = self.state
        if st in (ESTABLISHED, FIN_WAIT1, FIN_WAIT2) or \
                (st in (CLOSE_WAIT, CLOSING, LAST_ACK) and before(seg.seq, self.rcv_nxt)):
            if st != ESTABLISHED and self.rcv_shutdown and seg.end_seq != seg.seq and \
                    after((seg.end_seq - (1 if f & FIN else 0)) & MASK, self.rcv_nxt):
                proto.ext["TCPAbortOnData"] += 1
                self._reset(now)
                proto.send_reset(seg, seg.src, now)
                self._drop(seg, "TCP_ABORT_ON_DATA")
                return
            self._data_queue(seg, now)
        else:
            self._consume(seg)
        self._push(now)
        self._ack_snd_check(now)

    def _ack_snd_una(self, seg: Seg, now: float) -> None:
        """The ACK that completes a handshake: free the SYN, take an RTT sample."""
        ack = seg.ack_seq
        q = self.rtx_queue
        while q and not after(q[0].end_seq, ack):
            skb = q.popleft()
            self.packets_out -= 1
            if skb.retrans:
                self.retrans_out -= 1
            if not skb.ever_retrans:
                self._rtt_sample(now - skb.sent_time, now)
            self._free_txskb(skb)
        self.snd_una = ack
        self._clear_xmit_timer()

    # -- ACK processing -----------------------------------------------------------------
    def _tcp_ack(self, seg: Seg, now: float) -> str | None:
        """tcp_ack: None to go on with the segment, or the reason to drop it."""
        ack = seg.ack_seq
        prior_snd_una = self.snd_una
        ext = self.proto.ext
        if before(ack, prior_snd_una):
            if before(ack, (prior_snd_una - self.max_window) & MASK):
                self._send_challenge_ack(now)         # RFC 5961 §5
                return "TCP_TOO_OLD_ACK"
            return None if (seg.data or seg.flags & FIN) else self._old_ack(seg)
        if after(ack, self.snd_nxt):
            return "TCP_ACK_UNSENT_DATA"
        prior_in_flight = self._in_flight()
        prior_packets = self.packets_out
        win_update = self._ack_update_window(seg, ack)
        acked_pkts = 0
        acked_bytes = 0
        rtt = None
        ts_rtt = None
        q = self.rtx_queue
        first_acked_lost = False
        while q and not after(q[0].end_seq, ack):
            skb = q.popleft()
            pcount = skb.pcount
            acked_pkts += pcount
            acked_bytes += len(skb.data)
            self.packets_out -= pcount
            if skb.sacked:
                self.sacked_out -= pcount if self.sack_ok else 0
            if skb.lost:
                self.lost_out -= pcount
                first_acked_lost = True
            if skb.retrans:
                self.retrans_out -= pcount
            if not skb.ever_retrans:
                rtt = now - skb.sent_time             # Karn: only never-retransmitted ones
            self._free_txskb(skb)
        if q and before(q[0].seq, ack):
            skb = q[0]                                # ACK inside a buffer: tcp_tso_acked
            acked_pkts += self._trim_head(skb, ack)
            if rtt is None and not skb.ever_retrans:
                rtt = now - skb.sent_time
        o = seg.opts
        if rtt is None and acked_pkts and self.tstamp_ok and o is not None and o.saw_tstamp \
                and o.tsecr:
            ts_rtt = ((self._ts_now(now) - o.tsecr) & MASK) / 1000.0
            if ts_rtt > 0x7FFFFFF:
                ts_rtt = None
        if self.packets_out != len(q) and (
                self.ca_state != CA_OPEN or not after(ack, prior_snd_una)
                or (o is not None and o.sack)):
            self._rtx_split()                         # per-segment state from here on
        newly_sacked = 0
        if self.sack_ok and o is not None and o.sack:
            newly_sacked = self._sacktag(o.sack)
        snd_una_advanced = after(ack, prior_snd_una)
        self.snd_una = ack
        if snd_una_advanced:
            self.counters["bytes_acked"] += (ack - prior_snd_una) & MASK
            self.retransmits = 0
            self.probes_out = 0
            self.retrans_stamp = 0.0 if not any(s.ever_retrans for s in q) else self.retrans_stamp
            sample = rtt if rtt is not None else ts_rtt
            if sample is not None:
                self._rtt_sample(sample, now)
            if self.packets_out:
                self._reset_xmit_timer(1, now + self.rto)
            else:
                self._clear_xmit_timer()
            self.proto.wake(self.wait_key)            # sk_write_space
        is_dupack = (not snd_una_advanced and not seg.data and not win_update
                     and not seg.flags & (SYN | FIN) and prior_packets > 0)
        if not snd_una_advanced and not seg.data and not newly_sacked:
            ext["TCPPureAcks"] += 1
        self._fastretrans_alert(acked_pkts, newly_sacked, is_dupack, snd_una_advanced,
                                prior_in_flight, now)
        # window probes: the window opened for the head of the write queue
        if not self.packets_out and self.write_queue and self.t_xmit_kind == 2:
            head = self.write_queue[0]
            if not after(head.end_seq, (self.snd_una + self.snd_wnd) & MASK):
                self._clear_xmit_timer()
                self.backoff = 0
                self.probes_out = 0
        return None

    def _old_ack(self, seg: Seg) -> str:
        return "TCP_OLD_ACK"

    def _trim_head(self, skb: TxSkb, ack: int) -> int:
        """tcp_tso_acked -> tcp_trim_head: drop the acked bytes and the pages that held only
        acked bytes (their last byte is acked), recount the segments; the segments acked."""
        n = (ack - skb.seq) & MASK
        del skb.data[:n]
        skb.seq = ack
        nd = _page_ends_within(skb.off, n)
        if nd:
            pages = skb.pages
            self.alloc.free(pages[:nd])
            skb.pages = pages[nd:]
            size = nd * PAGE_SIZE
            skb.truesize -= size
            self.wmem_queued -= size
            self.proto._mem_uncharge(size)
        skb.off = (skb.off + n) % PAGE_SIZE
        mss = self.mss_cache
        old = skb.pcount
        new = (len(skb.data) + mss - 1) // mss or 1
        if new >= old:
            return 0
        skb.pcount = new
        delta = old - new
        self.packets_out -= delta
        if skb.sacked:
            self.sacked_out -= delta
        if skb.lost:
            self.lost_out -= delta
        if skb.retrans:
            self.retrans_out -= delta
        return delta

    def _ack_update_window(self, seg: Seg, ack: int) -> bool:
        """tcp_ack_update_window (RFC 9293 SND.WL1/WL2 rule)."""
        nwin = seg.window << self.snd_wscale
        if (after(ack, self.snd_una) or after(seg.seq, self.snd_wl1)
                or (seg.seq == self.snd_wl1 and nwin > self.snd_wnd)):
            changed = nwin != self.snd_wnd
            self.snd_wl1 = seg.seq
            self.snd_wnd = nwin
            if nwin > self.max_window:
                self.max_window = nwin
            return changed
        return False

    def _sacktag(self, blocks) -> int:
        """tcp_sacktag_write_queue: mark buffers the peer holds. Returns newly SACKed packets.
        Blocks outside (snd_una, snd_nxt] are ignored (TCPSACKDiscard); no DSACK."""
        newly = 0
        una, nxt = self.snd_una, self.snd_nxt
        for start, end in blocks:
            if not after(end, start) or after(end, nxt) or not after(end, una) \
                    or before(start, (una - self.max_window) & MASK):
                self.proto.ext["TCPSACKDiscard"] += 1
                continue
            for skb in self.rtx_queue:
                if before(skb.seq, start):
                    continue
                if after(skb.end_seq, end):
                    break
                if not skb.sacked:
                    pcount = skb.pcount
                    skb.sacked = True
                    self.sacked_out += pcount
                    newly += pcount
                    if skb.lost:
                        skb.lost = False
                        self.lost_out -= pcount
                    if skb.retrans:
                        skb.retrans = False
                        self.retrans_out -= pcount
        return newly

    def _mark_lost_sack(self) -> None:
        """RFC 6675 IsLost: a buffer with DupThresh SACKed buffers above it is lost."""
        above = 0
        for skb in reversed(self.rtx_queue):
            if skb.sacked:
                above += skb.pcount
            elif above >= TCP_FASTRETRANS_THRESH and not skb.lost and not skb.retrans:
                skb.lost = True
                self.lost_out += skb.pcount

    def _mark_head_lost(self) -> None:
        q = self.rtx_queue
        if q:
            h = q[0]
            if not h.lost and not h.sacked and not h.retrans:
                h.lost = True
                self.lost_out += h.pcount

    def _fastretrans_alert(self, acked: int, newly_sacked: int, is_dupack: bool,
                           advanced: bool, prior_in_flight: int, now: float) -> None:
        """tcp_fastretrans_alert: Open/Disorder -> Recovery on dupthresh, NewReno partial ACKs,
        PRR during Recovery, Loss until high_seq is acked."""
        ext = self.proto.ext
        reno = not self.sack_ok
        delivered = acked + newly_sacked
        if reno:
            if is_dupack and self.packets_out:
                # tcp_add_reno_sack: a dupack stands for one segment that left the network
                if self.sacked_out + 1 < self.packets_out:
                    self.sacked_out += 1
                delivered += 1
            elif acked:
                # tcp_remove_reno_sacks: one ACK fills the hole, the rest ate dupacks
                if acked - 1 >= self.sacked_out:
                    self.sacked_out = 0
                else:
                    self.sacked_out -= acked - 1
        st = self.ca_state
        if st == CA_RECOVERY:
            if not before(self.snd_una, self.high_seq):
                self.snd_cwnd = self.snd_ssthresh        # tcp_end_cwnd_reduction
                self.ca_state = CA_OPEN
                if reno:
                    self.sacked_out = 0
            else:
                if advanced:
                    self._mark_head_lost()              # NewReno: resend the next hole
                if not reno:
                    self._mark_lost_sack()
                self._cwnd_reduction(delivered)
                self._xmit_retransmit_queue(now)
                return
        elif st == CA_LOSS:
            if not before(self.snd_una, self.high_seq):
                self.ca_state = CA_OPEN
                if reno:
                    self.sacked_out = 0
            else:
                if acked:
                    self._cong_avoid(acked, prior_in_flight)
                self._xmit_retransmit_queue(now)
                return
        # Open / Disorder
        if self.sacked_out or is_dupack or newly_sacked:
            if not reno:
                self._mark_lost_sack()
            if self.lost_out or (reno and self.sacked_out >= TCP_FASTRETRANS_THRESH):
                self._enter_recovery(reno)
                self._cwnd_reduction(delivered)
                self._xmit_retransmit_queue(now)
                return
            self.ca_state = CA_DISORDER
        elif self.ca_state == CA_DISORDER and not self.sacked_out:
            self.ca_state = CA_OPEN
        if acked:
            self._cong_avoid(acked, prior_in_flight)

    def _enter_recovery(self, reno: bool) -> None:
        """tcp_enter_recovery + tcp_init_cwnd_reduction (Reno ssthresh, PRR state)."""
        ext = self.proto.ext
        ext["TCPRenoRecovery" if reno else "TCPSackRecovery"] += 1
        self.prior_cwnd = self.snd_cwnd
        self.snd_ssthresh = max(self.snd_cwnd >> 1, 2)
        self.snd_cwnd_cnt = 0
        self.prr_delivered = 0
        self.prr_out = 0
        self.high_seq = self.snd_nxt
        self.ca_state = CA_RECOVERY
        if reno:
            self._mark_head_lost()

    def _cwnd_reduction(self, newly_delivered: int) -> None:
        """tcp_cwnd_reduction: Proportional Rate Reduction (RFC 6937, with SSRB)."""
        if newly_delivered <= 0 and not self.lost_out:
            return
        self.prr_delivered += newly_delivered
        in_flight = self._in_flight()
        delta = self.snd_ssthresh - in_flight
        if delta < 0:
            sndcnt = -(-self.prr_delivered * self.snd_ssthresh // max(self.prior_cwnd, 1)) \
                - self.prr_out
        else:
            sndcnt = min(delta, max(self.prr_delivered - self.prr_out, newly_delivered) + 1)
        sndcnt = max(sndcnt, 0 if self.prr_out else 1)
        self.snd_cwnd = in_flight + sndcnt

    def _cong_avoid(self, acked: int, prior_in_flight: int) -> None:
        """tcp_reno_cong_avoid, only while cwnd-limited (tcp_is_cwnd_limited): slow start
        below ssthresh, then one segment per cwnd of ACKed segments."""
        if not self._is_cwnd_limited():
            return
        cwnd = self.snd_cwnd
        if cwnd < self.snd_ssthresh:
            grow = min(acked, self.snd_ssthresh - cwnd)
            cwnd += grow
            acked -= grow
        if acked:
            # tcp_cong_avoid_ai(tp, cwnd, acked): credits at a higher w applied gently first
            w = cwnd
            if self.snd_cwnd_cnt >= w:
                self.snd_cwnd_cnt = 0
                cwnd += 1
            self.snd_cwnd_cnt += acked
            if self.snd_cwnd_cnt >= w:
                delta = self.snd_cwnd_cnt // w
                self.snd_cwnd_cnt -= delta * w
                cwnd += delta
        self.snd_cwnd = min(cwnd, 0x7FFFFFFF)

    def _enter_loss(self) -> None:
        """tcp_enter_loss: ssthresh from cwnd, every un-SACKed buffer lost, cwnd = 1."""
        if self.ca_state <= CA_DISORDER or not after(self.high_seq, self.snd_una) or \
                (self.ca_state == CA_LOSS and not self.retransmits):
            self.prior_cwnd = self.snd_cwnd
            self.snd_ssthresh = max(self.snd_cwnd >> 1, 2)
        if not self.sack_ok:
            self.sacked_out = 0
        for skb in self.rtx_queue:
            if not self.sack_ok:
                skb.sacked = False
            if skb.retrans:
                skb.retrans = False
            if not skb.sacked and not skb.lost:
                skb.lost = True
        self.retrans_out = 0
        self.lost_out = sum(s.pcount for s in self.rtx_queue if s.lost)
        self.snd_cwnd = self._in_flight() + 1
        self.snd_cwnd_cnt = 0
        self.high_seq = self.snd_nxt
        self.ca_state = CA_LOSS

    def _rtt_sample(self, mrtt: float, now: float) -> None:
        """tcp_rtt_estimator + tcp_set_rto (integer µs, Linux's scaled srtt/mdev), and
        RFC 6298 5.7: a valid sample ends the backoff."""
        m = max(int(mrtt * 1e6), 1)
        if m < self.rtt_min_us or not self.rtt_min_us:
            self.rtt_min_us = m                     # tcp_min_rtt (a minimum over the connection)
        rto_min_us = int(TCP_RTO_MIN * 1e6)
        srtt = self.srtt_us
        if srtt:
            m -= srtt >> 3
            srtt += m
            if m < 0:
                m = -m
                m -= self.mdev_us >> 2
                if m > 0:
                    m >>= 3
            else:
                m -= self.mdev_us >> 2
            self.mdev_us += m
            if self.mdev_us > self.mdev_max_us:
                self.mdev_max_us = self.mdev_us
                if self.mdev_max_us > self.rttvar_us:
                    self.rttvar_us = self.mdev_max_us
            if after(self.snd_una, self.rtt_seq):
                if self.mdev_max_us < self.rttvar_us:
                    self.rttvar_us -= (self.rttvar_us - self.mdev_max_us) >> 2
                self.rtt_seq = self.snd_nxt
                self.mdev_max_us = rto_min_us
        else:
            srtt = m << 3
            self.mdev_us = m << 1
            self.rttvar_us = max(self.mdev_us, rto_min_us)
            self.mdev_max_us = self.rttvar_us
            self.rtt_seq = self.snd_nxt
        self.srtt_us = max(srtt, 1)
        self.rto = self._rto_from_rtt()
        self.backoff = 0

    def _rto_from_rtt(self) -> float:
        return min(((self.srtt_us >> 3) + self.rttvar_us) / 1e6, TCP_RTO_MAX)

    # -- data ---------------------------------------------------------------------------
    def _data_queue(self, seg: Seg, now: float) -> None:
        """tcp_data_queue: in order -> receive queue (+ the OFO queue behind it), else the
        OFO queue; memory via tcp_try_rmem_schedule."""
        ext = self.proto.ext
        skb = seg.skb
        data = seg.data
        seq = seg.seq
        end = seg.end_seq
        if seq == end:
            self._consume(seg)
            return
        self._measure_rcv_mss(len(data), skb.truesize)
        if seq == self.rcv_nxt or (before(seq, self.rcv_nxt) and after(end, self.rcv_nxt)):
            self._queue_in_order(seg, now)
            return
        if not after(end, self.rcv_nxt):
            # all of it already received: a spurious retransmission
            ext["DelayedACKLost"] += 1
            self._enter_quickack_mode()
            self.ack_pending = True
            self._drop(seg, "TCP_OLD_DATA")
            return
        if not before(seq, (self.rcv_nxt + self._receive_window()) & MASK):
            self.ack_pending = True
            self._enter_quickack_mode()
            self._drop(seg, "TCP_OVERWINDOW")
            return
        # out of order
        self._data_queue_ofo(seg, now)

    def _queue_in_order(self, seg: Seg, now: float) -> None:
        """tcp_data_queue's in-sequence branch (and the partial overlap one): zero window,
        memory (an empty receive queue always takes the segment), tcp_queue_rcv, FIN, OFO."""
        proto = self.proto
        ext = proto.ext
        skb = seg.skb
        data = seg.data
        fin = bool(seg.flags & FIN)
        seq = seg.seq
        end = seg.end_seq
        if self._receive_window() == 0 and data:
            # (a bare FIN is taken even at window 0, as Linux does)
            ext["TCPZeroWindowDrop"] += 1
            self.ack_pending = True
            self._enter_quickack_mode()
            self._drop(seg, "TCP_ZEROWINDOW")
            return
        if self._try_rmem_schedule(skb, len(data), seq):
            self.ack_pending = True
            self.quick = max(self.quick, 1)        # ICSK_ACK_NOMEM | ICSK_ACK_NOW
            self._ack_now = True
            if self.receive_queue and data:
                ext["TCPRcvQDrop"] += 1
                self.drops += 1
                self._drop(seg, "PROTO_MEM")
                proto.wake(self.wait_key)
                return
            # sk_forced_mem_schedule: an empty receive queue always takes one segment
        off = (self.rcv_nxt - seq) & MASK
        r = RxSeg(skb, self.rcv_nxt, end, data[off:], fin)
        self._charge_rx(r)
        self.receive_queue.append(r)
        if proto.st.rx_trace_hooks:                # drop-monitor observers (net/sunrpc/trace.py)
            proto.st.rx_trace(skb.data, "queued:" + self.owner)
        self.rcv_nxt = end
        self.counters["bytes_received"] += len(r.data)
        self.counters["data_segs_in"] += 1
        self._event_data_recv(now)
        if fin:
            self._fin(now)
        if self.ofo:
            self._ofo_queue(now)
            if not self.ofo:
                self.quick = max(self.quick, 1)   # the hole is filled: ACK now
        if self.selective_acks:
            self._sack_remove()
        proto.wake(self.wait_key)

    def _measure_rcv_mss(self, length: int, truesize: int) -> None:
        """tcp_measure_rcv_mss: rcv_mss and the len/truesize ratio the window is sized by."""
        if length > self.rcv_mss:
            self.rcv_mss = min(length, self.advmss)
        if length >= self.rcv_mss and truesize:
            val = (length << TCP_RMEM_TO_WIN_SCALE) // truesize
            if val > 0 and val != self.scaling_ratio:
                self.scaling_ratio = min(val, 255)
                self.window_clamp = min(self.window_clamp, 65535 << 14)

    def _data_queue_ofo(self, seg: Seg, now: float) -> None:
        """tcp_data_queue_ofo: insert by seq, merging duplicates (TCPOFOMerge)."""
        proto = self.proto
        ext = proto.ext
        skb = seg.skb
        self.ack_pending = True
        self._ack_now = True
        if self._try_rmem_schedule(skb, len(seg.data), seg.seq):
            ext["TCPOFODrop"] += 1
            self.drops += 1
            self._drop(seg, "PROTO_MEM")
            return
        ext["TCPOFOQueue"] += 1
        seq, end = seg.seq, seg.end_seq
        i = bisect_left(self.ofo_seqs, seq)
        # fully covered by the one before (or the one at the same seq)?
        for j in (i - 1, i):
            if 0 <= j < len(self.ofo):
                o = self.ofo[j]
                if not after(o.seq, seq) and not before(o.end_seq, end):
                    ext["TCPOFOMerge"] += 1
                    self._drop(seg, "TCP_OFOMERGE")
                    self._sack_new_ofo(seq, end)
                    return
        r = RxSeg(skb, seq, end, seg.data, bool(seg.flags & FIN))
        self._charge_rx(r)
        self.ofo.insert(i, r)
        if proto.st.rx_trace_hooks:
            proto.st.rx_trace(skb.data, "queued:" + self.owner)
        self.ofo_seqs.insert(i, seq)
        # drop the ones it covers entirely
        k = i + 1
        while k < len(self.ofo) and not after(self.ofo[k].end_seq, end):
            old = self.ofo.pop(k)
            self.ofo_seqs.pop(k)
            ext["TCPOFOMerge"] += 1
            self._drop_rx(old, "TCP_OFOMERGE")
        self._sack_new_ofo(seq, end)

    def _ofo_queue(self, now: float) -> None:
        """tcp_ofo_queue: move what became in order to the receive queue."""
        while self.ofo and not after(self.ofo[0].seq, self.rcv_nxt):
            r = self.ofo.pop(0)
            self.ofo_seqs.pop(0)
            if not after(r.end_seq, self.rcv_nxt):
                self._drop_rx(r, "TCP_OFOMERGE")
                continue
            off = (self.rcv_nxt - r.seq) & MASK
            r.data = r.data[off:]
            r.seq = self.rcv_nxt
            self.receive_queue.append(r)
            self.rcv_nxt = r.end_seq
            self.counters["bytes_received"] += len(r.data)
            if r.fin:
                self._fin(now)
                break

    def _try_rmem_schedule(self, skb, length: int, seq: int) -> bool:
        """tcp_try_rmem_schedule: True when the segment (``length`` bytes at ``seq``) does
        NOT fit after pruning."""
        if self._can_ingest(length) and self._rmem_schedule(skb):
            return False
        if self._prune_queue(seq, length) < 0:
            return True
        while not self._rmem_schedule(skb):
            if not self._prune_ofo_queue(seq, length):
                return True
        return False

    def _can_ingest(self, length: int) -> bool:
        """tcp_can_ingest (6.16+): rmem_alloc + len <= rcvbuf -- pfmemalloc or not."""
        return self.rmem_alloc + length <= self.rcvbuf

    def _rmem_schedule(self, skb) -> bool:
        """sk_rmem_schedule: the protocol-wide limit, waived for a pfmemalloc buffer
        (__sk_rmem_schedule; it only reaches a SOCK_MEMALLOC socket)."""
        proto = self.proto
        if not proto.over_hard_limit(skb.truesize):
            return True
        return bool(skb.pfmemalloc)

    def _prune_queue(self, in_seq: int, length: int) -> int:
        """tcp_prune_queue: PruneCalled; collapse; prune the OFO queue; RcvPruned."""
        ext = self.proto.ext
        ext["PruneCalled"] += 1
        if not self._can_ingest(length):
            self.rcv_ssthresh = min(self.rcv_ssthresh, 4 * self.advmss)   # tcp_clamp_window
        elif self.proto.memory_pressure:
            self.rcv_ssthresh = min(self.rcv_ssthresh, 4 * self.advmss)
        if self._can_ingest(length):
            return 0
        self._collapse()
        if self._can_ingest(length):
            return 0
        self._prune_ofo_queue(in_seq, length)
        if self._can_ingest(length):
            return 0
        ext["RcvPruned"] += 1
        return -1

    def _collapse(self) -> None:
        """tcp_collapse on the receive queue: copy runs of unread bytes into compact buffers
        (GFP_ATOMIC), freeing the originals (TCPRcvCollapsed per buffer freed). Only when it
        saves pages."""
        rq = self.receive_queue
        if len(rq) < 2:
            return
        total = sum(len(r.data) for r in rq)
        fin = rq[-1].fin
        need = _pages_for(total)
        have = sum(len(r.skb.pages) for r in rq)
        if need >= have:
            return
        pages = self.alloc.alloc(need, _GFP_ATOMIC, self.owner)
        if pages is None:
            return
        buf = b"".join(bytes(r.data) for r in rq)
        nskb = SkBuff(self.alloc, buf, pages, True)
        seq = rq[0].seq
        end = rq[-1].end_seq
        n = 0
        while rq:
            r = rq.popleft()
            self._uncharge_rx(r)
            # the collapsed buffer stands for these frames: counted consumed here
            self.stack.consume_skb(r.skb, "tcp_collapse")
            n += 1
        self.proto.ext["TCPRcvCollapsed"] += n
        nskb.rx = False                            # a copy, not a received frame
        nr = RxSeg(nskb, seq, end, memoryview(buf), fin)
        self.rmem_alloc += nskb.truesize
        self.proto._mem_charge(nskb.truesize)
        rq.append(nr)

    def _prune_ofo_queue(self, in_seq: int, length: int) -> bool:
        """tcp_prune_ofo_queue: drop from the highest sequence down, in rcvbuf/8 steps, never
        what lies below where the incoming segment would land (OfoPruned once per call that
        dropped something)."""
        if not self.ofo:
            return False
        goal = self.rcvbuf >> 3
        pruned = False
        while self.ofo:
            r = self.ofo[-1]
            if after(in_seq, r.seq):
                break
            self.ofo.pop()
            self.ofo_seqs.pop()
            goal -= r.skb.truesize
            self._drop_rx(r, "TCP_OFO_QUEUE_PRUNE")
            pruned = True
            if goal <= 0:
                if self._can_ingest(length) and not self.proto.memory_pressure:
                    break
                goal = self.rcvbuf >> 3
        if pruned:
            self.proto.ext["OfoPruned"] += 1
            if self.sack_ok:
                self.selective_acks = []
        return pruned

    def _fin(self, now: float) -> None:
        """tcp_fin: the peer's FIN reached rcv_nxt."""
        self.rcv_shutdown = True
        st = self.state
        self.quick = max(self.quick, 1)
        if st in (SYN_RECV, ESTABLISHED):
            self._set_state(CLOSE_WAIT)
            self.pingpong = 1
        elif st == FIN_WAIT1:
            self._set_state(CLOSING)                 # simultaneous close
        elif st == FIN_WAIT2:
            self.send_ack(now)
            self._time_wait(now)
        self._purge_ofo("TCP_OFO_DROP") if self.ofo else None
        self.selective_acks = []
        self.ack_pending = True
        self.proto.wake(self.wait_key)

    def _time_wait(self, now: float) -> None:
        """tcp_time_wait(sk, TCP_TIME_WAIT, 0): a ``TimewaitSock`` takes the socket's place in the
        ehash and its port for TCP_TIMEWAIT_LEN (TW counted as it is scheduled), then tcp_done:
        the socket is CLOSE and out of the tables. An orphan (SOCK_DEAD) is destroyed at once
        (inet_csk_destroy_sock: receive, out-of-order and write queues back to the pool); an
        owner that has not closed keeps its socket, and what it has not read yet, until
        close() (tcp_close in CLOSE frees the rest without a RST)."""
        TimewaitSock(self, now, TCP_TIMEWAIT_LEN)
        self._done()

    # -- SACK blocks we send (RFC 2018 §4) ----------------------------------------------
    def _sack_new_ofo(self, seq: int, end: int) -> None:
        if not self.sack_ok:
            return
        blocks = self.selective_acks
        merged = [seq, end]
        keep = []
        for b in blocks:
            if not after(b[0], merged[1]) and not after(merged[0], b[1]):
                merged = [b[0] if before(b[0], merged[0]) else merged[0],
                          b[1] if after(b[1], merged[1]) else merged[1]]
            else:
                keep.append(b)
        self.selective_acks = ([merged] + keep)[:4]

    def _sack_remove(self) -> None:
        self.selective_acks = [b for b in self.selective_acks if after(b[1], self.rcv_nxt)]

    # -- delayed ACK ----------------------------------------------------------------------
    def _incr_quickack(self) -> None:
        """tcp_incr_quickack: up to rcv_wnd/(2*rcv_mss) quick ACKs, at most 16."""
        q = self.rcv_wnd // (2 * max(self.rcv_mss, 1))
        q = min(max(q, 2), TCP_MAX_QUICKACKS)
        if q > self.quick:
            self.quick = q

    def _enter_quickack_mode(self) -> None:
        self._incr_quickack()
        self.pingpong = 0
        self.ato = TCP_ATO_MIN

    def _event_data_recv(self, now: float) -> None:
        """tcp_event_data_recv: adapt ato to the inter-arrival time."""
        if not self.ato:
            self._incr_quickack()
            self.ato = TCP_ATO_MIN
        else:
            m = now - self.lrcvtime
            if m <= TCP_ATO_MIN / 2:
                self.ato = self.ato / 2 + TCP_ATO_MIN / 2
            elif m < self.ato:
                self.ato = self.ato / 2 + m
                if self.ato > self.rto:
                    self.ato = self.rto
            elif m > self.rto:
                self._incr_quickack()
        self.lrcvtime = now
        self.ack_pending = True
        # tcp_grow_window: widen the offer while memory allows
        full = self._full_space()
        if self.rcv_ssthresh < full and not self.proto.memory_pressure and \
                self._win_from_space(self.rcvbuf - self.rmem_alloc) > self.rcv_ssthresh:
            self.rcv_ssthresh = min(self.rcv_ssthresh + 2 * self.advmss, full)

    def _ack_snd_check(self, now: float) -> None:
        """__tcp_ack_snd_check: ACK now (a full MSS unacked and the window keeps up, quickack
        mode, OFO data, memory trouble) or arm the delayed ACK."""
        if not self.ack_pending or self.state in (CLOSE, LISTEN, SYN_SENT, TIME_WAIT):
            self._ack_now = False
            return
        now_flag = getattr(self, "_ack_now", False)
        self._ack_now = False
        if (now_flag or (((self.rcv_nxt - self.rcv_wup) & MASK) > self.rcv_mss
                         and self._select_window_raw() >= self.rcv_wnd)
                or (self.quick and not self.pingpong) or self.ofo):
            self.send_ack(now)
            return
        self._send_delayed_ack(now)

    def _send_delayed_ack(self, now: float) -> None:
        """tcp_send_delayed_ack: ato capped by TCP_DELACK_MAX (pingpong) or HZ/2, and by
        srtt; an already-armed timer about to fire means ACK now."""
        ato = self.ato or TCP_ATO_MIN
        if ato > TCP_DELACK_MIN:
            max_ato = TCP_DELACK_MAX if self.pingpong else 0.5
            if self.srtt_us:
                rtt = max((self.srtt_us >> 3) / 1e6, TCP_DELACK_MIN)
                if rtt < max_ato:
                    max_ato = rtt
            ato = min(ato, max_ato)
        timeout = now + ato
        if self.t_delack is not None:
            if self.t_delack <= now + ato / 4:
                self.send_ack(now)
                return
            if timeout > self.t_delack:
                timeout = self.t_delack
        self._reset_delack_timer(timeout)

    def _cleanup_rbuf(self, copied: int, now: float) -> None:
        """tcp_cleanup_rbuf: after a read, ACK if the window can now grow a lot."""
        if self.state in (CLOSE, LISTEN, SYN_SENT, TIME_WAIT):
            return
        time_to_ack = self.ack_pending and (self.quick or self.t_delack is None)
        if not time_to_ack and not self.rcv_shutdown:
            cur = self._receive_window()
            if 2 * cur <= self._full_space():
                new = self._select_window_raw()
                if new and new >= 2 * cur:
                    time_to_ack = True
        if time_to_ack:
            self.send_ack(now)

    # ================================================================ observation
    def snapshot(self) -> dict:
        """ss -tinm: state, queues, skmem and tcp_info fields."""
        recv_q = sum(len(r.data) for r in self.receive_queue)
        send_q = (self.write_seq - self.snd_una) & MASK if self.state not in (LISTEN, CLOSE) \
            else 0
        if self.state == LISTEN:
            recv_q, send_q = len(self.accept_queue), self.max_ack_backlog
        return {
            "state": SS_NAMES[self.state],
            "local": self.getsockname(),
            "peer": self.getpeername() if self.rport else None,
            "recv_q": recv_q, "send_q": send_q,
            "memalloc": self.memalloc,
            "skmem": {"r": self.rmem_alloc, "rb": self.rcvbuf, "t": 0, "tb": self._sndbuf(),
                      "f": 0, "w": self.wmem_queued, "o": 0, "bl": self.backlog_len,
                      "d": self.drops},
            "rto_ms": round(self.rto * 1000), "backoff": self.backoff,
            "rtt_ms": round((self.srtt_us >> 3) / 1000, 3),
            "rttvar_ms": round(self.rttvar_us / 4000, 3) if self.rttvar_us else 0,
            "mss": self.mss_cache, "rcvmss": self.rcv_mss, "advmss": self.advmss,
            "cwnd": self.snd_cwnd, "ssthresh": self.snd_ssthresh
            if self.snd_ssthresh < 0x7FFFFFFF else None,
            "ca_state": CA_NAMES[self.ca_state],
            "wscale": (self.snd_wscale, self.rcv_wscale) if self.wscale_ok else None,
            "ts": self.tstamp_ok, "sack": self.sack_ok,
            "snd_wnd": self.snd_wnd, "rcv_wnd": self.rcv_wnd,
            "unacked": self.packets_out, "retrans": f"{self.retrans_out}/{self.total_retrans}",
            "lost": self.lost_out, "sacked": self.sacked_out,
            "ofo_queue": len(self.ofo), "owner": self.owner,
            "syn_recv": len(self.reqs),
            **self.counters,
        }


# ================================================================================ requests
class RequestSock:
    """A request socket (struct tcp_request_sock, TCP_NEW_SYN_RECV): what a listener keeps for
    a SYN until the handshake's ACK -- no buffers, no queues; its SYN-ACK is rebuilt for each
    (re)transmission at GFP_ATOMIC and freed once sent. Hashed in ``Tcp.ehash`` under the
    4-tuple and counted in the listener's ``reqs`` (the SYN queue); its timer retransmits the
    SYN-ACK (reqsk_timer_handler) and drops it after tcp_synack_retries."""

    __slots__ = ("listener", "proto", "key", "rip", "rport", "irs", "iss", "ts_off", "opts",
                 "syn_window", "ts_recent", "ts_recent_stamp", "wscale_ok", "rcv_wscale",
                 "sack_ok", "tstamp_ok", "advmss", "rcv_wnd", "num_timeout", "num_retrans",
                 "snt_synack", "acked", "last_oow", "timer")

    def __init__(self, listener: TcpSock, seg: Seg, now: float) -> None:
        proto = listener.proto
        st = proto.st
        self.listener = listener
        self.proto = proto
        self.rip, self.rport = seg.src, seg.sport
        self.key = (listener.lport, seg.src, seg.sport)
        self.irs = seg.seq
        # a SYN that reopened a TIME_WAIT pair starts above the old sequence space (tcp_tw_isn)
        self.iss = proto.tcp_tw_isn or proto.secure_tcp_seq(st.ip, seg.src, listener.lport,
                                                            seg.sport, now)
        self.ts_off = proto.secure_tcp_ts_off(st.ip, seg.src)
        o = seg.opts if seg.opts is not None else parse_options(b"", True)
        self.opts = o
        self.syn_window = seg.window                 # a SYN's window is never scaled
        self.wscale_ok = o.wscale >= 0
        self.rcv_wscale = TCP_RCV_WSCALE if self.wscale_ok else 0
        self.sack_ok = o.sack_ok
        self.tstamp_ok = o.saw_tstamp
        self.ts_recent = o.tsval if o.saw_tstamp else 0
        self.ts_recent_stamp = now
        self.advmss = st.dev.mtu - 40
        self.rcv_wnd = tcp_select_initial_window(listener._win_from_space(listener.rcvbuf),
                                                 self.advmss)
        self.num_timeout = 0
        self.num_retrans = 0
        self.snt_synack = None
        self.acked = False
        self.last_oow = -1e9
        self.timer = Timer(self._timer_fire, "tcp-reqsk")
        proto.ehash[self.key] = self                 # inet_csk_reqsk_queue_hash_add
        listener.reqs[self.key] = self
        listener.reqs_young += 1
        proto.reqsk_mem += REQSK_SIZE

    state = SYN_RECV

    def drop(self) -> None:
        """inet_csk_reqsk_queue_drop: out of the hash and the SYN queue, timer stopped."""
        proto = self.proto
        ln = self.listener
        if proto.ehash.get(self.key) is self:
            del proto.ehash[self.key]
        if ln.reqs.pop(self.key, None) is not None:
            if self.num_timeout == 0:
                ln.reqs_young -= 1
            proto.reqsk_mem -= REQSK_SIZE
        proto.st.timers.del_timer(self.timer)

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self.ts_off) & MASK

    def send_synack(self, now: float) -> int:
        """tcp_v4_send_synack: one SYN-ACK built at GFP_ATOMIC (0 or -errno)."""
        proto = self.proto
        st = proto.st
        opts = opt_syn(self.advmss, self.rcv_wscale if self.wscale_ok else None, self.sack_ok,
                       (self._ts_now(now), self.ts_recent) if self.tstamp_ok else None)
        out = emit(st.ip, self.rip, self.listener.lport, self.rport, self.iss,
                   (self.irs + 1) & MASK, SYN | ACK, min(self.rcv_wnd, 65535), opts,
                   csum_partial=st.tx_csum_tcp)
        rc = proto.ip_output(self.rip, out, now, _GFP_ATOMIC, self.listener.owner)
        if rc >= 0:
            proto.mib["OutSegs"] += 1
            if self.snt_synack is None:
                self.snt_synack = now
        return rc

    def _send_ack(self, now: float) -> None:
        """tcp_v4_reqsk_send_ack: an out-of-window segment is answered with an ACK."""
        proto = self.proto
        st = proto.st
        ts = (self._ts_now(now), self.ts_recent) if self.tstamp_ok else None
        out = emit(st.ip, self.rip, self.listener.lport, self.rport, (self.iss + 1) & MASK,
                   (self.irs + 1) & MASK, ACK, min(self.rcv_wnd >> self.rcv_wscale, 65535),
                   opt_established(ts, None) if ts else b"", csum_partial=st.tx_csum_tcp)
        if proto.ip_output(self.rip, out, now, _GFP_ATOMIC, self.listener.owner) >= 0:
            proto.mib["OutSegs"] += 1

    def _oow_rate_limited(self, now: float) -> bool:
        if now - self.last_oow < TCP_OOW_RATELIMIT:
            return True
        self.last_oow = now
        return False

    def _timer_fire(self, now: float) -> None:
        """reqsk_timer_handler: retransmit the SYN-ACK or give up. When more than half the
        queue (at least 8) is taken, requests that already timed out get fewer retries, so
        young ones keep half the room."""
        ln = self.listener
        if ln.state != LISTEN:
            self.drop()
            return
        self.proto.ext["TCPTimeouts"] += 1           # tcp_syn_ack_timeout
        max_retries = TCP_SYNACK_RETRIES
        qlen = len(ln.reqs)
        if (qlen << 1) > max(8, ln.max_ack_backlog):
            young = ln.reqs_young << 1
            while max_retries > 2:
                if qlen < young:
                    break
                max_retries -= 1
                young <<= 1
        if self.num_timeout < max_retries:
            ok = self.send_synack(now) >= 0          # inet_rtx_syn_ack
            if ok:
                self.num_retrans += 1
                self.proto.mib["RetransSegs"] += 1
                self.proto.ext["TCPSynRetrans"] += 1
            if ok or self.acked:
                if self.num_timeout == 0:
                    ln.reqs_young -= 1
                self.num_timeout += 1
                self.proto.st.timers.mod_timer(
                    self.timer, now + min(TCP_TIMEOUT_INIT * (1 << self.num_timeout),
                                          TCP_RTO_MAX))
                return
        self.drop()

    def tcp_check_req(self, seg: Seg, now: float) -> bool:
        """tcp_check_req: True if the segment was handled here (consumed or dropped); False
        if the listener must answer it (an ACK that does not acknowledge our SYN-ACK). A valid
        ACK makes the child (tcp_v4_syn_recv_sock) unless the accept queue is full."""
        ln = self.listener
        proto = self.proto
        st = proto.st
        f = seg.flags
        o = seg.opts
        if seg.seq == self.irs and f == SYN:
            # the peer retransmitted its SYN: the SYN-ACK again, the timer restarted
            if not self._oow_rate_limited(now) and self.send_synack(now) >= 0:
                self.num_retrans += 1
                proto.mib["RetransSegs"] += 1
                proto.ext["TCPSynRetrans"] += 1
            st.timers.mod_timer(self.timer, now + min(TCP_TIMEOUT_INIT * (1 << self.num_timeout),
                                                     TCP_RTO_MAX))
            st.consume_skb(seg.skb, "tcp")
            return True
        if f & ACK and seg.ack_seq != (self.iss + 1) & MASK:
            return False
        rcv_nxt = (self.irs + 1) & MASK
        win_end = (rcv_nxt + self.rcv_wnd) & MASK
        if not (seg.seq == rcv_nxt or (after(seg.end_seq, rcv_nxt) and before(seg.seq, win_end))
                or (seg.seq == win_end and seg.seq == seg.end_seq)):
            if not f & RST and not self._oow_rate_limited(now):
                self._send_ack(now)
            st.kfree_skb(seg.skb, "TCP_INVALID_SEQUENCE")
            return True
        if o is not None and o.saw_tstamp and self.tstamp_ok and not after(seg.seq, rcv_nxt):
            self.ts_recent = o.tsval
            self.ts_recent_stamp = now
        if f & (RST | SYN):
            proto.mib["AttemptFails"] += 1
            if not f & RST:
                proto.send_reset(seg, seg.src, now)
            self.drop()
            proto.ext["EmbryonicRsts"] += 1
            st.kfree_skb(seg.skb, "TCP_RESET" if f & RST else "TCP_INVALID_SYN")
            return True
        if not f & ACK:
            st.kfree_skb(seg.skb, "TCP_FLAGS")
            return True
        if ln.sk_acceptq_is_full():
            # tcp_v4_syn_recv_sock -> exit_overflow; tcp_abort_on_overflow=0: keep the
            # request, ignore the ACK, let the SYN-ACK timer make the peer send it again
            proto.ext["ListenOverflows"] += 1
            proto.ext["ListenDrops"] += 1
            ln.drops += 1
            self.acked = True
            st.kfree_skb(seg.skb, "TCP_LISTEN_OVERFLOW")
            return True
        child = self._create_child(now)
        child.tcp_rcv(seg, now)                       # tcp_child_process: SYN_RECV -> ESTAB
        proto.wake(ln.wait_key)
        return True

    def _create_child(self, now: float) -> TcpSock:
        """tcp_v4_syn_recv_sock -> tcp_create_openreq_child: a full socket in SYN_RECV past
        our SYN (snd_una = ISS + 1), put on the accept queue (inet_csk_reqsk_queue_add)."""
        ln = self.listener
        proto = self.proto
        self.drop()
        child = proto.socket()
        child.parent = ln
        child.dead = True                            # an orphan until accept()
        child.lport = ln.lport
        child.owner = f"sk:tcp:{_pysocket.inet_ntoa(proto.st.ip)}:{ln.lport}:" \
                      f"{_pysocket.inet_ntoa(self.rip)}:{self.rport}"
        child.rip, child.rport = self.rip, self.rport
        child.nodelay = ln.nodelay
        child.rcvbuf, child.sndbuf = ln.rcvbuf, ln.sndbuf
        child.hashed = self.key
        proto.ehash[self.key] = child
        child._init_conn(now)
        child.irs = self.irs
        child.rcv_nxt = child.rcv_wup = child.copied_seq = (self.irs + 1) & MASK
        child._apply_syn_options(self.opts, self.ts_recent_stamp)
        child.ts_recent, child.ts_recent_stamp = self.ts_recent, self.ts_recent_stamp
        child.snd_wnd = child.max_window = self.syn_window
        child.snd_wl1 = self.irs
        child.iss = self.iss
        child.ts_off = self.ts_off
        child.snd_una = child.snd_nxt = child.write_seq = (self.iss + 1) & MASK
        child.rcv_wnd = child.rcv_ssthresh = self.rcv_wnd
        child.retransmits = self.num_retrans
        child.total_retrans = self.num_retrans
        child.state = SYN_RECV
        if self.num_retrans == 0 and self.snt_synack is not None:
            child._rtt_sample(now - self.snt_synack, now)   # tcp_synack_rtt_meas (Karn)
        proto.mib["PassiveOpens"] += 1
        ln.accept_queue.append(child)
        return child


def tcp_init(st, seed: int = 0) -> Tcp:
    """Give ``st`` its TCP (``st.tcp``) and register it: inet_protos[IPPROTO_TCP], the
    received buffers its sockets hold (``rx_holders``). Timers live on ``st.timers``."""
    tcp = st.tcp = Tcp(st, seed)
    st.inet_add_protocol(IPPROTO_TCP, tcp.tcp_v4_rcv)
    st.rx_holders.append(tcp.rx_in_flight)
    return tcp
