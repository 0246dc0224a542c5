"""`nlportmap install` into a CNI bin dir, then ADD/DEL through the installed file as a runtime does.

The bin dir is a temp dir searched before ``/usr/lib/cni`` (which supplies ``bridge``
and ``host-local``), so the runtime finds our ``portmap`` there, as a node would after
``nlportmap install``.  Throw-away namespaces only.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from netns_fixtures import echo_server, port_mapping, tcp_probe
from nlportmap import launcher
from nlpm_helpers import Node

pytestmark = pytest.mark.root


@pytest.fixture
def cni_bin():
    d = tempfile.mkdtemp(prefix="nlpm-cni-bin-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_installed_launcher_serves_add_and_del(cni_bin, topology_factory):
    cp = subprocess.run([sys.executable, "-m", "nlportmap", "install", "--cni-bin-dir", cni_bin],
                        check=False, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    exe = os.path.join(cni_bin, "portmap")
    assert f"wrote {exe}" in cp.stdout and "cniVersion" in cp.stdout
    assert launcher.is_launcher(exe)

    node = Node(topology_factory(ipv6=False, plugin_dirs=(cni_bin, "/usr/lib/cni")))
    assert node.t.cni.find_plugin("portmap") == exe
    env = {"NLPORTMAP_SOCKET": "none"}  # the installed file itself does the work
    pod = node.add_pod([port_mapping(8080, 80)], env=env)
    with echo_server(pod.ns, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).ok
    assert [(r["hostPort"], r["containerIP"]) for r in node.forwards_of(pod.cid)] == [(8080, pod.ip4)]
    node.del_pod(pod, env=env)
    assert node.owned_by(pod.cid) == []
    assert not tcp_probe(node.client, node.t.host_ip4, 8080, timeout=1).ok
