#!/usr/bin/env bash
# The test command (README quick start, and what CI runs): set up, then strict types
# (mypy, settings in pyproject.toml), lint (ruff) and the whole suite, with the venv that
# scripts/setup.sh made (.venv).  A type or lint regression fails it like a failing test.
# Integration tests need root; they build and remove their own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test.sh: mypy (strict)" >&2
.venv/bin/mypy
echo "test.sh: ruff" >&2
.venv/bin/ruff check nlportmap tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
