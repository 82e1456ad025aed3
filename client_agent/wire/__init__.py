"""Wire formats: packet views over bytes, their validated meaning, and encoders.

Invariant: nothing here allocates pool memory, keeps state, or knows about sockets; a parser
either returns a view whose fields are within the buffer or raises :class:`WireError` whose
``reason`` is the Linux ``SKB_DROP_REASON_*`` suffix the stack counts the frame under.
"""

from .errors import WireError

__all__ = ["WireError"]
