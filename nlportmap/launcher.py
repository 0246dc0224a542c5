"""Write the fast CNI launcher: ``python3 -m nlportmap.launcher [PATH]``.

pip's console script (``nlportmap``) starts a normal interpreter: ``site``
processes every ``.pth`` file of the environment (editable-install finders,
certifi hooks...: 20-30 ms here) and the script imports ``re``.  A runtime
execs the plugin once per ADD/DEL/CHECK, so the launcher this module writes is
a four-line script run as ``python -I -S`` (isolated, no ``site``) that puts
exactly two things on ``sys.path`` -- the directory holding the ``nlportmap``
package and the site-packages directories of *this* interpreter -- and calls
:func:`nlportmap.shim.launch`.  The daemon path then costs a bare interpreter
start plus a few built-in modules; the in-process fallback still finds
pyroute2, msgspec and anyio; without ``CNI_COMMAND`` the operator CLI runs
``site`` first and behaves as usual.

It also byte-compiles the package (``compileall``), so that a read-only
install never compiles at request time.

Install it where the runtime looks for plugins, under the name the conflist
uses (``"type": "portmap"``)::

    python3 -m nlportmap.launcher /opt/cni/bin/portmap

Default PATH: ``nlportmap-cni`` next to this interpreter.  Re-run after moving
the package or changing interpreters.
"""
from __future__ import annotations

import os
import sys
import sysconfig

TEMPLATE = """#!{python} -IS
# nlportmap CNI launcher, written by `python3 -m nlportmap.launcher`.  -I -S: no site, no
# .pth processing, no environment-driven imports; built-in modules only on the daemon path.
import sys
sys.path += {paths!r}
from nlportmap.shim import launch
sys.exit(launch())
"""


def default_path() -> str:
    return os.path.join(os.path.dirname(sys.executable), "nlportmap-cni")


def render() -> str:
    import nlportmap
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(nlportmap.__file__)))
    paths = [pkg_parent]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    return TEMPLATE.format(python=os.path.realpath(sys.executable), paths=paths)


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
