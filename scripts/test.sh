#!/usr/bin/env bash
# The test command (README quick start, and what CI runs): set up, then the whole suite.
# Integration tests need root; they build and remove their own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider tests "$@"
