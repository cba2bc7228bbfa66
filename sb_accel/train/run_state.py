"""What a checkpoint holds of a Trainer (``t`` below), and how a resumed Trainer takes it back.

Shared by every rank: the config, the dataset's fingerprint, counters, model, optimizer and AMP
scaler. Per rank: the selection driver (policy, buffered examples), the candidate source's random
state, phase times.
Under DDP every rank's part is gathered to rank 0, which writes the file (:mod:`.ranks`).
"""
from __future__ import annotations

from typing import Any, Dict

from ..data import dataset_fingerprint
from .checkpoint import check_epochs_left, check_same_data
from .ranks import gather_rank_states, rank_state

__all__ = ["COUNTERS", "checkpoint_state", "restore_training_state"]

COUNTERS = ("epoch", "step", "progress", "last_acc")


def _rank_part(t: Any) -> Dict[str, Any]:
    """What differs between ranks (one process: what a checkpoint holds besides the model)."""
    state = {"backprops": t.backprops, "driver": t.driver.state_dict(), "source": t.source.state_dict(),
             "phases": t.timer.totals(), "selection_background": t.selection_background}
    if t.group is not None:
        state.update(comm_seconds=dict(t.group.seconds), comm_calls=dict(t.group.calls))
    return state


def checkpoint_state(t: Any) -> Dict[str, Any]:
    """The checkpoint of ``t`` (under DDP a collective: every rank's part is gathered to rank 0)."""
    mine = _rank_part(t)
    state = {"config": t.cfg.to_dict(), "dataset": dataset_fingerprint(t.data),
             **{k: getattr(t, k) for k in COUNTERS},
             "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(), "scaler": t.scaler.state_dict(),
             **mine, "log_offset": t.log.log.offset}
    if t.group is not None:
        state.update(world_size=t.world_size, ranks=gather_rank_states(t.group, mine, t.driver.tables))
    return state


def restore_training_state(t: Any, state: Dict[str, Any]) -> None:
    """Everything but the driver (restored once it is built): weights, optimizer, counters, random state.
    Refused first: a checkpoint with no epoch left to train, or one of a run on other data."""
    check_epochs_left(state, t.cfg.epochs, t.run_dir)
    check_same_data(state, dataset_fingerprint(t.data), t.run_dir)
    mine = rank_state(state, t.rank, t.world_size)
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    for key in COUNTERS:
        setattr(t, key, state[key])
    t.backprops = mine["backprops"]
    t.source.load_state_dict(mine["source"])
    t.selection_background = mine["selection_background"]
    t.timer.load_totals(mine["phases"])
    if t.group is not None:
        t.group.seconds.update(mine["comm_seconds"])
        t.group.calls.update(mine["comm_calls"])
