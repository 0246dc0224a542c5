"""Backend selection: which of ``nft/`` or ``ipt/`` applies a plan.

Order (differs from upstream, which defaults to iptables whenever the
``iptables`` binary works):

1. an explicit ``"backend"`` in the config wins;
2. iptables-only options (``externalSetMarkChain``, iptables-style
   conditions) select iptables;
3. otherwise nftables when nf_tables answers over netlink, else iptables.

The conflict check between options of the two styles (upstream's error text)
is done by :func:`nlportmap.netconf.check_backend_conflict`.  Every backend has
the same seam, :class:`Backend` (upstream's forwardPorts/checkPorts/unforwardPorts
plus GC, listing and a usability probe); nothing outside a backend knows kernel
objects.
"""
from __future__ import annotations

from .errors import InternalError, NotAvailable

TYPE_CHECKING = False  # annotations only: 'typing' costs ~2 ms of a cold start
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Protocol

    from .netconf import ConfMixin as Conf
    from .nft.wire import NetfilterSocket
    from .plan import Listed, Plan

    class Backend(Protocol):
        """The backend seam.  Every method applies, verifies or removes a :class:`Plan`
        as one transaction per address family; errors are :class:`~nlportmap.errors.CNIError`."""

        #: "nftables" or "iptables"
        name: str
        #: capability: GC spares state created after the GC started (``started_ms``)
        gc_spares_new: bool

        def forward(self, plan: Plan, conflict_policy: str = "replace") -> int:
            """ADD: install ``plan`` (replacing this owner's previous state); ops committed."""

        def check(self, plan: Plan) -> None:
            """CHECK: raise naming each missing or wrong object."""

        def unforward(self, plan: Plan, removed: list[tuple[int, str, int, str]] | None = None) -> int:
            """DEL: remove what ``plan.owner`` owns; never fails for missing state.  Appends
            ``(family, proto, host port, pod IP)`` of each forward it removed to ``removed``
            (read from the kernel objects themselves: DEL may come without prevResult)."""

        def gc(self, valid_tags: set[str], network: str | None = None, started_ms: int | None = None) -> int:
            """GC: remove ``network``'s state whose owner tag is not in ``valid_tags``."""

        def list(self) -> list[Listed]:
            """Every forward on this node (operator path; may dump)."""

        def usable(self) -> str | None:
            """None if this backend can apply transactions here, else why not."""

        def close(self) -> None:
            """Release sockets."""


def _quiet(msg: str) -> None:
    pass


def configured_backend(conf: Conf) -> str | None:
    """The backend a configuration names by itself: its ``backend``, else ``"iptables"`` when
    it has iptables-only options, else None (auto-detection decides; :func:`choose`)."""
    return conf.backend or ("iptables" if _iptables_specific(conf) else None)


def _iptables_specific(conf: Conf) -> bool:
    if conf.externalSetMarkChain is not None:
        return True
    return any(c and c[0] and c[0][0] in "-!" for c in (conf.conditionsV4, conf.conditionsV6))


def make_backend(name: str) -> Backend:
    """A new backend by name (``nftables``/``iptables``); NotAvailable, InternalError."""
    if name == "nftables":
        from .nft.backend import NftBackend
        return NftBackend()
    if name == "iptables":
        try:
            from .ipt.backend import IptBackend
        except ImportError as e:
            raise NotAvailable(f"iptables backend is not available: {e}") from None
        return IptBackend()
    raise InternalError(f'unrecognized backend "{name}"')


def _nft_probe(sock: NetfilterSocket | None = None) -> tuple[str | None, Backend | None]:
    """(reason or None, the probed NftBackend or None): nf_tables answers GETGEN here?

    GETGEN needs CAP_NET_ADMIN in the netns and a kernel with nf_tables, so it
    is a sufficient and cheap probe; the backend (and its socket, or ``sock`` if
    given) is reused.
    """
    from .nft.backend import NftBackend
    b = NftBackend(sock)
    try:
        b.sock.genid()
        return None, b
    except OSError as e:
        b.close()
        return f"nf_tables not reachable over netlink: {e}", None


def choose(conf: Conf, probe: Callable[[], tuple[str | None, Backend | None]] | None = None,
           sock: NetfilterSocket | None = None, log: Callable[[str], None] | None = None
           ) -> tuple[str, Backend | None]:
    """(backend name, an already probed backend or None) for ``conf``: the one place that
    decides which backend serves a configuration (plugin, daemon, cli and restore call it).

    ``log``: called with one line naming the choice and why (NLPORTMAP_DEBUG), or None.
    ``probe``: callable returning ``(reason | None, backend | None)``
    (default :func:`_nft_probe`; the daemon passes a memoized one).
    """
    say = log or _quiet
    if conf.backend:
        say(f"backend {conf.backend} (explicit in config)")
        return conf.backend, None
    if _iptables_specific(conf):
        say("backend iptables (config has iptables-only options)")
        return "iptables", None
    reason, backend = probe() if probe else _nft_probe(sock)
    if reason is None:
        say("backend nftables (nf_tables answers over netlink)")
        return "nftables", backend
    say(f"backend iptables ({reason})")
    return "iptables", None


def select_backend(conf: Conf, probe: Callable[[], tuple[str | None, Backend | None]] | None = None,
                   sock: NetfilterSocket | None = None, log: Callable[[str], None] | None = None) -> Backend:
    """Instantiate the backend for ``conf``; checks the option/backend conflict.
    ``sock``: an open NETLINK_NETFILTER socket for the nftables backend to use."""
    name, backend = choose(conf, probe, sock, log)
    from .netconf import check_backend_conflict
    check_backend_conflict(conf, name)
    return backend if backend is not None else make_backend(name)


def all_backends(conf: Conf) -> list[Backend]:
    """Every backend that may hold state on this node (for GC): nftables always, iptables if present."""
    out = [make_backend("nftables")]
    try:
        out.append(make_backend("iptables"))
    except Exception:
        pass
    return out


def backend_status(conf: Conf) -> None:
    """STATUS: raise NotAvailable (code 50) naming what is missing, else return."""
    name = configured_backend(conf)
    candidates = [name] if name else ["nftables", "iptables"]
    reasons = []
    for n in candidates:
        try:
            b = make_backend(n)
            r = b.usable()
        except Exception as e:
            r = str(e)
        if r is None:
            return
        reasons.append(f"{n}: {r}")
    raise NotAvailable("no usable backend: " + "; ".join(reasons))


def with_proxy_vips(conf: Conf, plan: Plan) -> Plan:
    """``plan`` with the addresses now on ``conf.service_proxy_interfaces`` (the nftables
    backend's ADD and restore refresh the ``proxy_vips`` set with them).  A failed read
    raises KernelError: going on would leave a new ClusterIP capturable."""
    from .proxyvips import proxy_addresses
    try:
        vips = proxy_addresses(conf.service_proxy_interfaces)
    except OSError as e:
        from .errors import KernelError
        raise KernelError(f"could not read the addresses of serviceProxyInterfaces: {e}") from e
    return plan.replace(proxy_vips=vips)
