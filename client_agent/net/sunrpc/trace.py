"""RPC reply tracing for the drop explanations: what became, inside the agent, of every frame from
an RPC server's UDP port (an observer hooked into the stack's ``rx_trace_hooks``, as drop_monitor
or a kfree_skb tracepoint would be; testbed/explain.py reads the record).

Invariants owned here:
- The tracer only observes: it never changes a frame's fate and allocates from no pool.
- It records ``(ip_id, xid, fate)`` for the first fragment of every UDP datagram from
  ``port`` -- fate a drop reason (``NOMEM`` for a frame that never got a buffer) or
  ``queued:<socket>`` -- in a ring of the last ``FATE_RING`` frames. It reads the bytes of the
  frame as the device handed them over (Ethernet + IPv4 + UDP + the RPC xid).
- One tracer per (stack, port): ``reply_trace(stack, port)`` installs it once and returns it.
"""

from __future__ import annotations

from collections import deque

FATE_RING = 32768                    # fates of the server's frames kept for the drop explanations


class RpcReplyTrace:
    def __init__(self, port: int) -> None:
        self.port = port
        self.fates: deque = deque(maxlen=FATE_RING)

    def __call__(self, frame, fate: str) -> None:
        if len(frame) < 46 or frame[12] != 8 or frame[13] != 0:
            return
        ihl = (frame[14] & 15) * 4
        if frame[23] != 17 or (frame[20] & 0x1F) or frame[21] or len(frame) < 14 + ihl + 12:
            return
        u = 14 + ihl
        if (frame[u] << 8 | frame[u + 1]) != self.port:
            return
        self.fates.append((frame[18] << 8 | frame[19], int.from_bytes(frame[u + 8:u + 12], "big"),
                           fate))


def reply_trace(stack, port: int) -> RpcReplyTrace:
    """The tracer of replies from ``port`` on ``stack``, installed on first use."""
    for hook in stack.rx_trace_hooks:
        if isinstance(hook, RpcReplyTrace) and hook.port == port:
            return hook
    t = RpcReplyTrace(port)
    stack.rx_trace_hooks.append(t)
    return t
