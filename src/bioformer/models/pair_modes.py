"""BioFormer's pair modes as engines: how the trunk carries z and how a block's pair bias is read.

The pair mode is chosen once, when the model is built (`pair_engine(cfg.bioformer.pair_mode)`);
the model then calls its engine and never branches on the mode again.

- `FullPair`: z is carried as a tensor [B, r, r, c_z] (the initial z as a `CodedPair` lookup),
  each block reads LN(z) through its pair bias and the OPM writes the next z.
- `LinearPair`: no LayerNorm on z, so the bias is linear in z and z is never formed: the earlier
  blocks' OPM terms fold into attention as extra query/key channels and the prior into a sparse
  bias (`bioformer.models.linear_pair`).
"""

from __future__ import annotations

from typing import Any

import torch

from bioformer.errors import BioformerError
from bioformer.models.fused_bias import regulators_first, split_applies
from bioformer.models.linear_pair import OPMTerm, linear_pair_bias


class FullPair:
    """z materialised: the reference path, and the only one with a LayerNorm on z."""

    name = "full"
    linear = False

    def block_has_bias(self, needs_prior: bool, opm: bool, block: int) -> bool:
        """Whether block `block` of a model whose pair bias is on gets a pair bias: always."""
        return True

    def trunk(self, model: Any, gene_ids: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor,
              prior: torch.Tensor | None, n_blocks: int, attend: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Encoders and the first n_blocks blocks: m [B, r, c] and z (implicit [B, r, r, c_z] or None);
        `attend` [B, 1, r, r] bool restricts attention (isolated queries, models/isolation.py)."""
        m = model.gene_encoder(gene_ids) + model.value_encoder(values)  # [B, r, c]
        z = model.initial_z_coded(prior)
        for block in model.blocks[:n_blocks]:
            m, z = model.run_block(block, m, z, padding_mask, attend)
        return m, z

    def pair_bias(self, attn: Any, state: Any, r: int, chunk_size: int | None) -> torch.Tensor:
        """The pair bias [*, H, r, r] of attention `attn` from the trunk's z."""
        return attn.pair_bias(state)


class LinearPair:
    """z never formed: each block reads the OPM terms written before it and the prior codes."""

    name = "linear"
    linear = True

    def block_has_bias(self, needs_prior: bool, opm: bool, block: int) -> bool:
        """A bias that is constant over pairs (zero z and no earlier OPM) is left out: it cancels
        in the softmax, and its weights would get no gradient (which DDP cannot have)."""
        return needs_prior or (opm and block > 0)

    def trunk(self, model: Any, gene_ids: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor,
              prior: torch.Tensor | None, n_blocks: int, attend: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Encoders and the first n_blocks blocks: m [B, r, c] and (the OPM terms written so far,
        the prior codes or None for a zero z, whose bias is constant)."""
        m = model.gene_encoder(gene_ids) + model.value_encoder(values)  # [B, r, c]
        codes = seen = None
        if model.uses_z and model.needs_prior:
            codes = seen = model.prior_codes(model.require_prior(prior))
            if attend is None and split_applies(m.device, model.blocks[0].attention.attention_dropout(), codes, m.shape[1]):
                seen = regulators_first(codes)  # the split prior attention slices where it would gather
                m, padding_mask = _reorder(m, seen.order), _reorder(padding_mask, seen.order)
        terms: list[OPMTerm] = []
        for block in model.blocks[:n_blocks]:
            m, term = model.run_block(block.forward_linear, m, terms, seen, padding_mask, attend)
            if term is not None:
                terms = [*terms, term]
        if seen is not codes:  # back to the batch's order
            back = torch.argsort(seen.order, dim=1)
            m = _reorder(m, back)
            terms = [OPMTerm(_reorder(t.a, back), _reorder(t.b, back), t.weight, t.bias) for t in terms]
        return m, (terms, codes)

    def pair_bias(self, attn: Any, state: Any, r: int, chunk_size: int | None) -> torch.Tensor:
        """`w . z_k` built from the OPM factors in chunks of `chunk_size` query rows: [*, H, r, r]."""
        terms, codes = state
        return linear_pair_bias(attn, terms, codes, r, chunk_size)


def _reorder(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x [B, r, ...] with its positions taken in `order` [B, r] (one index_select of whole rows:
    forward and backward 4x faster than `gather`)."""
    B, r = order.shape
    rows = (order + torch.arange(B, device=order.device)[:, None] * r).reshape(-1)
    return x.reshape(B * r, *x.shape[2:]).index_select(0, rows).view(x.shape)


PAIR_ENGINES = {engine.name: engine for engine in (FullPair(), LinearPair())}


def pair_engine(pair_mode: str) -> FullPair | LinearPair:
    """The engine of a pair mode (the one check of its name)."""
    if pair_mode not in PAIR_ENGINES:
        raise BioformerError(f"unknown pair_mode {pair_mode!r}; use one of {', '.join(PAIR_ENGINES)}")
    return PAIR_ENGINES[pair_mode]
