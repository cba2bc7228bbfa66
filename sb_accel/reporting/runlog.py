"""RunLog: one JSON object per line in ``<run_dir>/log.jsonl``; every report reads only this.

Event kinds (field ``event``):

* ``config``: ``config`` (resolved TrainConfig), ``policy``, ``engine``, ``device``, ``torch``.
* ``interval``: every ``log_every_steps`` optimizer steps: ``epoch``, ``step``, ``wall``,
  ``train_loss``, ``lr``, ``candidates``, ``forwards``, ``backprops``, ``selectivity`` (kept /
  candidates over the interval), ``staleness``.
* ``eval``: ``epoch`` (float progress), ``step``, ``wall``, ``test_acc``, ``test_error``,
  ``test_loss``, ``backprops``, ``forwards``, ``candidates``, ``phases``.
* ``refresh``: engine refreshes (``seconds``, ``reason``, ``staleness``, ``kind``...; read the kind
  with :func:`refresh_kind`: older logs call a rebuild ``"full"``).
* ``epoch``: end-of-epoch counters and ``phases``.
* ``resume``: a run continued from its checkpoint.
* ``summary``: final ``test_acc``, ``wall``, ``phases``, counters.

``wall`` is training wall-clock in seconds: all phases except ``eval`` (evaluation frequency is a
measurement choice and must not change time-to-accuracy).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..files import storage_error

__all__ = ["RunLog", "RunLogError", "read_events", "Run", "load_run", "LOG_NAME", "PHASES", "REFRESH_KINDS",
           "refresh_kind"]

LOG_NAME = "log.jsonl"

# Where wall-clock goes: every run's phase totals use these names (PhaseTimer, reports, plots).
# "bookkeeping": after each step, the policy's share of the training losses, the divergence flag and
# the loss counters (logs written before it existed have none: read as 0).
PHASES = ("data", "selection", "train_forward", "backward", "optimizer", "bookkeeping", "refresh", "eval", "other")

# What a refresh did (field ``kind`` of a ``refresh`` event): ``"exact"`` (the weights copied as they
# are: a PyTorch snapshot), ``"cheap"`` (written into the converted engine: INT8 re-quantized, a
# TensorRT refit) or ``"rebuild"`` (served from scratch: re-export, recalibration, a new engine).
REFRESH_KINDS = ("exact", "cheap", "rebuild")
_OLD_REFRESH_KINDS = {"full": "rebuild"}  # the name logs written before 2026-12-03 use


def refresh_kind(event: Dict[str, Any]) -> Optional[str]:
    """The kind of a ``refresh`` event in today's names (None if it has none)."""
    kind = event.get("kind")
    return _OLD_REFRESH_KINDS.get(kind, kind)


# Events after which the log is fsynced (progress marks: at most one per logging interval, eval or
# epoch). Others (engine refreshes: with a snapshot engine one per optimizer step) are flushed to the
# OS, which keeps them through a process crash, and reach the disk with the next of these; an fsync
# per step would cost milliseconds each on the network filesystems run directories live on.
SYNCED_EVENTS = frozenset({"config", "resume", "interval", "eval", "epoch", "summary", "diverged"})


