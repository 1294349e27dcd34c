import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from helpers import LIGHTNING_PACKAGES

# Automatic post-run reports (tested in test_report_*.py) would add 1-2 s to every recorded run of the
# suite; tests that want them pass report=True or unset the variable.
os.environ.setdefault("NNDIAG_REPORT", "0")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=LIGHTNING_PACKAGES, ids=["lightning", "pytorch_lightning"])
def pkg(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once with lightning.pytorch and once with pytorch_lightning."""
    return request.param
