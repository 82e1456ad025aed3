"""The topology model: hosts on one switch, as data, validated before anything is created.

Invariant owned here: a ``Topology`` that exists has passed every check -- each host has a unique
name short enough to become an interface name, an address inside 198.18.0.0/15 (RFC 2544
benchmarking range), no two subnets overlap unless they are the same subnet, no two hosts share an
address or a MAC, and every MTU is one a veth accepts. ``netns_setup.lifecycle`` may therefore
create objects without re-checking, and a bad file is refused with one line before any kernel
object exists.

A topology file is TOML::

    description = "client, NAS and noise on one switch"

    [switch]
    name = "sw0"        # the Linux bridge, in its own namespace
    mtu = 1500          # default MTU of every link

    [[hosts]]
    name = "nas"
    address = "198.18.0.1/24"

    [[hosts]]
    name = "client"
    address = "198.18.0.2/24"
    kernel_addr = false  # the userspace agent owns this address; the kernel holds none

Host keys: ``name``, ``address``, ``kernel_addr`` (default true), ``mtu`` (default: the switch's),
``mac`` (default ``02:00:`` + the four address bytes, so captures are reproducible).
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# RFC 2544 benchmarking range: the only addresses test traffic may use on this machine.
TEST_NET = ipaddress.IPv4Network("198.18.0.0/15")

# Linux IFNAMSIZ is 16 including the NUL: 15 visible characters. Interface names are
# "t" + 4 hex suffix + one separator + the host name, so a host name has 15 - 6 = 9 characters.
IFNAMSIZ_CHARS = 15
IFNAME_OVERHEAD_CHARS = 6
MAX_HOST_NAME_CHARS = IFNAMSIZ_CHARS - IFNAME_OVERHEAD_CHARS

# 68 is the smallest MTU IPv4 allows (RFC 791); 65535 is the largest a veth accepts.
MIN_MTU = 68
MAX_MTU = 65535
DEFAULT_MTU = 1500

# Generated client names are client1..clientN and must fit MAX_HOST_NAME_CHARS (9): N <= 999.
# (A Linux bridge holds BR_MAX_PORTS = 1024 ports, so 999 + nas + noise also fits the switch.)
MAX_GENERATED_CLIENTS = 999

HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

TOP_KEYS = ("description", "switch", "hosts")
SWITCH_KEYS = ("name", "mtu")
HOST_KEYS = ("name", "address", "kernel_addr", "mtu", "mac")


class TopologyError(ValueError):
    """A topology file or value is wrong. The message is one line: source, key, problem, fix."""


@dataclass(frozen=True)
class Switch:
    name: str = "sw0"
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class Host:
    name: str
    address: ipaddress.IPv4Interface
    kernel_addr: bool = True
    mtu: int = DEFAULT_MTU
    mac: str = ""

    @property
    def address_str(self) -> str:
        return self.address.with_prefixlen


@dataclass(frozen=True)
class Link:
    """A veth pair: one end in the host's namespace, the other a port of the switch."""

    host: str
    switch: str
    mtu: int


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    switch: Switch = field(default_factory=Switch)
    description: str = ""
    source: str = "<topology>"

    @property
    def links(self) -> tuple[Link, ...]:
        return tuple(Link(h.name, self.switch.name, h.mtu) for h in self.hosts)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in {self.source}; hosts are: {', '.join(h.name for h in self.hosts)}")

    def to_dict(self) -> dict[str, Any]:
        """The TOML-equivalent dict; ``parse_topology(t.to_dict())`` gives back an equal topology."""
        return {
            "description": self.description,
            "switch": {"name": self.switch.name, "mtu": self.switch.mtu},
            "hosts": [
                {"name": h.name, "address": h.address_str, "kernel_addr": h.kernel_addr, "mtu": h.mtu, "mac": h.mac}
                for h in self.hosts
            ],
        }


def default_mac(address: ipaddress.IPv4Interface) -> str:
    """02:00 (locally administered, unicast) followed by the four address bytes."""
    return "02:00:" + ":".join(f"{b:02x}" for b in address.ip.packed)


def _err(source: str, key: str, problem: str, fix: str) -> TopologyError:
    return TopologyError(f"{source}: {key}: {problem}; {fix}")


def _check_keys(source: str, where: str, table: dict, allowed: tuple[str, ...]) -> None:
    for k in table:
        if k not in allowed:
            raise _err(source, f"{where}{k}", "unknown key", f"remove it (known keys here: {', '.join(allowed)})")


