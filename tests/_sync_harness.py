"""A stand-in CUDA device on the CPU that counts every operation that would block the host on a GPU.

How "on the device" is decided
------------------------------
On the CPU every tensor is a CPU tensor, so the harness gives the training device its own identity:
the run's device is ``torch.device("cpu", 0)`` (:data:`STAND_IN`), which computes on the CPU like
``"cpu"`` but compares unequal to it, while host tensors live on plain ``torch.device("cpu")``
(:data:`HOST`). A :class:`~torch.overrides.TorchFunctionMode` (:class:`StandInDevice`) sees every
torch call made from Python and marks a tensor *resident* (on the device) when

* a factory made it with ``device=STAND_IN`` (``torch.zeros(..., device=self.device)``),
* ``.to(STAND_IN)`` / ``.to(other_resident)`` / ``copy_`` into a resident tensor made it, or
* an operation with a resident input made it (``.grad`` of a resident parameter included),

and reports ``STAND_IN`` as the ``.device`` of resident tensors, so code that places new tensors
"where x is" (``device=x.device``) places them on the stand-in device too. Everything else is a host
tensor: the sampler's permutation, the dataset indices, the augmentation's CPU-generator draws,
Python data. ``pin_memory()`` (unavailable without CUDA) returns a copy the harness remembers as
pinned, and ``is_pinned()`` answers from that.

What counts as a sync (each recorded with its call site, the innermost ``sb_accel`` frame):

* a host read of a resident tensor: ``bool()``, ``int()``, ``float()``, ``.item()``, ``.tolist()``,
  ``.numpy()``, ``torch.equal``/``allclose``, printing;
* a data-dependent output size: ``nonzero`` (``nonzero_static`` is free), ``argwhere``,
  ``masked_select``, ``unique``, one-argument ``torch.where``, boolean-mask indexing;
* a device->host copy: ``.cpu()``, ``.to(HOST)`` of a resident tensor (``non_blocking`` included:
  its value cannot be used before a sync);
* a host->device copy that is not a pinned source with ``non_blocking=True``: ``.to(STAND_IN)`` of a
  pageable tensor, ``torch.tensor(data, device=STAND_IN)``, and the implicit copy of a host tensor
  used to index (or written into) a resident one;
* collectives read back on the host: under DDP the harness puts the collectives' tensors on the
  stand-in device (``RankGroup.comm_device``, as NCCL does), so reading a reduced value is a read.

What the loop does on CUDA but not on a CPU-typed device is set explicitly by the caller
(:func:`as_on_cuda`): the divergence guard's interval and deferred NaN checks.

Syncs are attributed to the candidate batch being processed (:meth:`StandInDevice.candidate`), to a
periodic context (:meth:`StandInDevice.periodic`: log intervals, evaluation, epoch ends, checkpoints)
or to set-up; the budget is checked per candidate batch.
"""
from __future__ import annotations

import contextlib
import os
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.overrides import TorchFunctionMode

STAND_IN = torch.device("cpu", 0)
HOST = torch.device("cpu")

_PACKAGE = os.sep + "sb_accel" + os.sep
_HERE = os.path.abspath(__file__)

READS = {"__bool__", "__int__", "__float__", "__index__", "__complex__", "item", "tolist", "numpy", "__array__",
         "__repr__", "__str__", "__format__", "equal", "allclose", "is_nonzero"}
DYNAMIC_SHAPE = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}
INDEXING = {"__getitem__", "__setitem__", "index_select", "index_put", "index_put_", "take", "gather", "scatter",
            "scatter_", "index_copy", "index_copy_", "index_fill", "index_fill_", "index_add", "index_add_"}


@dataclass
class Sync:
    """One operation that would block the host on a GPU."""

    what: str
    site: str                 # file:line of the innermost sb_accel frame (else the innermost caller)
    caller: str               # the frame that called into that site's function
    batch: Optional[int]      # candidate batch number, None outside one
    periodic: bool

    def __str__(self) -> str:
        return f"{self.what} at {self.site} (called from {self.caller})"


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, torch.Tensor):
                yield item
            elif isinstance(item, (list, tuple)):
                yield from (t for t in item if isinstance(t, torch.Tensor))
    elif isinstance(value, dict):
        yield from (v for v in value.values() if isinstance(v, torch.Tensor))


def _as_device(value: Any) -> Optional[torch.device]:
    if value is None:
        return None
    try:
        return torch.device(value)
    except (TypeError, RuntimeError):
        return None


