"""Keeps a selection engine up to date with the training model, on a :class:`RefreshSchedule`.

:class:`EngineRefresher` applies the schedule to an engine and reports each refresh as a RunLog
event. A live engine (torch reading the training model) is never refreshed. Two more duties:

* **Only while selection runs.** ``after_step``/``after_epoch`` are told whether the steps that
  follow select (``selecting``; the driver asks the policy: not during priming epochs). A refresh
  due while they do not is skipped, and one refresh (reason ``"resume"``) is made before selection
  resumes. For an engine that is :attr:`~sb_accel.engines.base.SelectionEngine.calibrated` (INT8,
  FP8) that refresh is a rebuild: its activation scales were calibrated on the weights before the
  pause (at the build, on the untrained model, when a priming epoch follows), and cheap refreshes
  would keep them for up to ``recalibrate_every`` refreshes.
* **Validation.** With a :class:`~sb_accel.engines.validation.Validation` batch, every built
  engine, every rebuild and every ``schedule.validate_every``-th cheap refresh is compared
  with the PyTorch model it was built from (rank agreement and relative error of the losses,
  logged in the event); exact copies (a PyTorch snapshot) are not. A cheap refresh that fails gets
  one rebuild before failing (stale INT8 activation scales). A failed build, refresh or validation raises
  :class:`RefreshError` (default) or, with ``fallback="torch"``, replaces the engine with a
  PyTorch FP32 snapshot engine and logs why.
* **Background refresh.** Given a second ("standby") engine, a due refresh copies the weights into
  a private snapshot module (a fast ``load_state_dict`` on the main thread) and refreshes the
  standby from it in a worker thread while the serving engine keeps answering ``losses``. The
  engines are swapped by the first ``after_step``/``after_epoch`` call that finds the work done,
  so selection never sees a half-refreshed engine. A refresh that comes due while one is running
  is deferred and starts, from the then-current weights, right after the swap. Selection is then
  ``staleness`` optimizer steps behind the model (logged at each swap). Costs: a second engine and
  one copy of the model; engines that refresh in place (TensorRT refit) are only ever refreshed
  while they are the standby. Staleness costs more than precision: on small_cnn one step behind
  changes 9% of SB's keep decisions, an INT8 engine of the current step 0.3%
  (``benchmarks/selection_staleness.py``), so background refresh pays only where a synchronous one
  would cost more than the training it follows. Refreshing in a worker while the loop loads the
  next candidate batch, joined before the next selection forward (never stale), was tried: on 2
  CPU cores it cost more than it hid (refresh share 4.7% against 3.9%, measured interleaved; the
  worker's numpy and the loop's Python contend for the GIL).

Refresh events count exact, cheap and rebuild refreshes: an engine says which one it just did through
:attr:`~sb_accel.engines.base.SelectionEngine.refresh_kind`.

**A refresh must cost less than the training it follows.** The refresher times its synchronous
step refreshes and the training between them (everything outside ``after_step``); if, over
:data:`COST_PROBE` refreshes after the first, the median refresh takes longer than the median
training between two refreshes, it raises :class:`RefreshError` naming an interval that fits (on
CUDA, a host-side engine refreshed every step copies every weight to the host each time).
"""
from __future__ import annotations

import copy
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .base import EngineContext, SelectionEngine
from .errors import EngineError
from .registry import create_engine, parse_engine_spec
from .schedule import RefreshSchedule
from .torch_backend import TorchEngine
from .validation import CHECK_METRICS, Validation, check_engine, require_valid

__all__ = ["EngineRefresher", "RefreshError", "COST_PROBE"]

_FALLBACKS = ("raise", "torch")
_KINDS = ("exact", "cheap", "rebuild")
# Step refreshes (after the first, which may pay a warm-up) timed before the cost check decides.
COST_PROBE = 5


class RefreshError(EngineError):
    """A build, refresh or validation failed; ``event`` is the RunLog event describing it."""

    def __init__(self, message: str, event: dict) -> None:
        super().__init__(message)
        self.event = event


@dataclass
class _Job:
    """One background refresh: written by the worker, read by the main thread after ``done``."""

    step: int
    reason: str
    thread: Optional[threading.Thread] = None
    done: threading.Event = field(default_factory=threading.Event)
    seconds: float = 0.0
    check: dict = field(default_factory=dict)  # check_engine's result; empty without validation
    error: Optional[BaseException] = None


