"""A run's directory: checked before anything is built, the checkpoint a resumption starts from, and
what the run writes there (``log.jsonl``, ``config.json``, ``checkpoint.pt``).

A checkpoint is written atomically (:func:`sb_accel.files.atomic_write`) and only if every floating
tensor of the model is finite, so the last good checkpoint survives a divergence. It records the
byte offset of ``log.jsonl`` at that moment: a resumed run cuts the log back to it, so the log
reads as one uninterrupted run.

Under DistributedDataParallel rank 0 writes every file (the other ranks log into a
:class:`NullRunLog`). A checkpoint holds what the ranks share once (the config, the dataset's
fingerprint, the counters, model, optimizer and AMP scaler) and what each rank holds for itself
(its selection driver with the policy's history and generator, its batcher and lockstep queue, its
candidate source's random state, phase and communication times), gathered to rank 0: rank 0's own
at the top level, as in a single-process checkpoint, the others' under ``ranks``, their per-example
tables (identical on every rank after the epoch's synchronisation) replaced by a reference to rank 0's.
"""
from __future__ import annotations

import io
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import torch

from ..config import CHECKPOINT_NAME, CONFIG_NAME, ConfigError, TrainConfig
from ..data import DataError, describe_fingerprint
from ..files import atomic_write, atomic_write_json
from ..reporting.runlog import LOG_NAME, RunLog
from ..run_dir import check_run_dir
from .distributed import RankGroup
from .tables import ExampleTables, fill_shared

__all__ = ["RunDirectory", "NullRunLog", "CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "prepare_run_dir", "RESUMABLE_CHANGES", "on_host"]

FORMAT = 2  # version of the checkpoint layout
# Settings that may differ between a run and its resumption without changing its meaning, and
# ``lr``: after a divergence the advice is to resume from the last good checkpoint with a lower one.
RESUMABLE_CHANGES = frozenset({"epochs", "run_dir", "threads", "engine_threads", "log_every_steps", "data_dir",
                               "progress", "eval_every_steps", "checkpoint", "lr"})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or must not be written; the message names the file and the fix."""


class NullRunLog:
    """The RunLog of ranks > 0: accepts events, writes nothing."""

    offset = 0

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        return {"event": event, "time": time.time(), **fields}

    def close(self) -> None:
        pass


class RunDirectory:
    """The directory of one run (``cfg.run_dir``), shared by every rank of ``group``.

    Constructing it checks the directory for a new run or a resumption (rank 0; every rank raises
    the same error) before anything is loaded or built, and reads the checkpoint to resume from,
    refusing one whose config changes the run's meaning (only :data:`RESUMABLE_CHANGES` may
    differ). Nothing is written until :meth:`open_log`: a failed set-up leaves the directory as it was.
    """

    def __init__(self, cfg: TrainConfig, group: Optional[RankGroup] = None, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.path = Path(cfg.run_dir)
        self.config = cfg
        self.group = group
        self.rank = 0 if group is None else group.rank
        self._checkpoint = (prepare_run_dir(self.path, resume, overwrite) if group is None
                            else _prepare_on_ranks(group, self.path, resume, overwrite))
        self._log_offset: Optional[int] = None
        if self._checkpoint is not None:
            _check_resumable(self._checkpoint["config"], cfg, self.path)
            self._log_offset = self._checkpoint["log_offset"]
        self.log: Union[RunLog, NullRunLog, None] = None

    def resume_state(self, dataset: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """This rank's state to resume from (None for a new run): the shared part and this rank's
        own, as one ``state_dict``; handed out once. Refused first: a checkpoint with no epoch left
        to train, one of a run on other data than ``dataset`` (a fingerprint), or one written by
        another number of processes."""
        state, self._checkpoint = self._checkpoint, None
        if state is None:
            return None
        _check_epochs_left(state, self.config.epochs, self.path)
        _check_same_data(state, dataset, self.path)
        world_size = 1 if self.group is None else self.group.world_size
        saved = int(state.get("world_size", 1))
        if saved != world_size:
            raise ConfigError(f"the checkpoint was written by {saved} process(es) but this run has {world_size}; "
                              f"resume with the same number (torchrun --nproc-per-node {saved}, or one process)")
        return state if self.rank == 0 else {**state, **fill_shared(state["ranks"][self.rank], state)}

    def open_log(self) -> Union[RunLog, NullRunLog]:
        """The run's ``log.jsonl`` (rank 0; a :class:`NullRunLog` elsewhere), cut back to the
        checkpoint's offset on a resumption."""
        self.log = RunLog(self.path, truncate_at=self._log_offset) if self.rank == 0 else NullRunLog()
        return self.log

    def save_config(self) -> None:
        """Write the run's ``config.json`` (rank 0): what ``--resume`` starts from."""
        if self.rank == 0:
            atomic_write_json(self.path / CONFIG_NAME, self.config.to_dict())

    def save(self, state: Dict[str, Any], own: Iterable[str], tables: Optional[ExampleTables] = None) -> None:
        """Write the checkpoint of a run in ``state`` (its ``state_dict``; ``own``: the keys each
        rank holds for itself). Under DDP a collective: every rank calls it, rank 0 writes."""
        if self.log is None:
            raise RuntimeError("RunDirectory.open_log() must come before the first checkpoint")
        checkpoint = {"config": self.config.to_dict(), **state, "log_offset": self.log.offset}
        if self.group is not None:
            mine = {key: state[key] for key in own if key in state}
            checkpoint.update(world_size=self.group.world_size, ranks=_gather_rank_states(self.group, mine, tables))
        if self.rank == 0:
            save_checkpoint(checkpoint, self.path)


