"""The CNI skeleton: environment, stdin, version checks, dispatch, output.

Mirrors the Go library's ``pkg/skel`` (containernetworking/cni v1.3.0) as
described in reference portmap-behaviour.md §1.2-§1.5, so that runtimes see
the same error codes in the same situations.  Pure apart from reading the
``environ``/``stdin`` it is given, writing to the given streams and the
``stat`` calls of the same-netns check.

Processing order of :func:`run`:

1. Environment (§1.2), variables in the order ``CNI_COMMAND``,
   ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``,
   ``CNI_PATH``, ``CNI_NETNS_OVERRIDE``.  A present variable that the command
   requires is validated as soon as it is read (container ID, interface
   name; code 4), so that error wins over variables missing later; then
   missing ones are reported together: ``required env variables [A,B]
   missing`` (code 4).  No ``CNI_COMMAND`` at all: the about text goes to
   stderr and the exit status is 0.
2. ``VERSION``: print ``{"cniVersion":"1.1.0","supportedVersions":[...]}`` and
   a newline; nothing else is read or validated (runtimes send
   ``CNI_NETNS=dummy`` etc.; runtimes.md).
3. Read all of stdin (code 5 ``error reading from stdin: ...``).
4. stdin must be a JSON object (code 6 ``error unmarshall network config:
   ...``) with a non-empty ``name`` (code 7 ``missing network name``) made of
   ``[a-zA-Z0-9][a-zA-Z0-9_.-]*`` (code 7 ``invalid characters found in
   network name``, details = name).
5. Unknown command: code 4 ``unknown CNI_COMMAND: X``.
6. Version (§1.3 step 4): ``cniVersion`` (absent/empty = ``0.1.0``; not a
   string: code 6).  ADD/DEL: must be one of :data:`SUPPORTED_VERSIONS`
   (code 1 ``incompatible CNI versions``, details ``config is "X", plugin
   supports [...]``).  CHECK: >= 0.4.0, GC/STATUS: >= 1.1.0 (code 1 ``config
   version does not allow CHECK`` / ``plugin version does not allow CHECK``;
   unparsable version: code 6), then the same exact-match check.
7. :func:`nlportmap.config.parse_config` (codes 6/7).
8. ADD without prevResult: ``must be called as chained plugin``; CHECK
   without prevResult: ``Required prevResult missing``.  Both code 7 here
   (upstream: 999) -- a chained plugin configured without a predecessor is an
   invalid network configuration.  DEL never needs a prevResult.
9. Same-netns check for ADD, DEL and CHECK (code 8 ``plugin's netns and netns
   from CNI_NETNS should not be the same``) -- **before** the handler runs;
   upstream checks after ADD/DEL did their work (§1.3 step 6), which leaves
   rules behind on failure.  Skipped when ``CNI_NETNS_OVERRIDE`` is ``1`` or
   ``true`` (any case) or when ``CNI_NETNS`` (or our own namespace) cannot
   be stat'ed.
10. The handler.  ADD prints the returned result object (JSON, 4-space
    indent, trailing newline).  DEL/CHECK/GC/STATUS print nothing.

Errors: a :class:`~nlportmap.errors.CNIError` is printed on **stdout** as the
spec's error object (with ``cniVersion`` when the config's version is known
and supported) and the exit status is 1; any other exception becomes code
999 with the exception text (one line on stderr, no traceback on stdout).

Our addition: a container ID longer than :data:`CONTAINER_ID_MAX` characters
is rejected (code 4, details = the ID) -- the ownership tag stored in kernel
comments (``<containerID>/<ifname>``, :mod:`nlportmap.plan`) must fit in
:data:`nlportmap.plan.OWNER_COMMENT_MAX` bytes intact.
"""
from __future__ import annotations

import posix

from . import __version__, jsonio
from .errors import (CNIError, DecodeFailure, IncompatibleVersion, InternalError,
                     InvalidConfig, InvalidEnvironment, InvalidNetns, IOFailure, error_json)
