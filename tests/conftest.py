import pytest
import torch

from sb_accel.data import data_search_dirs, synthetic_dataset
from sb_accel.data.sources import local_dataset_file

NEEDS_DATASET = "needs_dataset"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{NEEDS_DATASET}(name): reads the real dataset `name` (the offline copies in "
                                       "../shared/data or $SB_ACCEL_DATA); skipped where it is not found")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip a test marked ``needs_dataset(name)`` before its fixtures load the data, where the data is not here."""
    for marker in item.iter_markers(NEEDS_DATASET):
        name = marker.args[0]
        if local_dataset_file(name) is None:
            looked = ", ".join(str(d) for d in data_search_dirs())
            pytest.skip(f"needs the {name} dataset, not found (looked in {looked}); put the offline copy in "
                        "../shared/data or point $SB_ACCEL_DATA at it")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic():
    return synthetic_dataset(train=1024, test=256)
