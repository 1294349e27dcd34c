#!/usr/bin/env bash
# Fresh machine -> the whole test suite: installs what it needs into .venv, lints, runs pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
# The HTML-report tests open the reports in headless Chromium (Debian's package; playwright drives it
# and downloads nothing). Without it they skip and say why.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) \
      || echo "chromium could not be installed: the browser tests will skip" >&2
  else
    echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser tests will skip" >&2
  fi
fi
ruff check nndiag tests examples benchmarks dashboards
ruff format --check nndiag tests examples benchmarks dashboards
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
