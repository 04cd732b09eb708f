"""The training loop's best-so-far bookkeeping (`TrainResult.keep_if_best`)."""

import math

import torch

from bioformer.training.loop import TrainResult


def test_keep_if_best_copies_the_weights_and_keeps_only_improvements():
    model = torch.nn.Linear(2, 1)
    result = TrainResult()
    assert result.keep_if_best(model, 5.0, 1)
    with torch.no_grad():
        model.weight.add_(1.0)  # later epochs change the live weights
    assert not torch.equal(result.best_state["weight"], model.weight)  # the kept weights are a copy
    assert not result.keep_if_best(model, 6.0, 2) and result.best_epoch == 1
    assert not result.keep_if_best(model, math.nan, 3) and result.best_valid_mse == 5.0
    assert result.keep_if_best(model, 4.0, 4) and result.best_epoch == 4
    assert torch.equal(result.best_state["weight"], model.weight)
