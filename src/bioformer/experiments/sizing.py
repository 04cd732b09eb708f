"""Size models against each other: equal total parameters, or equal attention + transition.

Parameters are counted on the real modules (`build_model`), grouped by the role each model
class gives them (`parameter_role`):

- embeddings: gene embedding + value encoder;
- attention: the attention projections and their LayerNorm (scGPT's norm1), BioFormer's
  sigmoid gate included;
- transition: the feed-forward block and its LayerNorm (scGPT's norm2);
- pair_path: everything that exists only because of z: the prior embedding, the pair-bias
  LayerNorm + projection, the outer product mean;
- decoder: the expression decoder (and BioFormer's final LayerNorm, which a pre-LN stack needs
  and a post-LN one does not: 2·c parameters).

"Same params" resizes one model (by default BioFormer: d_model first, then the OPM hidden width
to land within the tolerance; d_model alone moves the count in ~15% steps). "Same attention"
copies c, H, N and the transition factor from the reference and turns the gate off, so
attention and transition are identical and BioFormer's extra parameters are its pair path
(plus the 2·c final LayerNorm).
"""

from __future__ import annotations

from bioformer.config import ModelConfig
from bioformer.errors import BioformerError
from bioformer.models import build_model, count_config_parameters, count_parameters, model_class

CATEGORIES = ("embeddings", "attention", "transition", "pair_path", "decoder")


def parameter_breakdown(cfg: ModelConfig, vocab_size: int, use_prior: bool = True) -> dict[str, int]:
    """Parameter counts per category (CATEGORIES, plus "other" for parameters a model class does
    not assign a role) and "total", from the model `cfg` builds (on the meta device)."""
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(cfg, vocab_size, use_prior=use_prior)
    out = dict.fromkeys((*CATEGORIES, "other"), 0)
    for name, p in model.named_parameters():
        out[model.parameter_role(name)] += p.numel()
    out["total"] = count_parameters(model)
    return out


def relative_difference(n: int, reference: int) -> float:
    return (n - reference) / reference


def nearest_d_model(
    template: ModelConfig, target: int, vocab_size: int, use_prior: bool = True, max_d_model: int | None = None,
) -> tuple[int, float]:
    """The equal-parameter search (the one every study and benchmark uses): the d_model, a
    multiple of nhead up to `max_d_model` (default 4x the template's), whose model has the total
    parameter count nearest `target`, and its relative difference. The count grows with
    d_model, so the walk stops at the first size above the target."""
    h = template.nhead
    top = max_d_model if max_d_model is not None else 4 * max(template.d_model, h)
    best_d, best_err = h, float("inf")
    for d in range(h, top + 1, h):
        err = relative_difference(count_config_parameters(template.replace(d_model=d), vocab_size, use_prior), target)
        if abs(err) < abs(best_err):
            best_d, best_err = d, err
        if err > 0:
            break
    return best_d, best_err


def match_total_params(
    reference: ModelConfig,
    template: ModelConfig,
    vocab_size: int,
    tol: float = 0.02,
    use_prior: bool = True,
    reference_uses_prior: bool = False,
) -> ModelConfig:
    """`template` resized so that its total parameter count is within `tol` of `reference`'s.

    The search keeps nhead, N and ff_factor; d_model runs over multiples of nhead. When the
    template's model class names a fine-step field (`fine_size_field`; BioFormer: d_opm, the OPM
    hidden width, whose c_opm²·c_z output layer gives fine steps), the d_model whose count is
    closest is kept and that field is moved, nearest first, until the count is within `tol`.
    Raises when no size is within `tol`.
    """
    target = count_config_parameters(reference, vocab_size, reference_uses_prior)
    fine = model_class(template.model).fine_size_field(template)
    fine_default = template.get(fine) if fine else None

    def count(d_model: int, fine_value: int | None = None) -> int:
        changes = {"d_model": d_model, **({fine: fine_value if fine_value is not None else fine_default} if fine else {})}
        return count_config_parameters(template.replace(**changes), vocab_size, use_prior)

    h = template.nhead
    best_d, best_err = nearest_d_model(template, target, vocab_size, use_prior, 4 * max(reference.d_model, h))
    best = template.replace(d_model=best_d)
    if abs(best_err) <= tol:
        return best
    if fine:
        options = []
        for d in (best_d - 2 * h, best_d - h, best_d, best_d + h):
            if d < h:
                continue
            # the count grows with the fine field: bisect for the first value at or above the target
            lo, hi = 1, 8 * fine_default
            while lo < hi:
                mid = (lo + hi) // 2
                if count(d, mid) < target:
                    lo = mid + 1
                else:
                    hi = mid
            for v in {max(lo - 1, 1), lo}:
                err = relative_difference(count(d, v), target)
                if abs(err) <= tol:
                    # prefer the d_model closest to the unconstrained best, then the value closest to the template's
                    options.append((abs(d - best_d), abs(v - fine_default), abs(err), d, v))
        if options:
            _, _, _, d, v = min(options)
            return template.replace(d_model=d, **{fine: v})
    raise BioformerError(
        f"no {template.model} size within {tol:.0%} of {target:,} parameters (closest: d_model {best_d}, "
        f"{best_err:+.1%}); change nhead or size the other model"
    )


def same_attention(reference: ModelConfig, template: ModelConfig) -> ModelConfig:
    """`template` (BioFormer) with the reference's c, H, N, transition factor and dropout, gate off:
    attention and transition parameters equal the reference's; the extra is the pair path."""
    return template.replace(
        d_model=reference.d_model, nhead=reference.nhead, nlayers=reference.nlayers,
        ff_factor=reference.ff_factor, dropout=reference.dropout, attention_dropout=reference.attention_dropout, gating=False,
    )


def attention_transition_params(cfg: ModelConfig, vocab_size: int, use_prior: bool = True) -> int:
    b = parameter_breakdown(cfg, vocab_size, use_prior)
    return b["attention"] + b["transition"]


def format_breakdown(models: dict[str, tuple[ModelConfig, bool]], vocab_size: int) -> str:
    """Markdown table: one row per named (ModelConfig, use_prior), columns per category."""
    rows = {name: (cfg, parameter_breakdown(cfg, vocab_size, use_prior)) for name, (cfg, use_prior) in models.items()}
    cats = [*CATEGORIES, *(["other"] if any(b["other"] for _, b in rows.values()) else [])]
    head = ["model", "d_model", "N", "total", *cats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (cfg, b) in rows.items():
        cells = [name, str(cfg.d_model), str(cfg.nlayers), f"{b['total']:,}", *(f"{b[c]:,}" for c in cats)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