class EngineRefresher:
    """Keeps ``engine`` up to date with the training model on ``schedule``.

    Args:
        engine: the serving engine.
        schedule: when refreshes are due.
        validation: check every refresh against PyTorch (None: no check).
        fallback: on a failed refresh or validation, ``"raise"`` a :class:`RefreshError` or switch
            to a ``"torch"`` FP32 snapshot engine (refreshed on the same schedule, synchronously).
        standby: a second engine of the same kind; given, refreshes run in a background thread
            (see the module docstring).
    """

    def __init__(self, engine: SelectionEngine, schedule: RefreshSchedule = RefreshSchedule(), *,
                 validation: Optional[Validation] = None, fallback: str = "raise",
                 standby: Optional[SelectionEngine] = None) -> None:
        if fallback not in _FALLBACKS:
            raise ValueError(f"fallback must be one of {_FALLBACKS}, got {fallback!r}")
        self.engine = engine
        self.schedule = schedule
        self.validation = validation
        self.fallback = fallback
        self.count = 0
        self.kind_counts = dict.fromkeys(_KINDS, 0)
        self._behind = False  # a refresh was skipped while no selection ran
        self._outside_since: Optional[float] = None  # when the last after_step returned
        self._training_seconds = 0.0  # outside after_step since the last step refresh
        self._costs: List[Tuple[float, float]] = []  # (refresh, training before it) of the probe
        self._cost_checked = False
        self._standby = standby
        self._shadow: Optional[nn.Module] = None  # the snapshot the standby is refreshed from
        self._job: Optional[_Job] = None
        self._deferred: Optional[str] = None  # reason of a refresh that came due during a job
        self._pending: List[dict] = []  # events to hand out with the next after_step/after_epoch

    @classmethod
    def create(cls, spec: str, model: nn.Module, context: EngineContext,
               schedule: RefreshSchedule = RefreshSchedule(), *, precision: Optional[str] = None,
               background: bool = False, validate: bool = True, fallback: str = "raise",
               validation_rows: int = 32) -> "EngineRefresher":
        """Build the engine ``spec`` (plus a standby for ``background``), validate it, and wrap it.

        A build or validation failure raises :class:`RefreshError`, or with ``fallback="torch"``
        gives a refresher over a PyTorch FP32 snapshot engine. The build (or failure) event is
        returned by the first ``after_step``/``after_epoch``.
        """
        backend, precision = parse_engine_spec(spec, precision)
        validation = Validation.from_context(context, validation_rows) if validate else None
        start = time.perf_counter()
        built: List[SelectionEngine] = []
        try:
            built.append(create_engine(backend, model, context, precision))
            engine = built[0]
            check = require_valid(engine, model, validation)
            if background and not engine.is_live:
                built.append(create_engine(backend, model, context, precision))
        except EngineError as exc:
            for partial in built:
                partial.close()
            event, engine = _fail_or_fall_back(exc, model, 0, "build", time.perf_counter() - start,
                                               f"{backend}-{precision}", fallback)
            refresher = cls(engine, schedule, validation=validation, fallback=fallback)
        else:
            refresher = cls(engine, schedule, validation=validation, fallback=fallback,
                            standby=built[1] if len(built) > 1 else None)
            event = {"event": "engine_build", "step": 0, "engine": engine.name,
                     "seconds": time.perf_counter() - start, "background": len(built) > 1, **check}
        refresher._pending.append(event)
        return refresher

    @property
    def cheap_count(self) -> int:
        return self.kind_counts["cheap"]

    @property
    def rebuild_count(self) -> int:
        return self.kind_counts["rebuild"]

    # --- schedule -----------------------------------------------------------------------------
    def after_step(self, model: nn.Module, step: int, selecting: bool = True) -> List[dict]:
        """Call after optimizer step ``step``; returns RunLog events of any refresh done.

        ``selecting``: whether the steps that follow run selection (False: a due refresh is
        skipped and made up for before selection resumes).
        """
        entered = time.perf_counter()
        if self._outside_since is not None:
            self._training_seconds += entered - self._outside_since
        events = self._poll(model, step)
        due = not self.engine.is_live and self.schedule.due_after_step(step)
        events += self.refresh_if_due(model, step, due, "steps", selecting)
        if events and events[-1].get("reason") == "steps" and events[-1].get("mode") == "sync":
            self._check_cost(events[-1]["seconds"])
        self._outside_since = time.perf_counter()
        return events

    def after_epoch(self, model: nn.Module, step: int, selecting: bool = True) -> List[dict]:
        """Call at an epoch's end; ``selecting``: whether the next epoch runs selection. No refresh
        if the engine already holds the weights of ``step`` (a step refresh just took them)."""
        events = self._poll(model, step)
        due = not self.engine.is_live and self.schedule.due_after_epoch() and not self._holds(step)
        return events + self.refresh_if_due(model, step, due, "epoch", selecting)

    def _holds(self, step: int) -> bool:
        """Whether the serving engine took the weights of optimizer step ``step`` and no background
        refresh is on its way to replace them."""
        return self.count > 0 and self._job is None and self.engine.snapshot_step == step

    def refresh_if_due(self, model: nn.Module, step: int, due: bool, reason: str, selecting: bool) -> List[dict]:
        """Refresh if ``due`` and selection runs next; remember a skipped one and make it up. For
        callers with a cadence of their own (the selecting loader); the schedule's go through
        :meth:`after_step` / :meth:`after_epoch`."""
        if not selecting:
            self._behind = self._behind or due
            return []
        if self._behind:
            self._behind = False
            return self._due(model, step, "resume")
        return self._due(model, step, reason) if due else []

    def _check_cost(self, seconds: float) -> None:
        """Refuse step refreshes that cost more than the training between them (module docstring)."""
        training, self._training_seconds = self._training_seconds, 0.0
        if self._cost_checked or self.count <= 1:
            return  # decided already, or the first refresh (warm-up)
        self._costs.append((seconds, training))
        if len(self._costs) < COST_PROBE:
            return
        refresh = statistics.median(c[0] for c in self._costs)
        between = statistics.median(c[1] for c in self._costs)
        self._cost_checked = True
        if refresh > between:
            every = self.schedule.every_steps * max(2, math.ceil(10 * refresh / max(between, 1e-9)))
            event = {"event": "refresh_refused", "engine": self.engine.name, "refresh_seconds": refresh,
                     "training_seconds": between, "every_steps": self.schedule.every_steps}
            raise RefreshError(
                f"a {self.engine.name} refresh takes {refresh * 1e3:.1f} ms, more than the {between * 1e3:.1f} ms of "
                f"training between two refreshes (every {self.schedule.every_steps} steps): refresh every {every} "
                "steps (--refresh-every-steps / RefreshSchedule(every_steps=...)), refresh in the background "
                "(--refresh-background), or use an engine that reads the live model (torch, torch-graph)", event)

    def _due(self, model: nn.Module, step: int, reason: str) -> List[dict]:
        if self._standby is None:
            return [self.refresh(model, step, reason=reason)]
        if self._job is not None:
            self._deferred = reason
            return []
        self._start(model, step, reason)
        return []

    # --- synchronous refresh ------------------------------------------------------------------
    def refresh(self, model: nn.Module, step: int, reason: str = "manual") -> dict:
        """Refresh the serving engine now, in this thread; returns its RunLog event."""
        start = time.perf_counter()
        try:
            _refresh_engine(self.engine, model, reason)
            self.engine.snapshot_step = step
            check = _checked_or_rebuilt(self.engine, model, self._validation_for(self.engine, reason))
        except EngineError as exc:
            return self._fail(exc, model, step, reason, time.perf_counter() - start)
        return self._record(step, reason, "sync", time.perf_counter() - start, check)

    def _validation_for(self, engine: SelectionEngine, reason: str) -> Optional[Validation]:
        """The validation batch if the refresh ``engine`` just did is due a check, else None."""
        kind = engine.refresh_kind
        if self.validation is None or not self.schedule.validates(self.count + 1, kind, reason):
            return None
        return self.validation

    def _record(self, step: int, reason: str, mode: str, seconds: float, check: dict) -> dict:
        kind = self.engine.refresh_kind
        self.count += 1
        self.kind_counts[kind] = self.kind_counts.get(kind, 0) + 1
        return {"event": "refresh", "step": step, "reason": reason, "engine": self.engine.name,
                "seconds": seconds, "count": self.count, "kind": kind,
                **{f"{k}_count": n for k, n in self.kind_counts.items()},
                "mode": mode, "snapshot_step": self.engine.snapshot_step,
                "staleness": self.staleness(step), "validated": bool(check), **check,
                **({"detail": self.engine.refresh_detail} if self.engine.refresh_detail else {})}

    def _fail(self, exc: EngineError, model: nn.Module, step: int, reason: str, seconds: float) -> dict:
        event, engine = _fail_or_fall_back(exc, model, step, reason, seconds, self.engine.name, self.fallback)
        self._close_engines()
        self.engine = engine
        self._standby = None  # a torch snapshot refresh is one copy: no need for the background
        return event

    # --- background refresh -------------------------------------------------------------------
    def _start(self, model: nn.Module, step: int, reason: str) -> None:
        if self._shadow is None:
            self._shadow = copy.deepcopy(model).eval()
        else:
            self._shadow.load_state_dict(model.state_dict())
        job = _Job(step, reason)
        job.thread = threading.Thread(target=self._work, args=(job,), name="sb-engine-refresh", daemon=True)
        self._job = job
        job.thread.start()

    def _work(self, job: _Job) -> None:
        start = time.perf_counter()
        try:
            _refresh_engine(self._standby, self._shadow, job.reason)
            self._standby.snapshot_step = job.step
            validation = self._validation_for(self._standby, job.reason)
            if validation is not None:
                job.check = check_engine(self._standby, self._shadow, validation)
        except BaseException as exc:  # handed to the main thread, which decides raise vs fallback
            job.error = exc
        job.seconds = time.perf_counter() - start
        job.done.set()

    def _poll(self, model: nn.Module, step: int) -> List[dict]:
        events, self._pending = self._pending, []
        job = self._job
        if job is None or not job.done.is_set():
            return events
        self._job = None
        if job.error is not None and not isinstance(job.error, EngineError):
            raise job.error  # a bug, not an engine failure: surface it in the training thread
        if job.error is not None or not job.check.get("ok", True):
            problem = job.error or EngineError(f"{self._standby.name} failed validation: {job.check['problem']}")
            events.append(self._fail(problem, model, step, job.reason, job.seconds))
            return events
        self.engine, self._standby = self._standby, self.engine
        check = {k: job.check[k] for k in CHECK_METRICS if k in job.check}
        events.append(self._record(step, job.reason, "background", job.seconds, check))
        if self._deferred is not None:
            reason, self._deferred = self._deferred, None
            self._start(model, step, reason)
        return events

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until a running background refresh has finished (swap happens at the next
        ``after_step``); True if none is running any more."""
        job = self._job
        return job is None or job.done.wait(timeout)

    @property
    def busy(self) -> bool:
        """True while a background refresh is running."""
        return self._job is not None and not self._job.done.is_set()

    def staleness(self, step: int) -> int:
        """Optimizer steps between the engine's snapshot and now (0 for a live engine)."""
        return 0 if self.engine.is_live else step - self.engine.snapshot_step

    def close(self) -> None:
        job = self._job
        if job is not None and job.thread is not None:
            job.thread.join()
        self._close_engines()

    def _close_engines(self) -> None:
        self.engine.close()
        if self._standby is not None:
            self._standby.close()


