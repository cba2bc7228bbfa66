"""PhaseTimer: where wall-clock goes, as a contiguous timeline of named phases.

The timer is always in exactly one phase ("other" when none is entered); entering a phase ends the
previous one, so the phase totals add up to the wall-clock between ``start()`` and ``totals()`` by
construction. On CUDA, phase boundaries are CUDA events recorded on the current stream and resolved
only when ``totals()`` is called (one sync per report, none in the hot loop): time is attributed
by when the GPU reached each boundary, so it stays right while the host runs ahead of the GPU (a
host clock would charge a kernel to whichever phase happens to wait for it). On CPU it is
``time.perf_counter``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import torch

from ..reporting.runlog import PHASES

__all__ = ["PHASES", "PhaseTimer", "DeviceEvents", "CudaEvents"]


class DeviceEvents(Protocol):
    """Marks on an asynchronous device's timeline (CUDA events; a test passes a simulated device)."""

    def record(self) -> Any:
        """A mark the device reaches once the work queued so far is done."""

    def seconds_between(self, begin: Any, end: Any) -> float:
        """Device time from ``begin`` to ``end`` (both reached)."""

    def synchronize(self, event: Any) -> None:
        """Wait until the device reaches ``event``."""


class CudaEvents:
    """:class:`DeviceEvents` on ``device``'s current CUDA stream (not the current device's: a run on
    ``cuda:1`` records where its work is queued)."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)

    def record(self) -> "torch.cuda.Event":
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds_between(self, begin: "torch.cuda.Event", end: "torch.cuda.Event") -> float:
        return begin.elapsed_time(end) / 1000.0

    def synchronize(self, event: "torch.cuda.Event") -> None:
        event.synchronize()


class PhaseTimer:
    """Attribute elapsed time to phases.

    >>> timer = PhaseTimer(); timer.start()
    >>> with timer.phase("selection"):
    ...     pass
    >>> sorted(timer.totals())[:2]
    ['backward', 'data']
    """

    def __init__(self, device: torch.device | str = "cpu", phases: Tuple[str, ...] = PHASES,
                 clock: Callable[[], float] = time.perf_counter, events: Optional[DeviceEvents] = None) -> None:
        """``clock``: seconds, for the host timeline (a test passes a fake one). ``events``: the
        device timeline to use instead (default: :class:`CudaEvents` on a CUDA device)."""
        self.device = torch.device(device)
        self.events: Optional[DeviceEvents] = events or (CudaEvents(self.device) if self.device.type == "cuda" else None)
        self.on_device = self.events is not None  # phases are read off a device timeline
        self.phases = phases
        self._clock = clock
        self._totals: Dict[str, float] = {p: 0.0 for p in phases}
        self._current = "other"
        self._mark: float | None = None
        self._events: List[Tuple[str, Any]] = []  # (phase that starts here, event)

    def start(self) -> None:
        self._current = "other"
        if self.on_device:
            self._events = [("other", self._record())]
        else:
            self._mark = self._clock()

    def pause(self) -> None:
        """Stop the clock: time until :meth:`resume` counts in no phase (another run sharing the
        process is training)."""
        self.totals()
        if self.on_device:
            self._events = []
        else:
            self._mark = None

    def resume(self) -> None:
        """Restart the clock after :meth:`pause`, in the phase it was paused in."""
        if self.on_device:
            self._events = [(self._current, self._record())]
        else:
            self._mark = self._clock()

    def _record(self) -> Any:
        return self.events.record()

    def switch(self, phase: str) -> str:
        """Enter ``phase``; returns the phase that was left."""
        if phase not in self._totals:
            raise KeyError(f"unknown phase {phase!r}; phases are {self.phases}")
        previous = self._current
        if self.on_device:
            self._events.append((phase, self._record()))
        else:
            now = self._clock()
            if self._mark is None:
                raise RuntimeError("PhaseTimer.start() was not called")
            self._totals[previous] += now - self._mark
            self._mark = now
        self._current = phase
        return previous

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Be in phase ``name`` for the ``with`` block, then back in the phase it interrupted."""
        previous = self.switch(name)
        try:
            yield
        finally:
            self.switch(previous)

    def _resolve_events(self) -> None:
        if len(self._events) < 1:
            return
        last = self._record()
        self.events.synchronize(last)
        events = self._events + [(self._current, last)]
        for (phase, begin), (_, end) in zip(events, events[1:]):
            self._totals[phase] += self.events.seconds_between(begin, end)
        self._events = [(self._current, last)]

    def totals(self) -> Dict[str, float]:
        """Seconds per phase so far (a copy); on CUDA this synchronises once."""
        if self.on_device:
            self._resolve_events()
        elif self._mark is not None:
            now = self._clock()
            self._totals[self._current] += now - self._mark
            self._mark = now
        return dict(self._totals)

    def state_dict(self) -> Dict[str, float]:
        """Seconds per phase so far, for a checkpoint (:meth:`totals`)."""
        return self.totals()

    def load_state_dict(self, totals: Dict[str, float]) -> None:
        """Continue from a checkpoint's totals (resume): they are added to the time counted since
        :meth:`start`; phases this timer does not have are ignored."""
        for phase, seconds in totals.items():
            if phase in self._totals:
                self._totals[phase] += float(seconds)
