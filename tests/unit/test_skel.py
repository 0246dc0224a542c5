"""The CNI skeleton (nlportmap.skel): env vars, stdin, versions, dispatch, output."""
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nlportmap
from nlportmap import skel
from nlportmap.errors import CNIError, InvalidConfig, TryAgainLater

SUPPORTED = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
UPSTREAM_TEST_ID = ("icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vu"
                    "f0ahfaeng8yohb9ceu0daez5hashee8ooYai5wa3y")
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/c1"}],
        "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 0}]}


class Recorder:
    """Dummy handlers: ADD echoes prevResult; every call is recorded."""

    def __init__(self, raise_exc=None, add_result=None):
        self.calls = []
        self.raise_exc = raise_exc
        self.add_result = add_result

    def _hit(self, name, req):
        self.calls.append((name, req))
        if self.raise_exc is not None:
            raise self.raise_exc

    def add(self, req):
        self._hit("add", req)
        return self.add_result if self.add_result is not None else req.conf.echo_result()

    def delete(self, req):
        self._hit("delete", req)

    def check(self, req):
        self._hit("check", req)

    def gc(self, req):
        self._hit("gc", req)

    def status(self, req):
        self._hit("status", req)


class Outcome:
    def __init__(self, rc, out, err, handlers):
        self.rc, self.out, self.err, self.handlers = rc, out, err, handlers

    @property
    def error(self):
        assert self.rc == 1, (self.rc, self.out)
        obj = json.loads(self.out)
        assert isinstance(obj["code"], int)
        return obj


class ExplodingStdin(io.RawIOBase):
    def read(self, *a):
        raise OSError(5, "Input/output error")

    readall = read


def env(command="ADD", **kw):
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/c1",
         "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1", "CNI_PATH": "/opt/cni/bin"}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def conf(**kw) -> bytes:
    c = {"cniVersion": "1.0.0", "name": "mynet", "type": "portmap",
         "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
         "prevResult": PREV}
    c.update(kw)
    return json.dumps({k: v for k, v in c.items() if v is not None}).encode()


def run(environ, data=b"", handlers=None, same_netns=lambda path: False, stdin=None):
    handlers = handlers or Recorder()
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(environ, stdin if stdin is not None else io.BytesIO(data), out, err, handlers,
                  same_netns=same_netns)
    return Outcome(rc, out.getvalue(), err.getvalue(), handlers)


# --- no command, VERSION -------------------------------------------------------------------

def test_no_command_prints_about_on_stderr():
    for e in ({}, {"CNI_COMMAND": ""}, {"CNI_COMMAND": "", "CNI_CONTAINERID": "bad id"}):
        o = run(e)
        assert (o.rc, o.out) == (0, "")
        assert o.err == (f"CNI portmap plugin nlportmap {nlportmap.__version__}\n"
                         "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n")


def test_version_with_runtime_dummy_env_validates_nothing():
    e = {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "", "CNI_NETNS": "dummy", "CNI_IFNAME": "dummy",
         "CNI_PATH": "dummy"}
    o = run(e, stdin=ExplodingStdin())  # stdin must not even be read
    assert o.rc == 0
    assert o.out == ('{"cniVersion":"1.1.0","supportedVersions":'
                     '["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n')
    assert o.handlers.calls == []
    # invalid values of variables VERSION does not need are ignored too
    assert run({"CNI_COMMAND": "VERSION", "CNI_IFNAME": "way/too/long/name"}).rc == 0


# --- environment ----------------------------------------------------------------------------

