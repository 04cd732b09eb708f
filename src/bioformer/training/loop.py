"""The one training loop: any model with the (gene_ids, values, padding_mask, prior) interface."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bioformer.config import TrainConfig
from bioformer.data.prior import PriorMatrix
from bioformer.data.tokenize import CellDataset, collate, length_grouped_batches
from bioformer.models import unwrap
from bioformer.training import distributed
from bioformer.training.checkpoint import rng_state, save_training_state, set_rng_state
from bioformer.training.floors import Floors
from bioformer.training.metrics import EvalResult, score_positions
from bioformer.training.runtime import Runtime


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor], prior: PriorMatrix | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(gene_ids [B, L], values [B, L], padding_mask [B, L], prior codes [B, L, L] or None) of a
    padded batch on `device`: the one place where a batch becomes a model's arguments
    (training, evaluation and inference), the prior codes only for a model that reads them."""
    gene_ids = batch["gene_ids"].to(device)
    prior_codes = prior.prior_for(gene_ids) if (unwrap(model).needs_prior and prior is not None) else None
    return gene_ids, batch["values"].to(device), batch["padding_mask"].to(device), prior_codes


def forward_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], prior: PriorMatrix | None, device: torch.device) -> dict[str, torch.Tensor]:
    """Run `model` (possibly DDP-wrapped) on one collated batch (`model_inputs`)."""
    return model(*model_inputs(model, batch, prior, device))


def auto_folds(mask_ratio: float) -> int:
    """Complementary mask folds that score every position once: round(1 / mask_ratio)."""
    return max(1, round(1 / mask_ratio)) if mask_ratio > 0 else 1


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
    folds: int = 1,
    bin_edges: np.ndarray | None = None,
    roles: PriorMatrix | None = None,
    n_boot: int = 0,
    seed: int = 0,
) -> EvalResult:
    """Score `model` and the floors on exactly the same masked positions of `dataset`.

    folds = 1: the dataset's own (fixed) masks. folds = k > 1: k complementary mask folds, so
    every position of every cell is masked, predicted and scored once (full-cell scoring).
    `bin_edges` [n_cells, n_bins] adds metrics on log-normalised values; `roles` (the prior over
    the vocabulary) splits MSE by the masked gene's role in its cell; `n_boot` adds bootstrap
    95% intervals over cells. See `bioformer.training.metrics`.

    In a process group each rank scores every world_size-th batch and the scored positions are
    gathered, so every rank gets the result of a single-process evaluation of the same weights.
    """
    device = torch.device(device)
    model = unwrap(model)
    model.eval()
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    scored = _Scored()
    old = (dataset.fold, dataset.n_folds)
    try:
        for fold in range(folds):
            batches = _rank_batches(dataset, batch_size, fold, folds, scored.order)
            batch_iter = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=0)
            for batch in tqdm(batch_iter, desc=desc, leave=False, disable=not progress):
                with ctx:
                    out = forward_batch(model, batch, prior, device)
                scored.add(batch, out["pred"], floors, roles)
    finally:
        dataset.set_fold(*old)
    parts = (scored.cells, scored.genes, scored.targets, scored.preds, scored.is_tf, scored.is_target)
    if distributed.world_size() > 1:  # every rank gets every position (metrics are not sums)
        parts = _gather_batches(*parts, scored.order)
    cells, genes, targets, preds, is_tf, is_target = parts

    def cat(chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros(0)

    return score_positions(
        cat(cells), cat(genes), cat(targets), {k: cat(v) for k, v in preds.items()},
        bin_edges=bin_edges, roles={"tf": cat(is_tf), "target": cat(is_target)} if roles is not None else None,
        by_zero=dataset.has_zero_genes, n_boot=n_boot, seed=seed, n_folds=folds,
    )


def _rank_batches(dataset: CellDataset, batch_size: int, fold: int, folds: int, order: list[tuple[int, int]]) -> list:
    """This rank's evaluation batches of mask fold `fold` (every world_size-th batch of the
    single-process order); appends their (fold, batch index) to `order`."""
    dataset.set_fold(fold, folds)
    batches = length_grouped_batches(dataset.lengths(), batch_size, 0, shuffle=False)
    mine = range(distributed.rank(), len(batches), distributed.world_size())
    order += [(fold, b) for b in mine]  # this rank's batches in single-process order
    return [batches[b] for b in mine]


@dataclass
class _Scored:
    """The masked positions this rank scored, as per-batch arrays: cell, gene, target, the
    model's and each floor's prediction, and (with roles) whether the gene is a TF / a target."""

    cells: list[np.ndarray] = field(default_factory=list)
    genes: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    preds: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"model": []})
    is_tf: list[np.ndarray] = field(default_factory=list)
    is_target: list[np.ndarray] = field(default_factory=list)
    order: list[tuple[int, int]] = field(default_factory=list)  # (fold, batch index) of each scored batch

    def add(self, batch: dict[str, torch.Tensor], pred: torch.Tensor, floors: Floors | None, roles: PriorMatrix | None) -> None:
        """Record one batch's masked positions; pred [B, L] is the model's prediction."""
        mask = batch["mask"]  # [B, L]
        self.cells.append(batch["cell"][:, None].expand_as(mask)[mask].numpy())
        self.genes.append(batch["gene_ids"][mask].numpy())
        self.targets.append(batch["target_values"][mask].numpy())
        self.preds["model"].append(pred.float().cpu()[mask].numpy())
        if floors is not None:
            for name, floor_pred in floors.predict(batch["gene_ids"], batch).items():
                self.preds.setdefault(name, []).append(floor_pred[mask].numpy())
        if roles is not None:
            edge = roles.prior_for(batch["gene_ids"]) != 0  # [B, L, L], i regulates j
            self.is_tf.append(edge.any(2)[mask].numpy())
            self.is_target.append(edge.any(1)[mask].numpy())


