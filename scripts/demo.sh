#!/usr/bin/env bash
# The demo command (README quick start): set up, then build throw-away namespaces,
# run bridge -> host-local -> nlportmap, forward real TCP and UDP, DEL, clean up.
# Runs with the interpreter of the venv that scripts/setup.sh made (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m nlportmap demo "$@"
