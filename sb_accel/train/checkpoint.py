"""Run directory and checkpoints: what a run leaves on disk, and how a run picks it up again.

A checkpoint is written atomically (:func:`sb_accel.files.atomic_write`) and only if every floating
tensor of the model is finite, so the last good checkpoint survives a divergence. It records the
byte offset of ``log.jsonl`` at that moment: a resumed run cuts the log back to it, so the log
reads as one uninterrupted run.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..config import CHECKPOINT_NAME, CONFIG_NAME, ConfigError, TrainConfig
from ..data import DataError, describe_fingerprint
from ..files import atomic_write
from ..reporting.runlog import LOG_NAME
from ..run_dir import check_run_dir

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "load_checkpoint", "prepare_run_dir",
           "check_resumable", "check_epochs_left", "check_same_data", "RESUMABLE_CHANGES"]

FORMAT = 2  # version of the checkpoint layout
# Settings that may differ between a run and its resumption without changing its meaning, and
# ``lr``: after a divergence the advice is to resume from the last good checkpoint with a lower one.
RESUMABLE_CHANGES = frozenset({"epochs", "run_dir", "threads", "engine_threads", "log_every_steps", "data_dir",
                               "progress", "eval_every_steps", "checkpoint", "lr"})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or must not be written; the message names the file and the fix."""


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


def check_resumable(saved: Dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a resumption whose config changes the run's meaning (only RESUMABLE_CHANGES may differ)."""
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: config differs from the checkpoint in {changed} "
                          f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)")


def check_epochs_left(state: Dict[str, Any], epochs: int, run_dir: Path) -> None:
    """Refuse a resumption with no epoch left to train: ``epochs`` at or below the checkpoint's."""
    done = state["epoch"]
    if epochs > done:
        return
    if epochs == done:
        raise ConfigError(f"nothing to resume in {run_dir}: the run has trained all its {done} epochs; pass "
                          f"--epochs N with N > {done} to train it further")
    raise ConfigError(f"cannot resume {run_dir} with --epochs {epochs}: its checkpoint is already at epoch {done}; "
                      f"pass --epochs N with N > {done} to train it further")


def check_same_data(state: Dict[str, Any], fingerprint: Dict[str, Any], run_dir: Path) -> None:
    """Refuse a resumption on other data than the run started with (checkpoints of earlier
    versions carry no fingerprint and are taken on trust)."""
    recorded = state.get("dataset")
    if recorded is not None and recorded != fingerprint:
        raise DataError(f"cannot resume {run_dir}: it was trained on {describe_fingerprint(recorded)}, but the "
                        f"dataset found now is {describe_fingerprint(fingerprint)}; resume with the data the run "
                        "started with (check --data-dir and $SB_ACCEL_DATA), or start a new run")
