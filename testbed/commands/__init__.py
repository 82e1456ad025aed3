"""One module per `testbed` subcommand, each with ``register(subparsers)``; see testbed/cli.py."""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

DEFAULT_RUN_NAME = "default"


@contextlib.contextmanager
def known_errors() -> Iterator[None]:
    """Turn the errors netns_setup raises for known situations into one-line UserErrors."""
    from netns_setup.capture import CaptureError
    from netns_setup.lifecycle import TeardownError, TopologyUpError
    from netns_setup.nsutil import NetnsError
    from netns_setup.process import ProcessStartError
    from netns_setup.state import StateError
    from netns_setup.topology import TopologyError

    from testbed.cli import UserError

    try:
        yield
    except (TopologyError, TopologyUpError, TeardownError, StateError, NetnsError, ProcessStartError, CaptureError) as e:
        raise UserError(str(e)) from None
    except PermissionError as e:
        raise UserError(f"{e}; the testbed needs root for namespaces: run it with sudo (see `testbed doctor`)") from None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a command creates objects, SIGTERM unwinds like Ctrl-C, so what it made is removed."""
    def handler(_sig, _frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def add_name_arg(p) -> None:
    p.add_argument("--name", default=DEFAULT_RUN_NAME,
                   help=f"run name: two topologies with different names coexist (default: {DEFAULT_RUN_NAME})")
