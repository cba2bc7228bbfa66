"""What a model returns and what a batch holds, turned into per-example losses.

Selection needs one loss per example. These adapters read the common shapes of model outputs and
batches so most models need no ``loss_fn`` at all:

* output: a logits tensor, a tuple/list (logits first), or a mapping / Hugging Face ``ModelOutput``
  with a ``logits`` entry;
* batch: a tuple/list ``(inputs, labels, ...)`` or a mapping with ``labels`` (Hugging Face);
* forward: ``model(batch[0])`` for a tuple, ``model(**inputs)`` for a mapping (``labels`` left out,
  so a Hugging Face model does not compute its own mean loss on the way).

A custom ``loss_fn(output, batch) -> (N,)`` replaces :func:`per_example_loss`, a custom
``forward(model, batch)`` replaces :func:`default_forward`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["per_example_loss", "causal_lm_loss", "default_forward", "logits_of", "labels_of", "LossFn", "Forward",
           "IGNORE_INDEX", "LABEL_KEYS"]

IGNORE_INDEX = -100  # torch's cross_entropy default and the Hugging Face convention for padding tokens
LABEL_KEYS = ("labels", "label")

LossFn = Callable[[Any, Any], torch.Tensor]
Forward = Callable[[nn.Module, Any], Any]


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, ``output["logits"]`` / ``output.logits``
    (dicts, ``ModelOutput``), or the first element of a tuple/list."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits") and torch.is_tensor(output.logits):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}: return a tensor, a "
                    "tuple with the logits first or a dict/ModelOutput with 'logits', or pass loss_fn=")


def labels_of(batch: Any) -> torch.Tensor:
    """The labels of a batch: ``batch[1]`` of a tuple/list, ``batch["labels"]`` of a mapping."""
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if key in batch:
                return batch[key]
        raise KeyError(f"the batch has no 'labels' entry (keys: {sorted(map(str, batch))}); add one or pass loss_fn=")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise TypeError(f"cannot find labels in a batch of type {type(batch).__name__}: use (inputs, labels) or a dict "
                    "with 'labels', or pass loss_fn=")


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch[0])`` for a tuple/list, ``model(**batch)`` without the labels for a mapping."""
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k not in LABEL_KEYS})
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def per_example_loss(output: Any, batch: Any, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-example cross-entropy (FP32) of ``output``'s logits against ``batch``'s labels.

    Logits ``(N, C)`` with labels ``(N,)``: one loss per example. Logits ``(N, T, C)`` with labels
    ``(N, T)`` (token classification, or a causal LM whose labels are already shifted): the mean over
    each sequence's tokens whose label is not ``ignore_index`` (a sequence with none scores 0).
    For a causal LM whose labels are its input ids use :func:`causal_lm_loss`.
    """
    return _cross_entropy(logits_of(output), labels_of(batch), ignore_index)


def causal_lm_loss(output: Any, batch: Any, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-sequence next-token loss (the Hugging Face convention: labels are the input ids; token
    ``t`` predicts label ``t + 1``), the mean over non-ignored tokens."""
    logits, labels = logits_of(output), labels_of(batch)
    if logits.dim() != 3:
        raise ValueError(f"causal_lm_loss needs logits (N, T, vocab), got shape {tuple(logits.shape)}")
    return _cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if not torch.is_tensor(labels) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class indices, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} (one-hot or soft labels: pass "
                         "labels.argmax(-1), or a loss_fn=)")
    if logits.dim() == 2 and labels.shape == logits.shape[:1]:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    if logits.dim() == 3 and labels.shape == logits.shape[:2]:
        tokens = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none", ignore_index=ignore_index)
        counted = (labels != ignore_index).sum(1)
        return tokens.sum(1) / counted.clamp_min(1)
    raise ValueError(f"logits of shape {tuple(logits.shape)} do not match labels of shape {tuple(labels.shape)}: "
                     "expected (N, C) with (N,) or (N, T, C) with (N, T); pass loss_fn= for other losses")
