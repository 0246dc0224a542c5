"""The CNI command handlers: request -> plan -> backend -> side effects.

:class:`Plugin` implements the handler seam that :func:`nlportmap.skel.run`
calls (``add``, ``delete``, ``check``, ``gc``, ``status``).  It is the only
place that chooses a backend (:mod:`nlportmap.backends`); it knows no kernel
objects.  Per-phase timings (seconds) are kept in ``Plugin.timings`` and printed
to stderr as one JSON line when ``NLPORTMAP_DEBUG`` is set.
"""
from __future__ import annotations

import sys
import time

from . import teardown
from .errors import InternalError

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    import _socket as socket
    from collections.abc import Awaitable, Callable
    from typing import Any, TypeVar

    from .backends import Backend
    from .netconf import ConfMixin as Conf
    from .nft.wire import NetfilterSocket
    from .plan import Plan
    from .skel import Request

    _T = TypeVar("_T")
    #: (family, proto, host port, pod IP): a forward whose UDP/SCTP flows DEL deletes
    Flow = tuple[int, str, int, str]


class Plugin:
    """CNI handlers.  ``backend`` may be injected (tests, daemon); else chosen per request."""

    def __init__(self, backend: Backend | None = None, t0: float | None = None, cold: bool = False) -> None:
        self._backend = backend
        #: an exec'd process (no event loop of its own): side effects run one after another
        self._cold = cold
        self._sock: NetfilterSocket | None = None
        #: netlink sockets whose release is left to process exit (cold path)
        self._held: list[socket.socket] = []
        #: the request's NLPORTMAP_* settings (Request.settings), set by each handler
        self._settings: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.last_plan: Plan | None = None
        #: perf_counter() when main() started: the time until a handler runs is "decode"
        self._t0 = t0
        #: wall clock (s) of that moment: GC spares elements created after it
        self._wall0 = time.time() - (time.perf_counter() - t0 if t0 is not None else 0.0)

    def _begin(self, req: Request) -> float:
        self._settings = dict(getattr(req, "settings", None) or {})
        t = time.perf_counter()
        if self._t0 is not None:
            self.timings["decode"] = t - self._t0
        return t

    # ------------------------------------------------------------ helpers
    def _lap(self, name: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (t - t0)
        return t

    def _debug(self) -> bool:
        return bool(self._settings.get("NLPORTMAP_DEBUG"))

    def _log(self, msg: str) -> None:
        sys.stderr.write(f"nlportmap: {msg}\n")

    def backend_for(self, conf: Conf) -> Backend:
        if self._backend is not None:
            return self._backend
        from .backends import select_backend
        sock = self._nft_socket() if self._cold else None  # one socket per exec'd process
        self._backend = select_backend(conf, sock=sock, log=self._log if self._debug() else None)
        return self._backend

    @property
    def holds_netlink(self) -> bool:
        """This request still holds NETLINK_NETFILTER sockets.  Releasing one waits for
        nf_tables' RCU-deferred cleanup whenever anyone in this netns committed deletions in
        the last few milliseconds (measured 5-20 ms; the kernel's NETLINK_URELEASE notifier
        flushes that work), so an exec'd process exits and leaves the release to a child
        (:func:`nlportmap.shim._exit_detached`)."""
        return self._sock is not None or bool(self._held)

    def _plan(self, req: Request, prev: dict[str, Any] | None) -> Plan:
        from .plan import Owner, make_plan
        from .result import container_ips
        conf = req.conf
        ips: dict[int, str | None] = container_ips(prev, req.ifname) if prev else {4: None, 6: None}
        plan = make_plan(conf, ips, Owner(req.container_id, req.ifname, conf.name))
        self.last_plan = plan
        return plan

    def _prev(self, req: Request, required: str | None) -> dict[str, Any] | None:
        conf = req.conf
        if conf.prevResult is None:
            if required:
                raise InternalError(required)
            return None
        return conf.echo_result()  # decoded and validated once, at parse time

    def _required_prev(self, req: Request, why: str) -> dict[str, Any]:
        """:meth:`_prev` of a command that needs prevResult (raises ``why`` without one)."""
        prev = self._prev(req, why)
        if prev is None:  # pragma: no cover - _prev raised already
            raise InternalError(why)
        return prev

    def _report(self, command: str) -> None:
        path = self._settings.get("NLPORTMAP_TIMINGS_FILE")
        if not (path or self._debug()):
            return
        from .jsonio import dumps
        line = dumps({"nlportmap": command, "timings_ms": {
            k: round(v * 1000, 3) for k, v in self.timings.items()}}, separators=(", ", ": ")) + "\n"
        if self._debug():
            sys.stderr.write(line)
        if path:
            with open(path, "a") as f:
                f.write(line)

    # ------------------------------------------------------------ commands
    def add(self, req: Request) -> dict[str, Any]:
        """ADD: install the mappings, then side effects; returns prevResult to echo."""
        t = self._begin(req)
        prev = self._required_prev(req, "must be called as chained plugin")
        plan = self._plan(req, prev)
        t = self._lap("plan", t)
        if plan.forwards:
            if req.conf.hostPortListeners == "reject":
                self._check_listeners(req.conf, plan)
                t = self._lap("listener_check", t)
            backend = self.backend_for(req.conf)
            t = self._lap("backend_select", t)
            if getattr(backend, "name", "") == "nftables":  # iptables: kube-proxy's ACCEPT comes first
                from .backends import with_proxy_vips
                plan = self.last_plan = with_proxy_vips(req.conf, plan)
                t = self._lap("proxy_vips", t)
            from .records import Recorded  # written before the commit (nlportmap.records)
            with Recorded(plan, req.conf, getattr(backend, "name", "nftables")):
                t = self._lap("record", t)
                backend.forward(plan, req.conf.conflictPolicy or "replace")
            t = self._lap("transaction", t)
            if plan.conntrack_flush or plan.route_localnet_ip:
                if self._cold:
                    from .sidefx import run_side_effects_sync
                    run_side_effects_sync(plan, self._held)
                else:
                    from .sidefx import run_side_effects
                    self.run_async(run_side_effects, plan)
                t = self._lap("side_effects", t)
        self._report("ADD")
        return prev

    def run_async(self, fn: Callable[..., Awaitable[_T]], *args: object) -> _T:
        """Run coroutine function ``fn`` to completion (a fresh anyio event loop; the
        daemon overrides this with its long-lived loop)."""
        import anyio
        return anyio.run(fn, *args)

    @staticmethod
    def _check_listeners(conf: Conf, plan: Plan) -> None:
        """Opt-in (hostPortListeners: reject): refuse ports a host process listens on."""
        from .errors import InvalidConfig
        from .listeners import RUNTIME_PLACEHOLDERS, conflicts
        allowed = tuple(conf.runtimeListenerProcesses) if conf.runtimeListenerProcesses is not None \
            else RUNTIME_PLACEHOLDERS
        problems = conflicts(plan.forwards, allowed)
        if problems:
            raise InvalidConfig("host port conflict: " + "; ".join(problems), details=problems[0])

    def delete(self, req: Request) -> None:
        """DEL: remove what this attachment owns.  Never fails for missing state."""
        t = self._begin(req)
        try:
            prev = self._prev(req, None)
        except Exception:  # a broken cached result must not block teardown
            prev = None
        plan = self._plan(req, prev)
        t = self._lap("plan", t)
        from .records import Unrecorded, exists
        if self._owns_nothing(plan) and not exists(plan.owner):  # e.g. containerd's second DEL
            self._lap("presence", t)
            self._report("DEL")
            return
        t = self._lap("presence", t)
        backend = self.backend_for(req.conf)
        removed: list[tuple[int, str, int, str]] = []
        with Unrecorded(plan.owner):  # the record goes after the transaction, under the same lock
            backend.unforward(plan, removed=removed)
        t = self._lap("transaction", t)
        if getattr(backend, "name", "") != "nftables":
            self._cleanup_nftables(plan, removed)
        self._delete_pod_flows(plan, removed)
        t = self._lap("conntrack", t)
        if self._settings.get("NLPORTMAP_UPSTREAM_CLEANUP", "1") != "0":
            self._cleanup_upstream(plan, backend)
        self._lap("upstream_cleanup", t)
        self._report("DEL")

    def _owns_nothing(self, plan: Plan) -> bool:
        """True when ``plan.owner`` certainly holds nothing of ours or of upstream portmap's
        (:func:`nlportmap.presence.owns_nothing`); False when unsure."""
        sock = getattr(self._backend, "sock", None) if self._backend is not None else self._nft_socket()
        if sock is None:
            return False
        from .presence import owns_nothing
        return owns_nothing(sock, plan)

    def _nft_socket(self) -> NetfilterSocket | None:
        """This request's NETLINK_NETFILTER socket (shared with the backend it selects), or
        None without nf_tables.  One socket per process: closing one after a commit that
        deleted objects waits for nf_tables' RCU-deferred cleanup (10-20 ms)."""
        if self._sock is None:
            from .nft.wire import NetfilterSocket
            try:
                self._sock = NetfilterSocket()
            except OSError:
                return None
        return self._sock

    def _delete_pod_flows(self, plan: Plan, removed: list[Flow]) -> None:
        """After DEL's commit: delete the UDP/SCTP conntrack entries of the removed
        forwards (pod IP from prevResult, else from what the backend removed), so a
        client's flow does not stay pinned to the deleted pod.  Never fails DEL
        (:func:`nlportmap.sidefx.delete_pod_flows_sync` logs a warning instead)."""
        flows = {fl for fl in (*plan.pod_flows(), *removed) if fl[1] != "tcp"}
        if not flows:
            return
        try:
            if self._cold:
                from .sidefx import delete_pod_flows_sync
                delete_pod_flows_sync(flows, self._held)
            else:
                from .sidefx import delete_pod_flows
                self.run_async(delete_pod_flows, flows)
        except Exception as e:  # a failing DEL wedges teardown
            sys.stderr.write(f"nlportmap: warning: could not delete conntrack entries: {e}\n")

    # DEL's guarded clean-ups (nlportmap.teardown); patchable here
    _cleanup_nftables = staticmethod(teardown.cleanup_nftables)
    _cleanup_upstream = staticmethod(teardown.cleanup_upstream)

    def check(self, req: Request) -> None:
        """CHECK: every element of the plan is present and owned by this attachment."""
        self._begin(req)
        prev = self._required_prev(req, "Required prevResult missing")
        plan = self._plan(req, prev)
        if plan.forwards:
            self.backend_for(req.conf).check(plan)

    def gc(self, req: Request) -> None:
        """GC (CNI 1.1): remove everything not owned by a listed attachment."""
        from .plan import Owner
        valid = {Owner(a.containerID, a.ifname).tag for a in (req.conf.valid_attachments or ())}
        from .backends import all_backends
        started_ms = int(self._wall0 * 1000)
        from .lock import netns_lock
        from .restore import gc_records
        with netns_lock():  # objects, then records, in one hold: a restore never sees half
            for b in all_backends(req.conf):
                b.gc(valid, req.conf.name, started_ms=started_ms)
            gc_records(valid, req.conf.name, started_ms)

    def status(self, req: Request) -> None:
        """STATUS (CNI 1.1): succeed iff the backend this config would use is usable."""
        from .backends import backend_status
        backend_status(req.conf)
