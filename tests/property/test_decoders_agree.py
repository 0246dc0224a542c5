"""The cold decoder and the decoder of record agree (issue 10, item 3).

``nlportmap.netconf.decode_fast(obj, command)`` returns a ``FastConf`` or ``None``
(defer); on ``None`` the exec'd plugin runs ``nlportmap.config.parse_config``, so every
error message has one author.  Proved here on generated configurations (valid ones from
``props_strategies.requests`` plus 0-4 mutations: wrong types, nulls, other key
spellings, duplicate spellings, bad ports/protocols/hostIPs, conditions, prevResult
variants, DEL leniency cases):

* soundness: when ``decode_fast`` returns a conf, ``parse_config`` accepts the same
  object and every value the plugin reads is equal, with equal types (and the plan
  built from it is equal); neither decoder modifies its input;
* no over-deferral in the common domain: when ``parse_config`` accepts without warnings
  a config without conditions, ``externalSetMarkChain`` or attachments, ``decode_fast``
  does not defer (the known exceptions are listed in ``KNOWN_OVER_DEFERRAL`` and pinned
  by a strict xfail, so an improvement shows up);
* end to end: ``skel.run(..., lean=True)`` (the cold exec path), ``lean=False`` (the
  daemon path) and ``lean=False`` with the JSON decoding left to msgspec alone print
  byte-identical stdout and stderr and exit alike for every generated stdin, garbage
  bytes and malformed JSON included -- identical error messages.
"""
from __future__ import annotations

import copy
import io
import json
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from props_strategies import COMMANDS, decoder_inputs, requests, stdin_bytes

from nlportmap import jsonio, skel
from nlportmap.config import parse_config
from nlportmap.errors import CNIError
from nlportmap.netconf import (
    backend_specific_options,
    check_backend_conflict,
    decode_fast,
)
from nlportmap.plan import Owner, make_plan

