"""The per-netns lock directory (nlportmap.lock): read-only, full, symlinked or foreign.

The plugin is exec'd as a runtime would, in the node namespace.  Read-only and full
file systems are made inside a private mount namespace (``unshare -m`` in the
plugin's own process tree), so the host's mounts are never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from netns_fixtures import port_mapping
from nlpm_helpers import EXE, netconf, prev_result

pytestmark = pytest.mark.root


def _run(node, command, conf, lockdir, *, cid="c1", mount_sh: str = ""):
    """Exec the plugin in the node netns with ``NLPORTMAP_LOCK_DIR=lockdir``; ``mount_sh``:
    shell commands run first in a private mount namespace (e.g. remount it read-only)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    e.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS="/run/netns/nonexistent",
             CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni", NLPORTMAP_LOCK_DIR=lockdir,
             NLPORTMAP_SOCKET="none", LOCKDIR=lockdir, EXE=EXE)
    argv = ["ip", "netns", "exec", node.host.name]
    if mount_sh:
        argv += ["unshare", "-m", "--propagation", "private", "sh", "-ec", mount_sh + '\nexec "$EXE"']
    else:
        argv += [EXE]
    cp = subprocess.run(argv, input=json.dumps(conf).encode(), capture_output=True, env=e, timeout=60)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def _conf(port=8080, ip="10.244.0.5/24"):
    return netconf([port_mapping(port, 80)], prev_result(ip))


def _lock_name(node) -> str:
    return f"netns-{os.stat(node.host.path).st_ino}.lock"


RO_BIND = 'mount --bind "$LOCKDIR" "$LOCKDIR"\nmount -o remount,bind,ro "$LOCKDIR"'
RO_TMPFS = 'mount -t tmpfs -o mode=0700 nlpm-ro "$LOCKDIR"\nmount -o remount,ro "$LOCKDIR"'
FULL_TMPFS = 'mount -t tmpfs -o mode=0700,nr_inodes=1 nlpm-full "$LOCKDIR"'


def test_existing_lock_file_works_on_a_read_only_directory(node, tmp_path):
    lockdir = str(tmp_path / "locks")
    assert _run(node, "ADD", _conf(), lockdir, cid="a")[0] == 0
    assert os.path.exists(os.path.join(lockdir, _lock_name(node)))
    rc, out, err = _run(node, "ADD", _conf(8081, "10.244.0.6/24"), lockdir, cid="b", mount_sh=RO_BIND)
    assert rc == 0, out + err
    rc, out, err = _run(node, "DEL", _conf(), lockdir, cid="a", mount_sh=RO_BIND)
    assert rc == 0, out + err
    assert node.owned_by("a") == [] and node.owned_by("b") != []


@pytest.mark.parametrize("mount_sh", [RO_TMPFS, FULL_TMPFS], ids=["read-only", "full"])
def test_lock_file_that_cannot_be_created(node, tmp_path, mount_sh):
    lockdir = str(tmp_path / "locks")
    os.mkdir(lockdir, 0o700)
    # ADD would change the kernel: a clear CNI error naming the directory, nothing written
    rc, out, err = _run(node, "ADD", _conf(), lockdir, cid="a", mount_sh=mount_sh)
    assert rc == 1, out + err
    e = json.loads(out)
    assert e["code"] == 5 and lockdir in e["msg"] and "Errno" not in e["msg"], e
    assert node.owned_by("a") == []
    # DEL of a container that owns nothing changes nothing: it succeeds
    rc, out, err = _run(node, "DEL", _conf(), lockdir, cid="nothing", mount_sh=mount_sh)
    assert rc == 0, out + err
    # DEL of a container that owns something still needs the lock: clear error, state kept
    other = str(tmp_path / "other")
    assert _run(node, "ADD", _conf(), other, cid="owner")[0] == 0
    rc, out, err = _run(node, "DEL", _conf(), lockdir, cid="owner", mount_sh=mount_sh)
    assert rc == 1 and json.loads(out)["code"] == 5 and lockdir in json.loads(out)["msg"], out + err
    assert node.owned_by("owner") != []
    assert _run(node, "DEL", _conf(), other, cid="owner")[0] == 0
    assert node.owned_by("owner") == []


def _refused(node, lockdir, what):
    rc, out, err = _run(node, "ADD", _conf(), lockdir, cid="x")
    assert rc == 1, out + err
    e = json.loads(out)
    assert e["code"] == 5 and what in e["msg"], e
    assert node.owned_by("x") == []
    return e["msg"]


def test_symlinked_lock_directory_is_refused(node, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    msg = _refused(node, str(link), "symlink")
    assert str(link) in msg
    assert os.listdir(real) == []


def test_dangling_lock_file_symlink_is_not_followed(node, tmp_path):
    lockdir = tmp_path / "locks"
    lockdir.mkdir(mode=0o700)
    target = tmp_path / "planted"
    (lockdir / _lock_name(node)).symlink_to(target)
    _refused(node, str(lockdir), "symlink")
    assert not target.exists() and not os.path.lexists(target)


def test_lock_directory_owned_by_another_user_is_refused(node, tmp_path):
    lockdir = tmp_path / "locks"
    lockdir.mkdir(mode=0o700)
    os.chown(lockdir, 65534, 65534)
    _refused(node, str(lockdir), "owned by uid 65534")
    assert os.listdir(lockdir) == []


def test_group_writable_lock_directory_is_refused(node, tmp_path):
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    os.chmod(lockdir, 0o770)
    _refused(node, str(lockdir), "writable by group or others")


def test_missing_lock_directory_is_created_0700(node, tmp_path):
    lockdir = tmp_path / "a" / "locks"
    assert _run(node, "ADD", _conf(), str(lockdir), cid="a")[0] == 0
    assert (os.stat(lockdir).st_mode & 0o777) == 0o700
    assert _run(node, "DEL", _conf(), str(lockdir), cid="a")[0] == 0
    shutil.rmtree(tmp_path / "a")
