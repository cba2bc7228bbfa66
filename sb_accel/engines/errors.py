"""The one exception family of the engines package."""
from __future__ import annotations

__all__ = ["EngineError", "EngineSpecError"]


class EngineError(RuntimeError):
    """An engine cannot be built, refreshed or validated, or a recipe is wrong; the message says what to do."""


class EngineSpecError(EngineError, ValueError):
    """An engine spec names no registered backend or precision: a usage error (CLI exit status 2)."""
