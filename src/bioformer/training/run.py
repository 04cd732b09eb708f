"""Train a model from a RunConfig into a run directory, written so that it can be trusted and reused.

Files: config.yaml (resolved), split.npz, vocab.json, heldout_edges.csv, metrics.csv (per epoch),
model.safetensors (best by validation MSE), last.pt (training state, every epoch), summary.json
(test metrics, floors, coverage, n_params, seed, versions, wall time, file checksums; written
last: it marks a finished run) and curves.png. Reading a run back: `bioformer.training.reader`.

Read top to bottom: `run_training` checks everything and owns the directory's life (create,
resume, clean up a run that failed before its first epoch); `_train_into` writes the inputs,
builds the model, trains (`bioformer.training.loop.train`), tests and summarises.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioformer.config import ModelConfig, RunConfig
from bioformer.data.load import check_data_file
from bioformer.data.pipeline import PreparedData, coverage_warning, prepare_data, role_prior
from bioformer.errors import BioformerError
from bioformer.models import build_model, count_parameters, model_class, uses_prior
from bioformer.training import distributed
from bioformer.training.checkpoint import (
    TRAINING_STATE,
    atomic_write_json,
    atomic_write_text,
    save_weights,
)
from bioformer.training.evaluate import N_BOOT, test_folds
from bioformer.training.floors import Floors
from bioformer.training.loop import TrainResult, evaluate, train
from bioformer.training.reader import RunReader
from bioformer.training.rundir import (
    HELDOUT_EDGES,
    check_out_dir,
    file_hashes,
    remove_run_files,
    write_marker,
)
from bioformer.training.runtime import Runtime, autocast_dtype
from bioformer.training.summary import floor_warning, plot_curves, versions, write_metrics_csv

log = logging.getLogger("bioformer")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_out(cfg: RunConfig) -> Path:
    name = cfg.name or cfg.model.model
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# options a resumed run may change: they do not change what the remaining epochs compute
RESUMABLE_CHANGES = {"train": {"epochs", "max_steps", "device", "num_threads", "num_workers", "progress"}}


def config_changes(old: dict[str, Any], new: dict[str, Any], allowed: dict[str, set[str]] | None = None) -> list[str]:
    """'section.key old -> new' for every config value that differs (except `allowed` ones); a
    family section compares field by field ('model.bioformer.d_z'). `old` may come from a run
    written before the family sections (flat model keys): it is read as config.yaml is."""
    allowed = allowed or {}
    if isinstance(old.get("model"), dict):
        try:
            old = {**old, "model": dataclasses.asdict(ModelConfig.of(**old["model"]))}
        except BioformerError:
            pass  # not a model section this version can read: compared as it is
    diffs = []
    for section in ("data", "model", "train"):
        a, b = _flat(old.get(section, {})), _flat(new.get(section, {}))
        diffs += [f"{section}.{k} {a.get(k)!r} -> {v!r}" for k, v in b.items() if k not in allowed.get(section, ()) and a.get(k) != v]
    return diffs


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A section's values with nested sections' keys joined by '.'."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def read_resume_state(reader: RunReader, cfg: RunConfig) -> dict[str, Any] | None:
    """The training state of the run (None when there is none), checked to belong to `cfg`."""
    # rank 0 reads, every rank gets it: the run directory need not be shared between machines
    state = distributed.broadcast_object(reader.training_state() if distributed.is_main() else None)
    if state is None:
        return None
    diffs = config_changes(state.get("config", {}), cfg.to_dict(), RESUMABLE_CHANGES)
    if diffs:
        raise BioformerError(f"{reader.dir} holds a run of another configuration ({'; '.join(diffs[:4])}); resume it with its own config.yaml or use a new --out")
    return state


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """A copy of `cfg` with file paths (data, prior files) made absolute, so that the saved
    config.yaml works from any working directory. Built-in names stay as they are."""
    from bioformer.data.datasets import DATASETS
    from bioformer.data.prior import BUILTIN_PRIORS

    def resolve(value: str | None) -> str | None:
        if value is None or value in DATASETS or value in BUILTIN_PRIORS or not Path(value).expanduser().is_file():
            return value
        return str(Path(value).expanduser().resolve())

    data = dataclasses.replace(cfg.data, data=resolve(cfg.data.data), prior=resolve(cfg.data.prior), gene_prior=resolve(cfg.data.gene_prior))
    return dataclasses.replace(cfg, data=data)


def prior_targets_summary(
    model: torch.nn.Module, data: PreparedData, cfg: RunConfig, floors: Floors, device: torch.device, amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Test metrics under prior-targets masks (one TF's targets masked per cell, TF visible),
    scored beside the run's own masks, as test_prior_targets_* / floor_prior_targets_*; empty
    without the real prior's graph or when the run already masks that way."""
    if data.target_graph is None or cfg.data.mask_strategy == "prior-targets":
        return {}
    test_set = data.dataset("test", mask_strategy="prior-targets")
    m = evaluate(model, test_set, data.prior, cfg.train.batch_size * 2, device, floors=floors, amp_dtype=amp_dtype)
    out = {f"test_prior_targets_{k}": v for k, v in m.model.items()}
    out.update({f"floor_prior_targets_{name}_{k}": v for name, metrics in m.floors.items() for k, v in metrics.items()})
    if "gene_mean" in m.floors:
        out["test_prior_targets_mse_vs_floor"] = m.ratio("gene_mean")
    out["test_prior_targets_cells_share"] = test_set.prior_target_share()
    return out


