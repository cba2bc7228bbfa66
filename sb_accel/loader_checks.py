"""What the selecting loader refuses, and in which words: samplers it cannot honour, data that is
not a map-style Dataset, channels-last images, labels outside the model's classes, NaN/inf inputs
and training losses, a diverged model (in the API's words: no CLI flags). Each check runs on the
host copy of a batch or at an epoch's end: none adds a device sync per step."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from .adapters import IGNORE_INDEX, labels_of
from .data.batch_structure import Batch, leaves

__all__ = ["unpack_data", "check_candidates", "layout_error", "guard_training_losses", "api_nonfinite_message"]


def unpack_data(data: Any) -> Tuple[Dataset, Optional[int], Dict[str, Any], bool]:
    """The dataset, batch size, DataLoader settings kept, and whether to shuffle by default."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"SelectiveLoader needs a map-style Dataset (__getitem__ and __len__), got "
                        f"{type(dataset).__name__}: it selects examples by index")
    if isinstance(data, DataLoader):
        sampler = data.sampler
        if getattr(sampler, "replacement", False):  # RandomSampler(replacement=True), WeightedRandomSampler
            raise ValueError(f"the DataLoader's {type(sampler).__name__} draws with replacement: an epoch would offer "
                             "some examples several times and others never; use shuffle=True (a permutation)")
        if not isinstance(sampler, (RandomSampler, SequentialSampler, DistributedSampler)):
            raise ValueError(f"the DataLoader has a custom sampler ({type(sampler).__name__}): the selecting loader "
                             "draws its own per-epoch order to know every example's dataset index; pass the Dataset "
                             "or a DataLoader with shuffle=True/False")
        shuffle = not isinstance(sampler, SequentialSampler) and getattr(sampler, "shuffle", True)
        loading = {"collate_fn": data.collate_fn, "num_workers": data.num_workers, "pin_memory": data.pin_memory,
                   "worker_init_fn": data.worker_init_fn, "timeout": data.timeout}
        if data.num_workers:
            loading["multiprocessing_context"] = data.multiprocessing_context
        batch_size = data.batch_size
    else:
        batch_size, loading, shuffle = None, {"collate_fn": default_collate}, True
    return dataset, batch_size, loading, bool(shuffle)


def check_candidates(batch: Batch, indices: torch.Tensor, num_classes: Optional[int]) -> None:
    """Host-side checks of a candidate batch before it goes to the device (no device sync): NaN/inf
    inputs, and labels outside the model's classes with the default loss."""
    for t in leaves(batch):
        if t.device.type == "cpu" and t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise ValueError(f"a candidate batch holds NaN/inf inputs (dataset indices {indices[:8].tolist()}"
                             f"{'...' if len(indices) > 8 else ''}): clean or filter these examples in the Dataset")
    if num_classes is None:
        return
    labels = labels_of(batch)
    if torch.is_tensor(labels) and labels.device.type == "cpu" and labels.numel():
        valid = labels[labels != IGNORE_INDEX]
        lo, hi = (int(valid.min()), int(valid.max())) if valid.numel() else (0, 0)
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"label {bad} is outside the model's {num_classes} classes (0.."
                             f"{num_classes - 1}) in the candidates at dataset indices "
                             f"{indices[:8].tolist()}: fix the labels or the model's number of outputs")


def layout_error(sample: Batch, exc: RuntimeError) -> Exception:
    """A forward that failed on the first batch, with the likely cause named (channels-last images)."""
    first = sample[0] if isinstance(sample, (tuple, list)) else None
    if torch.is_tensor(first) and first.dim() == 4 and first.shape[-1] in (1, 3, 4) and first.shape[1] not in (1, 3, 4):
        return ValueError(f"the model failed on the first batch, whose images have shape {tuple(first.shape)}: that "
                          "looks channels-last (N, H, W, C); models take (N, C, H, W): permute in the Dataset or "
                          f"transform (x.permute(2, 0, 1) per image) ({exc})")
    return RuntimeError(f"the model or loss_fn failed on the first batch: {exc}")


_HOST = torch.device("cpu")
_TRAINING_NONFINITE = ("training losses passed to loss() are NaN/inf: the model has diverged (lower the "
                       "learning rate, add warm-up or gradient clipping) or the data holds NaN/inf")


def guard_training_losses(losses: Optional[torch.Tensor], flag: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Refuse non-finite training losses before a strategy stores them: on the CPU at once; on a GPU
    folded into the device-side ``flag`` (no host sync per step) and raised when called with
    ``losses=None`` (at the epoch's end). Returns the flag to keep."""
    if losses is None:
        if flag is not None and bool(flag):
            raise FloatingPointError(_TRAINING_NONFINITE)
        return None
    finite = torch.isfinite(losses.detach()).all()
    if losses.device == _HOST:  # an accelerator (any indexed device) defers the read
        if not bool(finite):
            raise FloatingPointError(_TRAINING_NONFINITE)
        return flag
    return ~finite if flag is None else flag | ~finite


def api_nonfinite_message(exc: FloatingPointError) -> str:
    """The policy's divergence message in the loader's words (no CLI flags)."""
    return ("selection losses are NaN/inf: the model has diverged (lower the learning rate, add warm-up or "
            "gradient clipping) or the engine produced garbage (try engine='torch-fp32') [" + str(exc).split(":")[0] + "]")
