"""Predict peak memory of a training step and of inference before a run, and the largest r that
fits a budget. `bioformer estimate --n-genes 1024 --batch-size 8 --budget 24GB`.

The model counts the tensors each module keeps for backward (or holds at once in inference),
per token ([B, r]) and per gene pair ([B, r, r]), as the code in `bioformer.models` creates
them. Parameters are counted exactly on the meta device. benchmarks/estimate_check.py checks
the prediction against the measured peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bioformer.config import DataConfig, ModelConfig
from bioformer.errors import BioformerError
from bioformer.models import PairPath, count_config_parameters, model_class

N_SPECIAL_TOKENS = 3  # <pad>, <cls>, <mask>
CATEGORIES = ("parameters + optimizer state", "m activations", "z activations", "attention", "OPM intermediates")


@dataclass
class MemoryEstimate:
    """Bytes by category (CATEGORIES); `total` is their sum."""

    n_genes: int
    batch_size: int
    n_params: int
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))


def _attention_is_math_path(device: str, cfg: ModelConfig, training: bool, amp: bool = False) -> bool:
    """Whether CPU training runs SDPA's math path, which keeps the [B, H, r, r] probabilities:
    with attention dropout (no fused CPU kernel has it), or, under bf16 autocast, for the full
    pair mode's bias from z (in fp32 it runs on the fused kernel with its gradient from the
    log-sum-exp, models/norm_bias.py). Linear pair mode's prior bias runs on the fused kernel
    (models/fused_bias.py); CUDA's kernels keep no probabilities."""
    if device != "cpu" or not training:
        return False
    path = model_class(cfg.model).pair_path(cfg)
    return cfg.attention_dropout > 0 or (path.reads_z and not path.linear and amp)


def estimate_memory(
    model_cfg: ModelConfig,
    n_genes: int,
    batch_size: int,
    training: bool = True,
    device: str = "cpu",
    amp: bool = False,
    vocab_size: int | None = None,
    use_prior: bool = True,
    n_params: int | None = None,
) -> MemoryEstimate:
    """Peak bytes of one step (forward + backward + AdamW) or of one inference forward.

    n_genes is the sequence length r (genes per cell, incl. <cls>). `amp`: bf16 activations
    (z stays fp32, as the code keeps it). Assumes fp32 parameters and AdamW (2 states).
    """
    cfg = model_cfg
    B, r = batch_size, n_genes
    vocab = vocab_size if vocab_size is not None else n_genes + N_SPECIAL_TOKENS
    P = n_params if n_params is not None else count_config_parameters(cfg, vocab, use_prior=True)
    act = 2 if amp else 4  # bytes of an activation element
    path = model_class(cfg.model).pair_path(cfg)  # the family's pair path decides the [B, r, r] terms
    math_path = _attention_is_math_path(device, cfg, training, amp)
    parts = dict.fromkeys(CATEGORIES, 0.0)
    if path.linear:
        parts.update(_linear_pair_parts(cfg, path, B, r, training, math_path, act, use_prior, device))
    elif training:
        parts.update(_training_parts(cfg, path, B, r, math_path, act, use_prior))
    else:
        parts.update(_inference_parts(cfg, path, B, r, act, use_prior))
    # weights; in training also grads, AdamW exp_avg and exp_avg_sq (fp32)
    parts["parameters + optimizer state"] = (4.0 if training else 1.0) * P * 4
    return MemoryEstimate(n_genes=r, batch_size=B, n_params=P, parts=parts)

