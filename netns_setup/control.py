"""The control protocol every testbed service (client agent, NAS, flood) speaks.

Invariant owned here: the runner talks to a service only over a Unix stream socket in the run
directory -- never over the test link, so control traffic never shows in a capture or a counter.

Wire format: newline-delimited JSON. A request is one object with an ``op`` (string) and any
arguments; the reply is one object, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "what happened, with which values, and what to do"}``. Requests on one
connection are answered in order. Every service answers at least:

- ``snapshot``: the service's whole observable state (counters named as Linux names them);
- ``set``: change a setting or policy switch (``{"op": "set", "key": ..., "value": ...}``);
- ``shutdown``: stop, replying first with a final summary.

Readiness: a service started by the runner gets ``--ready-fd N`` and writes one byte to it once it
is listening (control socket included), so the runner never sleeps waiting for it.

The server side is loop-agnostic: ``ControlServer.attach(selector)`` registers its sockets with a
``selectors`` selector, using as ``data`` a callable ``on_ready(mask)``; a service's event loop calls
``key.data(key.events)`` for every ready key. Handlers run on that loop's thread.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
from typing import Any, Callable

MAX_LINE_BYTES = 1 << 20  # a request longer than this is a client bug: the connection is closed

Handler = Callable[[dict], Any]


class ControlError(Exception):
    """A control request failed: the service said why, or it could not be reached."""


class BadRequest(Exception):
    """Raised by a handler for a request it refuses; the message goes back to the caller."""


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler]):
        self.path = path
        self.handlers = dict(handlers)
        self.requests = 0
        self.errors = 0
        if os.path.exists(path):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        os.chmod(path, 0o600)
        self._listener.listen(8)
        self._listener.setblocking(False)
        self._conns: dict[socket.socket, bytearray] = {}
        self._selector: selectors.BaseSelector | None = None
        self.closing = False  # set once a shutdown request has been answered

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    def close(self) -> None:
        for conn in list(self._conns):
            self._drop(conn)
        if self._selector is not None:
            try:
                self._selector.unregister(self._listener)
            except (KeyError, ValueError):
                pass
        self._listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- selector callbacks -------------------------------------------------------------
    def _on_accept(self, _mask: int) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._conns[conn] = bytearray()
        assert self._selector is not None
        self._selector.register(conn, selectors.EVENT_READ, lambda m, c=conn: self._on_read(c))

    def _drop(self, conn: socket.socket) -> None:
        self._conns.pop(conn, None)
        if self._selector is not None:
            try:
                self._selector.unregister(conn)
            except (KeyError, ValueError):
                pass
        conn.close()

    def _on_read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self._conns[conn]
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_LINE_BYTES:
                    self._reply(conn, {"ok": False, "error": f"request longer than {MAX_LINE_BYTES} bytes"})
                    self._drop(conn)
                return
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            self._reply(conn, self.dispatch(line))

    def _reply(self, conn: socket.socket, reply: dict) -> None:
        data = (json.dumps(reply, default=_json_default) + "\n").encode()
        # Replies are small and the peer is blocked reading: a blocking send is fine and keeps order.
        conn.setblocking(True)
        try:
            conn.sendall(data)
        except OSError:
            self._drop(conn)
            return
        finally:
            if conn.fileno() >= 0:
                conn.setblocking(False)

    # -- dispatch (pure, testable without sockets) -----------------------------------------
    def dispatch(self, line: bytes) -> dict:
        self.requests += 1
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self.errors += 1
            return {"ok": False, "error": f"request is not JSON ({e}); send one JSON object per line"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            self.errors += 1
            return {"ok": False, "error": 'request must be a JSON object with a string "op"'}
        handler = self.handlers.get(req["op"])
        if handler is None:
            self.errors += 1
            return {"ok": False, "error": f"unknown op {req['op']!r}; this service answers: {', '.join(sorted(self.handlers))}"}
        try:
            result = handler(req)
        except BadRequest as e:
            self.errors += 1
            return {"ok": False, "error": str(e)}
        if req["op"] == "shutdown":
            self.closing = True
        return {"ok": True, "result": result}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot encode {type(obj).__name__} in a control reply")


class ControlClient:
    """Blocking client the runner and tests use: ``ControlClient(path).call("snapshot")``."""

    def __init__(self, path: str, timeout_s: float = 10.0):
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout_s)
            try:
                s.connect(self.path)
            except OSError as e:
                s.close()
                raise ControlError(f"cannot reach the service at {self.path}: {e.strerror or e}; is it running?") from None
            self._sock = s
        return self._sock

    def call(self, op: str, **args: Any) -> Any:
        s = self._connect()
        req = dict(args, op=op)
        try:
            s.sendall((json.dumps(req, default=_json_default) + "\n").encode())
            while b"\n" not in self._buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ControlError(f"service at {self.path} closed the connection during {op!r}")
                self._buf += chunk
        except socket.timeout:
            self.close()
            raise ControlError(f"service at {self.path} did not answer {op!r} within {self.timeout_s} s") from None
        except OSError as e:
            self.close()
            raise ControlError(f"control connection to {self.path} failed during {op!r}: {e}") from None
        nl = self._buf.index(b"\n")
        reply = json.loads(bytes(self._buf[:nl]))
        del self._buf[: nl + 1]
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def signal_ready(fd: int | None) -> None:
    """Write the readiness byte to ``--ready-fd`` (if one was given) and close it."""
    if fd is None:
        return
    try:
        os.write(fd, b"R")
    finally:
        os.close(fd)
