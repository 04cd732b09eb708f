"""Isolated queries (models/isolation.py): a query's output depends only on the shared context
and itself, never on the other queries of its sequence, and the context never sees them; in
every family and pair mode, with and without the prior."""

from __future__ import annotations

import pytest
import torch

from bioformer.config import ModelConfig
from bioformer.models import BioFormer, ScGPT

V = 60
N_CTX, N_Q = 9, 7


def build(kind: str):
    torch.manual_seed(0)
    common = dict(d_model=16, nhead=4, nlayers=3, ff_factor=2, dropout=0.0)
    if kind == "scgpt":
        return ScGPT.from_config(ModelConfig.of(model="scgpt", **common), V).eval()
    mode, prior = kind.split("-")
    cfg = ModelConfig.of(model="bioformer", d_z=6, d_opm=5, pair_mode=mode, **common)
    return BioFormer.from_config(cfg, V, use_prior=prior == "prior").eval()


def gene_prior(seed: int = 1) -> torch.Tensor:
    """A gene x gene edge-code table [V, V] (a few regulators), so every sequence's codes are
    the restriction of one prior, as in inference."""
    g = torch.Generator().manual_seed(seed)
    table = torch.zeros(V, V, dtype=torch.long)
    regulators = torch.randperm(V, generator=g)[:6]
    table[regulators] = torch.randint(0, 4, (6, V), generator=g)
    return table


def run(model, genes: torch.Tensor, values: torch.Tensor, isolated: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor:
    """pred [B, r] of sequences of genes [B, r] (no padding)."""
    pm = torch.zeros_like(genes, dtype=torch.bool)
    prior = table[genes[:, :, None], genes[:, None, :]] if model.needs_prior else None  # [B, r, r]
    with torch.inference_mode():
        return model(genes, values, pm, prior=prior, isolated=isolated)["pred"]


@pytest.mark.parametrize("kind", ["scgpt", "full-prior", "full-none", "linear-prior", "linear-none"])
def test_isolated_query_equals_asking_it_alone(kind):
    model, table = build(kind), gene_prior()
    g = torch.Generator().manual_seed(2)
    genes = torch.randperm(V - 2, generator=g)[:N_CTX + N_Q] + 2  # distinct genes, 2.. (0, 1: pad, cls)
    ctx_vals = torch.randint(1, 51, (N_CTX,), generator=g).float()
    values = torch.cat([ctx_vals, torch.full((N_Q,), -1.0)])
    isolated = torch.arange(N_CTX + N_Q) >= N_CTX
    joint = run(model, genes[None], values[None], isolated[None], table)[0]
    # each query alone with the context
    for i in range(N_CTX, N_CTX + N_Q):
        keep = torch.cat([torch.arange(N_CTX), torch.tensor([i])])
        alone = run(model, genes[keep][None], values[keep][None], isolated[keep][None], table)[0]
        torch.testing.assert_close(joint[i], alone[-1], rtol=1e-5, atol=1e-5)
    # the context never sees the queries: its outputs are those of the context alone
    ctx_only = run(model, genes[None, :N_CTX], values[None, :N_CTX], None, table)[0]
    torch.testing.assert_close(joint[:N_CTX], ctx_only, rtol=1e-5, atol=1e-5)
    # without isolation the queries do see each other (the check has power)
    plain = run(model, genes[None], values[None], None, table)[0]
    assert (plain[N_CTX:] - joint[N_CTX:]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["linear-prior", "full-prior"])
def test_isolation_with_long_sequences(kind):
    """r >= 256 (where linear mode's split attention path would apply without isolation)."""
    model, table = build(kind), gene_prior()
    n_ctx, n_q = 20, 240
    genes = torch.cat([torch.arange(2, 2 + n_ctx), (torch.arange(n_q) % (V - 2 - n_ctx)) + 2 + n_ctx])
    values = torch.cat([torch.arange(1, n_ctx + 1).float(), torch.full((n_q,), -1.0)])
    isolated = torch.arange(n_ctx + n_q) >= n_ctx
    joint = run(model, genes[None], values[None], isolated[None], table)[0]
    keep = torch.cat([torch.arange(n_ctx), torch.tensor([n_ctx + 5])])
    alone = run(model, genes[keep][None], values[keep][None], isolated[keep][None], table)[0]
    torch.testing.assert_close(joint[n_ctx + 5], alone[-1], rtol=1e-5, atol=1e-5)


def test_attend_mask_lets_queries_see_the_context_and_themselves_only():
    from bioformer.models.isolation import attend_mask

    isolated = torch.tensor([[False, False, True, True]])
    expected = torch.tensor([[1, 1, 0, 0],   # context rows: the context only
                             [1, 1, 0, 0],
                             [1, 1, 1, 0],   # a query: the context and itself
                             [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(attend_mask(isolated)[0, 0], expected)
    assert attend_mask(None) is None
