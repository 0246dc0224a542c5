"""Entry point: the CNI plugin when ``CNI_COMMAND`` is set, else the operator CLI.

The plugin path goes straight to :mod:`nlportmap.shim` (built-in modules only),
which hands the request to a running ``nlportmap daemon`` or, failing that,
does it in-process (importing only what the request needs; see
``nlportmap.skel`` and ``nlportmap.plugin``).
"""
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Console-script entry (installed as ``nlportmap`` and ``portmap``)."""
    if argv is None and "CNI_COMMAND" in os.environ:
        t0 = time.perf_counter()
        from .shim import plugin_main
        return plugin_main(t0)
    from .cli import main as cli_main
    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
