"""The operator CLI without root: `plan` (dry-run) and the no-argument about text."""
import json
import subprocess
import sys

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.244.0.5/24", "interface": 0}]}


def conf(**kw):
    c = {"cniVersion": "1.0.0", "name": "n1", "type": "portmap",
         "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
         "prevResult": PREV}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def run(*args, stdin=b""):
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "nlportmap", *args], input=stdin, capture_output=True, env=env)


def test_plan_nftables_lists_skeleton_and_elements():
    cp = run("plan", "--container-id", "abc", stdin=json.dumps(conf()).encode())
    out = cp.stdout.decode()
    assert cp.returncode == 0, cp.stderr
    assert "dnat tcp 0.0.0.0:8080 -> 10.244.0.5:80" in out
    assert "backend: nftables (auto-detected" in out
    assert "NEWSETELEM ip nlportmap/hostports  tcp 0.0.0.0:8080 -> 10.244.0.5:80  comment 'abc/eth0 n1 @<ms>'" in out


def test_plan_shows_the_iptables_payload_when_iptables_would_be_used():
    for c in (conf(backend="iptables"), conf(conditionsV4=["-s", "10.0.0.0/8"])):
        cp = run("plan", stdin=json.dumps(c).encode())
        out = cp.stdout.decode()
        assert cp.returncode == 0, cp.stderr
        assert "backend: iptables" in out and "*nat" in out and "COMMIT" in out
        assert "-j DNAT --to-destination 10.244.0.5:80" in out
        assert "nftables transaction" not in out


def test_plan_rejects_what_add_would_reject():
    cp = run("plan", stdin=json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": []}).encode())
    assert cp.returncode == 1 and json.loads(cp.stdout)["code"] == 7
    cp = run("plan", stdin=json.dumps(conf(prevResult=None)).encode())
    assert cp.returncode == 1 and "chained plugin" in json.loads(cp.stdout)["msg"]
    bad = conf(runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]})
    cp = run("plan", stdin=json.dumps(bad).encode())
    assert cp.returncode == 1 and "Invalid host port number: 0" in json.loads(cp.stdout)["msg"]


def test_no_arguments_prints_about_text_like_upstream():
    cp = run()
    assert cp.returncode == 0 and cp.stdout == b""
    assert b"CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in cp.stderr


def test_daemon_and_plan_options_are_validated():
    cp = run("daemon", "--mode", "999")
    assert cp.returncode == 2 and b"not an octal file mode" in cp.stderr and b"Traceback" not in cp.stderr
    cp = run("daemon", "--max-clients", "0")
    assert cp.returncode == 2 and b"must be at least 1" in cp.stderr
    cp = run("plan", "--container-id", "a b", stdin=json.dumps(conf()).encode())
    assert cp.returncode == 1 and json.loads(cp.stdout)["code"] == 4
    cp = run("plan", "--ifname", "../x", stdin=json.dumps(conf()).encode())
    assert cp.returncode == 1 and json.loads(cp.stdout)["code"] == 4
