"""The userspace client agent (client_agent/) as a testbed client: a ``client-agent`` process on
the client host's veth, driven over its control socket (netns_setup/control.py).

Invariants owned here: the agent is started by the rig (testbed/rig.py, same placement for the
runner and the benchmarks); every request is one control call; a refused call becomes
``ClientError`` with the agent's own sentence. ``call`` stays available for the ops of the agent
that the interface does not name (hog, udp_echo, ...).
"""

from __future__ import annotations

from .base import Client, ClientError


class AgentClient(Client):
    kind = "agent"

    def __init__(self) -> None:
        self.ctl = None
        self.proc = None
        self.consumer = "swap"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, rig, host: str, **placement) -> None:
        """``placement``: rig.start_agent's keywords (pool_pages, min_free_kbytes, budget, seed,
        extra argv, profile)."""
        rig.start_agent(host, client=self, **placement)

    def attach_process(self, proc, ctl) -> None:
        """Called by the rig once the process is up and its control socket answers."""
        self.proc, self.ctl = proc, ctl

    def stop(self) -> dict:
        out: dict = {}
        if self.ctl is not None:
            try:
                out = self.ctl.call("shutdown")
            except Exception as e:  # noqa: BLE001 -- a client already gone
                out = {"error": str(e)}
            self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            self.proc.stop()
        return out

    def call(self, op: str, **args):
        from netns_setup.control import ControlError
        try:
            return self.ctl.call(op, **args)
        except ControlError as e:
            raise ClientError(f"client-agent {op}: {e}") from None

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()

    # -- setup -------------------------------------------------------------------------------
    def sinks(self, ports, reader: str, rcvbuf_bytes: int) -> list[dict]:
        return [self.call("udp_sink", port=p, reader=reader, rcvbuf=rcvbuf_bytes) for p in ports]

    def attach(self, consumer: str, device: dict, *, memalloc: bool, policy: str = "linux",
               dirty_ratio: int = 20, dirty_background_ratio: int = 10) -> dict:
        self.consumer = consumer
        if consumer == "swap":
            return self.call("swapon", device=device, memalloc=memalloc)
        return self.call("fileon", device=device, memalloc=policy == "extended",
                         dirty_ratio=dirty_ratio, dirty_background_ratio=dirty_background_ratio)

    def set(self, key: str, value) -> dict:
        return self.call("set", key=key, value=value)

    def start_workload(self, consumer: str, pages: int, seed: int, rate_pps: float = 0) -> dict:
        if consumer == "swap":
            return self.call("workload", pages=pages, seed=seed, rate_pps=rate_pps)
        return self.call("file_workload", kind=consumer, pages=pages, seed=seed, rate_pps=rate_pps)

    # -- observation -------------------------------------------------------------------------
    def snapshot(self, traces: bool = False) -> dict:
        return self.call("snapshot", traces=traces)

    def workload_map(self) -> dict:
        m = self.call("swap_map" if self.consumer == "swap" else "file_map")
        m.setdefault("content", "swap" if self.consumer == "swap" else "file")
        return m
