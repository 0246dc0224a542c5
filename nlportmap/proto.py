"""The shim <-> daemon protocol's constants and namespace identity (built-in modules only).

Shared by :mod:`nlportmap.shim` (client, on the cold exec path) and
:mod:`nlportmap.daemon` (server), so that neither imports the other.
"""
import posix as _os  # os's C core: 'import os' costs ~1 ms of a ~9 ms interpreter start

__all__ = ["DEFAULT_SOCKET", "MAGIC", "MAX_FRAME", "PROTOCOL_VERSION", "netns_identity"]

DEFAULT_SOCKET = "/run/nlportmap/daemon.sock"
PROTOCOL_VERSION = 1
MAGIC = b"NLPM"
MAX_FRAME = 64 << 20


def netns_identity(pid: str = "self") -> tuple[int, int]:
    """(st_dev, st_ino) of ``/proc/<pid>/ns/net``: equal pairs = same network namespace."""
    st = _os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino
