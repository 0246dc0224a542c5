"""Backend selection: which of ``nft/`` or ``ipt/`` applies a plan.

Order (differs from upstream, which defaults to iptables whenever the
``iptables`` binary works):

1. an explicit ``"backend"`` in the config wins;
2. iptables-only options (``externalSetMarkChain``, iptables-style
   conditions) select iptables;
3. otherwise nftables when nf_tables answers over netlink, else iptables.

The conflict check between options of the two styles (upstream's error text)
is done by :func:`nlportmap.config.check_backend_conflict`.  Every backend has
the same seam: ``forward(plan, policy)``, ``check(plan)``, ``unforward(plan)``,
``gc(valid_tags)``, ``list()``, ``usable() -> reason | None``.
"""
from __future__ import annotations

from .errors import InternalError, NotAvailable


def _quiet(msg: str) -> None:
    pass


def _iptables_specific(conf) -> bool:
    if conf.externalSetMarkChain is not None:
        return True
    for c in (conf.conditionsV4, conf.conditionsV6):
        if c and c[0] and c[0][0] in "-!":
            return True
    return False


def make_backend(name: str):
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


def _nft_probe(sock=None):
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


def choose(conf, probe=None, sock=None, log=None) -> tuple[str, object | None]:
    """(backend name, an already probed backend or None) for ``conf``.

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


def select_backend(conf, probe=None, sock=None, log=None):
    """Instantiate the backend for ``conf``; checks the option/backend conflict.
    ``sock``: an open NETLINK_NETFILTER socket for the nftables backend to use."""
    name, backend = choose(conf, probe, sock, log)
    from .netconf import check_backend_conflict
    check_backend_conflict(conf, name)
    return backend if backend is not None else make_backend(name)


def all_backends(conf) -> list:
    """Every backend that may hold state on this node (for GC): nftables always, iptables if present."""
    out = [make_backend("nftables")]
    try:
        out.append(make_backend("iptables"))
    except Exception:  # noqa: BLE001 - iptables absent: nothing of ours can be there
        pass
    return out


def backend_status(conf) -> None:
    """STATUS: raise NotAvailable (code 50) naming what is missing, else return."""
    name = conf.backend or ("iptables" if _iptables_specific(conf) else None)
    candidates = [name] if name else ["nftables", "iptables"]
    reasons = []
    for n in candidates:
        try:
            b = make_backend(n)
            r = b.usable()
        except Exception as e:  # noqa: BLE001
            r = str(e)
        if r is None:
            return
        reasons.append(f"{n}: {r}")
    raise NotAvailable("no usable backend: " + "; ".join(reasons))
