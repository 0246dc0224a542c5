"""The error hierarchy, and the one place that maps it to CNI error codes.

Every failure the plugin reports is a :class:`CNIError`.  Its ``code`` is the
well-known CNI error code (CNI spec 1.1.0, section "Error" / "Well-known Error
Codes"; code 8 comes from the Go CNI library, 999 is upstream's generic
``ErrInternal``).  :func:`error_json` renders the spec's error object, which the
plugin prints on **stdout** and follows with exit status 1.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import TypeVar

    _C = TypeVar("_C")
    _R = TypeVar("_R")

__all__ = [
    "CNIError",
    "DecodeFailure",
    "IOFailure",
    "IncompatibleVersion",
    "InternalError",
    "InvalidConfig",
    "InvalidEnvironment",
    "InvalidNetns",
    "KernelError",
    "LimitedConnectivity",
    "NotAvailable",
    "TryAgainLater",
    "UnknownContainer",
    "UnsupportedField",
    "error_json",
    "kernel_boundary",
]


class CNIError(Exception):
    """Base class: a CNI error object ``{code, msg, details}``.

    ``code`` is a class attribute (int); ``msg`` a one-line human message;
    ``details`` optional free text (e.g. the offending value).
    """

    code: int = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str | None = None) -> dict[str, str | int]:
        """The spec's error object; ``cniVersion`` only when known."""
        d: dict[str, str | int] = {}
        if cni_version:
            d["cniVersion"] = cni_version
        d["code"] = self.code
        d["msg"] = self.msg
        if self.details:
            d["details"] = self.details
        return d


class IncompatibleVersion(CNIError):
    code = 1


class UnsupportedField(CNIError):
    code = 2


class UnknownContainer(CNIError):
    code = 3


class InvalidEnvironment(CNIError):
    code = 4


class IOFailure(CNIError):
    code = 5


class DecodeFailure(CNIError):
    code = 6


class InvalidConfig(CNIError):
    """Code 7: the network configuration is invalid (names the field and value)."""
    code = 7


class InvalidNetns(CNIError):
    code = 8


class TryAgainLater(CNIError):
    """Code 11: transient, e.g. the nftables generation kept moving."""
    code = 11


class NotAvailable(CNIError):
    """Code 50 (STATUS): plugin cannot service ADD."""
    code = 50


class LimitedConnectivity(CNIError):
    """Code 51 (STATUS): not available, existing containers may be affected."""
    code = 51


class InternalError(CNIError):
    code = 999


class KernelError(InternalError):
    """The kernel refused a transaction; ``msg`` names the object and errno."""


def error_json(err: CNIError, cni_version: str | None = None) -> str:
    """Serialise ``err`` as the JSON text printed on stdout (4-space indent, like upstream)."""
    from .jsonio import dumps
    return dumps(err.to_dict(cni_version), indent=4)


_BOUNDARY_WORDS = {"forward": "ADD", "unforward": "DEL", "check": "CHECK", "gc": "GC", "list": "list"}


def kernel_boundary(backend: str) -> Callable[[type[_C]], type[_C]]:
    """Class decorator: the one error boundary of a backend.  Any ``OSError`` that escapes
    its ``forward``/``unforward``/``check``/``gc``/``list`` -- a netlink read that failed,
    a tool that could not run -- becomes a :class:`KernelError` naming the backend and the
    command (code 999), so no raw errno text reaches a runtime unexplained.  CNI errors
    the backend raised itself pass through unchanged."""
    def decorate(cls: type[_C]) -> type[_C]:
        for name, word in _BOUNDARY_WORDS.items():
            method = getattr(cls, name, None)
            if method is not None:
                setattr(cls, name, _guarded(method, f"{backend} {word}"))
        return cls
    return decorate


def _guarded(method: Callable[..., _R], what: str) -> Callable[..., _R]:
    def guarded(*args: object, **kwargs: object) -> _R:
        try:
            return method(*args, **kwargs)
        except CNIError:
            raise
        except OSError as e:
            text = e.strerror or str(e)  # without the "[Errno N]" prefix
            raise KernelError(f"{what}: {text}") from e
    guarded.__name__ = method.__name__
    guarded.__qualname__ = method.__qualname__
    guarded.__doc__ = method.__doc__
    return guarded
