"""Operator commands (``nlportmap <command>``) for when no ``CNI_COMMAND`` is set.

``demo``  build throw-away namespaces, run bridge -> host-local -> nlportmap,
          prove TCP and UDP forwarding, DEL, clean up (root).
``list``  the mappings installed on this node, read over netlink.
``plan``  dry-run: decode a CNI config from stdin and print the plan and the
          objects of the transaction, changing nothing.
``daemon``  serve plugin requests from a resident process (see nlportmap.daemon)
``version``
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__

ABOUT = ("CNI portmap plugin nlportmap " + __version__ + "\n"
         "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nlportmap",
        description="CNI portmap meta-plugin on nftables over netlink. Runs as a CNI plugin when "
                    "CNI_COMMAND is set (install it as 'portmap' or 'nlportmap' in a CNI bin dir); "
                    "otherwise these operator commands are available.")
    p.add_argument("--version", action="version", version=f"nlportmap {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="build throw-away namespaces, forward real TCP/UDP, DEL, clean up (root)")
    d.add_argument("--no-ipv6", action="store_true", help="IPv4 only")
    d.add_argument("--plugin", default=None,
                   help="portmap executable to demo (default: this nlportmap)")
    ls = sub.add_parser("list", help="list the host-port mappings on this node (read over netlink)")
    ls.add_argument("--json", action="store_true", help="stable JSON (a list of objects) instead of a table")
    ls.add_argument("--backend", choices=("nftables", "iptables", "all"), default="all")
    pl = sub.add_parser("plan", help="dry-run: read a CNI config on stdin, print the plan and transaction objects")
    pl.add_argument("--container-id", default="dry-run")
    pl.add_argument("--ifname", default="eth0")
    dm = sub.add_parser("daemon", help="serve plugin requests from a resident process (root; see docs/performance.md)")
    dm.add_argument("--socket", default=None,
                    help="Unix socket path (default: $NLPORTMAP_SOCKET or /run/nlportmap/daemon.sock)")
    dm.add_argument("--mode", default="0600", help="socket file permissions, octal (default 0600)")
    dm.add_argument("--max-clients", type=int, default=128, help="concurrent requests before refusing")
    dm.add_argument("--verbose", action="store_true", help="log every request on stderr")
    sub.add_parser("version", help="print the version")
    return p


def cmd_list(args) -> int:
    from .backends import make_backend
    names = ["nftables", "iptables"] if args.backend == "all" else [args.backend]
    rows = []
    for n in names:
        try:
            b = make_backend(n)
            rows += b.list()
        except Exception as e:  # noqa: BLE001 - a missing backend just has nothing to list
            if args.backend != "all":
                print(f"nlportmap: {n}: {e}", file=sys.stderr)
                return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    head = ("CONTAINER", "IFNAME", "NETWORK", "PROTO", "HOST", "CONTAINER-ADDR", "BACKEND", "STATE")
    table = [head]
    for r in rows:
        o = r.owner
        hip = r.host_ip or ("0.0.0.0" if r.family == 4 else "::")
        host = f"[{hip}]:{r.host_port}" if r.family == 6 else f"{hip}:{r.host_port}"
        cont = f"[{r.container_ip}]:{r.container_port}" if r.family == 6 else f"{r.container_ip}:{r.container_port}"
        table.append((o.container_id[:20] if o else "?", o.ifname if o else "?", o.network if o else "?",
                      r.proto, host, cont, r.backend, r.state))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_plan(args) -> int:
    from .config import parse_config
    from .errors import CNIError, error_json
    from .plan import Owner, make_plan
    from .result import container_ips, decode_prev_result
    try:
        conf = parse_config(sys.stdin.buffer.read(), "ADD")
        prev = decode_prev_result(conf.prevResult, conf.cniVersion) if conf.prevResult else None
        ips = container_ips(prev, args.ifname) if prev else {4: None, 6: None}
        plan = make_plan(conf, ips, Owner(args.container_id, args.ifname, conf.name))
    except CNIError as e:
        print(error_json(e))
        return 1
    print(plan.describe())
    from .nft import layout as L
    from .nft import netlink as N
    print("nftables transaction (first ADD on a node; later ADDs send only the elements):")
    ops = []
    for fam in plan.families():
        ops += L.skeleton(fam, plan.conditions.get(fam))
    for f in plan.forwards:
        s, k = L.forward_key(f.family, f.proto, f.host_ip, f.host_port)
        ops.append(N.set_elems(True, N.FAMILY[f.family], L.TABLE, s, [(k, b"", None)]))
        ops[-1] = (ops[-1][0], ops[-1][1], ops[-1][2], f"{f}  comment {plan.owner.comment!r}")
    for m in plan.masqs:
        s, k = L.masq_key(m.saddr, m.daddr)
        ops.append((N.NEWSETELEM, 0, N.set_elems(True, N.FAMILY[m.family], L.TABLE, s, [(k, None, None)])[2],
                    f"{m}  comment {plan.owner.comment!r}"))
    for op in ops:
        extra = f"  {op[3]}" if len(op) > 3 else ""
        print(f"  {N.op_name(op[:3])}{extra}")
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(ABOUT)
        sys.stderr.write("Not called by a runtime (CNI_COMMAND unset). Operator commands: nlportmap --help\n")
        return 0
    args = _parser().parse_args(argv)
    if args.cmd == "version":
        print(f"nlportmap {__version__}")
        return 0
    if args.cmd == "list":
        return cmd_list(args)
    if args.cmd == "plan":
        return cmd_plan(args)
    if args.cmd == "daemon":
        from .daemon import main as daemon_main
        return daemon_main(args.socket, int(args.mode, 8), args.max_clients, args.verbose)
    if args.cmd == "demo":
        if os.geteuid() != 0:
            print("nlportmap demo: needs root (it creates network namespaces)", file=sys.stderr)
            return 1
        from .demo import run_demo
        return run_demo(ipv6=not args.no_ipv6, plugin=args.plugin)
    _parser().print_help()
    return 0
