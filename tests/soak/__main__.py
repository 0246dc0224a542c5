"""``python3 -m tests.soak``: the long churn run (issue 5), as root, from the repository root.

Builds throw-away namespaces (prefix ``nlpm-soak``), runs the churn engine of
:mod:`tests.soak.churn` -- concurrent ADD/DEL/CHECK/GC on ~100 attachments with
overlapping host ports, both address families, checked against the model after
every checkpoint -- prints progress, operations per second and every
divergence, and removes everything again.  Exit status 0 iff there was no
divergence.

Examples::

    python3 -m tests.soak                       # 10,000 ops, 8 workers, 5% exec'd, the rest in-process
    python3 -m tests.soak --ops 2000 --exec-fraction 1   # every call exec'd, like a runtime
    python3 -m tests.soak --sharers 5           # up to 5 claimants per host port
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=10_000, help="operations (default 10000)")
    p.add_argument("--workers", type=int, default=8, help="concurrent workers (default 8)")
    p.add_argument("--containers", type=int, default=100, help="attachments (default 100)")
    p.add_argument("--sharers", type=int, default=3,
                   help="attachments per shared host port (default 3: ports pass through several shadowed claims)")
    p.add_argument("--exec-fraction", type=float, default=0.05,
                   help="fraction of calls that exec the real plugin (default 0.05; the rest run in-process "
                        "in threads setns'd into the node namespace)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="verify the model every N ops (default 500)")
    p.add_argument("--seed", type=int, default=None, help="workload seed (default random; printed)")
    p.add_argument("--foreign-interval", type=float, default=0.05,
                   help="seconds between commits of another nftables user in the node (default 0.05; "
                        "negative: none)")
    p.add_argument("--adopt", action="store_true",
                   help="after a divergence in *which* shadowed claim was restored, follow the kernel's choice")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("tests.soak: needs root (it creates network namespaces)", file=sys.stderr)
        return 2

    from .churn import RESTORES_CLAIMS, run_churn  # (after sys.path is set up above)
    from netns_fixtures import Topology, cleanup_stale
    from nlpm_helpers import EXE, Node

    cleanup_stale("nlpm-soak")
    # nlportmap's lock files and self-healing records go to a private dir, never to /run
    import shutil
    import tempfile
    private = tempfile.mkdtemp(prefix="nlpm-soak-run-")
    for key, sub_dir in (("NLPORTMAP_LOCK_DIR", "locks"), ("NLPORTMAP_STATE_DIR", "state")):
        os.environ.setdefault(key, os.path.join(private, sub_dir))
    import atexit
    atexit.register(shutil.rmtree, private, True)
    t0 = time.perf_counter()

    def progress(rep, gen):
        el = time.perf_counter() - t0
        print(f"[{el:7.1f}s] {rep.ops:6d} ops, {rep.ops / el if el else 0:6.1f} ops/s, generation {gen}, "
              f"{rep.commits} commits, {rep.takeovers} takeovers, {rep.restores} restores, "
              f"{rep.final_elements} elements, divergences {len(rep.divergences)}", flush=True)

    print(f"nlportmap soak: {args.ops} ops, {args.workers} workers, {args.containers} attachments, "
          f"sharers {args.sharers}, exec fraction {args.exec_fraction}, foreign commits every "
          f"{args.foreign_interval} s, model restores claims: {RESTORES_CLAIMS}",
          flush=True)
    with Topology(prefix="nlpm-soak", plugin_paths={"portmap": EXE}) as t:
        rep = run_churn(Node(t), ops=args.ops, workers=args.workers, containers=args.containers,
                        sharers=args.sharers, exec_fraction=args.exec_fraction, seed=args.seed,
                        checkpoint_every=args.checkpoint_every, adopt=args.adopt,
                        foreign_interval=None if args.foreign_interval < 0 else args.foreign_interval,
                        log=lambda m: print(m, flush=True), progress=progress)
    print(f"seed {rep.seed}: {rep.summary()}")
    for d in rep.divergences:
        print(f"  divergence: {d}")
    print("RESULT:", "OK, no divergence" if not rep.divergences else f"{len(rep.divergences)} DIVERGENCES")
    return 0 if not rep.divergences else 1


if __name__ == "__main__":
    sys.exit(main())
