"""Records (nlportmap.records, nlportmap.restore's reading side) and the healer's parser,
without root: a private state dir, this process's own network namespace."""
from __future__ import annotations

import os
import struct

import pytest

from nlportmap import heal, records
from nlportmap import restore as RS
from nlportmap.config import parse_config
from nlportmap.plan import Owner, make_plan

CONF = (b'{"cniVersion":"1.0.0","name":"net1","type":"portmap","snat":true,"masqAll":false,'
        b'"conditionsV4":["ip","saddr","10.0.0.0/8"],"serviceProxyInterfaces":[],'
        b'"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},'
        b'{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"10.1.2.3"}]}}')


@pytest.fixture
def state(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("NLPORTMAP_STATE_DIR", str(d))
    return d


def _plan(cid="c1", ifname="eth0"):
    conf = parse_config(CONF, "ADD")
    return make_plan(conf, {4: "10.244.0.5/24", 6: "fd00::5/64"}, Owner(cid, ifname, "net1")), conf


@pytest.mark.parametrize("parts", [("net", "c1", "eth0"), ("a.b", "x-y_z", "e%/:\udcff"), ("n", "c", "."),
                                   ("n", "c", "..tmp1"), ("n", "c", "h.x")])
def test_file_names_are_safe_and_reversible(parts):
    name = records.file_name(*parts)
    assert "/" not in name and name not in (".", "..") and ".tmp" not in name
    assert RS.parse_name(name) == parts
    assert RS._is_record(name)


def test_long_names_are_hashed():
    name = records.file_name("n" * 300, "c", "eth0")
    assert name.startswith("h.") and len(name) < 100 and RS._is_record(name)


def test_record_round_trip_rebuilds_the_same_plan(state):
    plan, conf = _plan(ifname="e\udcff")
    records.save(plan, conf, "nftables", 1234)
    ((_, rec),) = RS.load_all()
    assert rec["backend"] == "nftables" and rec["createdMs"] == 1234 and rec["ifname"] == "e\udcff"
    again, _ = RS.plan_of(rec)
    assert again == plan
    assert records.exists(plan.owner)
    mode = os.stat(state).st_mode & 0o777
    assert mode == 0o700
    assert records.remove(plan.owner) and not records.exists(plan.owner) and RS.load_all() == []
    assert not records.remove(plan.owner)


def test_undo_puts_the_previous_record_back(state):
    plan, conf = _plan()
    records.save(plan, conf, "nftables", 1)
    undo = records.save(plan, conf, "iptables", 2)
    assert RS.load_all()[0][1]["backend"] == "iptables"
    undo()
    assert RS.load_all()[0][1]["backend"] == "nftables"
    records.remove(plan.owner)
    undo = records.save(plan, conf, "nftables", 3)
    undo()
    assert RS.load_all() == []


def test_gc_spares_listed_and_newer_records(state):
    for cid, ms in (("keep", 1), ("gone", 1), ("new", 99)):
        plan, conf = _plan(cid)
        records.save(plan, conf, "nftables", ms)
    removed = RS.gc_records({"keep/eth0"}, "net1", started_ms=50)
    assert len(removed) == 1
    assert sorted(r["containerID"] for _, r in RS.load_all()) == ["keep", "new"]
    assert RS.gc_records(set(), "othernet", started_ms=50) == []


def test_untrusted_state_dir_is_refused(state, monkeypatch):
    os.makedirs(state, mode=0o777)
    os.chmod(state, 0o777)
    plan, conf = _plan()
    with pytest.raises(records.StateDirError):
        records.save(plan, conf, "nftables", 1)
    os.chmod(state, 0o700)
    link = str(state) + "-link"
    os.symlink(state, link)
    monkeypatch.setenv("NLPORTMAP_STATE_DIR", link)
    with pytest.raises(records.StateDirError):
        records.save(plan, conf, "nftables", 1)


def test_dead_writers_temporary_files_are_removed(state):
    plan, conf = _plan()
    records.save(plan, conf, "nftables", 1)
    d = next(state.iterdir())
    (d / "x.y.z.tmp999999999").write_bytes(b"partial")
    assert len(RS.load_all()) == 1
    assert not (d / "x.y.z.tmp999999999").exists()


def _nlmsg(msg: int, family: int, attrs: bytes) -> bytes:
    body = struct.pack("!BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | msg, 0, 0, 0) + body


def _attr(t: int, v: bytes) -> bytes:
    n = 4 + len(v)
    return struct.pack("=HH", n, t) + v + b"\0" * ((4 - n % 4) % 4)


def test_healer_parses_table_names_and_the_committing_pid():
    buf = (_nlmsg(heal.DELRULE, 2, _attr(1, b"nlportmap\0") + _attr(2, b"prerouting\0"))
           + _nlmsg(heal.DELSETELEM, 10, _attr(1, b"nat\0"))
           + _nlmsg(heal.NEWGEN, 0, _attr(1, struct.pack("!I", 7)) + _attr(2, struct.pack("!I", 4242))))
    assert list(heal.parse(buf)) == [(heal.DELRULE, 2, b"nlportmap", None), (heal.DELSETELEM, 10, b"nat", None),
                                     (heal.NEWGEN, 0, None, 4242)]


def test_heal_switch(monkeypatch):
    monkeypatch.delenv("NLPORTMAP_HEAL", raising=False)
    assert heal.enabled() and not heal.enabled(False)
    monkeypatch.setenv("NLPORTMAP_HEAL", "0")
    assert not heal.enabled()
