import pytest
import torch

# The suite runs thousands of small ops; one thread avoids OpenMP barrier stalls on a busy 2-core
# machine and keeps results bit-identical between runs.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test draws the same random inputs on every run (no flaky tolerances)."""
    torch.manual_seed(0)
