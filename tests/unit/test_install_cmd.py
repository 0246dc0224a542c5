"""`nlportmap install` without root: refuse / --force / idempotent / package-owned files.

The Debian package lookup reads a fake ``/var/lib/dpkg/info`` (``*.list`` files) in a
temp dir.  Each install really runs CNI VERSION through the written launcher.
"""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlportmap import launcher as L


@pytest.fixture
def dpkg(tmp_path):
    """A fake dpkg info dir and an ``owner`` function reading it."""
    info = tmp_path / "dpkg-info"
    info.mkdir()

    def own(pkg, *paths):
        with open(info / f"{pkg}.list", "a") as f:
            f.write("".join(p + "\n" for p in ["/."] + [str(x) for x in paths]))

    def owner(path):
        return L.package_owner(path, info_dir=str(info))
    owner.own = own
    return owner


@pytest.fixture
def bindir(tmp_path):
    d = tmp_path / "cni-bin"
    d.mkdir()
    return d


def install(bindir, dpkg, name="portmap", force=False):
    out, err = io.StringIO(), io.StringIO()
    action = L.install(str(bindir), name, force, owner=dpkg, out=out, err=err)
    return action, out.getvalue(), err.getvalue()


def snapshot(path):
    st = os.lstat(path)
    data = os.readlink(path) if os.path.islink(path) else Path(path).read_bytes()
    return data, st.st_mode, st.st_mtime_ns, st.st_ino


def test_fresh_install_writes_a_verified_launcher(bindir, dpkg):
    action, out, err = install(bindir, dpkg)
    path = bindir / "portmap"
    assert action == "wrote"
    assert os.access(path, os.X_OK) and L.is_launcher(str(path))
    text = path.read_text()
    assert text == L.render() and text.startswith(f"#!{L.interpreter()} -IS\n")
    assert "from nlportmap.shim import launch" in text
    assert f"wrote {path}" in out and L.interpreter() in out and "cniVersion 1.1.0" in out
    assert err == ""
    assert sorted(os.listdir(bindir)) == ["portmap"]  # no temp file left


def test_second_install_is_unchanged_and_touches_nothing(bindir, dpkg):
    install(bindir, dpkg)
    before = snapshot(bindir / "portmap")
    action, out, _ = install(bindir, dpkg)
    assert action == "unchanged" and "unchanged" in out and "cniVersion" in out
    assert snapshot(bindir / "portmap") == before


def test_an_older_launcher_of_ours_is_replaced_without_force(bindir, dpkg):
    old = bindir / "portmap"
    old.write_text(f"#!/usr/bin/python3 -IS\n{L.MARKER}, written by `python3 -m nlportmap.launcher`.\n"
                   "import sys\nsys.exit(1)\n")
    action, _, _ = install(bindir, dpkg)
    assert action == "replaced" and old.read_text() == L.render()


def test_a_foreign_file_is_refused_byte_for_byte_then_replaced_with_force(bindir, dpkg):
    path = bindir / "portmap"
    path.write_bytes(b"\x7fELF upstream portmap")
    os.chmod(path, 0o750)
    before = snapshot(path)
    with pytest.raises(L.InstallError, match=r"not touching it .--force"):
        install(bindir, dpkg)
    assert snapshot(path) == before
    action, _, _ = install(bindir, dpkg, force=True)
    assert action == "replaced" and path.read_text() == L.render()


def test_a_symlink_is_foreign_and_force_replaces_the_link_not_its_target(bindir, dpkg, tmp_path):
    target = tmp_path / "nlportmap-script"
    target.write_text(f"#!/bin/sh\n{L.MARKER}\n")  # even one that looks like ours
    link = bindir / "portmap"
    link.symlink_to(target)
    with pytest.raises(L.InstallError, match="symlink"):
        install(bindir, dpkg)
    assert os.readlink(link) == str(target)
    install(bindir, dpkg, force=True)
    assert not link.is_symlink() and L.is_launcher(str(link))
    assert target.read_text() == f"#!/bin/sh\n{L.MARKER}\n"


def test_a_package_owned_file_is_refused_then_forced_with_a_warning(bindir, dpkg):
    path = bindir / "portmap"
    path.write_bytes(b"distribution portmap")
    dpkg.own("containernetworking-plugins", bindir, path)
    before = snapshot(path)
    with pytest.raises(L.InstallError, match="Debian package 'containernetworking-plugins'"):
        install(bindir, dpkg)
    assert snapshot(path) == before
    action, _, err = install(bindir, dpkg, force=True)
    assert action == "replaced"
    assert "warning" in err and "upgrading that package will replace it" in err
    # once ours, re-running is harmless (nothing written) but still warns
    before = snapshot(path)
    action, _, err = install(bindir, dpkg)
    assert action == "unchanged" and "upgrading that package" in err
    assert snapshot(path) == before


