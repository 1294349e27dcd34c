#!/usr/bin/env bash
# Create (or reuse) .venv and install nndiag with the given extras.
# torch==2.13.0 is installed first: an unpinned torch would pull several GB of CUDA wheels.
# Usage: source scripts/env.sh EXTRAS   (e.g. "lightning" or "test")
set -euo pipefail
extras="${1:-lightning}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
python -m pip install --quiet -e ".[${extras}]" 2>&1 | grep -v "is ignored" || true
python -c "import torch, nndiag; print(f'nndiag {nndiag.__version__} with torch {torch.__version__} in {__import__(\"sys\").prefix}')"
