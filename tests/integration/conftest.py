"""Fixtures of the integration tests (helpers live in nlpm_helpers.py)."""
import pytest

from nlpm_helpers import EXE, Node


@pytest.fixture
def node(topology_factory) -> Node:
    return Node(topology_factory(plugin_paths={"portmap": EXE}))


@pytest.fixture
def node4(topology_factory) -> Node:
    return Node(topology_factory(ipv6=False, plugin_paths={"portmap": EXE}))


