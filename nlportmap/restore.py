"""``nlportmap restore``: re-program every recorded attachment whose objects are missing.

The records (:mod:`nlportmap.records`) say what this network namespace must hold;
the kernel may have lost it (``nft flush ruleset``, a deleted ``nlportmap`` table,
``iptables -t nat -F``/``-X``, a firewalld reload).  :func:`restore`, under the
netns lock for its whole run:

1. re-reads the records (so a DEL or GC that finished before it is never undone,
   and one that starts after it waits for it);
2. rebuilds each record's plan with :func:`nlportmap.plan.make_plan` from the
   recorded config and container IPs, and asks its backend's ``check()`` whether
   the objects are there; an attachment whose only problems are that another
   attachment owns its ports (a shadowed claim) counts as intact;
3. re-programs the broken ones with the backend's own ``forward()``, oldest
   record first, so that the newest ADD owns a contested port again, as before.
   An intact newer record that shares a host port with a restored older one is
   forwarded again after it (it takes its port back).

Idempotent: on an intact ruleset it changes nothing, and ``forward()`` never
duplicates an element or rule.  It touches only nlportmap's tables and the
iptables backend's chains, like ADD.  Transactions: one per restored attachment
(each one atomic across its families), all inside one hold of the lock.
"""
from __future__ import annotations

import sys
import time

__all__ = ["restore", "plan_of", "main"]


def plan_of(rec: dict):
    """(plan, conf) rebuilt from a record."""
    from .config import parse_config
    from .plan import Owner, make_plan
    conf = parse_config(rec["conf"], "ADD")
    ips = {int(k): v for k, v in (rec.get("containerIPs") or {}).items()}
    owner = Owner(rec["containerID"], rec["ifname"], rec["network"])
    return make_plan(conf, {4: ips.get(4), 6: ips.get(6)}, owner), conf


def _problems(backend, plan) -> list[str]:
    """What ``backend.check(plan)`` finds missing ([]: intact or only shadowed)."""
    from .errors import CNIError
    try:
        backend.check(plan)
        return []
    except CNIError as e:
        text = e.msg
    if text.startswith("CHECK failed: "):
        text = text[len("CHECK failed: "):]
    problems = [p for p in text.split("; ") if p]
    if problems and all(" is owned by " in p for p in problems):
        return []  # a newer ADD took the ports: this one is shadowed, as it should be
    return problems or [text]


def restore(dry_run: bool = False, backends: tuple[str, ...] = ("nftables", "iptables"),
            log=None) -> list[dict]:
    """Restore what is missing; returns one row per attachment restored (or, with
    ``dry_run``, that would be): ``containerID``, ``ifname``, ``network``, ``backend``,
    ``missing`` (the problems found), ``ops`` (what its transaction applied)."""
    from .backends import make_backend
    from .lock import netns_lock
    from .records import load_all
    out: list[dict] = []
    made: dict = {}
    try:
        with netns_lock():
            recs = load_all()
            if log is not None:
                bad = [name for name, rec in recs if rec is None]
                if bad:
                    log(f"ignoring unreadable records: {', '.join(bad)}")
            recs = [rec for _, rec in recs if rec is not None and rec.get("backend") in backends]
            vips_done = False
            retaken: set = set()
            for i, rec in enumerate(recs):
                try:
                    plan, conf = plan_of(rec)
                except Exception as e:  # noqa: BLE001 - one bad record must not stop the others
                    if log is not None:
                        log(f"record of {rec.get('containerID')}/{rec.get('ifname')}: cannot rebuild its plan: {e}")
                    continue
                if not plan.forwards:
                    continue
                name = rec["backend"]
                b = made.get(name)
                if b is None:
                    b = made[name] = make_backend(name)
                missing = _problems(b, plan)
                keys = {f.key for f in plan.forwards}
                if not missing and not keys & retaken:
                    continue
                row = {"containerID": plan.owner.container_id, "ifname": plan.owner.ifname,
                       "network": plan.owner.network, "backend": name,
                       "missing": missing or ["a host port retaken by an older restored attachment"],
                       "ops": 0}
                if dry_run:
                    out.append(row)
                    continue
                if name == "nftables" and not vips_done:
                    # the service proxy's addresses, as ADD reads them (the newest nftables
                    # record's serviceProxyInterfaces): a flushed proxy_vips set would let
                    # mappings without hostIP capture ClusterIPs
                    newest = [r for r in recs[i:] if r.get("backend") == "nftables"][-1]
                    from .plugin import Plugin
                    try:
                        vconf = plan_of(newest)[1]
                    except Exception:  # noqa: BLE001
                        vconf = conf
                    plan = Plugin._with_proxy_vips(vconf, plan)
                    vips_done = True
                row["ops"] = b.forward(plan, "replace")
                retaken |= keys
                if row["ops"] or missing:
                    out.append(row)
    finally:
        for b in made.values():
            close = getattr(b, "close", None)
            if close is not None:
                close()
    return out


def main(json_out: bool = False, dry_run: bool = False) -> int:
    """The ``nlportmap restore`` command."""
    t = time.perf_counter()
    try:
        rows = restore(dry_run=dry_run, log=lambda m: print(f"nlportmap restore: {m}", file=sys.stderr))
    except Exception as e:  # noqa: BLE001
        msg = getattr(e, "msg", None) or str(e)
        print(f"nlportmap restore: {msg}", file=sys.stderr)
        return 1
    ms = (time.perf_counter() - t) * 1000
    if json_out:
        from .jsonio import dumps
        print(dumps(rows, indent=2))
        return 0
    verb = "would restore" if dry_run else "restored"
    for r in rows:
        print(f"{verb} {r['containerID']}/{r['ifname']} network {r['network']} ({r['backend']}): "
              + "; ".join(r["missing"]))
    if not rows:
        print("nothing to restore: every recorded attachment is in place")
    else:
        print(f"{len(rows)} attachment(s) {verb} in {ms:.1f} ms")
    return 0
