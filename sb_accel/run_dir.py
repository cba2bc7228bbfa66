"""Whether a run directory can take a new run or a resumption, checked before anything is loaded
or created. The command line calls it before it imports torch; the Trainer before it touches the
directory (:class:`sb_accel.train.run_directory.RunDirectory`)."""
from __future__ import annotations

import os
from pathlib import Path

from .config import CHECKPOINT_NAME, CONFIG_NAME, ConfigError
from .reporting.runlog import LOG_NAME

__all__ = ["check_run_dir"]


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, *, need_config: bool = False) -> None:
    """Refuse, before anything is loaded or created, a ``run_dir`` the run cannot use: a file (or
    below one), a directory it cannot write, ``--resume`` without a checkpoint (and, with
    ``need_config``, the saved config the command line resumes from), an earlier run without
    ``--resume`` or ``--overwrite`` (an empty log is none), or both flags at once. Raises
    :class:`ConfigError`."""
    path = Path(run_dir)
    if resume and overwrite:
        raise ConfigError(f"--resume continues the run in {path} and --overwrite replaces it: pass only one")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"run_dir: {path} {where}, not a directory; choose another --run-dir")
    if existing is not None and not os.access(existing, os.W_OK):
        where = "" if existing == path else f" (in {existing})"
        raise ConfigError(f"run_dir: {path} cannot be written{where}: read-only or no permission; choose another "
                          "--run-dir or make it writable")
    log = path / LOG_NAME
    # An empty log is what a run that failed at its first write (a full disk) leaves: no run.
    has_log = log.is_file() and log.stat().st_size > 0
    if resume and not (path / CHECKPOINT_NAME).is_file():
        if not path.is_dir():
            raise ConfigError(f"nothing to resume: {path} does not exist; check --run-dir")
        if not has_log:
            raise ConfigError(f"nothing to resume in {path}: no {CHECKPOINT_NAME}; run without --resume")
        raise ConfigError(f"nothing to resume in {path}: no {CHECKPOINT_NAME}; run without --resume "
                          "(add --overwrite to replace the old log)")
    if resume and need_config and not (path / CONFIG_NAME).is_file():
        raise ConfigError(f"cannot resume {path}: it has a {CHECKPOINT_NAME} but no {CONFIG_NAME} (the run's saved "
                          "config); give the run's settings with --config FILE")
    if not resume and not overwrite and has_log:
        raise ConfigError(f"run_dir: {path} already holds a run; pass --resume to continue it, --overwrite to "
                          "replace it, or choose another --run-dir")