def _training_parts(cfg: ModelConfig, path: PairPath, B: int, r: int, math_path: bool, act: int,
                    use_prior: bool) -> dict[str, float]:
    """Bytes kept at the peak of a training step with z materialised (or no z at all)."""
    c, H, N = cfg.d_model, cfg.nhead, cfg.nlayers
    ff, T, pairs = cfg.ff_factor * c, B * r, B * r * r
    pair_bias, n_opm, cz, co = path.reads_z, path.opm_blocks, path.d_z, path.d_opm
    parts: dict[str, float] = {}
    # with checkpointing only each block's inputs are kept, plus one block recomputed in backward
    ckpt = path.checkpoint
    n_kept = 1 if ckpt else N  # blocks whose internals are alive at the peak
    n_kept_opm = min(n_opm, 1) if ckpt else n_opm
    # tensors kept per token per block: LN outs, q/k/v, attention out, gate, out_proj,
    # transition hidden (twice: pre/post ReLU) and dropout masks; plus encoders/decoder
    per_token = n_kept * (12 * c + (3 * c if path.gating else 0) + 2.5 * ff) + 12 * c
    if ckpt:
        per_token += N * c  # block inputs m
    parts["m activations"] = per_token * T * act
    z_pairs = 0.0
    if pair_bias:
        z_pairs = 1.0  # int8 prior codes (block 0 reads them by regulator rows/columns: no pair codes over r^2)
        # each OPM writes a new z (fp32, kept also under checkpointing: it is a block input);
        # a block that reads it keeps LN(z)'s mean/rstd (fp32; LN(z) itself is never written,
        # models/norm_bias.py; its bias is the attention's mask, counted there)
        z_pairs += n_opm * cz * 4 + n_kept_opm * 2 * 4
        if ckpt and n_opm:
            z_pairs += cz * 4  # the recomputed block writes its output z once more
        parts["OPM intermediates"] = n_kept_opm * (T * (co + 1) * cz * 2 + T * co * 6) * act
    # attention kept per block: the math path (CPU with attention dropout or a pair bias)
    # keeps probabilities, the float dropout mask and the dropped probabilities; fused
    # kernels keep the float mask
    per_block = 3 * H * act if math_path else (H * act if pair_bias else 0)
    attn_pairs = n_kept * per_block
    # backward transients (one block at a time, so the larger of the two counts): gradients
    # of the probabilities / mask, or, in the block reading the newest z, the mask's gradient,
    # its per-pair scaled copy and grad z (fp32; models/norm_bias.py keeps its mask meanwhile)
    attn_transient = (3 if math_path else 2) * H * act if (math_path or pair_bias) else 0
    z_transient = (cz + 2 * H) * 4 if n_opm else 0
    if z_transient >= attn_transient:
        z_pairs += z_transient
    else:
        attn_pairs += attn_transient
    parts["z activations"] = z_pairs * pairs
    parts["attention"] = attn_pairs * pairs
    return parts


def _inference_parts(cfg: ModelConfig, path: PairPath, B: int, r: int, act: int, use_prior: bool) -> dict[str, float]:
    """Bytes alive at once in one inference forward with z materialised (or no z at all)."""
    c, H = cfg.d_model, cfg.nhead
    ff, T, pairs = cfg.ff_factor * c, B * r, B * r * r
    pair_bias, n_opm, cz, co = path.reads_z, path.opm_blocks, path.d_z, path.d_opm
    parts: dict[str, float] = {}
    parts["m activations"] = (4 * c + ff) * T * act
    if pair_bias:
        z_pairs = 1.0  # int8 prior codes
        # live at once: z, LN(z)'s mean/rstd, and the next z written by the OPM
        z_pairs += (2 * cz * 4 + 2 * 4) if n_opm else 0
        parts["z activations"] = z_pairs * pairs
        parts["OPM intermediates"] = (T * (co + 1) * cz + T * co * 3) * act if n_opm else 0.0
    # mask, bias and (math path / CPU) scores and probabilities of one block
    parts["attention"] = H * (2 + (2 if pair_bias else 0)) * act * pairs
    return parts


REGULATOR_SHARE = 0.1  # regulator slots S per batch as a share of r, for the split prior path (models/fused_bias.py)


