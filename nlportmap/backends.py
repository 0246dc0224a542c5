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

import os
import sys

from .errors import InternalError, NotAvailable


def _log(msg: str) -> None:
    if os.environ.get("NLPORTMAP_DEBUG"):
        sys.stderr.write(f"nlportmap: {msg}\n")


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


def choose(conf) -> str:
    """The backend name for ``conf`` (may probe nf_tables over netlink)."""
    if conf.backend:
        _log(f"backend {conf.backend} (explicit in config)")
        return conf.backend
    if _iptables_specific(conf):
        _log("backend iptables (config has iptables-only options)")
        return "iptables"
    from .nft.backend import NftBackend
    b = NftBackend()
    try:
        reason = b.usable()
    finally:
        b.close()
    if reason is None:
        _log("backend nftables (nf_tables answers over netlink)")
        return "nftables"
    _log(f"backend iptables ({reason})")
    return "iptables"


def select_backend(conf):
    """Instantiate the backend for ``conf``; checks the option/backend conflict."""
    name = choose(conf)
    try:
        from .config import check_backend_conflict
    except ImportError:  # pragma: no cover
        check_backend_conflict = None
    if check_backend_conflict is not None:
        check_backend_conflict(conf, name)
    return make_backend(name)


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
