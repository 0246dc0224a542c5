#!/usr/bin/env bash
# The benchmark command (README, docs/performance.md): set up, add matplotlib (the
# optional 'bench' dependency group) to the venv (.venv) and /usr/bin/time, then run the
# harness as root with the venv's interpreter.
#   bash scripts/bench.sh            # full run: sizes 0,1000,10000 (about 3-5 minutes on 2 cores)
#   bash scripts/bench.sh --quick    # sizes 0,1000, fewer samples (under a minute)
# Configurations: nlportmap-cold (the launcher `nlportmap install` writes, no daemon),
# nlportmap-daemon, upstream-nft (../shared/upstream-portmap/portmap, "backend": "nftables")
# and upstream-iptables (Debian's /usr/lib/cni/portmap).  Extra arguments go to
# `.venv/bin/python -m benchmarks` (see --help), e.g.
#   --upstream-nft /path/to/portmap   --only nlportmap-cold,upstream-nft   --sizes 0,1000
# Results: benchmarks/results/{results.md,results.json,*.png}
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
if ! command -v /usr/bin/time >/dev/null; then
    echo "bench: apt-get install time" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null; }
fi
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    echo "bench: $PY -m pip install -e .[test,bench]" >&2
    log=$(mktemp)
    if ! "$PY" -m pip install -q --disable-pip-version-check -e '.[test,bench]' >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; echo "bench: pip install failed" >&2; exit 1
    fi
    rm -f "$log"
fi
exec "$PY" -m benchmarks "$@"
