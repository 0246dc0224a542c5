"""Entry point: the CNI plugin when ``CNI_COMMAND`` is set, else the operator CLI.

Kept to the standard library at import time: the plugin path imports only
what the request needs (see ``nlportmap.skel`` and ``nlportmap.plugin``).
"""
import os
import sys
import time


def main(argv=None) -> int:
    """Console-script entry (installed as ``nlportmap`` and ``portmap``)."""
    if argv is None and "CNI_COMMAND" in os.environ:
        t0 = time.perf_counter()
        from .skel import run
        from .plugin import Plugin
        return run(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr, Plugin(t0=t0))
    from .cli import main as cli_main
    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
