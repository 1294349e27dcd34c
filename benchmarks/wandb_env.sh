#!/usr/bin/env bash
# wandb for benchmarks/overhead.py's wandb column, installed beside the benchmark (not a dependency of
# nndiag, not into .venv): pip --target .bench-wandb. Then run the benchmark with the PYTHONPATH printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=.bench-wandb
python -m pip install --quiet --target "$target" wandb
echo "PYTHONPATH=$PWD/$target python benchmarks/overhead.py"