@pytest.mark.parametrize("command,missing", [
    ("ADD", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
    ("CHECK", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
    ("DEL", "CNI_CONTAINERID,CNI_IFNAME,CNI_PATH"),
    ("GC", "CNI_PATH"),
    ("STATUS", "CNI_PATH"),
])
def test_missing_env_vars_in_order(command, missing):
    o = run({"CNI_COMMAND": command}, conf())
    assert o.error == {"code": 4, "msg": f"required env variables [{missing}] missing"}
    assert o.handlers.calls == []


def test_empty_values_count_as_missing_and_netns_optional_for_del():
    o = run(env("ADD", CNI_NETNS="", CNI_PATH=""), conf())
    assert o.error["msg"] == "required env variables [CNI_NETNS,CNI_PATH] missing"
    assert run(env("DEL", CNI_NETNS=None), conf(prevResult=None)).rc == 0


def test_invalid_container_id_reported_before_later_missing_vars():
    o = run({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad id"}, conf())
    assert o.error == {"code": 4, "msg": "invalid characters in containerID", "details": "bad id"}


def test_invalid_ifname_wins_over_earlier_missing_var():
    # validation returns at once inside the loop, like Go's getCmdArgsFromEnv
    o = run({"CNI_COMMAND": "DEL", "CNI_IFNAME": "a/b"}, conf())
    assert o.error == {"code": 4, "msg": "interface name contains / or : or whitespace characters"}


@pytest.mark.parametrize("cid", ["bad id", "-abc", "_abc", ".abc", "abc\n", "abc/def", "ab:c", "é"])
def test_container_id_charset(cid):
    o = run(env(CNI_CONTAINERID=cid), conf())
    assert o.error == {"code": 4, "msg": "invalid characters in containerID", "details": cid}


def test_container_id_length_limit():
    assert run(env(CNI_CONTAINERID=UPSTREAM_TEST_ID), conf()).rc == 0
    assert run(env(CNI_CONTAINERID="a" * 200), conf()).rc == 0
    o = run(env(CNI_CONTAINERID="a" * 201), conf())
    assert o.error == {"code": 4, "msg": "containerID is too long: 201 characters (at most 200)",
                       "details": "a" * 201}
    assert run(env(CNI_CONTAINERID="A0_.-z"), conf()).rc == 0


@pytest.mark.parametrize("ifname,msg,details", [
    ("abcdefghijklmnop", "interface name is too long", "interface name should be less than 16 characters"),
    ("ééééééééé", "interface name is too long", "interface name should be less than 16 characters"),
    (".", "interface name is . or ..", None),
    ("..", "interface name is . or ..", None),
    ("eth/0", "interface name contains / or : or whitespace characters", None),
    ("eth:0", "interface name contains / or : or whitespace characters", None),
    ("eth 0", "interface name contains / or : or whitespace characters", None),
    ("eth\t0", "interface name contains / or : or whitespace characters", None),
    ("eth\u20030", "interface name contains / or : or whitespace characters", None),
    ("eth\xa0", "interface name contains / or : or whitespace characters", None),
])
def test_ifname_rules(ifname, msg, details):
    expected = {"code": 4, "msg": msg}
    if details:
        expected["details"] = details
    assert run(env(CNI_IFNAME=ifname), conf()).error == expected


def test_ifname_accepts_15_bytes_and_odd_but_legal_names():
    for name in ("abcdefghijklmno", "eth0.100", "...", "eth\x1c"):
        assert run(env(CNI_IFNAME=name), conf()).rc == 0, name


def test_gc_and_status_do_not_validate_attachment_vars():
    e = env("GC", CNI_CONTAINERID="bad id", CNI_IFNAME="a/b")
    assert run(e, conf(cniVersion="1.1.0", prevResult=None)).rc == 0
    e = env("STATUS", CNI_CONTAINERID="bad id", CNI_IFNAME="a/b")
    assert run(e, conf(cniVersion="1.1.0", prevResult=None)).rc == 0


# --- stdin and name -------------------------------------------------------------------------

def test_stdin_io_error_is_code_5():
    o = run(env(), stdin=ExplodingStdin())
    assert o.error == {"code": 5, "msg": "error reading from stdin: [Errno 5] Input/output error"}


@pytest.mark.parametrize("data,code,msg", [
    (b"", 6, "error unmarshall network config: Input data was truncated"),
    (b"{", 6, "error unmarshall network config: Input data was truncated"),
    (b"[]", 6, "error unmarshall network config: cannot unmarshal array into a network configuration object"),
    (b"42", 6, "error unmarshall network config: cannot unmarshal number into a network configuration object"),
    (b'{"name": 5}', 6, "error unmarshall network config: name: expected a string, got number"),
    (b"null", 7, "missing network name"),
    (b"{}", 7, "missing network name"),
    (b'{"name": ""}', 7, "missing network name"),
])
def test_stdin_object_and_name_checks(data, code, msg):
    assert run(env(), data).error == {"code": code, "msg": msg}


def test_name_charset_and_case_insensitive_key():
    assert run(env(), b'{"name": "my net"}').error == {
        "code": 7, "msg": "invalid characters found in network name", "details": "my net"}
    assert run(env("DEL"), b'{"NAME": "mynet", "cniVersion": "1.0.0"}').rc == 0


def test_unknown_command_after_stdin_checks():
    assert run(env("FOO"), conf()).error == {"code": 4, "msg": "unknown CNI_COMMAND: FOO"}
    assert run(env("add"), conf()).error == {"code": 4, "msg": "unknown CNI_COMMAND: add"}
    assert run(env("FOO"), b"{}").error == {"code": 7, "msg": "missing network name"}
    # unknown commands need only CNI_COMMAND
    assert run({"CNI_COMMAND": "FOO"}, conf()).error["msg"] == "unknown CNI_COMMAND: FOO"


# --- versions -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_add_del_need_an_exact_supported_version(command):
    o = run(env(command), conf(cniVersion="1.2.0"))
    assert o.error == {"code": 1, "msg": "incompatible CNI versions",
                       "details": 'config is "1.2.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" '
                                  '"0.4.0" "1.0.0" "1.1.0"]'}
    assert o.handlers.calls == []
    assert run(env(command), conf(cniVersion="1.0")).error["code"] == 1


@pytest.mark.parametrize("version", SUPPORTED)
def test_add_every_supported_version(version):
    prev = ({"ip4": {"ip": "10.1.0.5/16"}} if version in ("0.1.0", "0.2.0")
            else {"ips": [{"address": "10.1.0.5/16"}]})
    o = run(env(), conf(cniVersion=version, prevResult=prev))
    assert o.rc == 0
    assert json.loads(o.out) == {"cniVersion": version, **prev}
    assert o.handlers.calls[0][1].conf.container_ips("eth0")[4] == "10.1.0.5/16"


def test_missing_version_means_010():
    o = run(env(), conf(cniVersion=None, prevResult={"ip4": {"ip": "10.1.0.5/16"}}))
    assert o.rc == 0 and json.loads(o.out)["cniVersion"] == "0.1.0"


def test_non_string_version_is_code_6():
    assert run(env(), conf(cniVersion=1)).error == {
        "code": 6, "msg": "decoding version from network config: cniVersion: expected a string, got number"}


@pytest.mark.parametrize("version,code,msg", [
    ("0.3.1", 1, "config version does not allow CHECK"),
    ("0.1.0", 1, "config version does not allow CHECK"),
    ("2.0.0", 1, "plugin version does not allow CHECK"),
    ("0.4.5", 1, "incompatible CNI versions"),
    ("x.1", 6, 'failed to convert major version part "x": strconv.Atoi: parsing "x": invalid syntax'),
    ("1.y", 6, 'failed to convert minor version part "y": strconv.Atoi: parsing "y": invalid syntax'),
    ("1.0.0.0", 6, 'invalid version "1.0.0.0": too many parts'),
])
def test_check_version_rules(version, code, msg):
    o = run(env("CHECK"), conf(cniVersion=version))
    assert (o.error["code"], o.error["msg"]) == (code, msg)
    assert "cniVersion" not in o.error  # unsupported: not echoed
    assert o.handlers.calls == []


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_allowed_versions(version):
    prev = {"ips": [{"address": "10.1.0.5/16"}]}
    o = run(env("CHECK"), conf(cniVersion=version, prevResult=prev))
    assert (o.rc, o.out) == (0, "")
    assert [c[0] for c in o.handlers.calls] == ["check"]


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_version_thresholds(command):
    for version in ("0.4.0", "1.0.0"):
        assert run(env(command), conf(cniVersion=version, prevResult=None)).error == {
            "code": 1, "msg": f"config version does not allow {command}"}
    assert run(env(command), conf(cniVersion="1.2.0", prevResult=None)).error == {
        "code": 1, "msg": f"plugin version does not allow {command}"}
    o = run(env(command), conf(cniVersion="1.1.0", prevResult=None,
                               **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}))
    assert (o.rc, o.out) == (0, "")
    assert [c[0] for c in o.handlers.calls] == [command.lower()]
    assert o.handlers.calls[0][1].conf.valid_attachments[0].containerID == "c1"


# --- dispatch, prevResult, output -------------------------------------------------------------

def test_add_prints_result_and_fills_request():
    o = run(env(), conf())
    assert o.rc == 0
    assert o.out == json.dumps(PREV, indent=4) + "\n"
    (name, req), = o.handlers.calls
    assert name == "add"
    assert (req.command, req.container_id, req.netns, req.ifname, req.args, req.path) == (
        "ADD", "c1", "/var/run/netns/c1", "eth0", "IgnoreUnknown=1", "/opt/cni/bin")
    assert req.stdin == conf() and req.netns_override is False
    assert req.conf.name == "mynet"


def test_add_without_prevresult():
    o = run(env(), conf(prevResult=None))
    assert o.error == {"cniVersion": "1.0.0", "code": 7, "msg": "must be called as chained plugin"}
    assert o.handlers.calls == []


def test_check_without_prevresult():
    o = run(env("CHECK"), conf(prevResult=None))
    assert o.error == {"cniVersion": "1.0.0", "code": 7, "msg": "Required prevResult missing"}


def test_del_without_prevresult_or_runtimeconfig():
    o = run(env("DEL"), conf(prevResult=None, runtimeConfig=None))
    assert (o.rc, o.out) == (0, "")
    assert [c[0] for c in o.handlers.calls] == ["delete"]


def test_config_errors_surface_with_version():
    bad = {"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]}
    assert run(env(), conf(runtimeConfig=bad)).error == {
        "cniVersion": "1.0.0", "code": 7,
        "msg": "failed to parse config: Invalid host port number: 0 "
               "(runtimeConfig.portMappings[0].hostPort must be 1-65535)"}
    assert run(env("CHECK"), conf(runtimeConfig=bad)).error["msg"].startswith("Invalid host port number: 0 ")


def test_del_warnings_go_to_stderr():
    m = {"portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "icmp"}]}
    o = run(env("DEL"), conf(runtimeConfig=m))
    assert (o.rc, o.out) == (0, "")
    assert o.err == ('nlportmap: warning: runtimeConfig.portMappings[0].protocol: unsupported protocol '
                     '"icmp" (must be one of tcp, udp, sctp); mapping ignored for DEL\n')


def test_handler_cni_error_is_printed_with_exit_1():
    o = run(env(), conf(), handlers=Recorder(raise_exc=TryAgainLater("generation moved", "3 retries")))
    assert o.out == json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": "generation moved",
                                "details": "3 retries"}, indent=4) + "\n"
    assert o.error["code"] == 11


def test_handler_crash_is_code_999_without_traceback():
    o = run(env("DEL"), conf(), handlers=Recorder(raise_exc=RuntimeError("boom\nsecond line")))
    assert o.error == {"cniVersion": "1.0.0", "code": 999, "msg": "boom"}
    assert o.err == "nlportmap: internal error: RuntimeError: boom\n"
    assert "Traceback" not in o.out + o.err


def test_add_handler_must_return_a_dict():
    o = run(env(), conf(), handlers=Recorder(add_result=["not", "a", "dict"]))
    assert o.error == {"cniVersion": "1.0.0", "code": 999,
                       "msg": "ADD handler returned list, not a result object"}


# --- same netns ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_same_netns_is_rejected_before_the_handler(command):
    o = run(env(command), conf(), same_netns=lambda path: path == "/var/run/netns/c1")
    assert o.error == {"cniVersion": "1.0.0", "code": 8,
                       "msg": "plugin's netns and netns from CNI_NETNS should not be the same"}
    assert o.handlers.calls == []


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True"])
def test_netns_override_skips_the_check(value):
    o = run(env(CNI_NETNS_OVERRIDE=value), conf(), same_netns=lambda path: True)
    assert o.rc == 0
    assert o.handlers.calls[0][1].netns_override is True


def test_netns_override_other_values_do_not_skip():
    assert run(env(CNI_NETNS_OVERRIDE="yes"), conf(), same_netns=lambda p: True).error["code"] == 8


def test_real_netns_comparison():
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(env(CNI_NETNS="/proc/self/ns/net"), io.BytesIO(conf()), out, err, Recorder())
    assert rc == 1 and json.loads(out.getvalue())["code"] == 8
    out = io.StringIO()
    rc = skel.run(env(CNI_NETNS="/nonexistent/netns"), io.BytesIO(conf()), out, err, Recorder())
    assert rc == 0
    assert skel._same_netns("/proc/self/ns/net") is True
    assert skel._same_netns("/") is False
    assert skel._same_netns("bad\0path") is False


def test_gc_status_skip_netns_check():
    o = run(env("GC"), conf(cniVersion="1.1.0", prevResult=None), same_netns=lambda p: True)
    assert o.rc == 0


# --- helpers ---------------------------------------------------------------------------------

def test_parse_version_and_validators():
    assert skel.parse_version("1") == (1, 0, 0)
    assert skel.parse_version("0.4") == (0, 4, 0)
    assert skel.parse_version("+1.02.3") == (1, 2, 3)
    with pytest.raises(CNIError) as exc:
        skel.parse_version("")
    assert (exc.value.code, exc.value.msg) == (6, 'invalid version "": the version is empty')
    with pytest.raises(CNIError) as exc:
        skel.parse_version("99999999999999999999")
    assert exc.value.msg.endswith("value out of range")
    with pytest.raises(InvalidConfig):
        skel.validate_network_name("-x")
    skel.validate_container_id("a" * 200)
    assert tuple(SUPPORTED) == skel.SUPPORTED_VERSIONS


# --- fuzz -------------------------------------------------------------------------------------

CNI_VARS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH",
            "CNI_NETNS_OVERRIDE"]
VALID_ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
commands = st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "FOO"]) | st.text(max_size=8)
env_values = st.sampled_from(["", "c1", "eth0", "/run/netns/x", "/proc/self/ns/net", "1", "dummy", "a/b"]) | st.text(max_size=20)
# about half of the runs keep each variable valid, so the handlers are reached too
environs = st.fixed_dictionaries(
    {v: st.just(VALID_ENV[v]) | env_values for v in VALID_ENV},
    optional={"CNI_ARGS": env_values, "CNI_NETNS_OVERRIDE": env_values})
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=3),
                    max_leaves=8)
