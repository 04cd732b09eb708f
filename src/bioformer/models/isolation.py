"""Isolated query positions (inference): many masked queries share one sequence without seeing
each other.

A position marked `isolated` is attended by no other position, and attends to every position
that is not isolated and to itself. So an isolated query's output depends only on the shared
(non-isolated) context and on the query itself, never on which other queries share its sequence,
and the context's outputs do not depend on the queries at all: asking 400 genes in one pass
gives each the prediction of asking it alone in a pass with that context. Every family's
attention is the only place positions mix (BioFormer's pair update is per pair), so masking
attention is enough for exactness (tests/inference/test_impute_isolation.py).
"""

from __future__ import annotations

import torch


def attend_mask(isolated: torch.Tensor | None) -> torch.Tensor | None:
    """[B, 1, r, r] bool, True = query i may attend key j (j not isolated, or j == i), from
    `isolated` [B, r] bool; None for None (no isolated positions: plain attention)."""
    if isolated is None:
        return None
    r = isolated.shape[1]
    eye = torch.eye(r, dtype=torch.bool, device=isolated.device)  # [r, r]
    return ~isolated[:, None, None, :] | eye  # [B, 1, r, r]
