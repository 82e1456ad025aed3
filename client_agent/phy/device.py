"""The Device interface every phy implements (smoltcp's ``phy::Device``, reduced to frames).

Invariant: a device never allocates from the agent's page pool and never reads a clock: time is
passed in. ``receive(now, budget)`` returns at most ``budget`` frames that are due at ``now``;
``poll_at()`` says when the next held frame becomes due (None: nothing held), so the loop can
sleep exactly that long. ``transmit`` copies the frame out (the caller may free its buffer as
soon as it returns) and returns False when the frame could not be sent.

A ``receive`` item is either ``bytes`` or ``(bytes, csum_unnecessary)`` (AfPacketDevice reports
frames whose checksum the sending kernel left unfinished); the stack accepts both.
"""

from __future__ import annotations


class Device:
    mtu: int = 1500
    mac: bytes = b"\x02\x00\x00\x00\x00\x01"

    def transmit(self, frame: bytes, now: float) -> bool:   # pragma: no cover - interface
        raise NotImplementedError

    def receive(self, now: float, budget: int) -> list:      # pragma: no cover - interface
        raise NotImplementedError

    def poll_at(self) -> float | None:
        return None


class ForwardsOnRx:
    """For a wrapper device (``self.inner``) on an in-memory wire: the wrapped device's receive
    notification (``on_rx``) is the wrapper's, so a loop that hooks the wrapper hears the wire."""

    @property
    def on_rx(self):
        return self.inner.on_rx

    @on_rx.setter
    def on_rx(self, fn) -> None:
        self.inner.on_rx = fn
