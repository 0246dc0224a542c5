"""The fast CNI launcher and ``nlportmap install``, which puts it in a CNI bin dir.

pip's console script (``nlportmap``) starts a normal interpreter: ``site``
processes every ``.pth`` file of the environment (editable-install finders,
certifi hooks...: 20-30 ms here) and the script imports ``re``.  A runtime
execs the plugin once per ADD/DEL/CHECK, so the launcher this module writes is
a short script run as ``python -I -S`` (isolated, no ``site``) that puts
exactly two things on ``sys.path`` -- the directory holding the ``nlportmap``
package and the site-packages directories of *this* interpreter -- and calls
:func:`nlportmap.shim.launch`.  The daemon path then costs a bare interpreter
start plus a few built-in modules; the in-process fallback still finds
pyroute2, msgspec and anyio; without ``CNI_COMMAND`` the operator CLI runs
``site`` first and behaves as usual.

The launcher names the interpreter that wrote it (``sys.executable``, e.g. a
venv's ``bin/python``, not the base interpreter it links to), so it uses that
environment's packages.  Re-run after moving the package or the venv.

The documented way to install it (see :func:`install`)::

    .venv/bin/nlportmap install [--cni-bin-dir /opt/cni/bin] [--name portmap] [--force]

which byte-compiles the package, writes the launcher atomically, runs the CNI
``VERSION`` command through it, and refuses to replace a file it did not write
or one that belongs to a distribution package unless ``--force``.

``python3 -m nlportmap.launcher [PATH]`` (kept for scripts and benchmarks)
writes it unconditionally; default PATH: ``nlportmap-cni`` next to this
interpreter.
"""
from __future__ import annotations

import os
import sys
import sysconfig

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any, TextIO

#: Start of a line near the top of every launcher this module wrote (also of older ones):
#: ``nlportmap install`` replaces only files that carry it.
MARKER = "# nlportmap CNI launcher"

TEMPLATE = """#!{python} -IS
# nlportmap CNI launcher, written by `nlportmap install` (nlportmap.launcher).  -I -S: no site,
# no .pth processing, no environment-driven imports; built-in modules only on the daemon path.
import sys
sys.path += {paths!r}
from nlportmap.shim import launch
sys.exit(launch())
"""


def default_path() -> str:
    return os.path.join(os.path.dirname(sys.executable), "nlportmap-cni")


def interpreter() -> str:
    """The interpreter the launcher names: this one, as invoked (a venv's ``bin/python``
    stays the venv's, so the launcher's operator path sees the venv's packages).  In a
    venv, ``python``/``python3.X`` are spelled ``python3`` so that ``nlportmap install``
    and ``.venv/bin/python -m nlportmap install`` write the same file."""
    exe = os.path.abspath(sys.executable)
    if sys.prefix != sys.base_prefix:
        alias = os.path.join(os.path.dirname(exe), "python3")
        try:
            if alias != exe and os.path.samefile(alias, exe):
                return alias
        except OSError:
            pass
    return exe


def render() -> str:
    import nlportmap
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(nlportmap.__file__)))
    paths = [pkg_parent]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    return TEMPLATE.format(python=interpreter(), paths=paths)


def compile_package() -> bool:
    import compileall
    import nlportmap
    return compileall.compile_dir(os.path.dirname(os.path.abspath(nlportmap.__file__)),
                                  quiet=1, workers=1)


def write(path: str) -> str:
    text = render()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


DPKG_INFO = "/var/lib/dpkg/info"
#: Longest ``#!`` line Linux honours before 5.1 (later kernels: 256); longer ones are cut.
SHEBANG_MAX = 127


class InstallError(Exception):
    """``nlportmap install`` refused or failed; the message is one line for the operator."""


