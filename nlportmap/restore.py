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

import posix
import sys
import time

from . import records as R

from .jsonio import Unsupported, loads

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from .backends import Backend
    from .config import NetConf
    from .plan import Listed, Plan

    #: a decoded record (see nlportmap.records.encode)
    Rec: TypeAlias = dict[str, Any]

__all__ = ["decode", "gc_records", "load_all", "main", "parse_name", "plan_of", "restore"]


# ------------------------------------------------------------------ reading the records
def _dec(text: str) -> str:
    raw = bytearray()
    i = 0
    b = text.encode("ascii")
    while i < len(b):
        if b[i] == 0x25:  # %
            raw.append(int(b[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(b[i])
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def parse_name(name: str) -> tuple[str, str, str] | None:
    """(network, containerID, ifname) of a :func:`file_name` (None for hashed or foreign names)."""
    parts = name.split(".")
    if len(parts) != 3 or name.startswith("h."):
        return None
    try:
        return _dec(parts[0]), _dec(parts[1]), _dec(parts[2])
    except (ValueError, UnicodeError):
        return None


def _is_record(name: str) -> bool:
    return name.count(".") == 2 or (name.startswith("h.") and name.count(".") == 1)


def decode(data: bytes) -> Rec:
    """A record's JSON; ``ifname`` decoded.  Raises ValueError for anything else."""
    try:
        rec = loads(data)
    except Unsupported:
        import json
        rec = json.loads(data)
    if type(rec) is not dict or rec.get("v") != R.VERSION:
        raise ValueError(f"not a version {R.VERSION} record")
    rec["ifname"] = _dec(rec["ifname"])
    return rec


def load_all() -> list[tuple[str, Rec | None]]:
    """Every record of this netns: [(file name, record or None if unreadable)], sorted by
    ``createdMs`` (then name).  Leftover temporary files of dead writers are removed."""
    dfd = R._ns_dir(False)
    if dfd is None:
        return []
    out: list[tuple[str, Rec | None]] = []
    try:
        for name in posix.listdir(dfd):
            if ".tmp" in name:
                pid = name.rpartition(".tmp")[2]
                if pid.isdigit() and not _alive(int(pid)):
                    R._unlink(dfd, name)
                continue
            if not _is_record(name):
                continue
            data = R._read(dfd, name)
            if data is None:
                continue
            try:
                out.append((name, decode(data)))
            except (ValueError, KeyError, TypeError, UnicodeError):
                out.append((name, None))
    finally:
        posix.close(dfd)
    out.sort(key=lambda r: ((r[1] or {}).get("createdMs") or 0, r[0]))
    return out


def _alive(pid: int) -> bool:
    try:
        posix.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return True


def gc_records(valid_tags: set[str], network: str | None, started_ms: int | None = None) -> list[str]:
    """CNI GC: remove the records of ``network`` whose owner tag (``containerID/ifname``) is
    not in ``valid_tags``, except those written at or after ``started_ms`` (an ADD racing
    the GC).  Returns the removed file names.  Call it under the netns lock."""
    from .plan import Owner
    try:
        recs = load_all()
        dfd = R._ns_dir(False)
    except OSError:
        return []
    if dfd is None:
        return []
    gone = []
    try:
        for name, rec in recs:
            if rec is None:
                continue
            if network is not None and rec.get("network") != network:
                continue
            if Owner(rec["containerID"], rec["ifname"]).tag in valid_tags:
                continue
            if started_ms is not None and (rec.get("createdMs") or 0) >= started_ms:
                continue
            if R._unlink(dfd, name):
                gone.append(name)
    finally:
        posix.close(dfd)
    return gone


# ------------------------------------------------------------------ restoring


def plan_of(rec: Rec) -> tuple[Plan, NetConf]:
    """(plan, conf) rebuilt from a record."""
    from .config import parse_config
    from .plan import Owner, make_plan
    conf = parse_config(rec["conf"], "ADD")
    ips = {int(k): v for k, v in (rec.get("containerIPs") or {}).items()}
    owner = Owner(rec["containerID"], rec["ifname"], rec["network"])
    return make_plan(conf, {4: ips.get(4), 6: ips.get(6)}, owner), conf


def drift(rows: list[Listed], backend_names: tuple[str, ...] = ("nftables", "iptables")) -> list[Listed]:
    """Compare the kernel's forwards (``rows``, from the backends' ``list()``) with this
    netns's records: returns ``rows`` with ``recorded`` set on each (its owner has a record),
    plus one row with state ``"missing"`` per recorded forward the kernel does not have.
    iptables state has no ifname, so its rows match a record on network + container ID."""
    from .plan import Listed
    recs = [r for _, r in load_all() if r is not None and r.get("backend") in backend_names]
    owners = {(r["network"], r["containerID"], r["ifname"]) for r in recs}
    owners_no_if = {(n, c) for n, c, _ in owners}

    def ident(row: Listed) -> tuple[str, ...]:
        o = row.owner
        if o is None:
            return ()
        if row.backend == "iptables":
            return (o.network, o.container_id)
        return (o.network, o.container_id, o.ifname)

    out: list[Listed] = []
    present: set[tuple[tuple[str, ...], str, int, str, str | None, int]] = set()
    for row in rows:
        i = ident(row)
        rec = bool(i) and (i in owners_no_if if row.backend == "iptables" else i in owners)
        out.append(row.replace(recorded=rec))
        present.add((i, row.backend, row.family, row.proto, row.host_ip, row.host_port))
    for r in recs:
        try:
            plan = plan_of(r)[0]
        except Exception:  # an undecodable record: restore reports it
            continue
        o = plan.owner
        b = r.get("backend") or "nftables"
        i = (o.network, o.container_id) if b == "iptables" else (o.network, o.container_id, o.ifname)
        for f in plan.forwards:
            if (i, b, f.family, f.proto, f.host_ip, f.host_port) not in present:
                out.append(Listed(o, f.family, f.proto, f.host_ip, f.host_port, f.container_ip,
                                  f.container_port, b, state="missing", recorded=True))
    return out


def _problems(backend: Backend, plan: Plan) -> list[str]:
    """What ``backend.check(plan)`` finds missing ([]: intact or only shadowed)."""
    from .errors import CNIError
    try:
        backend.check(plan)
        return []
    except CNIError as e:
        text = e.msg
    text = text.removeprefix("CHECK failed: ")
    problems = [p for p in text.split("; ") if p]
    if problems and all(" is owned by " in p for p in problems):
        return []  # a newer ADD took the ports: this one is shadowed, as it should be
    return problems or [text]


def restore(dry_run: bool = False, backends: tuple[str, ...] = ("nftables", "iptables"),
            log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Restore what is missing; returns one row per attachment restored (or, with
    ``dry_run``, that would be): ``containerID``, ``ifname``, ``network``, ``backend``,
    ``missing`` (the problems found), ``ops`` (what its transaction applied)."""
    from .backends import make_backend
    from .lock import netns_lock
    out: list[dict[str, Any]] = []
    made: dict[str, Backend] = {}
    try:
        with netns_lock():
            loaded = load_all()
            if log is not None:
                bad = [name for name, rec in loaded if rec is None]
                if bad:
                    log(f"ignoring unreadable records: {', '.join(bad)}")
            recs = [rec for _, rec in loaded if rec is not None and rec.get("backend") in backends]
            vips_done = False
            retaken: set[tuple[int, str, str | None, int]] = set()
            for i, rec in enumerate(recs):
                try:
                    plan, conf = plan_of(rec)
                except Exception as e:
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
                row: dict[str, Any] = {"containerID": plan.owner.container_id, "ifname": plan.owner.ifname,
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
                    from .backends import with_proxy_vips
                    try:
                        vconf = plan_of(newest)[1]
                    except Exception:
                        vconf = conf
                    plan = with_proxy_vips(vconf, plan)
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
    except Exception as e:
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
