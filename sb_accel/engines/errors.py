"""The one exception family of the engines package."""
from __future__ import annotations

__all__ = ["EngineError"]


class EngineError(RuntimeError):
    """An engine cannot be built, refreshed or validated, or a recipe is wrong; the message says what to do."""