def is_launcher(path: str) -> bool:
    """Whether *path* is a regular file (not a symlink) that this module wrote: it starts
    with ``#!`` and one of its first lines starts with :data:`MARKER`."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    lines = head.decode("utf-8", "replace").splitlines()
    return bool(lines) and lines[0].startswith("#!") and any(
        line.startswith(MARKER) for line in lines[1:4])


def _dpkg_names(path: str) -> list[str]:
    """The spellings under which dpkg may have recorded *path* (merged-/usr aliases)."""
    a = os.path.normpath(os.path.abspath(path))
    d, base = os.path.split(a)
    out = [a, os.path.join(os.path.realpath(d), base) if base else os.path.realpath(a)]
    for p in list(out):
        top = p.split("/")[1:3]
        if top and top[0] == "usr" and len(top) > 1 and (top[1] in ("bin", "sbin") or top[1].startswith("lib")):
            out.append(p[len("/usr"):])
        elif top and (top[0] in ("bin", "sbin") or top[0].startswith("lib")):
            out.append("/usr" + p)
    return list(dict.fromkeys(out))


def package_owner(path: str, info_dir: str = DPKG_INFO) -> str | None:
    """The Debian package whose file list names *path* (``dpkg -S`` without running dpkg:
    a scan of ``info_dir/*.list``), or None.  No dpkg database: None."""
    needles = [b"\n" + os.fsencode(n) + b"\n" for n in _dpkg_names(path)]
    try:
        names = sorted(os.listdir(info_dir))
    except OSError:
        return None
    for name in names:
        if not name.endswith(".list"):
            continue
        try:
            with open(os.path.join(info_dir, name), "rb") as f:
                data = b"\n" + f.read() + b"\n"
        except OSError:
            continue
        if any(n in data for n in needles):
            return name[:-len(".list")].split(":")[0]  # "pkg:arch.list" -> pkg
    return None


def verify(path: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run the CNI ``VERSION`` command through the launcher at *path*, as a runtime would
    (in-process: no daemon), and return its JSON answer; InstallError when it fails."""
    import json
    import subprocess
    env = {"CNI_COMMAND": "VERSION", "NLPORTMAP_SOCKET": "none",
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    try:
        cp = subprocess.run([path], check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{path}: running CNI VERSION through it failed: {e}") from None
    try:
        answer = json.loads(cp.stdout)
        if cp.returncode != 0 or not isinstance(answer, dict) or "cniVersion" not in answer:
            raise ValueError
    except ValueError:
        detail = (cp.stderr or cp.stdout).decode(errors="replace").strip().splitlines()
        raise InstallError(f"{path}: CNI VERSION through it exited {cp.returncode} without a version"
                           + (f": {detail[-1]}" if detail else "")) from None
    return answer


def install(bin_dir: str = "/opt/cni/bin", name: str = "portmap", force: bool = False, *,
            owner: Callable[[str], str | None] = package_owner, out: TextIO | None = None,
            err: TextIO | None = None) -> str:
    """Write the launcher to *bin_dir*/*name*, verify it, report on *out*; return what was done
    (``"wrote"``, ``"replaced"`` or ``"unchanged"``).

    Refuses (InstallError, the file untouched) without *force* when the path holds a file
    this module did not write (no :data:`MARKER`; a symlink counts as foreign) or one
    that a distribution package owns (``owner(path)``: a package upgrade would put its
    own file back).  Warns when only the directory belongs to a package.  The new
    content goes to a temporary file in *bin_dir*, is verified there, then renamed over
    the target, so a failed verification leaves the old file in place.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if not name or "/" in name or name in (".", ".."):
        raise InstallError(f"--name must be a plain file name, not {name!r}")
    bin_dir = os.path.abspath(bin_dir)
    path = os.path.join(bin_dir, name)
    text = render()
    if len(text.split("\n", 1)[0].encode()) > SHEBANG_MAX:
        raise InstallError(f"the interpreter path {interpreter()!r} is too long for a #! line "
                           f"(max {SHEBANG_MAX - 6} bytes); use a venv at a shorter path")
    exists = os.path.lexists(path)
    if exists and os.path.isdir(path) and not os.path.islink(path):
        raise InstallError(f"{path} is a directory")
    ours = exists and is_launcher(path)
    unchanged = ours and _read(path) == text
    pkg = owner(path)
    if pkg and not unchanged and not force:
        raise InstallError(f"{path} belongs to the Debian package {pkg!r} (an upgrade of it would "
                           f"put its own file back); not touching it (--force to overwrite anyway)")
    if exists and not ours and not force:
        what = "a symlink" if os.path.islink(path) else "a file nlportmap did not write"
        raise InstallError(f"{path} is {what}; not touching it (--force to replace it)")
    if pkg:
        print(f"nlportmap install: warning: {path} belongs to the Debian package {pkg!r}: "
              f"upgrading that package will replace it", file=err)
    else:
        dpkg = owner(bin_dir)
        if dpkg:
            print(f"nlportmap install: warning: {bin_dir} belongs to the Debian package {dpkg!r}: "
                  f"a package upgrade may replace files there (its own plugins)", file=err)
    if not os.path.isdir(bin_dir):
        os.makedirs(bin_dir, mode=0o755)
    compiled = compile_package()
    if unchanged:
        answer = verify(path)
        action = "unchanged"
    else:
        tmp = os.path.join(bin_dir, f".{name}.nlportmap-tmp{os.getpid()}")
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o755)
            answer = verify(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        action = "replaced" if exists else "wrote"
    import nlportmap
    versions = ", ".join(answer.get("supportedVersions") or [])
    print(f"nlportmap install: {action} {path}" + (" (same content)" if unchanged else ""), file=out)
    print(f"  interpreter: {interpreter()} -I -S", file=out)
    print(f"  package:     {os.path.dirname(os.path.abspath(nlportmap.__file__))}"
          + (" (byte-compiled)" if compiled else " (byte-compiling failed; it compiles at run time)"),
          file=out)
    print(f"  verified:    CNI VERSION -> cniVersion {answer['cniVersion']}"
          + (f" (supports {versions})" if versions else ""), file=out)
    return action


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = argv[0] if argv else default_path()
    compile_package()
    print(write(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