def _linear_pair_parts(cfg: ModelConfig, path: PairPath, B: int, r: int, training: bool, math_path: bool, act: int,
                       use_prior: bool, device: str = "cpu") -> dict[str, float]:
    """Linear pair mode (models/linear_pair.py): no z; per block the attention's queries, keys
    and values widen to d' = d_head + (earlier OPMs) * c_opm, padded to a multiple of 8. The
    prior is a float mask built per chunk of query rows (all r rows while B * H * r * r is at
    most BIAS_CHUNK_ELEMENTS, unless attention_chunk_size is set), from its regulators' codes
    (int8, O(B S r): small). The only [B, r, r] tensors are the batch's int8 codes, the
    prior's float mask (kept for backward per block by the fused kernel, one chunk at a time
    when chunked), and, on the math path (CPU training with attention dropout), the scores of
    one chunk of query rows (kept per block when not chunked). The split path (CPU, no
    attention dropout, r >= SPLIT_MIN_GENES; models/fused_bias.py) has no mask: per block it
    keeps the probabilities at the regulator keys [B, H, r, S] and rows [B, H, S, r], and per
    batch the uint8 codes of both and their index forms, which every block reads."""
    from bioformer.models.fused_bias import SPLIT_MIN_GENES
    from bioformer.models.linear_pair import BIAS_CHUNK_ELEMENTS

    c, H, N = cfg.d_model, cfg.nhead, cfg.nlayers
    ff, co, dh, n_opm = cfg.ff_factor * c, path.d_opm, c // cfg.nhead, path.opm_blocks
    T, pairs = B * r, B * r * r
    widths = [-(-(dh + min(block, n_opm) * co) // 8) * 8 for block in range(N)]  # d' per block
    ckpt = path.checkpoint and training
    split = use_prior and device == "cpu" and cfg.attention_dropout == 0 and r >= SPLIT_MIN_GENES
    chunk = path.attention_chunk_size or (max(1, BIAS_CHUNK_ELEMENTS // (B * H * r)) if use_prior and not split else r)
    chunk = min(chunk, r)
    mask = H * act * B * chunk * r if use_prior else 0.0  # one chunk's float mask
    shared = 0.0  # held once for all blocks
    if split:  # no mask: the probabilities at the regulator keys [B, H, chunk, S] (S ~ share * r)
        # and rows [B, H, S_chunk, r] (S_chunk ~ share * chunk), kept per block; in backward one
        # block's score gradients and lookups (~3 more); the index layouts of every chunk
        s_pairs = B * REGULATOR_SHARE * chunk * r
        mask = 2 * H * act * s_pairs
        # backward of one block: score gradients and looked-up bias; per batch, both parts' index
        # forms (int32 lookup, 4 H bytes, and int64 gradient lanes, 8 bytes), kept for every block
        shared = (2 * H * act + 2 * (4 * H + 8)) * s_pairs + 2 * B * REGULATOR_SHARE * r * r  # + uint8 codes of every chunk
    parts = dict.fromkeys(CATEGORIES, 0.0)
    z_pairs = 1.0 if use_prior else 0.0  # the batch's int8 codes
    if not training:
        parts["m activations"] = (4 * c + ff) * T * act
        parts["attention"] = 4 * H * max(widths) * T * act + mask + shared  # one block's q', k', v', output (fused kernels)
        parts["OPM intermediates"] = n_opm * 2 * co * T * act
        parts["z activations"] = z_pairs * pairs
        return parts
    n_kept = 1 if ckpt else N
    per_token = n_kept * (12 * c + (3 * c if path.gating else 0) + 2.5 * ff) + 12 * c + (N * c if ckpt else 0)
    parts["m activations"] = per_token * T * act
    kept_widths = widths[-1:] if ckpt else widths  # q', k', v' and the output at width d' (kept for backward)
    parts["attention"] = sum(4 * H * w for w in kept_widths) * T * act
    parts["OPM intermediates"] = n_opm * (c + 4 * co) * T * act  # LN(m), a and b (before and after the pad mask)
    if math_path:  # probabilities and dropout mask kept per block (measured ~2.75 H floats per pair),
        # plus the scores/gradients (and the mask) of the block in backward; chunked: one chunk at a time
        scores = H * act * B * chunk * r
        parts["attention"] += 6 * scores if chunk < r else (2.75 * n_kept + 3) * scores
    parts["attention"] += mask * (n_kept if (chunk >= r or split) and not math_path else 1) + shared
    parts["z activations"] = z_pairs * pairs
    return parts


def max_genes_for_budget(model_cfg: ModelConfig, batch_size: int, budget: float, training: bool = True, **kw) -> int:
    """Largest r whose predicted peak is within `budget` bytes (0 if none)."""
    if estimate_memory(model_cfg, 1, batch_size, training, **kw).total > budget:
        return 0
    lo, hi = 1, 2
    while estimate_memory(model_cfg, hi, batch_size, training, **kw).total <= budget:
        lo, hi = hi, hi * 2
        if hi > 1 << 22:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate_memory(model_cfg, mid, batch_size, training, **kw).total <= budget:
            lo = mid
        else:
            hi = mid
    return lo


_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> float:
    """'24GB' -> 24e9, '24GiB' -> 24 * 2**30, '512MB', plain numbers are bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise BioformerError(f"cannot read memory size {text!r}; write e.g. 24GB, 16GiB or 512MB")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def sequence_length(data_cfg: DataConfig) -> int:
    """Upper bound on r from the data config alone (no data loaded): the selected genes
    (n_hvg, plus up to max_prior_genes for hvg+prior) and <cls>, capped by max_len."""
    genes = data_cfg.n_hvg + (data_cfg.max_prior_genes if data_cfg.genes == "hvg+prior" else 0)
    return min(data_cfg.max_len, genes + int(data_cfg.append_cls))


def format_estimate(train: MemoryEstimate, infer: MemoryEstimate) -> str:
    lines = [f"{'component':<30} {'training':>12} {'inference':>12}"]
    for k in CATEGORIES:
        lines.append(f"{k:<30} {format_bytes(train.parts[k]):>12} {format_bytes(infer.parts[k]):>12}")
    lines.append(f"{'total (predicted peak)':<30} {format_bytes(train.total):>12} {format_bytes(infer.total):>12}")
    return "\n".join(lines)