def test_a_package_path_whose_file_is_gone_is_still_refused(bindir, dpkg):
    dpkg.own("containernetworking-plugins", bindir / "portmap")
    with pytest.raises(L.InstallError, match="belongs to the Debian package"):
        install(bindir, dpkg)
    assert not (bindir / "portmap").exists()


def test_a_package_owned_directory_only_warns(bindir, dpkg):
    dpkg.own("containernetworking-plugins", bindir, bindir / "bridge")
    action, _, err = install(bindir, dpkg, name="nlportmap")
    assert action == "wrote" and L.is_launcher(str(bindir / "nlportmap"))
    assert f"{bindir} belongs to the Debian package 'containernetworking-plugins'" in err


def test_failed_verification_keeps_the_old_file(bindir, dpkg, monkeypatch):
    install(bindir, dpkg)
    before = snapshot(bindir / "portmap")
    monkeypatch.setattr(L, "render", lambda: L.TEMPLATE.format(python=L.interpreter(), paths=[]).replace(
        "from nlportmap.shim import launch", "launch = lambda: 3"))
    with pytest.raises(L.InstallError, match="CNI VERSION through it exited 3"):
        install(bindir, dpkg)
    assert snapshot(bindir / "portmap") == before
    assert sorted(os.listdir(bindir)) == ["portmap"]


def test_bad_names_and_directories(bindir, dpkg):
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(L.InstallError, match="plain file name"):
            install(bindir, dpkg, name=bad)
    (bindir / "portmap").mkdir()
    with pytest.raises(L.InstallError, match="is a directory"):
        install(bindir, dpkg, force=True)


def test_package_owner_reads_dpkg_lists_with_merged_usr_aliases(tmp_path):
    info = tmp_path / "info"
    info.mkdir()
    (info / "containernetworking-plugins.list").write_text("/.\n/usr\n/usr/lib/cni\n/usr/lib/cni/portmap\n")
    (info / "libfoo:amd64.list").write_text("/.\n/lib/x86_64-linux-gnu/libfoo.so.1\n")
    (info / "other.md5sums").write_text("/opt/cni/bin/portmap\n")

    def o(p: str) -> str | None:
        return L.package_owner(p, info_dir=str(info))

    assert o("/usr/lib/cni/portmap") == "containernetworking-plugins"
    assert o("/lib/cni/portmap") == "containernetworking-plugins"       # /lib -> /usr/lib
    assert o("/usr/lib/cni/portmap/") == "containernetworking-plugins"
    assert o("/usr/lib/x86_64-linux-gnu/libfoo.so.1") == "libfoo"       # arch-qualified list
    assert o("/usr/lib/cni/portmapx") is None and o("/usr/lib/cn") is None
    assert o("/opt/cni/bin/portmap") is None                             # only *.list counts
    assert L.package_owner("/usr/lib/cni/portmap", info_dir=str(tmp_path / "absent")) is None


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nlportmap", *args], check=False, capture_output=True,
                          text=True,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def test_cli_install_then_refusal_is_one_line_and_nonzero(bindir):
    cp = _cli("install", "--cni-bin-dir", str(bindir), "--name", "nlportmap")
    assert cp.returncode == 0, cp.stderr
    assert f"wrote {bindir}/nlportmap" in cp.stdout and "cniVersion" in cp.stdout
    cp = _cli("install", "--cni-bin-dir", str(bindir), "--name", "nlportmap")
    assert cp.returncode == 0 and "unchanged" in cp.stdout
    (bindir / "portmap").write_bytes(b"foreign")
    cp = _cli("install", "--cni-bin-dir", str(bindir))
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr.count("\n") == 1 and cp.stderr.startswith(f"nlportmap install: {bindir}/portmap is a file")
    assert (bindir / "portmap").read_bytes() == b"foreign"


def test_python_m_launcher_still_writes_unconditionally(bindir):
    path = bindir / "nlportmap-cni"
    path.write_bytes(b"whatever")
    cp = subprocess.run([sys.executable, "-m", "nlportmap.launcher", str(path)], check=False,
                        capture_output=True, text=True)
    assert cp.returncode == 0 and cp.stdout.strip() == str(path)
    assert L.is_launcher(str(path))