SETTINGS = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def typed(v):
    """``v`` with every type made visible: ``True`` != ``1``, ``8080`` != ``8080.0``,
    list != tuple, and dict key order counts (it is printed)."""
    if isinstance(v, dict):
        return ("dict", [(k, typed(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [typed(x) for x in v])
    return (type(v).__name__, v)


def attempt(fn):
    try:
        return ("ok", typed(fn()))
    except Exception as err:
        return ("raised", type(err).__name__, str(err))


def mapping_tuples(conf):
    return [(m.hostPort, m.containerPort, m.protocol, m.hostIP) for m in conf.runtimeConfig.portMappings]


def plan_view(conf, ifname: str, cid: str):
    ips = conf.container_ips(ifname)
    plan = make_plan(conf, ips, Owner(cid, ifname, conf.name))
    return [(k, typed([(m.hostPort, m.containerPort, m.protocol, m.hostIP) for m in plan.all_mappings])
             if k == "all_mappings" else typed(getattr(plan, k))) for k in plan.__slots__]


def project(conf, ifname: str = "eth0", cid: str = "c1") -> list:
    """Everything the plugin reads from a decoded configuration, in a fixed order."""
    out = []
    for name in ("cniVersion", "name", "type", "backend", "snat", "masqAll", "markMasqBit", "mark_bit",
                 "externalSetMarkChain", "conditionsV4", "conditionsV6", "prevResult", "conflictPolicy",
                 "conflict_policy", "hostPortListeners", "runtimeListenerProcesses", "serviceProxyInterfaces",
                 "service_proxy_interfaces", "warnings", "command"):
        out.append((name, attempt(lambda name=name: getattr(conf, name))))
    out.append(("portMappings", attempt(lambda: mapping_tuples(conf))))
    out.append(("echo_result", attempt(conf.echo_result)))
    out.append(("container_ips", attempt(lambda: conf.container_ips(ifname))))
    out.append(("parsed_conditions(4)", attempt(lambda: conf.parsed_conditions(4))))
    out.append(("parsed_conditions(6)", attempt(lambda: conf.parsed_conditions(6))))
    out.append(("backend_specific_options", attempt(lambda: backend_specific_options(conf))))
    for chosen in ("nftables", "iptables"):
        out.append((f"check_backend_conflict({chosen})", attempt(lambda chosen=chosen: check_backend_conflict(conf, chosen))))
    out.append(("plan", attempt(lambda: plan_view(conf, ifname, cid))))
    return out


def _frozen(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _conditions_given(rec) -> bool:
    return bool(rec.conditionsV4) or bool(rec.conditionsV6)


def _known_over_deferral(conf: dict) -> str | None:
    """Configurations parse_config accepts cleanly on which decode_fast defers by design
    (rare shapes; the decoder of record handles them, only slower).  Reported, not hidden."""
    from nlportmap.gojson import canonical_keys
    top = canonical_keys(conf, ("capabilities", "dns", "ipam"))
    caps = top.get("capabilities")
    if isinstance(caps, dict) and any(v is None for v in caps.values()):
        return "capabilities with a null value"
    dns = top.get("dns")
    if isinstance(dns, dict) and any(isinstance(v, list) and None in v for v in dns.values()):
        return "dns list with a null item"
    return None


# ------------------------------------------------------------------ decoder level

@settings(max_examples=1500, **SETTINGS)
@given(inp=decoder_inputs(), ifname=st.sampled_from(("eth0", "net1", "e")))
def test_a_fast_conf_is_what_the_decoder_of_record_decodes(inp, ifname):
    command, _env, conf = inp
    before = _frozen(conf)
    fast = decode_fast(conf, command)
    assert _frozen(conf) == before, "decode_fast modified its input"
    event("fast" if fast is not None else "deferred")
    if fast is None:
        return
    note(before)
    try:
        rec = parse_config(conf, command)
    except CNIError as err:
        pytest.fail(f"decode_fast accepted what parse_config rejects ({command}): {err.msg}\n{before}")
    assert _frozen(conf) == before, "parse_config modified its input"
    assert project(fast, ifname) == project(rec, ifname)


@settings(max_examples=1500, **SETTINGS)
@given(inp=decoder_inputs())
def test_no_over_deferral_in_the_common_domain(inp):
    command, _env, conf = inp
    try:
        rec = parse_config(copy.deepcopy(conf), command)
    except CNIError:
        return
    if rec.warnings or _conditions_given(rec) or rec.externalSetMarkChain is not None \
            or rec.valid_attachments is not None:
        return
    known = _known_over_deferral(conf)
    if known:
        event(f"known over-deferral: {known}")
        return
    assert decode_fast(conf, command) is not None, _frozen(conf)


@settings(max_examples=400, **SETTINGS)
@given(req=requests(("ADD", "DEL", "CHECK")))
def test_every_valid_request_without_conditions_takes_the_fast_path(req):
    command, env, conf, _ips, _ms = req
    fast = decode_fast(conf, command)
    rec = parse_config(conf, command)
    if _conditions_given(rec):
        assert fast is None  # conditions need the grammar: always the decoder of record
        return
    assert fast is not None, conf
    assert project(fast, env["CNI_IFNAME"], env["CNI_CONTAINERID"]) == \
        project(rec, env["CNI_IFNAME"], env["CNI_CONTAINERID"])


@pytest.mark.parametrize("command", ("ADD", "DEL", "CHECK"))
@pytest.mark.parametrize("extra", [{"conditionsV4": [""]}, {"conditionsV4": ["", "ip", "saddr"]},
                                   {"conditionsV6": ["", "bogus"]}, {"conditionsV4": ["", "-s", "1.2.3.4"]}],
                         ids=["empty", "empty-then-nft-garbage", "empty-then-bogus-v6", "empty-then-iptables"])
def test_conditions_with_an_empty_first_token_are_left_to_the_decoder_of_record(command, extra):
    """A list whose first token is "" has no style (netconf.condition_style) but is parsed
    whole by parse_config: ADD fails on garbage after it, DEL warns.  decode_fast used to
    accept such a list silently as "no conditions"."""
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "portmap", **extra}
    fast = decode_fast(conf, command)
    if fast is None:
        return
    rec = parse_config(conf, command)
    assert project(fast) == project(rec)


KNOWN_OVER_DEFERRAL = [
    {"capabilities": {"portMappings": None}},
    {"dns": {"nameservers": ["10.0.0.10", None]}},
]


@pytest.mark.xfail(strict=True, reason="known over-deferral (rare shapes; see _known_over_deferral)")
@pytest.mark.parametrize("extra", KNOWN_OVER_DEFERRAL, ids=["capabilities-null", "dns-null-item"])
def test_known_over_deferral(extra):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "portmap", **extra}
    rec = parse_config(conf, "DEL")
    assert rec.warnings == ()
    assert decode_fast(conf, "DEL") is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(("name", "runtimeConfig", "portMappings", "PortMappings", "hostPort",
                                       "prevResult", "ips", "interfaces", "address", "snat", "cniVersion",
                                       "capabilities", "dns", "ipam", "conditionsV4", "x")) | st.text(max_size=6),
                      inner, max_size=5),
    max_leaves=20)