def run_training(
    cfg: RunConfig, data: PreparedData | None = None, quiet: bool = False, resume: bool = False, overwrite: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Train `cfg` end to end and write its run directory. Returns (run_dir, summary).

    Options, --out and the data are all checked before the run directory is created.
    `overwrite` replaces a run already in --out (else such an --out is refused). With `resume`,
    a run directory that holds a training state (last.pt, written after every epoch) continues
    from it exactly, and a finished one (summary.json) is returned as it is. A fresh run that
    fails before its first epoch finished removes what it created; later, the directory stays
    without summary.json (unfinished, resumable). Under torchrun every rank calls this; rank 0
    alone writes files and logs.
    """
    cfg.validate().resolved()  # defaults that depend on other sections (the zero head), before anything is built or saved
    model_class(cfg.model.model)  # a registered family (the registry, not the config, knows them)
    check_data_file(cfg.data.data)
    if resume and overwrite:
        raise BioformerError("--overwrite and --resume exclude each other: --resume continues the run, --overwrite starts it over")
    cfg = absolute_paths(cfg)
    device, started = distributed.setup(cfg.train.device)  # this rank's device under torchrun
    try:
        return _run_training(cfg, data, quiet or not distributed.is_main(), resume, overwrite, device)
    finally:
        if started:
            distributed.teardown()


def _run_training(cfg: RunConfig, data: PreparedData | None, quiet: bool, resume: bool, overwrite: bool, device: torch.device) -> tuple[Path, dict[str, Any]]:
    t_start = time.perf_counter()
    test_folds(cfg.data)  # checked before anything is written
    main = distributed.is_main()
    out = Path(distributed.broadcast_object(str(Path(cfg.out) if cfg.out else default_out(cfg))))
    reader = RunReader(out)
    if resume and distributed.broadcast_object(reader.is_finished):
        if not quiet:
            log.info("%s is finished; nothing to resume", out)
        return out, distributed.broadcast_object(reader.summary() if main else None)
    if main and not resume:
        check_out_dir(out, overwrite)
    resume_state = read_resume_state(reader, cfg) if resume else None
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    needs_prior = uses_prior(cfg.model, cfg.data.prior)
    if data is None:
        data = prepare_data(cfg.data, seed=cfg.train.seed, need_prior=needs_prior, quiet=quiet)
    coverage = data.coverage if needs_prior else {}
    if not quiet:
        _log_coverage(coverage)
    if resume_state is not None and main:
        old_split = reader.split()
        if any(not np.array_equal(old_split[k], v) for k, v in data.split.items()):
            raise BioformerError(f"the data of {out} gave another train/valid/test split than when the run started; was the data set changed?")
        if not quiet:
            log.info("resuming %s after epoch %d (step %d)", out, resume_state["epoch"], resume_state["step"])
    created = _open_out(out, main, resume)
    runtime = Runtime(device, autocast_dtype(cfg.train.amp, device, cfg.model))
    try:
        summary = _train_into(cfg, data, out, runtime, coverage, quiet, t_start, resume_state, main)
    except Exception:
        # never leave a directory that looks like a run for a model that did not train; once an
        # epoch finished (last.pt), keep it: it is unfinished (no summary.json) and resumable
        if main and not resume and not (out / TRAINING_STATE).exists():
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                remove_run_files(out)
        raise
    if main and not quiet and (w := floor_warning(summary)) is not None:
        log.warning("warning: " + w)
    return out, summary


def _log_coverage(c: dict[str, Any]) -> None:
    """How much of the prior reaches the model (nothing without a prior)."""
    if not c:
        return
    log.info(
        "prior coverage: %d genes, %d TFs, %d edges (+%d / -%d / unsigned %d); per cell: median %.1f, mean %.1f edges, %.0f%% of cells with none",
        c["genes"], c["tfs"], c["edges"], c["edges_activating"], c["edges_repressing"], c["edges_unsigned"],
        c["edges_per_cell_median"], c["edges_per_cell_mean"], 100 * c["cells_without_edges_frac"],
    )
    if "heldout_edges_in_prior" in c:
        log.info("held-out (GRN truth) edges in the model's prior: %d (must be 0)", c["heldout_edges_in_prior"])
    if (w := coverage_warning(c)) is not None:
        log.warning(w)


def _open_out(out: Path, main: bool, resume: bool) -> bool:
    """Create (or, for --overwrite, empty) the run directory and mark it; True when created."""
    created = not out.exists()
    if main:
        if not created and not resume:  # --overwrite (of a marked run): its files go only now that the new one can start
            remove_run_files(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_marker(out)
        except OSError as e:
            raise BioformerError(f"cannot create --out {out} ({e.strerror}); choose another --out") from None
    return created


def _write_inputs(out: Path, cfg: RunConfig, data: PreparedData) -> None:
    """What defines the run before training: its config, split, held-out edges and vocabulary."""
    cfg.save(out / "config.yaml")
    np.savez(out / "split.npz", **data.split, obs_names=np.asarray(data.adata.obs_names, dtype=str))
    if data.heldout_edges is not None:
        atomic_write_text(out / HELDOUT_EDGES, data.heldout_edges.to_csv(index=False))
    atomic_write_json(out / "vocab.json", {"tokens": data.vocab.tokens, "genes": list(data.adata.var_names)})


def _train_into(
    cfg: RunConfig, data: PreparedData, out: Path, runtime: Runtime, coverage: dict[str, Any],
    quiet: bool, t_start: float, resume_state: dict[str, Any] | None, main: bool,
) -> dict[str, Any]:
    """Everything after the checks: write the run files, train, test, summarise."""
    seed = cfg.train.seed
    if main:
        _write_inputs(out, cfg, data)
    seed_everything(seed)
    model = build_model(cfg.model, len(data.vocab), data.vocab.pad_id, use_prior=uses_prior(cfg.model, cfg.data.prior))
    floors = Floors.for_data(data)
    model.start_at(floors.const)  # the same start for every arm (resume then loads its weights)
    meta = {"config": json.dumps(cfg.to_dict())}
    train_set, valid_set, test_set = (data.dataset(s) for s in ("train", "valid", "test"))
    if not quiet:
        log.info("%s: %s parameters; %d train / %d valid / %d test cells; run dir %s", cfg.model.model, f"{count_parameters(model):,}",
                 len(train_set), len(valid_set), len(test_set), out)
    result = train(
        model, train_set, valid_set, data.prior, cfg.train, runtime, floors=floors,
        on_best=lambda m, epoch, row: save_weights(m, out / "model.safetensors", metadata={**meta, "epoch": str(epoch)}),
        on_epoch=lambda history: write_metrics_csv(out / "metrics.csv", history),
        state_path=out / TRAINING_STATE, resume_state=resume_state, state_meta={"config": cfg.to_dict()},
    )
    test = evaluate(
        model, test_set, data.prior, cfg.train.batch_size * 2, runtime.device, floors=floors, amp_dtype=runtime.amp_dtype,
        folds=test_folds(cfg.data), bin_edges=data.adata.obsm.get("bin_edges"), roles=role_prior(cfg.data, data.vocab.token_to_id, seed),
        n_boot=N_BOOT, seed=seed,
    )
    beside = prior_targets_summary(model, data, cfg, floors, runtime.device, runtime.amp_dtype)
    # "test" and its flat copy for tables (report.py's results.csv), the prior-target masks beside
    summary = {**_summary(cfg, data, model, result, coverage, runtime, t_start), "test": test.to_dict(), **test.flat("test_"), **beside}
    if not main:
        return summary
    summary["files"] = file_hashes(out)  # sha256 of the files that define the run (checked on use)
    if result.history:
        plot_curves(out / "curves.png", result.history, f"{summary['name']} on {Path(cfg.data.data).name} (seed {seed})")
    atomic_write_json(out / "summary.json", summary)  # last: its presence marks a finished run
    return summary


def _summary(cfg: RunConfig, data: PreparedData, model: torch.nn.Module, result: TrainResult, coverage: dict[str, Any],
             runtime: Runtime, t_start: float) -> dict[str, Any]:
    """summary.json's description of the run (the test metrics are added beside it)."""
    return {
        "name": cfg.name or cfg.model.model,
        "model": cfg.model.model,
        "uses_prior": uses_prior(cfg.model, cfg.data.prior),
        "n_params": count_parameters(model),
        "seed": cfg.train.seed,
        "epochs": cfg.train.epochs,
        "best_epoch": result.best_epoch,
        "best_valid_mse": result.best_valid_mse,
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in result.history])) if result.history else None,
        "wall_seconds": time.perf_counter() - t_start,
        "n_cells": {k: int(len(v)) for k, v in data.split.items()},
        "n_genes": int(data.adata.n_vars),
        "vocab_size": len(data.vocab),
        "prior_coverage": coverage,
        "device": str(runtime.device),
        "autocast": str(runtime.amp_dtype).removeprefix("torch.") if runtime.amp_dtype is not None else "off",  # --amp as resolved
        "versions": versions(),
    }
