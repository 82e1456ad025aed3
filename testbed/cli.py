"""The `testbed` command. argparse lives here; each subcommand is a typed function elsewhere.

Adding a subcommand: write ``testbed/commands/<name>.py`` with ``register(subparsers)`` (which adds
its parser and sets ``func``), and add ``<name>`` to ``COMMANDS`` below. A command raises
``UserError`` for a known failure: printed as one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

# Order is the order of `testbed --help`.
COMMANDS = ("doctor", "up", "status", "down", "clean", "capture", "run", "demo", "stat", "bench", "chaos", "soak")


class UserError(Exception):
    """A known failure: printed as one line on stderr, exit status 2, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``testbed run: <what>; [did you mean X?] see `testbed run --help```
    (a bad choice gets the closest valid one, difflib.get_close_matches). Subparsers inherit it."""

    def error(self, message: str):
        import re

        from testbed.scenario import did_you_mean
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        hint = did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2))) if m else ""
        self.exit(2, f"{self.prog}: {message}{hint or ';'} see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="testbed", description="Network-storage memory-deadlock testbed.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"testbed.commands.{name}").register(sub)
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a supervisor, `timeout`, a bench stopping a demo) unwinds like Ctrl-C, so every
        # command's finally blocks tear down the namespaces and processes it made.
        old_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


if __name__ == "__main__":
    # `python -m testbed.cli`: run the imported module's main, so that `UserError` raised by the
    # commands (which import testbed.cli) is the same class that main() catches.
    from testbed.cli import main as _main

    sys.exit(_main())
