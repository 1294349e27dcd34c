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


@pytest.fixture(autouse=True)
def fresh_dynamo_counters() -> None:
    """Each test starts as a process where dynamo has compiled nothing yet.

    nndiag keeps its forward hooks registered on quiet steps once dynamo has looked at any frame
    (``activations._dynamo_used``); without this, every test after the first compiling one would
    run that way and the parking of hooks would depend on the order the tests run in.
    """
    if "torch._dynamo" in sys.modules:
        from torch._dynamo.utils import counters

        counters.clear()
