#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (PostgreSQL, Prometheus, helm,
# the pinned Kubernetes control plane, Python deps), then runs the linter, the type checkers, the import
# contracts and pytest. The real servers (PostgreSQL, Prometheus, the control plane) are started by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
export PATH="$PWD/.tools/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict, the whole package; and the client helper, its own distribution)"
mypy
(cd client && mypy)
echo "== lint-imports (layers import only downwards; no cycles)"
PYTHONPATH=operator lint-imports
echo "== pytest"
python -m pytest "$@"
