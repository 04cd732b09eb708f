"""The one training loop: any model with the (gene_ids, values, padding_mask, prior) interface."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bioformer.config import TrainConfig
from bioformer.data.prior import PriorMatrix
from bioformer.data.tokenize import CellDataset, collate, length_grouped_batches
from bioformer.models import unwrap
from bioformer.training.floors import Floors
from bioformer.training.metrics import SplitMetrics


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a run computes; resolved once per run from its TrainConfig."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = fp32

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Runtime:
        device = resolve_device(cfg.device)
        return cls(device, autocast_dtype(cfg.amp, device))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it (fp16 otherwise) when amp="auto"; nothing on CPU unless asked."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def forward_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], prior: PriorMatrix | None, device: torch.device) -> dict[str, torch.Tensor]:
    """Run `model` (possibly DDP-wrapped) on one collated batch, with the prior codes when the
    model reads them."""
    gene_ids = batch["gene_ids"].to(device)
    prior_codes = prior.prior_for(gene_ids) if (unwrap(model).needs_prior and prior is not None) else None
    return model(gene_ids, batch["values"].to(device), batch["padding_mask"].to(device), prior=prior_codes)


def loader(dataset: CellDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Batches of similar sequence length (see length_grouped_batches), in a seeded order."""
    batches = length_grouped_batches(dataset.lengths(), batch_size, seed, shuffle)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=0)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: CellDataset,
    prior: PriorMatrix | None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    floors: Floors | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Metrics of `model` on the dataset's (fixed) masks; with `floors`, the floors' metrics on
    the very same masked positions, as floor_const_* and floor_gene_mean_*."""
    device = torch.device(device)
    model.eval()
    by_zero = dataset.include_zero_genes
    acc = SplitMetrics(by_zero)
    facc = {"const": SplitMetrics(by_zero), "gene_mean": SplitMetrics(by_zero)} if floors is not None else {}
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    for batch in tqdm(loader(dataset, batch_size, False, 0), desc=desc, leave=False, disable=not progress):
        with ctx:
            out = forward_batch(model, batch, prior, device)
        mask = batch["mask"]
        target = batch["target_values"]
        acc.update(out["pred"].float().cpu(), target, mask)
        if floors is not None:
            for name, pred in floors.predict(batch["gene_ids"]).items():
                facc[name].update(pred, target, mask)
    result = acc.compute()
    for name, a in facc.items():
        result.update({f"floor_{name}_{k}": v for k, v in a.compute().items()})
    return result


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_mse: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None


def train(
    model: torch.nn.Module,
    train_set: CellDataset,
    valid_set: CellDataset,
    prior: PriorMatrix | None,
    cfg: TrainConfig,
    runtime: Runtime,
    on_best: Callable[[torch.nn.Module, int, dict], None] | None = None,
    floors: Floors | None = None,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> TrainResult:
    """AdamW + linear warm-up + plateau LR on validation MSE, gradient clipping, autocast on GPU.

    After each epoch: validation metrics; when validation MSE improves, the weights are kept
    (and `on_best` is called, e.g. to write the checkpoint); `on_epoch` gets the history so far
    (e.g. to rewrite metrics.csv, so a long run shows progress on disk). Returns the per-epoch history and
    the best weights.
    """
    device, amp_dtype = runtime.device, runtime.amp_dtype
    model.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=(amp_dtype == torch.float16))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    result = TrainResult()
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        train_set.set_epoch(epoch)
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(loader(train_set, cfg.batch_size, True, cfg.seed * 1000 + epoch), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not cfg.progress)
        for batch in bar:
            if step < cfg.warmup_steps:
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (step + 1) / cfg.warmup_steps
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
            with ctx:
                out = forward_batch(model, batch, prior, device)
                loss = unwrap(model).loss(out, batch["target_values"].to(device), batch["mask"].to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            step += 1
            bar.set_postfix(loss=f"{losses[-1]:.2f}")
        train_seconds = time.perf_counter() - t0
        valid = evaluate(model, valid_set, prior, cfg.batch_size * 2, device, floors=floors, amp_dtype=amp_dtype)
        if step >= cfg.warmup_steps:
            plateau.step(valid["mse"])
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            **{f"valid_{k}": v for k, v in valid.items()},
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
        }
        result.history.append(row)
        if valid["mse"] < result.best_valid_mse:
            result.best_valid_mse = valid["mse"]
            result.best_epoch = epoch
            result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_best is not None:
                on_best(model, epoch, row)
        if on_epoch is not None:
            on_epoch(result.history)
        if cfg.progress:
            floor = f" (per-gene floor {valid['floor_gene_mean_mse']:.2f})" if "floor_gene_mean_mse" in valid else ""
            tqdm.write(f"epoch {epoch}: train loss {row['train_loss']:.2f}  valid MSE {valid['mse']:.2f}{floor}  Pearson {valid['pearson']:.3f}  {row['seconds']:.1f}s")
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    return result