prev_results = st.sampled_from([PREV, {"ips": []}, {"ip4": {"ip": "10.0.0.2/24"}}, {"cniVersion": "0.4.0"}]) | junk
mappings = st.fixed_dictionaries({"hostPort": st.integers(-2, 70000) | junk,
                                  "containerPort": st.integers(-2, 70000),
                                  "protocol": st.sampled_from(["tcp", "UDP", "sctp", "icmp", ""])},
                                 optional={"hostIP": st.sampled_from(["", "10.0.0.1", "::", "x"])})
configs = st.builds(
    lambda v, name, prev, rc, extra: json.dumps(
        {"cniVersion": v, "name": name, "prevResult": prev, "runtimeConfig": rc, **extra}).encode(),
    st.sampled_from([*SUPPORTED, "", "9.9", "x"]),
    st.sampled_from(["mynet", "", "bad name"]),
    prev_results,
    st.fixed_dictionaries({"portMappings": st.lists(mappings, max_size=3)}) | junk,
    st.dictionaries(st.sampled_from(["snat", "markMasqBit", "backend", "conditionsV4", "conditionsV6",
                                     "externalSetMarkChain", "cni.dev/valid-attachments", "conflictPolicy"]),
                    junk | st.sampled_from(["nftables", "iptables", 5, ["ip", "saddr", "10.0.0.1"], ["-s", "x"]]),
                    max_size=4),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=commands, others=environs, data=st.binary(max_size=200) | configs)
