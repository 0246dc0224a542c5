"""Operator commands (``nlportmap <command>``) for when no ``CNI_COMMAND`` is set.

``demo``  build throw-away namespaces, run bridge -> host-local -> nlportmap,
          prove TCP and UDP forwarding, DEL, clean up (root).
``list``  the mappings installed on this node, read over netlink.
``plan``  dry-run: decode a CNI config from stdin and print the plan and the
          objects of the transaction, changing nothing.
``restore``  re-program recorded attachments whose objects are missing (nlportmap.restore)
``daemon``  serve plugin requests from a resident process (see nlportmap.daemon)
``install`` write the fast launcher into a CNI bin dir (see nlportmap.launcher)
``version``
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .versions import SUPPORTED_VERSIONS

ABOUT = ("CNI portmap plugin nlportmap " + __version__ + "\n"
         "CNI protocol versions supported: " + ", ".join(SUPPORTED_VERSIONS) + "\n")


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"file mode out of range: {text!r}")
    return mode


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return n


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
    ls.add_argument("--backend", choices=("nftables", "iptables", "all"), default="all",
                    help="which backend's state to read (default: all)")
    pl = sub.add_parser("plan", help="dry-run: read a CNI config on stdin, print the plan and transaction objects")
    pl.add_argument("--container-id", default="dry-run", help="CNI_CONTAINERID to plan for (default: dry-run)")
    pl.add_argument("--ifname", default="eth0",
                    help="CNI_IFNAME: picks the container IPs in prevResult (default: eth0)")
    rs = sub.add_parser("restore", help="re-program every recorded attachment whose objects are missing "
                                        "(after a firewall flush or reload; both backends)")
    rs.add_argument("--json", action="store_true", help="print what was restored as JSON (a list of objects)")
    rs.add_argument("--dry-run", action="store_true", help="only say what is missing; change nothing")
    dm = sub.add_parser("daemon", help="serve plugin requests from a resident process (root; see docs/performance.md)")
    dm.add_argument("--socket", default=None,
                    help="Unix socket path (default: $NLPORTMAP_SOCKET or /run/nlportmap/daemon.sock)")
    dm.add_argument("--mode", default="0600", type=_octal_mode, help="socket file permissions, octal (default 0600)")
    dm.add_argument("--max-clients", type=_positive, default=128, help="concurrent requests before refusing")
    dm.add_argument("--verbose", action="store_true", help="log every request on stderr")
    dm.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                    help="exit after this long without a request (default: 60 when socket-activated, "
                         "else never; 0: never)")
    dm.add_argument("--no-heal", action="store_true",
                    help="do not restore recorded mappings when nftables notifications show them "
                         "deleted (also: NLPORTMAP_HEAL=0)")
    ins = sub.add_parser("install", help="write the fast CNI launcher (bound to this interpreter) into a CNI bin dir",
                         description="Byte-compile the package, write the -I -S launcher bound to this "
                                     "interpreter to DIR/NAME, and run CNI VERSION through it. Refuses to "
                                     "replace a file it did not write or one owned by a Debian package "
                                     "unless --force.")
    ins.add_argument("--cni-bin-dir", default="/opt/cni/bin", metavar="DIR",
                     help="the runtime's CNI bin dir (default: /opt/cni/bin)")
    ins.add_argument("--name", default="portmap",
                     help='file name = the conflist\'s "type" (default: portmap; or nlportmap)')
    ins.add_argument("--force", action="store_true",
                     help="replace a file nlportmap did not write, or one a Debian package owns")
    sub.add_parser("version", help="print the version")
    return p


def cmd_list(args: argparse.Namespace) -> int:
    from .backends import make_backend
    names = ["nftables", "iptables"] if args.backend == "all" else [args.backend]
    rows = []
    for n in names:
        try:
            b = make_backend(n)
            rows += b.list()
        except Exception as e:  # a missing backend just has nothing to list
            if args.backend != "all":
                print(f"nlportmap: {n}: {e}", file=sys.stderr)
                return 1
    from .restore import drift
    rows = drift(rows, tuple(names))  # recorded or not, and recorded forwards the kernel lacks
    order = {"active": 0, "shadowed": 1, "missing": 2}
    rows.sort(key=lambda r: (order.get(r.state, 3), r.host_port, r.proto, r.family, r.host_ip or "",
                             r.owner.container_id if r.owner else ""))
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    head = ("CONTAINER", "IFNAME", "NETWORK", "PROTO", "HOST", "CONTAINER-ADDR", "BACKEND", "STATE", "RECORDED")
    table = [head]
    for r in rows:
        o = r.owner
        hip = r.host_ip or ("0.0.0.0" if r.family == 4 else "::")
        host = f"[{hip}]:{r.host_port}" if r.family == 6 else f"{hip}:{r.host_port}"
        cont = f"[{r.container_ip}]:{r.container_port}" if r.family == 6 else f"{r.container_ip}:{r.container_port}"
        table.append((o.container_id[:20] if o else "?", o.ifname if o else "?", o.network if o else "?",
                      r.proto, host, cont, r.backend, r.state,
                      "-" if r.recorded is None else "yes" if r.recorded else "no"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Dry-run: print the plan and the objects of the transaction(s); touches nothing.

    Input: one plugin configuration as a runtime sends it on ADD (with
    ``prevResult``), not a whole conflist.  The backend shown is the one ADD
    would use, except that auto-detection is assumed to find nf_tables.
    """
    from .backends import configured_backend
    from .config import check_backend_conflict, parse_config
    from .errors import CNIError, InvalidConfig, error_json
    from .plan import Owner, make_plan
    try:
        from .skel import decode_json, validate_container_id, validate_ifname
        validate_container_id(args.container_id)
        validate_ifname(args.ifname)
        raw = sys.stdin.buffer.read()
        obj = decode_json(raw, "failed to parse config: failed to parse network configuration: ")
        if isinstance(obj, dict) and "plugins" in obj:
            raise InvalidConfig("plan: this is a conflist; give the portmap plugin's entry as a runtime "
                                "would send it (with name, cniVersion, runtimeConfig and prevResult)")
        conf = parse_config(obj if isinstance(obj, dict) or obj is None else raw, "ADD")
        if conf.prevResult is None:
            raise InvalidConfig("plan: no prevResult (ADD would fail: must be called as chained plugin)")
        plan = make_plan(conf, conf.container_ips(args.ifname), Owner(args.container_id, args.ifname, conf.name))
        backend = configured_backend(conf) or "nftables"  # auto-detection assumed to find nf_tables
        check_backend_conflict(conf, backend)
    except CNIError as e:
        print(error_json(e))
        return 1
    print(plan.describe())
    auto = "" if conf.backend else " (auto-detected; iptables if nf_tables does not answer)"
    print(f"backend: {backend}{auto}")
    if backend == "iptables":
        from .ipt import rules as R
        print("iptables-restore --noflush input on an empty node, per family:")
        for fam in plan.families():
            cc = R.container_chain(plan, fam)
            print(f"  # {'iptables' if fam == 4 else 'ip6tables'}-restore")
            for line in R.restore_text(R.add_lines(cc, R.parse_save("")), R.TABLE).splitlines():
                print(f"  {line}")
        return 0
    from .nft import layout as L
    from .nft import netlink as N
    print("nftables transaction (first ADD on a node; later ADDs send only the elements):")
    for fam in plan.families():
        for op in L.skeleton(fam, plan.conditions.get(fam)):
            print(f"  {N.op_name(op)}")
    stamp = plan.owner.comment + " @<ms>"
    for f in plan.forwards:
        s, _ = L.forward_key(f.family, f.proto, f.host_ip, f.host_port)
        print(f"  NEWSETELEM {'ip' if f.family == 4 else 'ip6'} {L.TABLE}/{s}  {f}  comment {stamp!r}")
    for m in plan.masqs:
        s, _ = L.masq_key(m.saddr, m.daddr)
        print(f"  NEWSETELEM {'ip' if m.family == 4 else 'ip6'} {L.TABLE}/{s}  {m}  comment {stamp!r}")
    return 0


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. `nlportmap plan | head`
        sys.stderr.close()
        return 0


def _main(argv: list[str]) -> int:
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
    if args.cmd == "restore":
        from .restore import main as restore_main
        return restore_main(args.json, args.dry_run)
    if args.cmd == "install":
        from .launcher import InstallError, install
        try:
            install(args.cni_bin_dir, args.name, args.force)
        except (InstallError, OSError) as e:
            print(f"nlportmap install: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "daemon":
        from .daemon import main as daemon_main
        return daemon_main(args.socket, args.mode, args.max_clients, args.verbose, args.idle_exit,
                           heal=not args.no_heal)
    if args.cmd == "demo":
        if os.geteuid() != 0:
            print("nlportmap demo: needs root (it creates network namespaces)", file=sys.stderr)
            return 1
        from .demo import run_demo
        return run_demo(ipv6=not args.no_ipv6, plugin=args.plugin)
    _parser().print_help()
    return 0