def _gather_batches(cells: list, genes: list, targets: list, preds: dict[str, list], is_tf: list, is_target: list,
                    order: list[tuple[int, int]]) -> tuple:
    """Every rank's per-batch arrays on every rank, in single-process batch order. A rank that
    scored no batch (a split with fewer batches than ranks) contributes nothing and still gets
    everything: the floors' names come from the ranks that have them."""
    parts = distributed.all_gather_object((cells, genes, targets, preds, is_tf, is_target, order))
    keys = [k for k in dict.fromkeys(k for p in parts for k in p[3])]
    flat_order = [key for p in parts for key in p[6]]
    perm = sorted(range(len(flat_order)), key=flat_order.__getitem__)

    def merged(i: int) -> list:
        chunks = [x for p in parts for x in p[i]]
        return [chunks[j] for j in perm] if len(chunks) == len(perm) else chunks

    pred_chunks = {k: [x for p in parts for x in p[3].get(k, [])] for k in keys}
    preds = {k: [v[j] for j in perm] if len(v) == len(perm) else v for k, v in pred_chunks.items()}
    return merged(0), merged(1), merged(2), preds, merged(4), merged(5)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_mse: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None

    def keep_if_best(self, model: torch.nn.Module, valid_mse: float, epoch: int) -> bool:
        """Keep a copy of the weights when `valid_mse` is the best so far; returns whether it was."""
        if not valid_mse < self.best_valid_mse:
            return False
        self.best_valid_mse, self.best_epoch = valid_mse, epoch
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


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
    state_path: str | Path | None = None,
    resume_state: dict[str, Any] | None = None,
    state_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """AdamW + linear warm-up + plateau LR on validation MSE, gradient clipping, autocast on GPU.

    After each epoch: validation metrics; when validation MSE improves, the weights are kept
    (and `on_best` is called, e.g. to write the checkpoint); `on_epoch` gets the history so far
    (e.g. to rewrite metrics.csv, so a long run shows progress on disk); with `state_path`, the
    full training state (see `training_state`) is written there atomically. `resume_state`
    (such a state, read back) continues a run exactly where that epoch ended. Returns the
    per-epoch history and the best weights. In a process group (torchrun) the model is wrapped
    in DDP (see `train_step`); only rank 0 calls `on_best` / `on_epoch` and writes the state.
    """
    device, amp_dtype = runtime.device, runtime.amp_dtype
    model.to(device)
    optim = Optimiser.build(model, cfg, device, amp_dtype)
    result = TrainResult()
    step, start_epoch = _restore(model, optim, result, resume_state) if resume_state is not None else (0, 1)
    core = model
    model = distributed.wrap(model, device)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        t0 = time.perf_counter()
        train_loss, step = train_epoch(model, core, train_set, prior, optim, cfg, runtime, epoch, step)
        train_seconds = time.perf_counter() - t0
        valid = evaluate(core, valid_set, prior, cfg.batch_size * 2, device, floors=floors, amp_dtype=amp_dtype)
        if step >= cfg.warmup_steps:
            optim.plateau.step(valid["mse"])
        row = _history_row(epoch, train_loss, valid, optim, time.perf_counter() - t0, train_seconds)
        result.history.append(row)
        if result.keep_if_best(core, valid["mse"], epoch) and on_best is not None and distributed.is_main():
            on_best(core, epoch, row)
        if on_epoch is not None and distributed.is_main():
            on_epoch(result.history)
        if state_path is not None:
            _save_state(state_path, core, optim, epoch, step, result, state_meta)
        if cfg.progress and distributed.is_main():
            _print_epoch(epoch, row, valid)
    if result.best_state is not None:
        core.load_state_dict(result.best_state)
    return result