from .gojson import ci_get, json_type
from .versions import CURRENT_VERSION, SUPPORTED_VERSIONS, version_output

# 'typing' costs ~2 ms of a cold start: annotations only (mypy treats this name as True)
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping
    from typing import Any, Protocol, TextIO

    class ByteSource(Protocol):
        """Where the config comes from: ``read()`` all of it (an OSError is code 5)."""

        def read(self) -> bytes | str: ...

    from .config import NetConf
    from .netconf import FastConf
else:
    Protocol = object

__all__ = [
    "ABOUT",
    "COMMANDS",
    "CONTAINER_ID_MAX",
    "CURRENT_VERSION",
    "SUPPORTED_VERSIONS",
    "Handlers",
    "Request",
    "config_version",
    "parse_version",
    "run",
    "validate_container_id",
    "validate_ifname",
    "validate_network_name",
    "version_output",
]

#: Commands dispatched to handlers (plus ``VERSION``); CNI spec 1.1.0 "Parameters".
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
#: Longest accepted ``CNI_CONTAINERID`` (characters); 200 + "/" + 15-byte ifname fits the
#: 250-byte owner comment (plan.OWNER_COMMENT_MAX).  Runtimes use 64 hex digits.
CONTAINER_ID_MAX = 200
#: First line of the about text printed when ``CNI_COMMAND`` is unset (same as ``nlportmap`` CLI).
ABOUT = f"CNI portmap plugin nlportmap {__version__}"

# (variable, commands requiring it, validator) -- order matters for messages (§1.2).
_ENV_VARS: tuple[tuple[str, frozenset[str], str | None], ...] = (
    ("CNI_COMMAND", frozenset(COMMANDS), None),
    ("CNI_CONTAINERID", frozenset({"ADD", "CHECK", "DEL"}), "container_id"),
    ("CNI_NETNS", frozenset({"ADD", "CHECK"}), None),
    ("CNI_IFNAME", frozenset({"ADD", "CHECK", "DEL"}), "ifname"),
    ("CNI_ARGS", frozenset(), None),
    ("CNI_PATH", frozenset(COMMANDS), None),
    ("CNI_NETNS_OVERRIDE", frozenset(), None),
)

# Go's unicode.IsSpace for Latin-1; beyond that Python's notion matches closely enough.
_GO_LATIN1_SPACE = "\t\n\v\f\r \x85\xa0"


class Request:
    """One plugin invocation, as handed to a :class:`Handlers` method.

    Strings are the raw environment values (``""`` when unset).  ``stdin`` is
    the bytes read; ``conf`` the parsed configuration (always set for the
    commands that reach a handler); ``netns_override`` is ``True`` when
    ``CNI_NETNS_OVERRIDE`` is ``1``/``true``.
    """

    __slots__ = (
        "args",
        "command",
        "conf",
        "container_id",
        "ifname",
        "netns",
        "netns_override",
        "path",
        "settings",
        "stdin",
    )

    def __init__(self, *, command: str, container_id: str, netns: str, ifname: str, args: str, path: str,
                 stdin: bytes, conf: NetConf | FastConf, netns_override: bool,
                 settings: Mapping[str, str] | None = None) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path
        self.stdin = stdin
        self.conf = conf
        self.netns_override = netns_override
        #: the request's ``NLPORTMAP_*`` variables (our settings travel with the request,
        #: so a daemon serves callers whose settings differ from its own)
        self.settings: Mapping[str, str] = settings if settings is not None else {}


class Handlers(Protocol):
    """What the command implementations provide.  Raise a ``CNIError`` to report failure."""

    def add(self, req: Request) -> dict[str, Any]:
        """Do ADD; return the result object to print (normally ``req.conf.echo_result()``)."""

    def delete(self, req: Request) -> None:
        """Do DEL (must succeed when there is nothing to remove)."""

    def check(self, req: Request) -> None:
        """Do CHECK (raise if the expected state is missing)."""

    def gc(self, req: Request) -> None:
        """Do GC (``req.conf.valid_attachments`` lists what to keep)."""

    def status(self, req: Request) -> None:
        """Do STATUS (raise NotAvailable/LimitedConnectivity when not ready)."""


