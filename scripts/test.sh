#!/usr/bin/env bash
# Fresh machine -> the whole test suite: installs what it needs into .venv, lints, runs pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
ruff check nndiag tests examples benchmarks
ruff format --check nndiag tests examples benchmarks
mypy nndiag
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
