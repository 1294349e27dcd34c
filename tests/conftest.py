import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from helpers import LIGHTNING_PACKAGES

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=LIGHTNING_PACKAGES, ids=["lightning", "pytorch_lightning"])
def pkg(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once with lightning.pytorch and once with pytorch_lightning."""
    return request.param