class RunLog:
    """Append-only JSON-lines writer; each line is flushed (a crashed process loses nothing already
    logged and never leaves a half-written line before a newer one) and fsynced after the
    :data:`SYNCED_EVENTS` and on close (so is a power loss, up to the last of them).

    Non-finite floats are written as ``null`` (NaN and Infinity are not JSON). ``truncate_at``
    cuts an existing log back to that byte offset first (a resumed run continues from its
    checkpoint's offset); :attr:`offset` is the current end of the log.
    """

    def __init__(self, run_dir: str | Path, truncate_at: Optional[int] = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / LOG_NAME
        self._file = open(self.path, "a", encoding="utf-8")
        if truncate_at is not None:
            self._file.truncate(truncate_at)
            self._file.seek(truncate_at)

    @property
    def offset(self) -> int:
        """Bytes written so far (where the next line starts)."""
        return self._file.tell()

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        record = {"event": event, "time": time.time(), **fields}
        line = json.dumps(_finite(record), default=_jsonable, allow_nan=False) + "\n"
        start = self._file.tell()
        try:
            self._file.write(line)
            self._file.flush()
            if event in SYNCED_EVENTS:
                os.fsync(self._file.fileno())
        except OSError as exc:  # e.g. a full disk: drop the torn line, say which file and what to do
            with contextlib.suppress(OSError):
                self._file.truncate(start)
            raise storage_error(self.path, exc) from exc
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            with contextlib.suppress(OSError):
                os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunLogError(ValueError):
    """A log.jsonl that cannot be read as a run: damaged in the middle, or without its config."""


def read_events(path: str | Path) -> Iterator[Dict[str, Any]]:
    """Events of a log file. A torn last line (a crash mid-write) is skipped; a line that is not an
    event anywhere before it means the file was damaged (edited, or written over): :class:`RunLogError`."""
    torn: Optional[str] = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if torn is not None:
                raise RunLogError(torn)
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                torn = _damaged(path, number, f"is not JSON ({exc.msg})")
                continue
            if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                torn = _damaged(path, number, "is not an event (a JSON object with an 'event' name)")
                continue
            yield event


def _damaged(path: str | Path, number: int, what: str) -> str:
    return (f"{path}: line {number} {what}, but more events follow it: the log is damaged; restore it from a "
            "backup, or leave this run out of the report")


class Run:
    """A parsed run directory: config, evals, summary, phases."""

    def __init__(self, run_dir: str | Path, events: List[Dict[str, Any]]) -> None:
        self.run_dir = Path(run_dir)
        self.events = events

    def of(self, kind: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def config(self) -> Dict[str, Any]:
        """The run's resolved config (its ``config`` event); :class:`RunLogError` if it has none."""
        configs = self.of("config")
        config = configs[-1].get("config") if configs else None
        if not isinstance(config, dict) or not isinstance(config.get("dataset"), str):
            problem = ("has no config event (the first line sb-accel train writes)" if not configs else
                       "has a config event without the run's settings (no 'config' table naming its dataset)")
            raise RunLogError(f"{self.run_dir / LOG_NAME} {problem}: the log is damaged or not one of sb-accel "
                              "train; leave this run out of the report")
        return config

    @property
    def evals(self) -> List[Dict[str, Any]]:
        return self.of("eval")

    @property
    def summary(self) -> Optional[Dict[str, Any]]:
        s = self.of("summary")
        return s[-1] if s else None

    @property
    def label(self) -> str:
        """A readable name: strategy, and the selection engine if not torch-fp32."""
        c = self.config
        label = c.get("strategy", self.run_dir.name)
        if label == "stale-sb":
            label += f" n={c.get('stale_n')}"
        if c.get("strategy") not in (None, "traditional", "infobatch") and self.engine not in (None, "torch-fp32"):
            label += f" [{self.engine}]"
        if c.get("pipeline"):
            label += " +pipeline"
        return label

    @property
    def engine(self) -> Optional[str]:
        """The selection engine the run built (``engine: auto`` resolved), None if unknown or none."""
        configs = self.of("config")
        if configs and configs[-1].get("engine"):
            return configs[-1]["engine"]
        c = self.config
        return None if c.get("engine", "auto") == "auto" else f"{c.get('engine')}-{c.get('precision')}"

    @property
    def phases(self) -> Dict[str, float]:
        """Phase totals of the last event that carries them."""
        for e in reversed(self.events):
            if "phases" in e:
                return e["phases"]
        return {}


def load_run(run_dir: str | Path) -> Run:
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {LOG_NAME}; is this a run directory of sb-accel train?")
    return Run(run_dir, list(read_events(path)))
