"""Per-example tables (Stale-SB's loss cache, InfoBatch's scores) kept identical on every rank.

A policy's *example tables* are its tensors with one row per training example, indexed by the
global dataset index, as the policy declares them
(:meth:`~sb_accel.selection.SelectionPolicy.example_tables`; Stale-SB: ``cached_loss``,
``loss_epoch``; InfoBatch: ``scores``). Every rank holds whole tables, so after the epoch's reshuffle it can read the
rows of its new shard locally.

Within an epoch a rank writes only rows of examples it handles (its shard, and its carried-over
kept examples). At the epoch's end :meth:`ExampleTables.sync` finds the rows this rank changed
since the epoch started (against a snapshot), all-gathers ``(index, row)`` from every rank and
writes them everywhere in rank order, so every rank ends the epoch with the same tables. A row two
ranks changed (only possible for a carried example that is also in another rank's new shard) takes
the higher rank's value. During an epoch a rank sees the others' writes of earlier epochs only.

Cost (float64 values, int64 index sent as float64): memory ``N * 8 * (tables + tables)`` per rank
(tables and snapshot); traffic per epoch: each rank receives every changed row, at most
``N * 8 * (1 + tables)`` bytes. docs/DISTRIBUTED.md has the numbers at CIFAR and ImageNet scale.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from ..selection import SelectionPolicy
from .distributed import RankGroup

__all__ = ["ExampleTables", "fill_shared", "SHARED"]

SHARED = "<same as rank 0>"  # stands for a table in a rank's checkpoint state (see strip/fill)


class ExampleTables:
    """The example tables of ``policy``, synchronised over ``group`` at epoch ends."""

    def __init__(self, policy: SelectionPolicy, dataset_size: int, group: RankGroup) -> None:
        self.owner = policy
        self.group = group
        tables = self.owner.example_tables()
        wrong = {name: tuple(t.shape) for name, t in tables.items() if t.dim() != 1 or len(t) != dataset_size}
        if wrong:
            raise ValueError(f"{self.owner!r} declares example tables {wrong} that are not one value per training "
                             f"example ({dataset_size}): example_tables() lists only such tensors")
        self.names: Tuple[str, ...] = tuple(tables)
        self._snapshot: Dict[str, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.names)

    def tables(self) -> Dict[str, torch.Tensor]:
        """Name -> the policy's current tensor (asked each time: a resume replaces them)."""
        return self.owner.example_tables()

    def snapshot(self) -> None:
        """Remember the tables as they are (call at the epoch's start, when all ranks agree)."""
        self._snapshot = {name: t.clone() for name, t in self.tables().items()}

    def changed(self) -> torch.Tensor:
        """Indices of the rows that differ from the snapshot in any table (NaN equals NaN)."""
        tables = self.tables()
        first = next(iter(tables.values()))
        if not self._snapshot:
            return torch.arange(len(first), device=first.device)
        mask = torch.zeros(len(first), dtype=torch.bool, device=first.device)
        for name, now in tables.items():
            mask |= ~_equal_rows(now, self._snapshot[name])
        return mask.nonzero().squeeze(1)

    def sync(self) -> int:
        """All-gather every rank's changed rows and write them on every rank, in rank order.
        Returns the number of rows received (this rank's included)."""
        tables = self.tables()
        idx = self.changed()
        rows = torch.stack([idx.double()] + [t[idx].double() for t in tables.values()], dim=1)
        received = self.group.gather_rows(rows)
        for part in received:
            where = part[:, 0].long()
            for column, t in enumerate(tables.values(), start=1):
                t[where.to(t.device)] = part[:, column].to(t.device, t.dtype)
        self.snapshot()
        return sum(len(p) for p in received)

    # --- checkpoints: the tables are stored once, with rank 0's state ------------------------
    def strip(self, state: Any) -> Any:
        """``state`` with every tensor equal to one of the (synchronised) tables replaced by
        :data:`SHARED`; rank 0's state keeps them, so a checkpoint holds each table once."""
        tables = list(self.tables().values())
        if torch.is_tensor(state):
            same = any(state.shape == t.shape and state.dtype == t.dtype and bool(_equal_rows(state, t).all())
                       for t in tables)
            return SHARED if same else state
        if isinstance(state, dict):
            return {k: self.strip(v) for k, v in state.items()}
        return state


def _equal_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise ``a == b`` with NaN equal to NaN (an unseen example's loss is NaN in both)."""
    same = a == b.to(a.device)
    if a.is_floating_point():
        same |= torch.isnan(a) & torch.isnan(b.to(a.device))
    return same


def fill_shared(state: Any, reference: Any) -> Any:
    """``state`` with every :data:`SHARED` replaced by ``reference``'s value at the same place."""
    if isinstance(state, str) and state == SHARED:
        return reference
    if isinstance(state, dict):
        return {k: fill_shared(v, reference[k] if isinstance(reference, dict) and k in reference else None)
                for k, v in state.items()}
    return state

