#!/usr/bin/env bash
# The test command (README quick start, and what CI runs): set up, then the whole suite
# with the interpreter of the venv that scripts/setup.sh made (.venv).
# Integration tests need root; they build and remove their own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