@dataclass
class Optimiser:
    """What a step changes besides the weights: AdamW, the plateau LR schedule, the fp16 scaler."""

    opt: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, model: torch.nn.Module, cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> Optimiser:
        scaler = torch.amp.GradScaler(device.type, enabled=(amp_dtype == torch.float16))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
        return cls(opt, plateau, scaler)


def _restore(model: torch.nn.Module, optim: Optimiser, result: TrainResult, state: dict[str, Any]) -> tuple[int, int]:
    """Load a training state (see `training_state`) into the model, optimiser, result and RNGs;
    returns (global step, first epoch to run)."""
    model.load_state_dict(state["model"])
    optim.opt.load_state_dict(state["optimizer"])
    optim.plateau.load_state_dict(state["plateau"])
    optim.scaler.load_state_dict(state["scaler"])
    result.history = list(state["history"])
    result.best_epoch, result.best_valid_mse = state["best_epoch"], state["best_valid_mse"]
    result.best_state = state["best_state"] or None
    rngs, rank = state["rng"], distributed.rank()
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return state["step"], state["epoch"] + 1


def train_epoch(
    model: torch.nn.Module, core: torch.nn.Module, train_set: CellDataset, prior: PriorMatrix | None,
    optim: Optimiser, cfg: TrainConfig, runtime: Runtime, epoch: int, step: int,
) -> tuple[float, int]:
    """One pass over the training cells in length-grouped global batches (stopping at
    cfg.max_steps): the mean training loss over its steps (all ranks) and the global step after
    it. `model` is what runs (DDP-wrapped in a process group), `core` the model itself."""
    rank, world = distributed.rank(), distributed.world_size()
    model.train()
    train_set.set_epoch(epoch)
    global_batches = length_grouped_batches(train_set.lengths(), cfg.batch_size * world, cfg.seed * 1000 + epoch, True)
    shards = [distributed.shard(b, rank, world) for b in global_batches]
    batches = DataLoader(train_set, batch_sampler=[idx for idx, _ in shards], collate_fn=collate, num_workers=cfg.num_workers)
    bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not (cfg.progress and rank == 0))
    loss_sum = torch.zeros((), dtype=torch.float64)  # sum over steps of this rank's share of the global loss
    n_steps = 0
    for (_, weight), batch in zip(shards, bar, strict=True):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        if step < cfg.warmup_steps:
            for group in optim.opt.param_groups:
                group["lr"] = cfg.lr * (step + 1) / cfg.warmup_steps
        loss = train_step(model, core, batch, weight, prior, optim, cfg, runtime)
        loss_sum += loss.detach().double().cpu() / world
        n_steps += 1
        step += 1
        bar.set_postfix(loss=f"{loss.item():.2f}")
    return (float(distributed.all_reduce_sum(loss_sum)) / n_steps if n_steps else math.nan), step


