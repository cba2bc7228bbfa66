"""Progress on the terminal: a tqdm bar on a TTY, one line per epoch otherwise (logs, CI, pipes)."""
from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Counts candidates; on a terminal a live bar, elsewhere a line at each epoch end."""

    def __init__(self, enabled: bool, total: int, initial: int = 0, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="ex", unit_scale=True, dynamic_ncols=True,
                             leave=False, file=self.stream)

    def update(self, examples: int) -> None:
        if self._bar is not None:
            self._bar.update(examples)

    def epoch_done(self, epoch: int, epochs: int, **stats: Any) -> None:
        text = " ".join(f"{k}={v}" for k, v in stats.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif self.enabled:
            print(f"epoch {epoch}/{epochs} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
