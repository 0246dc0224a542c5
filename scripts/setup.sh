#!/usr/bin/env bash
# Install what nlportmap's demo, tests and benchmarks need on a fresh Debian machine (as root).
# Python packages go into a venv at .venv in this checkout (Debian's python is
# "externally managed", PEP 668: pip never installs into a system interpreter here).
# Idempotent and quiet when everything is already there.
#   PYTHON=python3.12 bash scripts/setup.sh   # base interpreter for a new .venv (default: python3 on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv

need_apt=()
command -v ip >/dev/null             || need_apt+=(iproute2)
command -v nft >/dev/null            || need_apt+=(nftables)
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v conntrack >/dev/null      || need_apt+=(conntrack)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/portmap ] \
                                     || need_apt+=(containernetworking-plugins)
if [ ! -x "$VENV/bin/python" ]; then
    # Debian splits ensurepip (which `python3 -m venv` needs) into python3-venv
    if ! command -v "$PY" >/dev/null; then
        [ "$PY" = python3 ] || { echo "setup: $PY not found on PATH" >&2; exit 1; }
        need_apt+=(python3 python3-venv)
    elif ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
        need_apt+=(python3-venv)
    fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

here=$(pwd -P)
VPY=$VENV/bin/python
# A venv whose interpreter no longer starts (its base python was removed) or that was
# left half-made (no pip) is rebuilt; it is ours, inside this checkout.
if [ -e "$VENV" ] && ! "$VPY" -c 'import pip' >/dev/null 2>&1; then
    echo "setup: $VENV is broken; re-creating it" >&2
    rm -rf -- "$VENV"
fi
if [ ! -e "$VENV" ]; then
    echo "setup: $PY -m venv $VENV" >&2
    "$PY" -m venv "$VENV"
fi

# (Re)install when a module is missing, when the venv's nlportmap is another checkout's
# (a venv copied or moved from elsewhere), or when pyproject.toml changed since the last
# install (the stamp).
stamp="$VENV/.nlportmap-setup"
want="$here $(sha256sum pyproject.toml | cut -d' ' -f1)"
probe='
import importlib.util, os, sys
missing = [m for m in sys.argv[1].split(",") if importlib.util.find_spec(m) is None]
print("missing: " + " ".join(missing) if missing else
      os.path.dirname(os.path.dirname(os.path.realpath(importlib.util.find_spec("nlportmap").origin))))
'
where=$(cd / && "$here/$VPY" -c "$probe" nlportmap,pyroute2,anyio,msgspec,pytest,hypothesis,mypy,ruff 2>/dev/null) \
    || where=
if [ "$where" != "$here" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/nlportmap" ]; then
    echo "setup: $VPY -m pip install -e .[test]" >&2
    log=$(mktemp)
    if ! "$VPY" -m pip install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup: pip install failed" >&2
        exit 1
    fi
    grep -v -e 'is ignored: it is neither' -e '^WARNING: Running pip as' "$log" >&2 || true
    rm -f "$log"
    echo "$want" >"$stamp"
fi
"$VPY" -c 'import nlportmap, pyroute2, anyio, msgspec'
# Precompiled bytecode + the fast CNI launcher (python -I -S; see nlportmap/launcher.py),
# bound to the venv's interpreter, written next to it as .venv/bin/nlportmap-cni (what
# the demo and the integration tests exec).  Verified, idempotent, cheap.
"$VPY" -m nlportmap install --cni-bin-dir "$VENV/bin" --name nlportmap-cni >/dev/null
