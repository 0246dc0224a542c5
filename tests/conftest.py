"""Shared test setup: make the netns fixtures library importable and load its
pytest plugin (``topology`` / ``topology_factory`` fixtures, ``requires_root``
marker; the project's ``@pytest.mark.root`` skips the same way when not root)."""

import sys
from pathlib import Path

_FIXTURES = str(Path(__file__).resolve().parent.parent / "netns-fixtures")
if _FIXTURES not in sys.path:
    sys.path.insert(0, _FIXTURES)

pytest_plugins = ["netns_fixtures.pytest_plugin"]
