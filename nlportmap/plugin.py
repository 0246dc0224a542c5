"""The CNI command handlers: request -> plan -> backend -> side effects.

:class:`Plugin` implements the handler seam that :func:`nlportmap.skel.run`
calls (``add``, ``delete``, ``check``, ``gc``, ``status``).  It is the only
place that chooses a backend (:mod:`nlportmap.backends`); it knows no kernel
objects.  Per-phase timings (seconds) are kept in ``Plugin.timings`` and printed
to stderr as one JSON line when ``NLPORTMAP_DEBUG`` is set.
"""
from __future__ import annotations

import os
import sys
import time

from .errors import InternalError
from .plan import Owner, make_plan


def _debug() -> bool:
    return bool(os.environ.get("NLPORTMAP_DEBUG"))


class Plugin:
    """CNI handlers.  ``backend`` may be injected (tests, daemon); else chosen per request."""

    def __init__(self, backend=None):
        self._backend = backend
        self.timings: dict[str, float] = {}
        self.last_plan = None

    # ------------------------------------------------------------ helpers
    def _lap(self, name: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (t - t0)
        return t

    def backend_for(self, conf):
        if self._backend is not None:
            return self._backend
        from .backends import select_backend
        self._backend = select_backend(conf)
        return self._backend

    def _plan(self, req, prev: dict | None):
        from .result import container_ips
        conf = req.conf
        ips = container_ips(prev, req.ifname) if prev else {4: None, 6: None}
        plan = make_plan(conf, ips, Owner(req.container_id, req.ifname, conf.name))
        self.last_plan = plan
        return plan

    def _prev(self, req, required: str | None) -> dict | None:
        from .result import decode_prev_result
        conf = req.conf
        if conf.prevResult is None:
            if required:
                raise InternalError(required)
            return None
        return decode_prev_result(conf.prevResult, conf.cniVersion)

    def _report(self, command: str) -> None:
        if _debug():
            import json
            sys.stderr.write(json.dumps({"nlportmap": command, "timings_ms": {
                k: round(v * 1000, 3) for k, v in self.timings.items()}}) + "\n")

    # ------------------------------------------------------------ commands
    def add(self, req) -> dict:
        """ADD: install the mappings, then side effects; returns prevResult to echo."""
        t = time.perf_counter()
        prev = self._prev(req, "must be called as chained plugin")
        plan = self._plan(req, prev)
        t = self._lap("plan", t)
        if plan.forwards:
            backend = self.backend_for(req.conf)
            t = self._lap("backend_select", t)
            backend.forward(plan, req.conf.conflictPolicy or "replace")
            t = self._lap("transaction", t)
            if plan.conntrack_flush or plan.route_localnet_ip:
                import anyio
                from .sidefx import run_side_effects
                anyio.run(run_side_effects, plan)
                t = self._lap("side_effects", t)
        self._report("ADD")
        return prev

    def delete(self, req) -> None:
        """DEL: remove what this attachment owns.  Never fails for missing state."""
        t = time.perf_counter()
        try:
            prev = self._prev(req, None)
        except Exception:  # a broken cached result must not block teardown
            prev = None
        plan = self._plan(req, prev)
        t = self._lap("plan", t)
        backend = self.backend_for(req.conf)
        backend.unforward(plan)
        self._lap("transaction", t)
        self._report("DEL")

    def check(self, req) -> None:
        """CHECK: every element of the plan is present and owned by this attachment."""
        prev = self._prev(req, "Required prevResult missing")
        plan = self._plan(req, prev)
        if plan.forwards:
            self.backend_for(req.conf).check(plan)

    def gc(self, req) -> None:
        """GC (CNI 1.1): remove everything not owned by a listed attachment."""
        valid = {f"{a.containerID}/{a.ifname}" for a in (req.conf.valid_attachments or ())}
        from .backends import all_backends
        for b in all_backends(req.conf):
            b.gc(valid)

    def status(self, req) -> None:
        """STATUS (CNI 1.1): succeed iff the backend this config would use is usable."""
        from .backends import backend_status
        backend_status(req.conf)
