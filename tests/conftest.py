import pytest
import torch

# The suite runs thousands of small ops; one thread avoids OpenMP barrier stalls on a busy 2-core
# machine and keeps results bit-identical between runs.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test draws the same random inputs on every run (no flaky tolerances)."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_stop_caps():
    """aot.stops learns Sinkhorn stop caps per shape for the process: every test starts without any,
    so its first compress call of a shape records (a read per check) whatever ran before it."""
    import aot.stops

    aot.stops.clear()
