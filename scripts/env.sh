#!/usr/bin/env bash
# Create (or reuse) .venv and install nndiag with the given extras, printing one line per stage.
# torch==2.13.0 is installed first: an unpinned torch would pull several GB of CUDA wheels.
# pip runs quietly; when a stage fails, the end of its output is shown and the script stops.
# Usage: source scripts/env.sh EXTRAS   (e.g. "lightning" or "test")
set -euo pipefail
extras="${1:-lightning}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

_nndiag_pip() {  # quiet pip install; on failure, the last 40 lines of its output
  local log status=0
  log="$(mktemp)"
  python -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    grep -v "is ignored" "$log" | tail -n 40 >&2
    echo "pip install $* failed (exit $status)" >&2
  fi
  rm -f "$log"
  return "$status"
}

if [ ! -x .venv/bin/python ]; then
  echo "[1/4] creating .venv"
  python3 -m venv .venv
else
  echo "[1/4] using .venv"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
echo "[2/4] upgrading pip"
_nndiag_pip --upgrade pip || echo "      (pip upgrade failed; continuing with $(python -m pip --version | cut -d' ' -f1-2))"
echo "[3/4] installing torch 2.13.0 (CPU)"
_nndiag_pip "torch==2.13.0"
echo "[4/4] installing nndiag[${extras}] (editable)"
_nndiag_pip -e ".[${extras}]"
python -c "import torch, nndiag; print(f'nndiag {nndiag.__version__} with torch {torch.__version__} in {__import__(\"sys\").prefix}')"
