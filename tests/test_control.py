import json
import selectors
import threading

import pytest

from netns_setup.control import BadRequest, ControlClient, ControlError, ControlServer


def _serve(server: ControlServer, stop: threading.Event):
    sel = selectors.DefaultSelector()
    server.attach(sel)
    while not stop.is_set() and not server.closing:
        for key, mask in sel.select(0.05):
            key.data(mask)
    server.close()


def test_dispatch_errors_are_one_line_with_the_fix(tmp_path):
    def refuse(req):
        raise BadRequest(f"unknown key {req.get('key')!r}; known keys: a, b")

    srv = ControlServer(str(tmp_path / "c.sock"), {"snapshot": lambda r: {"x": 1}, "set": refuse})
    try:
        assert srv.dispatch(b'{"op": "snapshot"}') == {"ok": True, "result": {"x": 1}}
        assert "not JSON" in srv.dispatch(b"{nope")["error"]
        assert "string \"op\"" in srv.dispatch(b"[1,2]")["error"]
        bad = srv.dispatch(b'{"op": "frobnicate"}')
        assert bad["ok"] is False and "set, snapshot" in bad["error"]
        assert srv.dispatch(b'{"op": "set", "key": "zz"}')["error"].startswith("unknown key 'zz'")
        assert (srv.requests, srv.errors) == (5, 4)
    finally:
        srv.close()


def test_round_trip_over_unix_socket(tmp_path):
    path = str(tmp_path / "c.sock")
    state = {"n": 0}

    def bump(req):
        state["n"] += req["by"]
        return state["n"]

    srv = ControlServer(path, {"bump": bump, "shutdown": lambda r: {"final": state["n"]}})
    stop = threading.Event()
    t = threading.Thread(target=_serve, args=(srv, stop), daemon=True)
    t.start()
    try:
        with ControlClient(path, timeout_s=5) as c:
            assert c.call("bump", by=2) == 2
            assert c.call("bump", by=3) == 5
            with pytest.raises(ControlError, match="unknown op"):
                c.call("nope")
            assert c.call("shutdown") == {"final": 5}
        t.join(5)
        assert not t.is_alive()
    finally:
        stop.set()


def test_client_reports_unreachable_service(tmp_path):
    with pytest.raises(ControlError, match="cannot reach the service"):
        ControlClient(str(tmp_path / "missing.sock")).call("snapshot")