def _refresh_engine(engine: SelectionEngine, model: nn.Module, reason: str) -> None:
    """Refresh ``engine`` from ``model``: a rebuild when selection resumes on a calibrated engine."""
    engine.refresh(model, rebuild=reason == "resume" and engine.calibrated)


def _checked_or_rebuilt(engine: SelectionEngine, model: nn.Module, validation: Optional[Validation]) -> dict:
    """Validate after a refresh; a cheap refresh that fails gets one rebuild before giving up.

    Cheap INT8 refreshes keep the activation scales calibrated earlier; while training moves fast
    (the first epochs) those go stale and saturate, which a recalibration fixes.
    """
    try:
        return require_valid(engine, model, validation)
    except EngineError:
        if engine.refresh_kind != "cheap":
            raise
    engine.refresh(model, rebuild=True)
    return {**require_valid(engine, model, validation), "retried_rebuild": True}


def _fail_or_fall_back(exc: EngineError, model: nn.Module, step: int, reason: str, seconds: float, name: str,
                       fallback: str) -> Tuple[dict, SelectionEngine]:
    """Raise :class:`RefreshError`, or return the failure event and a torch FP32 snapshot engine."""
    event = {"event": "refresh_failed", "step": step, "reason": reason, "engine": name, "error": str(exc),
             "seconds": seconds, "fallback": None}
    if fallback == "raise":
        raise RefreshError(f"engine {name} {reason} failed at step {step}: {exc} (pass fallback='torch' to "
                           "continue with PyTorch FP32 selection instead)", event) from exc
    # A snapshot, not the live model: it stays safe when selection runs in another thread.
    device = next(model.parameters(), torch.empty(0)).device
    engine = TorchEngine(model, "fp32", EngineContext(device=device, options={"snapshot": True}))
    engine.snapshot_step = step
    event["fallback"] = engine.name
    return event, engine