class StandInDevice(TorchFunctionMode):
    """The stand-in device's bookkeeping (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: List[Sync] = []
        self.batch: Optional[int] = None
        self.batches = 0
        self._periodic = 0

    # --- residency ----------------------------------------------------------------------------
    @staticmethod
    def resident(t: torch.Tensor) -> bool:
        return getattr(t, "_on_stand_in", False)

    @staticmethod
    def _mark(value: Any, on: bool = True) -> Any:
        for t in _tensors(value):
            t._on_stand_in = on
        return value

    def place(self, value: Any) -> Any:
        """Mark ``value``'s tensors as resident (what a test hands in as already on the device)."""
        return self._mark(value)

    # --- attribution --------------------------------------------------------------------------
    def candidate(self, number: Optional[int]) -> None:
        """Syncs from now on belong to candidate batch ``number`` (None: between batches)."""
        self.batch = number

    @contextlib.contextmanager
    def periodic(self) -> Iterator[None]:
        """Syncs inside belong to a periodic read (interval, evaluation, epoch end, checkpoint)."""
        self._periodic += 1
        try:
            yield
        finally:
            self._periodic -= 1

    def _record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if os.path.abspath(f.filename) != _HERE
                  and "torch" + os.sep not in f.filename]
        ours = [i for i, f in enumerate(frames) if _PACKAGE in f.filename]
        i = ours[-1] if ours else len(frames) - 1
        where = lambda f: f"{os.path.relpath(f.filename)}:{f.lineno} ({f.name})"  # noqa: E731
        self.syncs.append(Sync(what, where(frames[i]), where(frames[i - 1]) if i > 0 else "-",
                               self.batch, self._periodic > 0))

    # --- the mode -----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        owner = getattr(getattr(func, "__self__", None), "__name__", "")
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "__get__" and owner == "device":
            return STAND_IN if self.resident(args[0]) else func(*args, **kwargs)
        if name == "pin_memory":
            return self._pinned(args[0].clone())
        if name == "is_pinned":
            return bool(getattr(args[0], "_pinned", False))
        if first is not None and self.resident(first):
            if name in READS:
                self._record(f"host read {name}()")
            elif name in DYNAMIC_SHAPE or (name == "where" and len(args) + len(kwargs) == 1):
                self._record(f"{name}() (output size read back)")
            elif name in INDEXING:
                self._check_index(name, args[1:], kwargs)
        if name in ("to", "cpu", "cuda", "copy_"):
            return self._copy(func, name, args, kwargs)
        out = func(*args, **kwargs)
        target = _as_device(kwargs.get("device"))
        if target is not None:  # a factory (or *_like) told where
            if target == STAND_IN and name in ("tensor", "as_tensor") and not isinstance(args[0], torch.Tensor):
                self._record(f"torch.{name}(python data, device=<device>) (pageable host->device copy)")
            return self._mark(out, target == STAND_IN)
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        if any(self.resident(t) for t in inputs):
            self._mark(out)
        return out

    @staticmethod
    def _pinned(t: torch.Tensor) -> torch.Tensor:
        t._pinned = True
        return t

    def _check_index(self, name: str, rest: tuple, kwargs: dict) -> None:
        for t in list(_tensors(rest)) + list(_tensors(kwargs)):
            if t.dim() == 0 and not self.resident(t):
                continue  # a host scalar is passed by value
            if not self.resident(t):
                self._record(f"{name} with a host tensor (implicit pageable host->device copy)")
            elif t.dtype == torch.bool and name in ("__getitem__", "__setitem__", "index_put", "index_put_"):
                self._record(f"{name} with a boolean mask (nonzero: output size read back)")

    def _copy(self, func, name: str, args: tuple, kwargs: dict) -> Any:
        src = args[0]
        if name == "copy_":
            dst, src = args[0], args[1]
            non_blocking = bool(kwargs.get("non_blocking", args[2] if len(args) > 2 else False))
            self._transfer(self.resident(src), self.resident(dst), src, non_blocking)
            return func(*args, **kwargs)
        if name == "cpu":
            target_resident = False
            non_blocking = False
        elif name == "cuda":
            raise RuntimeError("the stand-in device has no .cuda(): code under test must use .to(device)")
        else:
            other = next((a for a in args[1:] if isinstance(a, torch.Tensor)), kwargs.get("other"))
            if other is not None:
                target_resident, non_blocking = self.resident(other), bool(kwargs.get("non_blocking", False))
            else:
                device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
                target_resident = self.resident(src) if device is None else device == STAND_IN
                if device is not None and device == STAND_IN:  # compute on the host device: .to(cpu:0)
                    # would copy even a resident tensor, where a real .to(device) of one is free
                    args = (src, HOST) + args[2:] if len(args) > 1 and _as_device(args[1]) == STAND_IN else args
                    kwargs = {**kwargs, "device": HOST} if "device" in kwargs else kwargs
        self._transfer(self.resident(src), target_resident, src, non_blocking)
        out = func(*args, **kwargs)
        if out is src and self.resident(src) != target_resident:
            out = out.view_as(out)  # a copy in reality: a new tensor, so marking it leaves the source alone
        return self._mark(out, target_resident)

    def _transfer(self, from_device: bool, to_device: bool, src: torch.Tensor, non_blocking: bool) -> None:
        if from_device and not to_device:
            self._record("device->host copy")
        elif to_device and not from_device and not (non_blocking and getattr(src, "_pinned", False)):
            why = "not pinned" if non_blocking else "blocking"
            self._record(f"host->device copy ({why})")

    # --- results ------------------------------------------------------------------------------
    def hot(self) -> Dict[int, List[Sync]]:
        """Syncs per candidate batch outside periodic contexts."""
        per: Dict[int, List[Sync]] = {}
        for s in self.syncs:
            if s.batch is not None and not s.periodic:
                per.setdefault(s.batch, []).append(s)
        return per

    def over_budget(self, budget: int, batches: Optional[set] = None) -> List[str]:
        """One line per call site whose syncs put a candidate batch over ``budget`` (with counts)."""
        sites: Counter = Counter()
        for batch, syncs in self.hot().items():
            if (batches is None or batch in batches) and len(syncs) > budget:
                sites.update(str(s) for s in syncs)
        return [f"{count}x {site}" for site, count in sites.most_common()]


@contextlib.contextmanager
def candidates_counted(harness: StandInDevice, source: Any) -> Iterator[None]:
    """Wrap ``source.epoch`` so that each yielded candidate batch opens a new attribution window."""
    original = source.epoch

    def epoch(*args, **kwargs):
        batches = original(*args, **kwargs)
        while True:
            harness.candidate(harness.batches)  # making the batch (loader, augmentation) counts for it
            batch = next(batches, None)
            if batch is None:
                break
            harness.batches += 1
            yield batch
        harness.candidate(None)

    source.epoch = epoch
    try:
        yield
    finally:
        source.epoch = original
