"""Bring a topology up and down: namespaces, one bridge, veth pairs -- nothing in the root namespace.

Invariant owned here: ``up`` records each object in the run's state file before creating it
(``netns_setup.state``), and ``teardown`` removes only objects that a record lists, in the order
processes -> veths -> bridge -> namespaces, verifying each one is gone. A failure or Ctrl-C half
way through ``up`` tears down what that ``up`` made before the error propagates; a SIGKILL leaves
a record that ``clean`` finishes.

Names (``<sfx>`` is 4 random hex digits per ``up``, so two runs never share an object):
  namespace of host H      nsdt-<name>-<sfx>-H
  namespace of switch S    nsdt-<name>-<sfx>-S     (holds the bridge and the switch-side veth ends)
  bridge                   t<sfx>-S                (inside the switch namespace)
  host end of H's veth     t<sfx>-H                (inside H's namespace; this is H's NIC)
  switch end of H's veth   t<sfx>_H                (inside the switch namespace, a bridge port)

Every veth end has IPv6 disabled (no ND/MLD/RS frames) and TSO/GSO/GRO off, so every frame on the
wire is a frame the agent sees. A host with ``kernel_addr = false`` gets no IPv4 address and
``arp_ignore = 8``: its kernel never answers ARP or ICMP or sends RSTs for the agent's address.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .nsutil import (
    NetnsError,
    create_netns,
    disable_offloads,
    entered,
    get_offloads,
    netns_exists,
    netns_inode,
    pid_netns_inode,
    read_sysctl,
    remove_netns,
    write_sysctl,
)
from .state import creator_alive, RunState, StateError, check_run_name, list_runs, run_dir
from .topology import Topology, parse_topology

NETNS_PREFIX = "nsdt"
# Test hook: pause `up` forever after this many objects exist, so a test can SIGKILL it mid-way.
PAUSE_ENV = "TESTBED_TEST_PAUSE_AFTER_OBJECTS"
# A process asked to stop gets SIGTERM, then SIGKILL after this grace.
STOP_GRACE_S = 3.0
# arp_ignore = 8: "do not reply for all local addresses" -- belt and braces for agent-owned hosts.
ARP_IGNORE_NEVER = "8"


class TopologyUpError(Exception):
    """``up`` refused or failed (after rolling back). One line: what, which object, what to do."""


class TeardownError(Exception):
    """Some recorded objects could not be removed; the record is kept so ``clean`` can retry."""


@dataclass(frozen=True)
class Names:
    name: str
    suffix: str
    switch_netns: str
    bridge: str
    host_netns: dict[str, str]
    host_if: dict[str, str]
    switch_if: dict[str, str]

    @property
    def all_netns(self) -> list[str]:
        return [self.switch_netns, *self.host_netns.values()]


def plan_names(topology: Topology, name: str, suffix: str) -> Names:
    base = f"{NETNS_PREFIX}-{name}-{suffix}"
    hosts = [h.name for h in topology.hosts]
    return Names(
        name=name,
        suffix=suffix,
        switch_netns=f"{base}-{topology.switch.name}",
        bridge=f"t{suffix}-{topology.switch.name}",
        host_netns={h: f"{base}-{h}" for h in hosts},
        host_if={h: f"t{suffix}-{h}" for h in hosts},
        switch_if={h: f"t{suffix}_{h}" for h in hosts},
    )


class _PauseHook:
    def __init__(self) -> None:
        raw = os.environ.get(PAUSE_ENV)
        self.after = int(raw) if raw else None
        self.count = 0

    def created(self) -> None:
        self.count += 1
        if self.after is not None and self.count == self.after:
            print(f"testbed: test hook: paused after {self.count} objects", file=sys.stderr, flush=True)
            while True:
                signal.pause()


def _ipr_in(ns: str) -> IPRoute:
    """A netlink socket bound to namespace ``ns`` (which must exist: never created implicitly)."""
    with entered(ns):
        return IPRoute()


def _ns_base_sysctls() -> None:
    # Before any interface exists: every interface created later inherits "default".
    write_sysctl("net/ipv6/conf/all/disable_ipv6", "1")
    write_sysctl("net/ipv6/conf/default/disable_ipv6", "1")


def _veth_sysctls(ifname: str, agent_owned: bool) -> None:
    write_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "1")
    if agent_owned:
        write_sysctl(f"net/ipv4/conf/{ifname}/arp_ignore", ARP_IGNORE_NEVER)


def up(topology: Topology, name: str, *, suffix: str | None = None,
       progress: Callable[[str], None] | None = None) -> RunState:
    """Create the topology under run name ``name``; return its state record.

    Refuses (before creating anything) when ``name`` is already up or a planned namespace name
    exists. On any failure or KeyboardInterrupt, removes what it made, then re-raises.
    """
    check_run_name(name)
    suffix = suffix or secrets.token_hex(2)
    names = plan_names(topology, name, suffix)
    taken = [ns for ns in names.all_netns if netns_exists(ns)]
    if taken:
        raise TopologyUpError(
            f"namespace(s) {', '.join(taken)} already exist and were not made by this run; "
            f"nothing was created -- pick another --name, or remove them if you know they are stale")
    try:
        st = RunState.create(name, suffix, topology.to_dict())
    except StateError as e:
        raise TopologyUpError(str(e)) from None
    say = progress or (lambda _m: None)
    hook = _PauseHook()
    iprs: dict[str, IPRoute] = {}
    try:
        with st.update() as data:
            data["names"] = {"switch_netns": names.switch_netns, "bridge": names.bridge}
        # 1. namespaces: switch first, then each host.
        for ns, host, role in [(names.switch_netns, None, "switch")] + [
                (names.host_netns[h.name], h.name, "host") for h in topology.hosts]:
            idx = st.record_intent("netns", name=ns, host=host, role=role)
            # pyroute2 creates the namespace in a forked child: a SIGINT/SIGTERM taken while we
            # wait for it would run the rollback before the child's bind mount exists, and the
            # namespace would appear after the teardown (a leak seen in CI). Held until recorded.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                ino = create_netns(ns)
                st.mark_created(idx, inode=ino)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            hook.created()
            with entered(ns):
                _ns_base_sysctls()
                iprs[ns] = IPRoute()
            lo = iprs[ns].link_lookup(ifname="lo")[0]
            iprs[ns].link("set", index=lo, state="up")
        say(f"{len(names.all_netns)} namespaces")

        # 2. the bridge, in the switch namespace. STP off: ports forward at once, no BPDUs.
        sw = iprs[names.switch_netns]
        idx = st.record_intent("bridge", netns=names.switch_netns, ifname=names.bridge)
        sw.link("add", ifname=names.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0,
                br_mcast_snooping=0)
        st.mark_created(idx)
        hook.created()
        br_index = sw.link_lookup(ifname=names.bridge)[0]
        # A switch forwards frames; it does not judge IP headers. With br_netfilter loaded the
        # bridge would validate IPv4 (br_validate_ipv4) and drop malformed frames before any host
        # saw them: turn the bridge-nf hooks off in the switch's namespace (per-netns since 5.3).
        with entered(names.switch_netns):
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
                if os.path.exists(f"/proc/sys/net/bridge/{key}"):
                    write_sysctl(f"net/bridge/{key}", "0")

        # 3. one veth pair per host, made in the switch namespace with its peer born in the host's.
        for h in topology.hosts:
            hns, hif, sif = names.host_netns[h.name], names.host_if[h.name], names.switch_if[h.name]
            idx = st.record_intent("veth", host=h.name, netns=names.switch_netns, ifname=sif,
                                   peer_netns=hns, peer_ifname=hif)
            fd = os.open(f"/run/netns/{hns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sw.link("add", ifname=sif, kind="veth", mtu=h.mtu, master=br_index,
                        peer={"ifname": hif, "net_ns_fd": fd, "mtu": h.mtu, "address": h.mac})
            finally:
                os.close(fd)
            st.mark_created(idx)
            hook.created()
            hipr = iprs[hns]
            hidx = hipr.link_lookup(ifname=hif)[0]
            with entered(hns):
                _veth_sysctls(hif, agent_owned=not h.kernel_addr)
                off = disable_offloads(hif)
            if any(off.values()):
                raise TopologyUpError(f"{hif} in {hns}: offloads still on after disabling: {off}; the kernel refused ethtool -K")
            if h.kernel_addr:
                hipr.addr("add", index=hidx, address=str(h.address.ip), prefixlen=h.address.network.prefixlen)
            hipr.link("set", index=hidx, state="up")
            with entered(names.switch_netns):
                _veth_sysctls(sif, agent_owned=False)
                disable_offloads(sif)
            sidx = sw.link_lookup(ifname=sif)[0]
            sw.link("set", index=sidx, state="up")
        sw.link("set", index=br_index, state="up")
        say(f"bridge {names.bridge} with {len(topology.hosts)} ports")
        st.set_phase("up")
        return st
    except BaseException as exc:
        for ipr in iprs.values():
            ipr.close()
        iprs.clear()
        say(f"rolling back after {type(exc).__name__}")
        try:
            teardown(st)
        except TeardownError as te:
            print(f"testbed: rollback incomplete: {te}", file=sys.stderr)
        if isinstance(exc, (NetlinkError, NetnsError, OSError)) and not isinstance(exc, TopologyUpError):
            raise TopologyUpError(f"up {name!r} failed and was rolled back: {exc}") from exc
        raise
    finally:
        for ipr in iprs.values():
            ipr.close()


# -- teardown ----------------------------------------------------------------------------------
def _process_is_recorded_one(rec: dict[str, Any]) -> psutil.Process | None:
    """The live process the record describes, or None if it is gone or the pid was reused."""
    try:
        p = psutil.Process(rec["pid"])
        if abs(p.create_time() - rec["create_time"]) > 0.05:
            return None
    except psutil.Error:
        return None
    ino = rec.get("netns_inode")
    if ino is not None and pid_netns_inode(rec["pid"]) not in (ino, None):
        return None
    if p.status() == psutil.STATUS_ZOMBIE:
        _reap(rec["pid"])
        return None
    return p


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_recorded_process(rec: dict[str, Any], grace_s: float = STOP_GRACE_S) -> str:
    """SIGTERM, then SIGKILL after ``grace_s``, the process a record describes -- if it is still it."""
    p = _process_is_recorded_one(rec)
    if p is None:
        return "gone"
    try:
        p.terminate()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap(rec["pid"])
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                _reap(rec["pid"])
                return "terminated"
            time.sleep(0.02)
        p.kill()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap(rec["pid"])
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                _reap(rec["pid"])
                return "killed"
            time.sleep(0.02)
    except psutil.NoSuchProcess:
        _reap(rec["pid"])
        return "terminated"
    raise TeardownError(f"process {rec['pid']} ({' '.join(rec.get('argv', []))}) survived SIGKILL")


def _ns_is_ours(rec: dict[str, Any]) -> bool:
    ino = netns_inode(rec["name"])
    if ino is None:
        return False
    return rec.get("inode") in (None, ino)  # no inode: killed between create and record -> suffix is ours


def _links(ns: str) -> dict[str, int]:
    with _ipr_in(ns) as ipr:
        return {l.get("ifname"): l["index"] for l in ipr.get_links()}


def teardown(st: RunState, *, keep_logs: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Remove everything ``st`` records (and nothing else); verify; then delete the record."""
    say = progress or (lambda _m: None)
    st.reload() if os.path.exists(st.path) else None
    errors: list[str] = []
    counts = {"processes": 0, "veths": 0, "bridges": 0, "namespaces": 0}
    ns_recs = {o["name"]: o for o in st.objects("netns")}
    ours = {n for n, r in ns_recs.items() if _ns_is_ours(r)}
    foreign = [n for n, r in ns_recs.items() if netns_exists(n) and n not in ours]
    for n in foreign:
        errors.append(f"namespace {n} exists but is not the one recorded (inode differs): left alone")

    # 1. processes
    for rec in list(st.data.get("processes", [])):
        try:
            if stop_recorded_process(rec) != "gone":
                counts["processes"] += 1
            st.drop_process(rec["pid"])
        except TeardownError as e:
            errors.append(str(e))

    # 2. veths, then 3. the bridge, from the switch namespace (deleting one end removes both).
    for kind, key in (("veth", "veths"), ("bridge", "bridges")):
        for rec in reversed(st.objects(kind)):
            for ns, ifname in ((rec["netns"], rec["ifname"]), (rec.get("peer_netns"), rec.get("peer_ifname"))):
                if not ns or ns not in ours:
                    continue
                try:
                    with _ipr_in(ns) as ipr:
                        idx = ipr.link_lookup(ifname=ifname)
                        if idx:
                            ipr.link("del", index=idx[0])
                            counts[key] += 1
                        if ipr.link_lookup(ifname=ifname):
                            errors.append(f"{ifname} in {ns} still exists after deletion")
                except NetlinkError as e:
                    if e.code != 19:  # ENODEV: its peer's deletion already took it
                        errors.append(f"cannot delete {ifname} in {ns}: {e}")

    # 4. namespaces, hosts first, switch last.
    for rec in reversed(st.objects("netns")):
        n = rec["name"]
        if n not in ours:
            continue
        try:
            remove_netns(n)
            counts["namespaces"] += 1
        except NetnsError as e:
            errors.append(str(e))
        if netns_exists(n):
            errors.append(f"namespace {n} still exists after removal")
    say(f"removed {counts}")
    if errors:
        raise TeardownError(f"{len(errors)} problem(s) removing {st.name!r}: " + "; ".join(errors)
                            + f". The record {st.path} is kept: fix the cause and run `testbed clean`")
    st.remove_record()
    _remove_run_dir(st.dir, keep_logs)
    return counts


