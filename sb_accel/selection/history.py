"""Loss history and its empirical CDF (Selective-Backprop, Jiang et al. 2019, Alg. 2).

``CDF_R(L)`` is the fraction of the last ``R`` observed losses that are strictly below ``L``.
SB keeps an example with probability ``CDF_R(L) ** beta``.
"""
from __future__ import annotations

import torch

__all__ = ["LossHistory"]


class LossHistory:
    """Ring buffer of the last ``size`` losses with a vectorised percentile lookup.

    Two update orders are offered:

    * ``"batch"`` (the authors' code, default): the whole candidate batch is appended first, then
      every example is scored against the updated history.
    * ``"sequential"`` (paper Alg. 2): example ``i`` is appended and scored before example ``i+1``
      is seen, so early examples of a batch are scored against fewer of the batch's own losses.

    Both are exact; ``sequential`` costs ``O(B * R)`` per batch instead of ``O((B + R) log R)``.
    """

    def __init__(self, size: int = 1024, mode: str = "batch") -> None:
        if size < 1:
            raise ValueError(f"history size must be >= 1, got {size}")
        if mode not in ("batch", "sequential"):
            raise ValueError(f"history mode must be 'batch' or 'sequential', got {mode!r}")
        self.size = size
        self.mode = mode
        self._buffer = torch.empty(size, dtype=torch.float64)
        self._count = 0  # total losses ever appended; the ring position is count % size

    def __len__(self) -> int:
        return min(self._count, self.size)

    def values(self) -> torch.Tensor:
        """The losses currently held (order unspecified)."""
        return self._buffer[: len(self)].clone()

    def append(self, losses: torch.Tensor) -> None:
        """Append a 1-D tensor of losses, overwriting the oldest once full."""
        flat = losses.detach().reshape(-1).to("cpu", torch.float64)
        if flat.numel() > self.size:  # only the newest `size` can survive
            self._count += flat.numel() - self.size
            flat = flat[-self.size:]
        start = self._count % self.size
        first = min(self.size - start, flat.numel())
        self._buffer[start:start + first] = flat[:first]
        self._buffer[: flat.numel() - first] = flat[first:]
        self._count += flat.numel()

    def cdf(self, losses: torch.Tensor) -> torch.Tensor:
        """Fraction of the current history strictly below each loss (no update)."""
        n = len(self)
        flat = losses.detach().reshape(-1).to("cpu", torch.float64)
        if n == 0:
            return torch.zeros_like(flat)
        ordered = torch.sort(self._buffer[:n]).values
        below = torch.searchsorted(ordered, flat, side="left")
        return below.to(torch.float64) / n

    def update_and_cdf(self, losses: torch.Tensor) -> torch.Tensor:
        """Append ``losses`` and return each one's percentile, per ``self.mode``."""
        if self.mode == "batch":
            self.append(losses)
            return self.cdf(losses)
        flat = losses.detach().reshape(-1).to("cpu", torch.float64)
        out = torch.empty_like(flat)
        for i in range(flat.numel()):
            self.append(flat[i:i + 1])
            out[i] = self.cdf(flat[i:i + 1])[0]
        return out

    def state_dict(self) -> dict:
        return {"size": self.size, "mode": self.mode, "buffer": self._buffer.clone(), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"checkpoint history size {state['size']} != configured {self.size}")
        self._buffer = state["buffer"].clone()
        self._count = int(state["count"])
        self.mode = state["mode"]
