"""The kinds of client host the testbed runs scenarios against, behind one interface.

    base.py     Client: the interface (start/stop, sinks, attach a swap device or file through a
                device spec, set, start_workload, /proc-shaped snapshot, workload_map) and
                ClientError -- the docstring is the contract
    agent.py    AgentClient: the userspace client-agent over its control socket
    (linux_vm/  a real Linux kernel in a VM: the second implementation -- being added)

The runner (testbed/runner.py) and the benchmarks (testbed/bench/) start clients through the rig
(testbed/rig.py) and read them only through this interface; the watchdog (testbed/watchdog.py)
reads only the snapshots.
"""

from .agent import AgentClient
from .base import Client, ClientError

__all__ = ["AgentClient", "Client", "ClientError"]