# --- validators (CNI library pkg/utils) ---------------------------------------------

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")


def _valid_name(value: str) -> bool:
    r"""``^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`` (CNI pkg/utils), without ``re`` (~4 ms to import)."""
    return bool(value) and value[0] in _ALNUM and _NAME_CHARS.issuperset(value)


def validate_container_id(container_id: str) -> None:
    """Check ``CNI_CONTAINERID`` (CNI ``utils.ValidateContainerID`` plus our length limit).

    Raises :class:`~nlportmap.errors.InvalidEnvironment` (code 4, details =
    the ID): ``invalid characters in containerID`` unless it matches
    ``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$``; ``containerID is too long: <n>
    characters (at most 200)`` beyond :data:`CONTAINER_ID_MAX`.
    """
    if not _valid_name(container_id):
        raise InvalidEnvironment("invalid characters in containerID", container_id)
    if len(container_id) > CONTAINER_ID_MAX:
        raise InvalidEnvironment(f"containerID is too long: {len(container_id)} characters "
                                 f"(at most {CONTAINER_ID_MAX})", container_id)


def validate_ifname(ifname: str) -> None:
    """Check ``CNI_IFNAME`` like CNI ``utils.ValidateInterfaceName`` (Linux ``dev_valid_name``).

    Raises :class:`~nlportmap.errors.InvalidEnvironment` (code 4):
    ``interface name is empty``; ``interface name is too long`` (more than 15
    bytes, details ``interface name should be less than 16 characters``);
    ``interface name is . or ..``; ``interface name contains / or : or
    whitespace characters``.
    """
    if not ifname:
        raise InvalidEnvironment("interface name is empty")
    if len(ifname.encode("utf-8", "surrogateescape")) > 15:
        raise InvalidEnvironment("interface name is too long",
                                 "interface name should be less than 16 characters")
    if ifname in (".", ".."):
        raise InvalidEnvironment("interface name is . or ..")
    for ch in ifname:
        if ch in "/:" or ch in _GO_LATIN1_SPACE or (ord(ch) > 0xFF and ch.isspace()):
            raise InvalidEnvironment("interface name contains / or : or whitespace characters")


def validate_network_name(name: str) -> None:
    """Check the config's ``name`` (CNI ``utils.ValidateNetworkName``; code 7, details = name)."""
    if not name:
        raise InvalidConfig("missing network name")
    if not _valid_name(name):
        raise InvalidConfig("invalid characters found in network name", name)


_VALIDATORS: dict[str, Callable[[str], None]] = {
    "container_id": validate_container_id,
    "ifname": validate_ifname,
}


# --- versions (CNI library pkg/version) ---------------------------------------------

_DIGITS = frozenset("0123456789")


def _atoi(part: str, which: str) -> int:
    digits = part[1:] if part[:1] in ("+", "-") else part
    if not digits or not _DIGITS.issuperset(digits):
        raise DecodeFailure(f'failed to convert {which} version part "{part}": '
                            f'strconv.Atoi: parsing "{part}": invalid syntax')
    value = int(part)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise DecodeFailure(f'failed to convert {which} version part "{part}": '
                            f'strconv.Atoi: parsing "{part}": value out of range')
    return value


def parse_version(version: str) -> tuple[int, int, int]:
    """Parse ``"major[.minor[.micro]]"`` like Go ``version.ParseVersion``.

    Missing parts are 0.  Raises :class:`~nlportmap.errors.DecodeFailure`
    (code 6) with Go's texts (``invalid version "": the version is empty``,
    ``invalid version "1.2.3.4": too many parts``, ``failed to convert major
    version part "x": ...``).
    """
    if version == "":
        raise DecodeFailure(f'invalid version "{version}": the version is empty')
    parts = version.split(".")
    if len(parts) >= 4:
        raise DecodeFailure(f'invalid version "{version}": too many parts')
    nums = [_atoi(p, w) for p, w in zip(parts, ("major", "minor", "micro")[:len(parts)], strict=True)]
    nums += [0] * (3 - len(nums))
    return nums[0], nums[1], nums[2]


