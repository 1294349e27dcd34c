#!/usr/bin/env bash
# Fresh machine -> the nndiag demo: installs what it needs into .venv, trains a small model
# with an injected fault, prints what nndiag recorded and where to look.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" lightning
nndiag demo --out runs "$@"
