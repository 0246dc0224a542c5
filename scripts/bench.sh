#!/usr/bin/env bash
# The benchmark command (README, docs/performance.md): set up, add matplotlib (the
# optional 'bench' dependency group) and /usr/bin/time, then run the harness as root.
#   bash scripts/bench.sh            # full run (about 10 minutes on 2 cores)
#   bash scripts/bench.sh --quick    # fewer samples (about 4 minutes)
# Extra arguments go to `python3 -m benchmarks` (see --help), e.g.
#   --plugin upstream-nft=/path/to/newer/portmap,nftables
# Results: benchmarks/results/{results.md,results.json,*.png}
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
if ! command -v /usr/bin/time >/dev/null; then
    echo "bench: apt-get install time" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null; }
fi
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    echo "bench: pip install -e .[bench]" >&2
    "$PY" -m pip install -q --disable-pip-version-check -e '.[bench]' 2>&1 | grep -v -e '^WARNING: Running pip as' -e 'is ignored: it is neither' >&2 || true
fi
exec "$PY" -m benchmarks "$@"
