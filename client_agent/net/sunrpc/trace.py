"""RPC reply tracing for the drop explanations: what became, inside the agent, of every frame from
an RPC server's port, over UDP or TCP (an observer hooked into the stack's ``rx_trace_hooks``, as
drop_monitor or a kfree_skb tracepoint would be; testbed/explain.py reads the record).

Invariants owned here:
- The tracer only observes: it never changes a frame's fate and allocates from no pool.
- It records ``(ip_id, xid, fate)`` -- fate a drop reason (``NOMEM`` for a frame that never got a
  buffer) or ``queued:<socket>`` -- in a ring of the last ``FATE_RING`` records. It reads the bytes
  of the frame as the device handed them over (Ethernet + IPv4 + UDP/TCP + payload).
- UDP: one record per first fragment of a datagram from ``port``, the xid at the UDP payload's
  start.
- TCP: one record per segment from ``port`` that carries the start of an RPC record (its xid and
  msg_type: RFC 5531 §11 record marking), found by walking each connection's stream from its SYN
  in sequence order (``protocols.rpc.RecordXidScanner``: segment boundaries are not record
  boundaries; retransmitted and duplicated segments are recorded again with their own fate;
  out-of-order ones once the hole is filled). A frame seen twice (queued, then pruned) is recorded
  twice; the later record is its final fate. Segments of a connection whose SYN-ACK the tracer
  did not see carry no record.
- One tracer per (stack, port): ``reply_trace(stack, port)`` installs it once and returns it.
"""

from __future__ import annotations

from collections import deque

from protocols.rpc import REPLY, RecordXidScanner

FATE_RING = 32768                    # fates of the server's frames kept for the drop explanations
MAX_FLOWS = 64                       # TCP connections from the server tracked at once (oldest go)
_SYN, _RST = 0x02, 0x04


class RpcReplyTrace:
    def __init__(self, port: int) -> None:
        self.port = port
        self.fates: deque = deque(maxlen=FATE_RING)
        self.flows: dict[tuple, RecordXidScanner] = {}

    def __call__(self, frame, fate: str) -> None:
        if len(frame) < 42 or frame[12] != 8 or frame[13] != 0:
            return
        ihl = (frame[14] & 15) * 4
        proto = frame[23]
        u = 14 + ihl
        if proto == 17:
            if (frame[20] & 0x1F) or frame[21] or len(frame) < u + 12:
                return
            if (frame[u] << 8 | frame[u + 1]) != self.port:
                return
            self.fates.append((frame[18] << 8 | frame[19], int.from_bytes(frame[u + 8:u + 12], "big"),
                               fate))
        elif proto == 6:
            self._tcp(frame, u, fate)

    def _tcp(self, frame, u: int, fate: str) -> None:
        if len(frame) < u + 20 or (frame[u] << 8 | frame[u + 1]) != self.port:
            return
        total = frame[16] << 8 | frame[17]
        doff = (frame[u + 12] >> 4) * 4
        flags = frame[u + 13]
        end = min(len(frame), 14 + total)
        if doff < 20 or u + doff > end:
            return
        key = (bytes(frame[26:30]), frame[u + 2] << 8 | frame[u + 3])
        seq = int.from_bytes(frame[u + 4:u + 8], "big")
        sc = self.flows.get(key)
        if flags & _SYN:
            if sc is not None and sc.isn == (seq + 1) & 0xFFFFFFFF:
                return                              # a retransmitted SYN-ACK: same stream
            if sc is None:
                if len(self.flows) >= MAX_FLOWS:
                    del self.flows[next(iter(self.flows))]
                sc = self.flows[key] = RecordXidScanner()
            sc.syn(seq)
            return
        if sc is None:
            return
        tag = (frame[18] << 8 | frame[19], fate)     # an out-of-order segment reports later
        for (ip_id, f), xid, mtype in sc.segment(seq, memoryview(frame)[u + doff:end], tag):
            if mtype == REPLY:
                self.fates.append((ip_id, xid, f))


def reply_trace(stack, port: int) -> RpcReplyTrace:
    """The tracer of replies from ``port`` on ``stack``, installed on first use."""
    for hook in stack.rx_trace_hooks:
        if isinstance(hook, RpcReplyTrace) and hook.port == port:
            return hook
    t = RpcReplyTrace(port)
    stack.rx_trace_hooks.append(t)
    return t
