import pytest
import torch

from sb_accel.data import synthetic_dataset


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic():
    return synthetic_dataset(train=1024, test=256)
