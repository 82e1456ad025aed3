"""Can the testbed run here? Each check tries the real thing on throwaway objects and says the fix.

Invariant owned here: the checks create objects only inside one temporary namespace
(``nsdt-doctor-<hex>``) and remove it before returning, whatever fails; nothing in the root
namespace is touched. ``ok`` is true only when every *required* check passed -- a missing optional
feature (netem, tshark) is reported with what the testbed does instead, but is not fatal.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass

from .nsutil import NetnsError, create_netns, disable_offloads, entered, read_sysctl, remove_netns, write_sysctl

# Qdiscs the testbed may use, with the options the kernel requires to accept them.
# Loss/delay (netem) are optional: the agent's phy fault injector does them in userspace, seeded.
QDISC_PROBES: list[tuple[str, dict, bool]] = [
    # (kind, pyroute2 options, required)
    ("pfifo", {}, False),
    ("tbf", {"rate": 1250000, "latency": 50000, "burst": 15400}, False),
    ("htb", {"default": 0x10}, False),
    ("ingress", {}, False),
    ("netem", {}, False),
    ("fq_codel", {}, False),
]
ETH_P_ALL = 0x0003


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "required": self.required, "detail": self.detail, "fix": self.fix}


def _userns_possible() -> tuple[bool, str]:
    try:
        maxns = int(read_sysctl("user/max_user_namespaces"))
    except (OSError, ValueError):
        return False, "cannot read /proc/sys/user/max_user_namespaces"
    if maxns == 0:
        return False, "user.max_user_namespaces = 0"
    try:
        clone = read_sysctl("kernel/unprivileged_userns_clone")
        if clone == "0":
            return False, "kernel.unprivileged_userns_clone = 0"
    except OSError:
        pass
    return True, f"user.max_user_namespaces = {maxns}"


def run_checks() -> list[Check]:
    checks: list[Check] = []
    if os.geteuid() == 0:
        checks.append(Check("privileges", True, "running as root (uid 0 in this user namespace)"))
    else:
        possible, why = _userns_possible()
        checks.append(Check(
            "privileges", False, f"not root (euid {os.geteuid()}); unprivileged user namespaces: {'possible' if possible else 'unavailable'} ({why})",
            "run as root: `sudo .venv/bin/testbed doctor`" + (
                ", or without root: `unshare -rnm sh -c 'mount -t tmpfs none /run && .venv/bin/testbed doctor'`" if possible else
                "; or enable user namespaces: `sysctl -w user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1`")))
        checks += _tool_checks()
        return checks

    ns = f"nsdt-doctor-{secrets.token_hex(2)}"
    try:
        try:
            create_netns(ns)
            checks.append(Check("netns", True, f"created namespace {ns} under /run/netns"))
        except (NetnsError, OSError) as e:
            checks.append(Check("netns", False, f"cannot create a network namespace: {e}",
                                "the kernel needs CONFIG_NET_NS=y and /run must be writable; in a container, run it --privileged"))
            return checks + _tool_checks()
        checks += _kernel_checks(ns)
    finally:
        try:
            remove_netns(ns)
        except NetnsError as e:
            checks.append(Check("cleanup", False, str(e), f"remove it: `ip netns del {ns}`"))
    return checks + _tool_checks()


def _kernel_checks(ns: str) -> list[Check]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    out: list[Check] = []
    with entered(ns):
        ipr = IPRoute()
    with ipr:
        try:
            ipr.link("add", ifname="dveth0", kind="veth", peer={"ifname": "dveth1"})
            ipr.link("set", index=ipr.link_lookup(ifname="dveth0")[0], state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="dveth1")[0], state="up")
            out.append(Check("veth", True, "created a veth pair (MTU 65535 accepted)" if _try_mtu(ipr) else "created a veth pair"))
        except NetlinkError as e:
            out.append(Check("veth", False, f"cannot create a veth pair: {e}", "the kernel needs CONFIG_VETH (modprobe veth)"))
            return out
        try:
            ipr.link("add", ifname="dbr0", kind="bridge", br_stp_state=0)
            ipr.link("set", index=ipr.link_lookup(ifname="dveth1")[0], master=ipr.link_lookup(ifname="dbr0")[0])
            out.append(Check("bridge", True, "created a Linux bridge and attached a port"))
        except NetlinkError as e:
            out.append(Check("bridge", False, f"cannot create a bridge: {e}", "the kernel needs CONFIG_BRIDGE (modprobe bridge)"))
        with entered(ns):
            try:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind(("dveth0", 0))
                s.close()
                out.append(Check("af_packet", True, "opened an AF_PACKET raw socket bound to a veth"))
            except OSError as e:
                out.append(Check("af_packet", False, f"cannot open AF_PACKET: {e}", "the kernel needs CONFIG_PACKET and CAP_NET_RAW"))
            try:
                offl = disable_offloads("dveth0")
                ok = not any(offl.values())
                out.append(Check("offloads", ok, "offloads after disabling: " + " ".join(f"{k}={'on' if v else 'off'}" for k, v in offl.items()),
                                 "" if ok else "this driver refuses to turn segmentation offloads off; frames on the wire will differ from what the agent sees"))
            except OSError as e:
                out.append(Check("offloads", False, f"SIOCETHTOOL failed: {e}", "the kernel needs CONFIG_ETHTOOL_NETLINK or the legacy ethtool ioctl"))
            try:
                write_sysctl("net/ipv6/conf/dveth0/disable_ipv6", "1")
                out.append(Check("ipv6_sysctl", True, "net.ipv6.conf.<if>.disable_ipv6 writable"))
            except FileNotFoundError:
                out.append(Check("ipv6_sysctl", True, "IPv6 not built in: nothing to disable", required=False))
            except OSError as e:
                out.append(Check("ipv6_sysctl", False, f"cannot disable IPv6 on a veth: {e}", "mount /proc/sys read-write (container: --privileged)"))
        present, missing = [], []
        for n, (kind, opts, _req) in enumerate(QDISC_PROBES):
            ifname = f"dq{n}"
            ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": f"dq{n}p"})
            idx = ipr.link_lookup(ifname=ifname)[0]
            handle = 0xFFFF0000 if kind == "ingress" else 0x10000
            try:
                ipr.tc("add", kind, index=idx, handle=handle, **opts)
                present.append(kind)
            except NetlinkError as e:
                missing.append(f"{kind} ({os.strerror(e.code)})")
        out.append(Check("qdiscs", not missing, f"present: {', '.join(present) or 'none'}; missing: {', '.join(missing) or 'none'}",
                         "" if not missing else "not fatal: loss, delay, duplication and reordering are injected in userspace (seeded) by the agent's phy layer",
                         required=False))
    return out


def _try_mtu(ipr) -> bool:
    try:
        ipr.link("set", index=ipr.link_lookup(ifname="dveth0")[0], mtu=65535)
        return True
    except Exception:
        return False


def _tool_checks() -> list[Check]:
    out = []
    tcpdump = shutil.which("tcpdump")
    if tcpdump:
        ver = _version([tcpdump, "--version"])
        out.append(Check("tcpdump", True, f"{tcpdump} ({ver})"))
    else:
        out.append(Check("tcpdump", False, "tcpdump not found on PATH (testbed capture needs it)", "apt-get install -y tcpdump"))
    tshark = shutil.which("tshark")
    out.append(Check("tshark", bool(tshark), f"{tshark}" if tshark else "tshark not found (tests decode captures with it)",
                     "" if tshark else "DEBIAN_FRONTEND=noninteractive apt-get install -y tshark", required=False))
    try:
        import pyroute2
        import psutil
        out.append(Check("python_deps", True, f"pyroute2 {pyroute2.__version__}, psutil {psutil.__version__}"))
    except ImportError as e:
        out.append(Check("python_deps", False, str(e), "run ./scripts/bootstrap.sh (builds .venv with the project's dependencies)"))
    return out


def _version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (p.stdout or p.stderr).splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "version unknown"


def all_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)
