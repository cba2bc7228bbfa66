"""Where datasets are looked for (``--data-dir``, $SB_ACCEL_DATA, ``../shared/data``), and the
error that says where a missing one was looked for and how to get it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from .array_dataset import DataError

__all__ = ["data_search_dirs", "find_data_file", "missing_dataset_error"]


def data_search_dirs(data_dir: Optional[str] = None) -> List[Path]:
    """Where datasets are looked for: ``data_dir`` (or $SB_ACCEL_DATA, else ./data), then
    ``../shared/data`` beside the working directory and beside this checkout."""
    first = Path(data_dir or os.environ.get("SB_ACCEL_DATA", "data"))
    repo = Path(__file__).resolve().parents[2]
    dirs = [first, Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]
    unique: List[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def find_data_file(filename: str, data_dir: Optional[str]) -> Optional[Path]:
    """The first ``<dir>/filename`` that exists in :func:`data_search_dirs`, or None."""
    for d in data_search_dirs(data_dir):
        if (d / filename).is_file():
            return d / filename
    return None


def missing_dataset_error(name: str, target: Path) -> DataError:
    """The error for dataset ``name`` found nowhere: where it was looked for, how to get it to ``target``."""
    return DataError(f"dataset {name!r} not found (looked for {name}.npz in "
                     f"{', '.join(str(d) for d in data_search_dirs(str(target.parent)))}). "
                     f"Pass --download to fetch it with torchvision (needs internet), or put a "
                     f".npz with x_train/y_train/x_test/y_test at {target}.")
