"""Low-level namespace primitives: create/remove named network namespaces, enter one for a moment.

Invariant owned here: nothing in this module creates a namespace as a side effect. A namespace is
created only by ``create_netns`` (which refuses an existing name), and ``entered(name)`` raises if
the namespace does not exist -- unlike pyroute2's defaults (``flags=os.O_CREAT``), which silently
create a missing namespace. Every ``entered`` restores the calling thread's original namespace
before returning, or raises ``NetnsError`` loudly if it cannot.

Namespaces are bind mounts under /run/netns, as iproute2 makes them, so ``ip netns`` sees them.
No function here shells out to ``ip``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import time
from typing import Iterator

from pyroute2 import netns as _pr_netns

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MNT_DETACH = 2

# EBUSY on umount/unlink is transient (a process is still entering/leaving); retry this often.
REMOVE_RETRIES = 10
REMOVE_RETRY_DELAY_S = 0.05

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A namespace operation failed; the message says which namespace and what to do."""


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(errno.EINVAL, f"invalid namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def netns_inode(name: str) -> int | None:
    """The namespace's identity (inode of its nsfs file), or None if it is not mounted."""
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


def pid_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def create_netns(name: str) -> int:
    """Create the named namespace (refusing an existing name) and return its inode."""
    path = netns_path(name)
    if os.path.exists(path):
        raise NetnsError(errno.EEXIST, f"namespace {name!r} already exists ({path}); it is not ours, so it is left alone")
    _pr_netns.create(name)  # explicit creation: forks a child that unshares and bind-mounts
    ino = netns_inode(name)
    if ino is None:
        raise NetnsError(errno.ENOENT, f"namespace {name!r} was not created ({path} missing)")
    if not _is_nsfs(path):  # a plain file left behind would look like a namespace to `ip netns`
        raise NetnsError(errno.EIO, f"namespace {name!r}: {path} is not a namespace mount")
    return ino


def _is_nsfs(path: str) -> bool:
    NSFS_MAGIC = 0x6E736673
    buf = ctypes.create_string_buffer(120)
    if _libc.statfs(path.encode(), buf) != 0:
        return False
    return struct.unpack_from("l", buf.raw)[0] == NSFS_MAGIC


def remove_netns(name: str) -> None:
    """Unmount and unlink the namespace file, retrying on EBUSY; verify it is gone."""
    path = netns_path(name)
    for attempt in range(REMOVE_RETRIES):
        if not os.path.exists(path):
            return
        if _libc.umount2(path.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT, errno.EBUSY):  # EINVAL: not mounted (a placeholder)
                raise NetnsError(err, f"cannot unmount namespace {name!r} ({path}): {os.strerror(err)}")
            if err == errno.EBUSY:
                time.sleep(REMOVE_RETRY_DELAY_S)
                continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY and attempt + 1 < REMOVE_RETRIES:
                time.sleep(REMOVE_RETRY_DELAY_S)
                continue
            raise NetnsError(e.errno, f"cannot remove namespace file {path}: {e.strerror}") from None
    if os.path.exists(path):
        raise NetnsError(errno.EBUSY, f"namespace {name!r} still exists after {REMOVE_RETRIES} attempts ({path}); is a process holding it? check `lsof {path}`")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name``; always switch back.

    Sockets (netlink, ioctl, AF_PACKET) created in the body stay bound to ``name`` after the
    body ends, and /proc/sys/net opened in the body shows ``name``'s settings.
    """
    path = netns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"namespace {name!r} does not exist ({path}); run `testbed status` to see what is up") from None
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            try:
                _setns(orig)
            except NetnsError as e:  # the thread would keep running in the wrong namespace: never continue
                raise NetnsError(e.errno, f"could not return from namespace {name!r}: {e.strerror}; aborting") from None
    finally:
        os.close(target)
        os.close(orig)


def write_sysctl(key: str, value: str) -> None:
    """Write /proc/sys/<key> in the current thread's namespace (call inside ``entered``)."""
    path = "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key
    with open(path, "w") as f:
        f.write(value)


def read_sysctl(key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key
    with open(path) as f:
        return f.read().strip()


# -- segmentation offloads ---------------------------------------------------------------------
# Legacy SIOCETHTOOL commands (linux/ethtool.h), each a struct ethtool_value {u32 cmd; u32 data}.
# The kernel still maps them onto netdev features: STSO covers tso/tso6/tso-ecn/tso-mangleid.
SIOCETHTOOL = 0x8946
ETHTOOL_GTSO, ETHTOOL_STSO = 0x1E, 0x1F
ETHTOOL_GGSO, ETHTOOL_SGSO = 0x23, 0x24
ETHTOOL_GGRO, ETHTOOL_SGRO = 0x2B, 0x2C
OFFLOADS = {"tso": (ETHTOOL_GTSO, ETHTOOL_STSO), "gso": (ETHTOOL_GGSO, ETHTOOL_SGSO), "gro": (ETHTOOL_GGRO, ETHTOOL_SGRO)}


def _ethtool_value(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    buf = bytearray(struct.pack("II", cmd, data))
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(cbuf))
    fcntl.ioctl(sock, SIOCETHTOOL, ifr)
    return struct.unpack("II", buf)[1]


def get_offloads(ifname: str) -> dict[str, bool]:
    """TSO/GSO/GRO state of ``ifname`` in the current thread's namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return {k: bool(_ethtool_value(s, ifname, get)) for k, (get, _set) in OFFLOADS.items()}


def disable_offloads(ifname: str) -> dict[str, bool]:
    """Turn TSO, GSO and GRO off on ``ifname`` (current namespace); return the state read back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _get, set_ in OFFLOADS.values():
            _ethtool_value(s, ifname, set_, 0)
        return {k: bool(_ethtool_value(s, ifname, get)) for k, (get, _set) in OFFLOADS.items()}


NUD_PERMANENT = 0x80  # include/uapi/linux/neighbour.h


def add_permanent_neighbours(netns: str, ifname: str, pairs: list[tuple[str, str]]) -> None:
    """Permanent ARP entries ``ip -> mac`` on ``ifname`` inside namespace ``netns`` (pyroute2).

    The kernel hosts need them for the client agent's address: with its pool exhausted the agent
    cannot answer ARP, and a kernel that cannot resolve it would drop its traffic at the sender."""
    from pyroute2 import IPRoute

    with entered(netns):
        ipr = IPRoute()          # the netlink socket belongs to the namespace it was made in
    try:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise NetnsError(errno.ENODEV, f"no interface {ifname} in {netns} for the neighbour entries "
                                           f"{pairs}; is the topology up?")
        for ip, mac in pairs:
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx[0], state=NUD_PERMANENT)
    finally:
        ipr.close()


def link_mtu_mac(ifname: str) -> tuple[int, bytes]:
    """(MTU, MAC) of ``ifname`` in the calling thread's namespace, through rtnetlink (not sysfs,
    which shows the namespace it was mounted in)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise ValueError(f"no interface {ifname!r} in this network namespace")
        link = ipr.get_links(idx[0])[0]
        return link.get_attr("IFLA_MTU"), bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
