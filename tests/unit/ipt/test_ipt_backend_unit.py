"""IptBackend paths that need neither root nor the iptables tools."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from nlportmap.errors import InternalError, InvalidConfig, KernelError
from nlportmap.ipt.backend import IptBackend
from nlportmap.plan import Owner, make_plan


def _plan():
    conf = NS(runtimeConfig=NS(portMappings=[NS(hostPort=8080, containerPort=80, protocol="tcp", hostIP=None)]),
              snat=True, masqAll=False, markMasqBit=None, externalSetMarkChain=None,
              conditionsV4=None, conditionsV6=None, parsed_conditions=lambda fam: ())
    return make_plan(conf, {4: "10.0.0.2/24"}, Owner("c1", "eth0", "net"))


@pytest.fixture
def no_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("NLPORTMAP_LOCK_DIR", str(tmp_path / "locks"))


def test_del_without_any_iptables_is_a_silent_noop(no_tools):
    """Deviation (better than upstream §3.9 / §6 item 9, which fails DEL with
    'neither iptables nor ip6tables is usable'): nothing can be there, so DEL succeeds."""
    b = IptBackend()
    assert "not found in PATH" in b.usable()
    assert b.unforward(_plan()) == 0
    assert b.gc(set()) == 0
    assert b.list() == []


def test_add_and_check_without_iptables_fail_clearly(no_tools):
    b = IptBackend()
    with pytest.raises(KernelError, match="failed to open iptables: iptables-restore not found in PATH"):
        b.forward(_plan())
    with pytest.raises(InternalError, match="could not check ipv4 dnat: iptables is not usable"):
        b.check(_plan())


def test_variant_names():
    assert IptBackend("legacy").tool(6, "-restore") == "ip6tables-legacy-restore"
    assert IptBackend().tool(4, "-save") == "iptables-save"
    with pytest.raises(ValueError):
        IptBackend("bogus")


def _plan_with(ext=None, c4=None):
    conf = NS(runtimeConfig=NS(portMappings=[NS(hostPort=8080, containerPort=80, protocol="tcp", hostIP=None)]),
              snat=True, masqAll=False, markMasqBit=None, externalSetMarkChain=ext,
              conditionsV4=c4, conditionsV6=None, parsed_conditions=lambda fam: ())
    return make_plan(conf, {4: "10.0.0.2/24"}, Owner("c1", "eth0", "net"))


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """iptables tools that exist but do nothing (exit 1): no real firewall is ever read."""
    d = tmp_path / "bin"
    d.mkdir()
    for fam in ("iptables", "ip6tables"):
        for kind in ("", "-save", "-restore"):
            p = d / (fam + kind)
            p.write_text("#!/bin/sh\nexit 1\n")
            p.chmod(0o755)
    monkeypatch.setenv("PATH", str(d))
    monkeypatch.setenv("NLPORTMAP_LOCK_DIR", str(tmp_path / "locks"))


@pytest.mark.parametrize("ext,c4,field", [("MARK\nX", None, "externalSetMarkChain"),
                                          (None, ["-i", "eth0\nx"], "conditionsV4")])
def test_unwritable_token_names_its_field(fake_tools, ext, c4, field):
    """Issue 12.10: a bad externalSetMarkChain was reported as "conditionsV4: token ..."."""
    with pytest.raises(InvalidConfig) as ei:
        IptBackend().forward(_plan_with(ext, c4))
    assert ei.value.msg.startswith(f"{field}: token ")
    other = "conditionsV4" if field == "externalSetMarkChain" else "externalSetMarkChain"
    assert other not in ei.value.msg
