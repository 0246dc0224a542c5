"""pytest plugin: ``topology`` fixtures and the ``requires_root`` skip marker.

Enable with ``pytest_plugins = ["netns_fixtures.pytest_plugin"]`` in the top-level
conftest (with ``netns-fixtures/`` on ``sys.path``).

* ``@requires_root`` (== ``@pytest.mark.requires_root``; the project's
  ``@pytest.mark.root`` works the same way): skip with a clear reason unless we are
  root and ``ip netns`` works (probed once per session by creating and deleting a
  throw-away namespace).
* ``topology``: function-scoped dual-stack :class:`~netns_fixtures.Topology`, torn
  down after the test whatever happens.  Skips like ``requires_root``.
* ``topology_factory``: ``make(**Topology kwargs)`` for other settings (e.g.
  ``ipv6=False`` or ``plugin_paths={"portmap": ...}``); all built topologies are
  torn down after the test.
* The first use of a topology fixture in a session removes namespaces left by
  *killed* earlier runs (:func:`~netns_fixtures.cleanup_stale`, dead owners only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from typing import Any, Callable, Iterator

import pytest

from .netns import Netns, cleanup_stale
from .topology import Topology

requires_root = pytest.mark.requires_root

_MARKERS = ("requires_root", "root")


@lru_cache(maxsize=None)
def netns_unusable_reason() -> str | None:
    """None if we can create network namespaces, else why not (cached)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces); run as root"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found"
    try:
        with Netns.create("nlpm", "probe"):
            pass
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns` unusable here: {e}"
    return None


def skip_unless_netns() -> None:
    """Call inside a test/fixture: ``pytest.skip`` with the reason if unusable."""
    reason = netns_unusable_reason()
    if reason:
        pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_root: skip unless root and `ip netns` usable (netns_fixtures)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if any(item.get_closest_marker(m) for m in _MARKERS):
        skip_unless_netns()


_stale_done = False


def _prepare(prefix: str = "nlpm") -> None:
    global _stale_done
    skip_unless_netns()
    if not _stale_done:
        _stale_done = True
        cleanup_stale(prefix)


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A dual-stack (IPv4+IPv6) topology, default prefix/subnets/plugins."""
    _prepare()
    with Topology(ipv6=True) as t:
        yield t


@pytest.fixture
def topology_factory() -> Iterator[Callable[..., Topology]]:
    """``make(**kwargs) -> Topology`` (started); all are closed after the test."""
    _prepare()
    made: list[Topology] = []

    def make(**kwargs: Any) -> Topology:
        t = Topology(**kwargs)
        made.append(t)
        return t.start()

    try:
        yield make
    finally:
        errors = []
        for t in reversed(made):
            try:
                t.close()
            except BaseException as e:
                errors.append(e)
        if errors:
            raise errors[0]
