"""Masked-value metrics accumulated exactly over a whole split (not averaged per batch).

MSE, MAE and Pearson r over all masked positions; MRE = mean |pred - target| / (target + 1e-6)
over masked positions whose target is > 0 only (a zero target makes the ratio ~1e6 * error).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

EPS = 1e-6


class MaskedMetrics:
    """Running sums for MSE / MAE / MRE / Pearson; `update` per batch, `compute` at the end."""

    def __init__(self) -> None:
        self.n = 0
        self.n_pos = 0
        self.s = torch.zeros(7, dtype=torch.float64)  # sq, abs, rel, p, t, pp, tt
        self.pt = 0.0

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        p = pred.detach()[mask].double().cpu()
        t = target.detach()[mask].double().cpu()
        if p.numel() == 0:
            return
        err = p - t
        pos = t > 0
        self.n += p.numel()
        self.n_pos += int(pos.sum())
        self.s += torch.stack([
            (err * err).sum(), err.abs().sum(), (err[pos].abs() / (t[pos] + EPS)).sum(),
            p.sum(), t.sum(), (p * p).sum(), (t * t).sum(),
        ])
        self.pt += float((p * t).sum())

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the running sums by their sums over processes (exact: sums, not means)."""
        packed = torch.cat([torch.tensor([self.n, self.n_pos, self.pt], dtype=torch.float64), self.s])
        packed = reduce_sum(packed)
        self.n, self.n_pos, self.pt = int(packed[0]), int(packed[1]), float(packed[2])
        self.s = packed[3:].clone()

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {"mse": math.nan, "mre": math.nan, "mae": math.nan, "pearson": math.nan, "n": 0}
        sq, ab, rel, sp_, st, spp, stt = self.s.tolist()
        n = self.n
        cov = self.pt - sp_ * st / n
        var_p = spp - sp_ * sp_ / n
        var_t = stt - st * st / n
        # a constant prediction has no correlation (rounding leaves var_p a hair above 0)
        degenerate = var_p <= 1e-9 * max(spp, 1e-300) or var_t <= 1e-9 * max(stt, 1e-300)
        denom = 0.0 if degenerate else math.sqrt(var_p * var_t)
        return {
            "mse": sq / n,
            "mre": rel / self.n_pos if self.n_pos else math.nan,
            "mae": ab / n,
            "pearson": cov / denom if denom > 0 else math.nan,
            "n": n,
        }


class SplitMetrics:
    """MaskedMetrics overall and, when asked, separately on zero and non-zero targets."""

    def __init__(self, by_zero: bool = False) -> None:
        self.all = MaskedMetrics()
        self.by_zero = by_zero
        self.zero = MaskedMetrics()
        self.nonzero = MaskedMetrics()

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        self.all.update(pred, target, mask)
        if self.by_zero:
            self.zero.update(pred, target, mask & (target == 0))
            self.nonzero.update(pred, target, mask & (target > 0))

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for m in (self.all, self.zero, self.nonzero):
            m.all_reduce(reduce_sum)

    def compute(self) -> dict[str, float]:
        out = {k: v for k, v in self.all.compute().items() if k != "n"}
        if self.by_zero:
            z, nz = self.zero.compute(), self.nonzero.compute()
            out.update({"mse_zero": z["mse"], "mae_zero": z["mae"], "mse_nonzero": nz["mse"], "mre_nonzero": nz["mre"], "mae_nonzero": nz["mae"], "pearson_nonzero": nz["pearson"]})
        return out
