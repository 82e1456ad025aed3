"""The one error a wire parser raises: bad bytes from the peer, named by its drop reason."""


class WireError(ValueError):
    """The peer sent bytes that do not parse. ``reason`` is an ``SKB_DROP_REASON_*`` suffix."""

    __slots__ = ("reason",)

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