def config_version(obj: dict[str, Any]) -> str:
    """The config's ``cniVersion`` like Go's ``ConfigDecoder``: absent/null/empty -> ``"0.1.0"``.

    Raises :class:`~nlportmap.errors.DecodeFailure` (code 6) if it is not a string.
    """
    value = ci_get(obj, "cniVersion")
    if value is None or value == "":
        return "0.1.0"
    if not isinstance(value, str):
        raise DecodeFailure("decoding version from network config: cniVersion: "
                            f"expected a string, got {json_type(value)}")
    return value


def _require_supported(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        listed = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        raise IncompatibleVersion("incompatible CNI versions",
                                  f'config is "{version}", plugin supports [{listed}]')


def _require_at_least(version: str, minimum: str, command: str) -> None:
    have = parse_version(version)
    if have < parse_version(minimum):
        raise IncompatibleVersion(f"config version does not allow {command}")
    if not any(parse_version(v) >= have for v in SUPPORTED_VERSIONS):
        raise IncompatibleVersion(f"plugin version does not allow {command}")
    _require_supported(version)


# --- netns ---------------------------------------------------------------------------

def _same_netns(path: str) -> bool:
    """True if ``path`` is the network namespace this process runs in (unstatable: False)."""
    try:
        theirs = posix.stat(path)
        ours = posix.stat("/proc/self/ns/net")
    except (OSError, ValueError):
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


# --- the skeleton ---------------------------------------------------------------------

def decode_json(data: bytes, prefix: str) -> object:
    """Decode stdin's JSON: the lean decoder (:mod:`nlportmap.jsonio`) when it accepts the
    document, else msgspec, whose verdict and message stand (DecodeFailure, code 6,
    ``<prefix><msgspec's message>``)."""
    try:
        return jsonio.loads(data)
    except (jsonio.Unsupported, RecursionError):
        pass
    import msgspec
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as err:
        raise DecodeFailure(f"{prefix}{err}") from None


def _decode_stdin(data: bytes) -> dict[str, Any]:
    obj = decode_json(data, "error unmarshall network config: ")
    if obj is None:  # Go: null decodes into the struct as a no-op
        obj = {}
    if not isinstance(obj, dict):
        raise DecodeFailure("error unmarshall network config: "
                            f"cannot unmarshal {json_type(obj)} into a network configuration object")
    name = ci_get(obj, "name")
    if name is not None and not isinstance(name, str):
        raise DecodeFailure("error unmarshall network config: name: "
                            f"expected a string, got {json_type(name)}")
    validate_network_name(name or "")
    return obj


class _State:
    cni_version: str | None = None


def _write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


def run(environ: Mapping[str, str], stdin: ByteSource, stdout: TextIO, stderr: TextIO,
        handlers: Handlers, *, about: str = ABOUT,
        same_netns: Callable[[str], bool] = _same_netns, lean: bool = False) -> int:
    """Run one CNI invocation; returns the exit status (0 or 1).

    ``environ``: the ``CNI_*`` variables (e.g. ``os.environ``); ``stdin``: a
    binary stream with the config; ``stdout``/``stderr``: text streams;
    ``handlers``: the command implementations; ``about``: first line of the
    text printed when ``CNI_COMMAND`` is unset; ``same_netns``: the netns
    comparison (injectable for tests); ``lean``: try the cold decoder
    (:func:`nlportmap.netconf.decode_fast`) before msgspec's :func:`~nlportmap.config.parse_config`
    (the exec'd plugin does; results and errors are the same either way).  Never raises
    for bad input: every failure is printed as a CNI error object on stdout (see module
    docstring).
    """
    state = _State()
    try:
        return _run(environ, stdin, stdout, stderr, handlers, about, same_netns, state, lean)
    except CNIError as err:
        return _fail(stdout, err, state.cni_version)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            _write(stderr, f"nlportmap: internal error: {type(exc).__name__}: {text}\n")
        except Exception:
            pass
        return _fail(stdout, InternalError(text), state.cni_version)


def _fail(stdout: TextIO, err: CNIError, cni_version: str | None) -> int:
    try:
        _write(stdout, error_json(err, cni_version) + "\n")
    except Exception:
        pass
    return 1


def _run(environ: Mapping[str, str], stdin: ByteSource, stdout: TextIO, stderr: TextIO,
         handlers: Handlers, about: str, same_netns: Callable[[str], bool], state: _State,
         lean: bool = False) -> int:
    command = environ.get("CNI_COMMAND", "") or ""
    values: dict[str, str] = {}
    missing: list[str] = []
    for var, required_by, validator in _ENV_VARS:
        value = environ.get(var, "") or ""
        values[var] = value
        required = command in required_by
        if not value:
            if required or var == "CNI_COMMAND":
                missing.append(var)
        elif required and validator:
            _VALIDATORS[validator](value)
    if missing:
        if not command:
            _write(stderr, f"{about}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
            return 0
        raise InvalidEnvironment(f"required env variables [{','.join(missing)}] missing")

    if command == "VERSION":
        _write(stdout, version_output())
        return 0

    try:
        data = stdin.read() if stdin is not None else b""
    except (OSError, ValueError) as err:
        raise IOFailure(f"error reading from stdin: {err}") from None
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    obj = _decode_stdin(data)

    if command not in COMMANDS:
        raise InvalidEnvironment(f"unknown CNI_COMMAND: {command}")

    version = config_version(obj)
    if command in ("ADD", "DEL"):
        _require_supported(version)
    else:
        _require_at_least(version, "0.4.0" if command == "CHECK" else "1.1.0", command)
    state.cni_version = version

    conf: Any = None
    if lean:
        from .netconf import decode_fast
        conf = decode_fast(obj, command)
    if conf is None:
        from .config import parse_config
        conf = parse_config(obj, command)
    for line in conf.warnings:
        _write(stderr, f"nlportmap: warning: {line}\n")

    if command == "ADD" and conf.prevResult is None:
        raise InvalidConfig("must be called as chained plugin")
    if command == "CHECK" and conf.prevResult is None:
        raise InvalidConfig("Required prevResult missing")

    override = values["CNI_NETNS_OVERRIDE"]
    netns_override = override == "1" or override.upper() == "TRUE"
    if command in ("ADD", "DEL", "CHECK") and not netns_override and values["CNI_NETNS"] \
            and same_netns(values["CNI_NETNS"]):
        raise InvalidNetns("plugin's netns and netns from CNI_NETNS should not be the same")

    req = Request(command=command, container_id=values["CNI_CONTAINERID"],
                  netns=values["CNI_NETNS"], ifname=values["CNI_IFNAME"],
                  args=values["CNI_ARGS"], path=values["CNI_PATH"], stdin=bytes(data),
                  conf=conf, netns_override=netns_override,
                  settings={k: v for k, v in environ.items() if k.startswith("NLPORTMAP_")})
    from .settings import using
    with using(req.settings):  # the request's NLPORTMAP_* (lock and record dirs) below here
        if command == "ADD":
            result: Any = handlers.add(req)
            if not isinstance(result, dict):
                raise InternalError(f"ADD handler returned {type(result).__name__}, not a result object")
            _write(stdout, jsonio.dumps(result, indent=4) + "\n")
        elif command == "DEL":
            handlers.delete(req)
        elif command == "CHECK":
            handlers.check(req)
        elif command == "GC":
            handlers.gc(req)
        else:
            handlers.status(req)
    return 0
