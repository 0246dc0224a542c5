"""Shared test setup: make the netns fixtures library importable and load its
pytest plugin (``topology`` / ``topology_factory`` fixtures, ``requires_root``
marker; the project's ``@pytest.mark.root`` skips the same way when not root)."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_FIXTURES = str(Path(__file__).resolve().parent.parent / "netns-fixtures")
if _FIXTURES not in sys.path:
    sys.path.insert(0, _FIXTURES)

pytest_plugins = ["netns_fixtures.pytest_plugin"]

# nlportmap keeps one lock file per network namespace (nlportmap.lock); tests make
# hundreds of namespaces, so their locks live in a private directory removed at exit
# instead of accumulating in /run/nlportmap.
if "NLPORTMAP_LOCK_DIR" not in os.environ:
    _LOCKS = tempfile.mkdtemp(prefix="nlpm-test-locks-")
    os.environ["NLPORTMAP_LOCK_DIR"] = _LOCKS
    atexit.register(shutil.rmtree, _LOCKS, True)

# Per-attachment records (nlportmap.records) likewise: a private state directory.
if "NLPORTMAP_STATE_DIR" not in os.environ:
    _STATE = tempfile.mkdtemp(prefix="nlpm-test-state-")
    os.environ["NLPORTMAP_STATE_DIR"] = _STATE
    atexit.register(shutil.rmtree, _STATE, True)
