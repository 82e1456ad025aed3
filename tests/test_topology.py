"""Unit tests of the topology model: parsing, every validation error, the generator (no root)."""

import ipaddress
import textwrap

import pytest

from netns_setup.lifecycle import plan_names
from netns_setup.topology import (
    MAX_HOST_NAME_CHARS,
    TEST_NET,
    TopologyError,
    default_topology,
    generate_topology,
    load_topology,
    parse_topology,
)

GOOD = """
description = "two hosts"
[switch]
name = "sw0"
mtu = 1500
[[hosts]]
name = "nas"
address = "198.18.0.1/24"
[[hosts]]
name = "client"
address = "198.18.0.2/24"
kernel_addr = false
"""


def write(tmp_path, text, name="t.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def refused(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(TopologyError) as ei:
        load_topology(p)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{p}: "), msg
    return msg


def test_good_file_parses_with_defaults(tmp_path):
    t = load_topology(write(tmp_path, GOOD))
    assert [h.name for h in t.hosts] == ["nas", "client"]
    nas, client = t.hosts
    assert nas.kernel_addr and not client.kernel_addr
    assert client.address == ipaddress.IPv4Interface("198.18.0.2/24")
    assert client.mtu == 1500 and client.mac == "02:00:c6:12:00:02"
    assert t.switch.name == "sw0"
    assert parse_topology(t.to_dict(), "x").hosts == t.hosts


def test_shipped_default_file_equals_builtin_default():
    t = load_topology("topologies/default.toml")
    assert t.hosts == default_topology().hosts
    assert {h.name: (str(h.address), h.kernel_addr) for h in t.hosts} == {
        "nas": ("198.18.0.1/24", True), "client": ("198.18.0.2/24", False), "noise": ("198.18.0.3/24", True)}
    assert load_topology("topologies/jumbo.toml").host("client").mtu == 9000


@pytest.mark.parametrize("text, key, words", [
    ("colour = 1\n" + GOOD, "colour", "unknown key"),
    (GOOD.replace('mtu = 1500', 'mtu = 1500\nstp = true'), "switch.stp", "unknown key"),
    (GOOD + '[[hosts]]\nname = "noise"\naddress = "198.18.0.3/24"\nkernel = false\n', "hosts[2].kernel", "unknown key"),
    (GOOD + '[[hosts]]\nname = "nas"\naddress = "198.18.0.3/24"\n', "hosts[2] (nas).name", "duplicate host 'nas'"),
    (GOOD.replace("198.18.0.1/24", "10.0.0.1/24"), "hosts[0] (nas).address", "outside 198.18.0.0/15"),
    (GOOD.replace("198.18.0.1/24", "198.18.0.1/14"), "hosts[0] (nas).address", "outside 198.18.0.0/15"),
    (GOOD.replace("198.18.0.1/24", "198.18.0.1"), "hosts[0] (nas).address", "not an IPv4 address with a prefix"),
    (GOOD.replace("198.18.0.2/24", "198.18.0.2/16"), "hosts[1] (client).address", "overlaps 198.18.0.0/24"),
    (GOOD.replace("198.18.0.2/24", "198.18.0.1/24"), "hosts[1] (client).address", "also host 'nas'"),
    (GOOD.replace("198.18.0.2/24", "198.18.0.255/24"), "hosts[1] (client).address", "broadcast"),
    (GOOD.replace('name = "client"', 'name = "clientxyz12"'), "hosts[1].name", "too long for an interface name"),
    (GOOD.replace('name = "client"', 'name = "Client"'), "hosts[1].name", "not a valid name"),
    (GOOD.replace('name = "client"', 'name = "sw0"'), "hosts[1] (sw0).name", "switch's name"),
    (GOOD.replace("mtu = 1500", "mtu = 70000"), "switch.mtu", "outside 68..65535"),
    (GOOD.replace("mtu = 1500", "mtu = 40"), "switch.mtu", "outside 68..65535"),
    (GOOD.replace("mtu = 1500", 'mtu = "big"'), "switch.mtu", "must be an integer"),
    (GOOD + 'mtu = true\n', "hosts[1] (client).mtu", "must be an integer"),
    (GOOD.replace("kernel_addr = false", 'kernel_addr = "no"'), "hosts[1] (client).kernel_addr", "true or false"),
    (GOOD + 'mac = "01:00:5e:00:00:01"\n', "hosts[1] (client).mac", "multicast"),
    (GOOD + 'mac = "zz"\n', "hosts[1] (client).mac", "not a MAC"),
    (GOOD + 'mac = "02:00:c6:12:00:01"\n', "hosts[1] (client).mac", "also host 'nas'"),
    ('description = "none"\n', "hosts", "no hosts"),
    ('[[hosts]]\nname = "nas"\n', "hosts[0] (nas).address", "missing"),
])
def test_each_validation_error_names_file_key_and_fix(tmp_path, text, key, words):
    msg = refused(tmp_path, text)
    assert f": {key}: " in msg, msg
    assert words in msg, msg
    assert "; " in msg.split(f": {key}: ", 1)[1], f"no fix in: {msg}"


def test_toml_syntax_error_and_missing_file(tmp_path):
    assert "not valid TOML" in refused(tmp_path, "[[hosts]\n")
    with pytest.raises(TopologyError, match=r"nope.toml: file not found; pass an existing file"):
        load_topology(tmp_path / "nope.toml")


def test_duplicate_table_is_refused_as_toml_error(tmp_path):
    msg = refused(tmp_path, '[switch]\nname="a"\n[switch]\nname="b"\n')
    assert "not valid TOML" in msg


def test_generator_one_client_is_the_default():
    t = generate_topology(1)
    assert [(h.name, str(h.address), h.kernel_addr) for h in t.hosts] == [
        ("nas", "198.18.0.1/24", True), ("client", "198.18.0.2/24", False), ("noise", "198.18.0.3/24", True)]


@pytest.mark.parametrize("n, prefix", [(64, 24), (252, 24), (253, 23), (300, 23), (999, 22)])
def test_generator_sizes_subnet_to_fit(n, prefix):
    t = generate_topology(n)
    assert len(t.hosts) == n + 2
    clients = [h for h in t.hosts if h.name.startswith("client")]
    assert len(clients) == n and not any(h.kernel_addr for h in clients)
    assert clients[0].name == "client1" and clients[-1].name == f"client{n}"
    nets = {h.address.network for h in t.hosts}
    assert len(nets) == 1 and next(iter(nets)).prefixlen == prefix
    assert all(h.address.network.subnet_of(TEST_NET) for h in t.hosts)
    assert len({h.address.ip for h in t.hosts}) == n + 2
    assert len({h.mac for h in t.hosts}) == n + 2


def test_generator_refuses_more_than_a_bridge_holds():
    with pytest.raises(TopologyError, match="outside 1..999"):
        generate_topology(1000)
    with pytest.raises(TopologyError):
        generate_topology(0)


def test_planned_names_fit_ifnamsiz():
    t = generate_topology(999)
    names = plan_names(t, "x" * 24, "abcd")
    longest = max(list(names.host_if.values()) + list(names.switch_if.values()) + [names.bridge], key=len)
    assert len(longest) <= 15
    assert MAX_HOST_NAME_CHARS == 9
    assert names.host_if["nas"] == "tabcd-nas" and names.switch_if["nas"] == "tabcd_nas"
    assert names.host_netns["client7"] == "nsdt-" + "x" * 24 + "-abcd-client7"
    assert len(set(names.all_netns)) == 1002


def test_a_topology_file_that_is_not_utf8_is_one_line(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"\xff\xfe[switch]\n")
    with pytest.raises(TopologyError, match=r"latin1.toml: not UTF-8 text \(byte 0xff at offset 0\)"):
        load_topology(p)