def train_step(
    model: torch.nn.Module, core: torch.nn.Module, batch: dict[str, torch.Tensor], weight: float,
    prior: PriorMatrix | None, optim: Optimiser, cfg: TrainConfig, runtime: Runtime,
) -> torch.Tensor:
    """One optimiser step on this rank's shard of a global batch (`weight`: the shard's share of
    it); returns the loss it stepped on. In a process group each global batch of world_size *
    batch_size cells is cut into one shard per rank, and every rank's loss is scaled so that the
    gradient is that of the masked loss over the global batch's masked positions (not a mean of
    per-rank means)."""
    device, amp_dtype, world = runtime.device, runtime.amp_dtype, distributed.world_size()
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    mask = batch["mask"].to(device)
    with ctx:
        out = forward_batch(model, batch, prior, device)
        loss = core.loss(out, batch["target_values"].to(device), mask)
    if world > 1:
        # mean over this shard's masked positions -> its share of the global mean; DDP
        # averages gradients over ranks, hence the factor world
        n_local = mask.sum().to(torch.float64) * weight
        n_global = distributed.all_reduce_sum(n_local)
        loss = loss * (n_local * world / n_global).to(loss.dtype)
    optim.opt.zero_grad(set_to_none=True)
    optim.scaler.scale(loss).backward()
    if cfg.grad_clip:
        optim.scaler.unscale_(optim.opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optim.scaler.step(optim.opt)
    optim.scaler.update()
    return loss


def _save_state(path: str | Path, core: torch.nn.Module, optim: Optimiser, epoch: int, step: int, result: TrainResult,
                meta: dict[str, Any] | None) -> None:
    """Rank 0 writes the training state after `epoch` (every rank's RNG streams gathered)."""
    rngs = distributed.all_gather_object(rng_state())
    if distributed.is_main():
        state = training_state(core, optim.opt, optim.plateau, optim.scaler, epoch, step, result, rngs)
        save_training_state(path, {**state, **(meta or {})})


def _history_row(epoch: int, train_loss: float, valid: EvalResult, optim: Optimiser, seconds: float,
                 train_seconds: float) -> dict[str, float]:
    """One epoch's line of metrics.csv: training loss, validation metrics, LR, wall time."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        **valid.flat("valid_", "valid_"),
        "lr": optim.opt.param_groups[0]["lr"],
        "seconds": seconds,
        "train_seconds": train_seconds,
    }


def _print_epoch(epoch: int, row: dict[str, float], valid: EvalResult) -> None:
    floor = "".join(f", {name} floor {m['mse']:.2f}" for name, m in valid.floors.items() if name != "const")
    floor = f" ({floor[2:]})" if floor else ""
    tqdm.write(f"epoch {epoch}: train loss {row['train_loss']:.2f}  valid MSE {valid['mse']:.2f}{floor}  Pearson {valid['pearson']:.3f}  {row['seconds']:.1f}s")


def training_state(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau,
    scaler: torch.amp.GradScaler,
    epoch: int,
    step: int,
    result: TrainResult,
    rngs: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything a run needs to continue exactly after `epoch`: weights, optimizer, plateau
    scheduler, GradScaler, epoch, global step (it drives the warm-up), every RNG stream (one per
    rank), history and best-so-far (with the best weights). Batch order and masks need no state:
    they are drawn from (seed, epoch[, cell])."""
    return {
        "epoch": epoch,
        "step": step,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "plateau": plateau.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rngs,
        "history": list(result.history),
        "best_epoch": result.best_epoch,
        "best_valid_mse": result.best_valid_mse,
        "best_state": {k: v.detach().cpu() for k, v in (result.best_state or {}).items()},
    }
