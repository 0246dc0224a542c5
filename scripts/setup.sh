#!/usr/bin/env bash
# Install what nlportmap's demo, tests and benchmarks need on a fresh Debian machine (as root).
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null             || need_apt+=(iproute2)
command -v nft >/dev/null            || need_apt+=(nftables)
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v conntrack >/dev/null      || need_apt+=(conntrack)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/portmap ] \
                                     || need_apt+=(containernetworking-plugins)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
here=$(pwd -P)
# (Re)install when anything is missing or when the installed nlportmap is another checkout's
# (an editable install elsewhere on this machine would otherwise be what the tests run).
if ! "$PY" -c 'import nlportmap, pyroute2, anyio, msgspec, pytest, hypothesis' 2>/dev/null \
   || [ "$(cd / && "$PY" -c 'import nlportmap, os; print(os.path.dirname(os.path.dirname(os.path.realpath(nlportmap.__file__))))' 2>/dev/null)" != "$here" ] \
   || ! command -v nlportmap >/dev/null; then
    echo "setup: pip install -e .[test]" >&2
    "$PY" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e '^WARNING: Running pip as' -e 'is ignored: it is neither' >&2 || true
fi
"$PY" -c 'import nlportmap, pyroute2, anyio, msgspec' 
command -v nlportmap >/dev/null
# Precompiled bytecode + the fast CNI launcher (python -I -S; see nlportmap/launcher.py),
# written next to the interpreter as nlportmap-cni.  Idempotent; cheap.
"$PY" -m nlportmap.launcher >/dev/null