def _mtu(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(source, key, f"MTU must be an integer, got {value!r}", f"write e.g. {key.rsplit('.', 1)[-1]} = 1500")
    if not MIN_MTU <= value <= MAX_MTU:
        raise _err(source, key, f"MTU {value} is outside {MIN_MTU}..{MAX_MTU}", "use 1500, or up to 65535 for jumbo frames")
    return value


def parse_topology(data: dict[str, Any], source: str = "<topology>") -> Topology:
    """Validate a TOML-shaped dict and build a Topology, or raise TopologyError (one line)."""
    if not isinstance(data, dict):
        raise _err(source, "(top level)", "not a table", "write a TOML document with [switch] and [[hosts]]")
    _check_keys(source, "", data, TOP_KEYS)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _err(source, "description", f"must be a string, got {description!r}", 'write description = "..."')

    sw_data = data.get("switch", {})
    if not isinstance(sw_data, dict):
        raise _err(source, "switch", "must be a table", 'write [switch] with name = "sw0"')
    _check_keys(source, "switch.", sw_data, SWITCH_KEYS)
    sw_name = sw_data.get("name", "sw0")
    _check_name(source, "switch.name", sw_name)
    sw_mtu = _mtu(source, "switch.mtu", sw_data.get("mtu", DEFAULT_MTU))
    switch = Switch(sw_name, sw_mtu)

    hosts_data = data.get("hosts")
    if not isinstance(hosts_data, list) or not hosts_data:
        raise _err(source, "hosts", "no hosts", 'add at least one [[hosts]] table with name and address')
    hosts: list[Host] = []
    seen_names: dict[str, int] = {}
    seen_addrs: dict[ipaddress.IPv4Address, str] = {}
    seen_macs: dict[str, str] = {}
    networks: dict[ipaddress.IPv4Network, str] = {}
    for i, hd in enumerate(hosts_data):
        where = f"hosts[{i}]"
        if not isinstance(hd, dict):
            raise _err(source, where, "must be a table", "write [[hosts]] tables")
        _check_keys(source, f"{where}.", hd, HOST_KEYS)
        if "name" not in hd:
            raise _err(source, f"{where}.name", "missing", 'give every host a name, e.g. name = "nas"')
        name = hd["name"]
        _check_name(source, f"{where}.name", name)
        where = f"hosts[{i}] ({name})"
        if name in seen_names:
            raise _err(source, f"{where}.name", f"duplicate host {name!r} (also hosts[{seen_names[name]}])", "give each host a unique name")
        if name == switch.name:
            raise _err(source, f"{where}.name", f"host {name!r} has the switch's name", "rename the host or the switch")
        seen_names[name] = i

        if "address" not in hd:
            raise _err(source, f"{where}.address", "missing", 'give the host an address inside 198.18.0.0/15, e.g. address = "198.18.0.5/24"')
        raw = hd["address"]
        try:
            if not isinstance(raw, str) or "/" not in raw:
                raise ValueError("needs a prefix length")
            addr = ipaddress.IPv4Interface(raw)
        except ValueError as e:
            raise _err(source, f"{where}.address", f"{raw!r} is not an IPv4 address with a prefix ({e})", 'write e.g. address = "198.18.0.5/24"') from None
        net = addr.network
        if not net.subnet_of(TEST_NET):
            raise _err(source, f"{where}.address", f"{raw} ({net}) is outside {TEST_NET}", f"use an address and prefix inside {TEST_NET} (RFC 2544 benchmarking range, e.g. 198.18.0.5/24)")
        if net.prefixlen < 31 and addr.ip in (net.network_address, net.broadcast_address):
            raise _err(source, f"{where}.address", f"{raw} is the network or broadcast address of {net}", "pick a host address inside the subnet")
        if addr.ip in seen_addrs:
            raise _err(source, f"{where}.address", f"{addr.ip} is also host {seen_addrs[addr.ip]!r}'s address", "give each host its own address")
        seen_addrs[addr.ip] = name
        for other, owner in networks.items():
            if other != net and other.overlaps(net):
                raise _err(source, f"{where}.address", f"subnet {net} overlaps {other} of host {owner!r}", "use the same subnet on both hosts, or non-overlapping subnets")
        networks.setdefault(net, name)

        kernel_addr = hd.get("kernel_addr", True)
        if not isinstance(kernel_addr, bool):
            raise _err(source, f"{where}.kernel_addr", f"must be true or false, got {kernel_addr!r}", "write kernel_addr = false for a host whose address a userspace stack owns")
        mtu = _mtu(source, f"{where}.mtu", hd.get("mtu", switch.mtu))

        mac = hd.get("mac") or default_mac(addr)
        if not isinstance(mac, str) or not MAC_RE.match(mac.lower()):
            raise _err(source, f"{where}.mac", f"{mac!r} is not a MAC address", 'write e.g. mac = "02:00:c6:12:00:05" (lower-case hex, colon-separated)')
        mac = mac.lower()
        if int(mac[:2], 16) & 1:
            raise _err(source, f"{where}.mac", f"{mac} is a multicast address", "use a unicast MAC; 02:xx:... (locally administered) is safest")
        if mac in seen_macs:
            raise _err(source, f"{where}.mac", f"{mac} is also host {seen_macs[mac]!r}'s MAC", "give each host its own MAC, or omit mac to derive it from the address")
        seen_macs[mac] = name
        hosts.append(Host(name, addr, kernel_addr, mtu, mac))
    return Topology(tuple(hosts), switch, description, source)


def _check_name(source: str, key: str, name: Any) -> None:
    if not isinstance(name, str) or not HOST_NAME_RE.match(name):
        raise _err(source, key, f"{name!r} is not a valid name", "use lower-case letters and digits, starting with a letter")
    if len(name) > MAX_HOST_NAME_CHARS:
        raise _err(
            source, key,
            f"{name!r} has {len(name)} characters, too long for an interface name ({IFNAMSIZ_CHARS} max, {IFNAME_OVERHEAD_CHARS} taken by the prefix and suffix)",
            f"shorten it to at most {MAX_HOST_NAME_CHARS} characters",
        )


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology TOML file. Raises TopologyError with one line naming the file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise TopologyError(f"{source}: file not found; pass an existing file to --topology (see topologies/)") from None
    except OSError as e:
        raise TopologyError(f"{source}: cannot read ({e.strerror}); check the path and its permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{source}: not valid TOML ({e}); fix the syntax at that line") from None
    except UnicodeDecodeError as e:
        raise TopologyError(f"{source}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                            f"a topology is a TOML file -- save it as UTF-8") from None
    return parse_topology(data, source)


def default_topology() -> Topology:
    """client, nas and noise on one switch in 198.18.0.0/24: nas .1, client .2 (no kernel address), noise .3."""
    return generate_topology(1)


def generate_topology(n_clients: int, *, noise: bool = True, mtu: int = DEFAULT_MTU) -> Topology:
    """N clients on one NAS (and one noise host), on one switch, in one subnet sized to fit.

    Layout: nas = base+1, clients = base+2 .. base+1+N, noise = base+2+N. With one client it is
    named ``client``; with more, ``client1`` .. ``clientN``. The subnet is 198.18.0.0/24 while it
    fits, else the smallest prefix that fits (at most a /16 within 198.18.0.0/15).
    Clients get no kernel address (kernel_addr = false): their userspace agents own them.
    """
    if not 1 <= n_clients <= MAX_GENERATED_CLIENTS:
        raise TopologyError(f"<generated>: clients: {n_clients} is outside 1..{MAX_GENERATED_CLIENTS}; client names client1..client999 must fit a 15-character interface name")
    n_hosts = n_clients + 1 + (1 if noise else 0)
    host_bits = max(8, math.ceil(math.log2(n_hosts + 2)))  # +2: network and broadcast addresses
    net = ipaddress.IPv4Network(f"198.18.0.0/{32 - host_bits}")
    base = int(net.network_address)

    def iface(offset: int) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(base + offset)}/{net.prefixlen}")

    hosts = [Host("nas", iface(1), True, mtu, default_mac(iface(1)))]
    for i in range(n_clients):
        name = "client" if n_clients == 1 else f"client{i + 1}"
        a = iface(2 + i)
        hosts.append(Host(name, a, False, mtu, default_mac(a)))
    if noise:
        a = iface(2 + n_clients)
        hosts.append(Host("noise", a, True, mtu, default_mac(a)))
    desc = f"{n_clients} client(s) on one NAS" + (" with a noise host" if noise else "") + f", {net}"
    topo = Topology(tuple(hosts), Switch("sw0", mtu), desc, f"<generated:{n_clients}>")
    # Re-validate through the same checks a file gets, so the generator can never build a bad one.
    return parse_topology(topo.to_dict(), topo.source)