def save_checkpoint(state: Dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``state`` atomically to ``run_dir/checkpoint.pt``; refuses non-finite model weights."""
    bad = [name for name, t in state.get("model", {}).items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"not writing a checkpoint: model tensors {bad[:3]} hold NaN/inf; "
                              f"the last good checkpoint in {run_dir} is kept")
    # Serialised in memory first: torch's zip writer turns a full disk into an opaque RuntimeError,
    # while atomic_write reports it as the StorageError it is.
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return atomic_write(Path(run_dir) / CHECKPOINT_NAME, buffer.getbuffer())


def load_checkpoint(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    """The checkpoint in ``run_dir``, or None if there is none; an unreadable one is a clear error."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        # Our own checkpoints hold generator states and config dicts, not only tensors.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}. The file is damaged (an "
                              "interrupted copy?); restore it from a backup, or start afresh with --overwrite") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a checkpoint of this sb_accel version (format {found}, expected "
                              f"{FORMAT}); start afresh with --overwrite")
    return state


def prepare_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> Optional[Dict[str, Any]]:
    """Check ``run_dir`` for a new run or a resumption; returns the checkpoint to resume from.

    The directory is checked by :func:`sb_accel.run_dir.check_run_dir` (a new run refuses an
    earlier run's log unless ``overwrite``; a resumption needs a checkpoint); then torn temporary
    files of a killed write are cleared and, with ``overwrite``, the earlier run's files removed.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    for torn in run_dir.glob(".*.tmp"):  # a write that a crash (kill -9, power loss) cut short
        torn.unlink(missing_ok=True)
    if resume:
        return load_checkpoint(run_dir)
    if overwrite:
        for name in (LOG_NAME, CHECKPOINT_NAME, CONFIG_NAME):
            (run_dir / name).unlink(missing_ok=True)
    return None


def _prepare_on_ranks(group: RankGroup, run_dir: Path, resume: bool, overwrite: bool) -> Optional[Dict[str, Any]]:
    """:func:`prepare_run_dir` on rank 0 (it may refuse the directory: every rank then raises the
    same error); the other ranks read the checkpoint to resume from the same directory (on a
    filesystem all nodes share)."""
    checkpoint, error = None, None
    if group.is_main:
        try:
            checkpoint = prepare_run_dir(run_dir, resume, overwrite)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            error = exc
    error = group.broadcast_object(error)
    if error is not None:
        raise error
    return load_checkpoint(run_dir) if resume and not group.is_main else checkpoint


def _check_resumable(saved: Dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a resumption whose config changes the run's meaning (only RESUMABLE_CHANGES may differ)."""
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: config differs from the checkpoint in {changed} "
                          f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)")


def _check_epochs_left(state: Dict[str, Any], epochs: int, run_dir: Path) -> None:
    """Refuse a resumption with no epoch left to train: ``epochs`` at or below the checkpoint's."""
    done = state["epoch"]
    if epochs > done:
        return
    if epochs == done:
        raise ConfigError(f"nothing to resume in {run_dir}: the run has trained all its {done} epochs; pass "
                          f"--epochs N with N > {done} to train it further")
    raise ConfigError(f"cannot resume {run_dir} with --epochs {epochs}: its checkpoint is already at epoch {done}; "
                      f"pass --epochs N with N > {done} to train it further")


def _check_same_data(state: Dict[str, Any], fingerprint: Dict[str, Any], run_dir: Path) -> None:
    """Refuse a resumption on other data than the run started with (checkpoints of earlier
    versions carry no fingerprint and are taken on trust)."""
    recorded = state.get("dataset")
    if recorded is not None and recorded != fingerprint:
        raise DataError(f"cannot resume {run_dir}: it was trained on {describe_fingerprint(recorded)}, but the "
                        f"dataset found now is {describe_fingerprint(fingerprint)}; resume with the data the run "
                        "started with (check --data-dir and $SB_ACCEL_DATA), or start a new run")


def _gather_rank_states(group: RankGroup, state: Dict[str, Any], tables: Optional[ExampleTables]) -> Optional[List[Any]]:
    """Every rank's ``state`` on rank 0 for the checkpoint's ``ranks`` entry (rank 0's own is None:
    it is the checkpoint's top level); None on the other ranks."""
    mine = None if group.is_main else (tables.strip(state) if tables is not None else state)
    return group.gather_objects(on_host(mine))


def on_host(obj: Any) -> Any:
    """``obj`` with every tensor in it (through dicts, lists, tuples) copied to the CPU. An object
    collective pickles a tensor with its device: a rank's CUDA tensor would make rank 0 open a
    context on that rank's GPU, or fail where each process sees only its own GPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_host(v) for v in obj)
    return obj