def test_fuzz_never_crashes(command, others, data):
    environ = dict(others, CNI_COMMAND=command)
    handlers = Recorder()
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(environ, io.BytesIO(data), out, err, handlers)
    assert rc in (0, 1)
    if rc == 1:
        obj = json.loads(out.getvalue())
        assert isinstance(obj, dict)
        assert isinstance(obj["code"], int) and not isinstance(obj["code"], bool)
        assert isinstance(obj["msg"], str)
        assert obj["code"] != 999, obj  # dummy handlers never fail: every error is a protocol error
    elif out.getvalue():
        json.loads(out.getvalue())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS"]), data=configs)
def test_fuzz_config_content_with_valid_env(command, data):
    handlers = Recorder()
    out = io.StringIO()
    rc = skel.run(env(command, CNI_NETNS="/run/netns/x"), io.BytesIO(data), out, io.StringIO(), handlers)
    if rc == 1:
        obj = json.loads(out.getvalue())
        assert isinstance(obj["code"], int) and obj["code"] in (1, 6, 7), obj
        assert handlers.calls == []
    else:
        assert rc == 0 and [c[0] for c in handlers.calls] == [
            {"ADD": "add", "DEL": "delete"}.get(command, command.lower())]
        if command == "ADD":
            assert json.loads(out.getvalue())["cniVersion"] in SUPPORTED