@settings(max_examples=800, **SETTINGS)
@given(obj=json_values, command=st.sampled_from((*COMMANDS, "VERSION", "add", "")))
def test_decode_fast_never_raises(obj, command):
    fast = decode_fast(obj, command)
    if fast is not None:
        assert command in ("ADD", "DEL", "CHECK")
        assert project(fast) == project(parse_config(obj, command))


# ------------------------------------------------------------------ end to end through skel.run

class RecordingHandlers:
    """A fake handler that prints (to stderr) everything the plugin would read from the conf,
    checks the backend options like the plugin does, and echoes prevResult on ADD."""

    def __init__(self, stderr):
        self.stderr = stderr

    def _note(self, req):
        conf = req.conf
        self.stderr.write(f"{req.command} {req.container_id} {req.ifname} {req.netns}\n")
        self.stderr.write(repr(project(conf, req.ifname, req.container_id or "c1")) + "\n")
        check_backend_conflict(conf, conf.backend or "nftables")

    def add(self, req):
        self._note(req)
        return req.conf.echo_result()

    def delete(self, req):
        self._note(req)

    def check(self, req):
        self._note(req)

    def gc(self, req):
        self.stderr.write(repr([(a.containerID, a.ifname) for a in req.conf.valid_attachments or ()]) + "\n")
        self._note(req)

    def status(self, req):
        self._note(req)


def run_skel(env: dict, stdin: bytes, *, lean: bool, msgspec_only: bool = False):
    out, err = io.StringIO(), io.StringIO()

    def call():
        return skel.run(env, io.BytesIO(stdin), out, err, RecordingHandlers(err),
                        same_netns=lambda path: False, lean=lean)

    if msgspec_only:
        with mock.patch.object(jsonio, "loads", side_effect=jsonio.Unsupported("msgspec only")):
            rc = call()
    else:
        rc = call()
    return rc, out.getvalue(), err.getvalue()


commands_for_env = st.sampled_from(("ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION", "FROB"))


@settings(max_examples=1200, **SETTINGS)
@given(inp=decoder_inputs(), data=st.data())
def test_lean_and_full_paths_print_the_same(inp, data):
    _command, env, conf = inp
    if data.draw(st.integers(0, 9)) == 0:
        env = dict(env, CNI_COMMAND=data.draw(commands_for_env))
    stdin = data.draw(stdin_bytes(conf))
    note(repr(stdin[:2000]))
    lean = run_skel(env, stdin, lean=True)
    full = run_skel(env, stdin, lean=False)
    record = run_skel(env, stdin, lean=False, msgspec_only=True)
    assert lean == full
    assert full == record
    assert "internal error" not in lean[2], lean
    event(f"exit {lean[0]}")


@settings(max_examples=300, **SETTINGS)
@given(req=requests(), stdin=st.binary(max_size=200))
def test_lean_and_full_paths_agree_on_garbage_bytes(req, stdin):
    _command, env, _conf, _ips, _ms = req
    lean = run_skel(env, stdin, lean=True)
    assert lean == run_skel(env, stdin, lean=False) == run_skel(env, stdin, lean=False, msgspec_only=True)
