"""Shared test setup.

Tests that need root and network namespaces live in modules named ``test_netns_*.py`` and carry
the ``netns`` marker (added automatically here). Without root they are skipped -- unless
``TESTBED_REQUIRE_NETNS=1`` (set by ``.ci/run``), in which case a missing privilege is a failure,
so CI can never pass with the namespace tests silently skipped.
"""

import os

import pytest


def _can_netns() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1].startswith("test_netns"):
            item.add_marker(pytest.mark.netns)


def pytest_runtest_setup(item):
    if item.get_closest_marker("netns") and not _can_netns():
        if os.environ.get("TESTBED_REQUIRE_NETNS") == "1":
            pytest.fail("namespace test needs root, and TESTBED_REQUIRE_NETNS=1 forbids skipping it")
        pytest.skip("needs root for network namespaces (run: sudo ./test.sh)")