def _remove_run_dir(directory: str, keep_logs: bool) -> None:
    if keep_logs:
        for sub in ("ctl",):
            shutil.rmtree(os.path.join(directory, sub), ignore_errors=True)
        return
    shutil.rmtree(directory, ignore_errors=True)


def down(name: str, *, keep_logs: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    return teardown(RunState.load(name), keep_logs=keep_logs, progress=progress)


def clean(progress: Callable[[str], None] | None = None, *, force: bool = False,
          in_use: dict[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Tear down every recorded run under the run root. Raises TeardownError listing all failures.

    A run whose creator is still running (a `testbed run`/`demo` in another terminal) is left
    alone unless ``force``; its name and the creator's pid go into ``in_use``."""
    done: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    for name in list_runs():
        try:
            st = RunState.load(name)
            owner = None if force else creator_alive(st.data)
            if owner is not None:
                if in_use is not None:
                    in_use[name] = owner
                continue
            done[name] = teardown(st, progress=progress)
        except (TeardownError, StateError) as e:
            failures.append(str(e))
    if failures:
        raise TeardownError(" | ".join(failures))
    return done


# -- status ------------------------------------------------------------------------------------
def status(name: str) -> dict[str, Any]:
    """The live state of a run: hosts, their interfaces (kernel view and the topology's addresses)."""
    st = RunState.load(name)
    topo = parse_topology(st.data["topology"], f"{st.path}:topology")
    out: dict[str, Any] = {"name": st.name, "run_dir": st.dir, "phase": st.data.get("phase"),
                           "suffix": st.data.get("suffix"), "hosts": {}, "problems": []}
    names = plan_names(topo, st.name, st.data["suffix"])
    for h in topo.hosts:
        ns = names.host_netns[h.name]
        entry: dict[str, Any] = {"netns": ns, "exists": netns_exists(ns), "kernel_addr": h.kernel_addr, "interfaces": []}
        if entry["exists"]:
            with _ipr_in(ns) as ipr:
                for link in ipr.get_links():
                    ifname = link.get("ifname")
                    if ifname == "lo":
                        continue
                    kaddrs = [f"{a.get('address')}/{a['prefixlen']}"
                              for a in ipr.get_addr(index=link["index"], family=2)]
                    with entered(ns):
                        offl = get_offloads(ifname)
                        ipv6_off = read_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6") == "1"
                    entry["interfaces"].append({
                        "name": ifname, "mac": link.get("address"), "mtu": link.get("mtu"),
                        "state": link.get("operstate"),
                        "addresses": [h.address_str] if ifname == names.host_if[h.name] else kaddrs,
                        "kernel_addresses": kaddrs, "offloads": offl, "ipv6_disabled": ipv6_off,
                    })
        else:
            out["problems"].append(f"namespace {ns} of host {h.name} is missing")
        out["hosts"][h.name] = entry
    sw = names.switch_netns
    out["switch"] = {"name": topo.switch.name, "netns": sw, "bridge": names.bridge, "exists": netns_exists(sw)}
    if out["switch"]["exists"]:
        links = _links(sw)
        out["switch"]["ports"] = sorted(n for n in links if n.startswith(f"t{names.suffix}_"))
    procs = []
    for rec in st.data.get("processes", []):
        procs.append(dict(rec, alive=_process_is_recorded_one(rec) is not None))
    out["processes"] = procs
    return out


def load_run(name: str) -> RunState:
    """The state record of a topology that is up (raises StateError naming the runs that are)."""
    return RunState.load(name)


__all__ = ["up", "down", "clean", "status", "teardown", "load_run", "plan_names", "Names",
           "TopologyUpError", "TeardownError", "run_dir", "stop_recorded_process"]
