"""What the scheduler knows of the runner's speed: a prefill's cost as a line in its tokens
(`CostFit`) and a decode step's (`Ema`), both measured on the engine's clock."""

from __future__ import annotations

import math

import numpy as np


class CostFit:
    """ms = fixed + per_token x tokens, least squares over recent calls (older ones fade)."""

    def __init__(self, keep: float = 0.95):
        self.keep = keep
        self.sums = np.zeros(5)  # weight, t, ms, t*t, t*ms

    def add(self, tokens: int, ms: float) -> None:
        self.sums = self.keep * self.sums + np.array([1.0, tokens, ms, tokens * tokens, tokens * ms])

    def line(self) -> tuple[float, float] | None:
        """(fixed, per_token) of the fitted line; None until two sizes were seen."""
        w, t, ms, tt, tm = self.sums
        var = w * tt - t * t
        if w < 2 or var <= 1e-9 * max(w * tt, 1.0):
            return None
        per_token = (w * tm - t * ms) / var
        return (ms - per_token * t) / w, per_token

    def tokens_within(self, budget_ms: float) -> int | None:
        """Most tokens one call can take within `budget_ms`, but never so few that the fixed
        part (a pass over the weights) is over two thirds of a chunk's cost: smaller chunks
        would spend most of the machine on weight passes. None until two sizes were seen."""
        fit = self.line()
        if fit is None:
            return None
        fixed, per_token = fit
        if per_token <= 0:
            return None  # cost does not grow with tokens here (a GPU): no limit from the budget
        within = math.floor((budget_ms - fixed) / per_token + 1e-6)  # 1e-6: a fit's rounding
        return max(within, math.ceil(fixed / (2 * per_token) - 1e-6))

    def marginal_tokens(self, budget_ms: float) -> int | None:
        """Most tokens that add no more than `budget_ms` to a call (its per-token part only:
        tokens riding on a call that is made anyway). None until two sizes were seen, or
        where tokens cost nothing measurable."""
        fit = self.line()
        if fit is None or fit[1] <= 0:
            return None
        return math.floor(budget_ms / fit[1] + 1e-6)


class Ema:
    """An exponential moving average; None until the first sample."""

    def __init__(self, keep: float = 0.9):
        self.keep, self.value = keep, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.keep * self.value + (1 - self.keep) * x
