"""The request's settings (its ``NLPORTMAP_*`` variables), where modules below the handlers
read them.

A request carries its settings (:attr:`nlportmap.skel.Request.settings`);
:func:`nlportmap.skel.run` makes them current for the thread that runs its handler with
:func:`using`, and :mod:`nlportmap.lock` and :mod:`nlportmap.records` read their
directories through :func:`get`.  So a resident daemon serves a request with the request's
lock and record directories, not its own.  Outside a request (the operator CLI, the
daemon's healer) :func:`get` falls back to the process environment.  Standard library
only, and cheap: the cold path imports it.
"""
from __future__ import annotations

import _thread
import posix

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

__all__ = ["get", "using"]

_tls = _thread._local()


def get(name: str, default: str = "") -> str:
    """The current request's value of ``name`` (e.g. ``NLPORTMAP_LOCK_DIR``) when the request
    carries it, else the process environment's, else ``default``; an empty value counts as
    unset.  (An exec'd plugin's request carries its whole environment; the daemon puts an
    empty value for a directory its caller did not set, so the caller's default wins over
    the daemon's own setting.)"""
    current: Mapping[str, str] | None = getattr(_tls, "settings", None)
    if current is not None and name in current:
        return current[name] or default
    value = posix.environ.get(name.encode())
    return value.decode("utf-8", "surrogateescape") if value else default


class using:
    """``with using(settings):`` make ``settings`` the current request's for this thread."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = settings
        self._prev: Mapping[str, str] | None = None

    def __enter__(self) -> None:
        self._prev = getattr(_tls, "settings", None)
        _tls.settings = self._settings

    def __exit__(self, *exc: object) -> None:
        _tls.settings = self._prev
