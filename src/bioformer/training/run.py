"""A run directory: train a model from a RunConfig and write everything needed to trust and reuse it.

Files: config.yaml (resolved), split.npz, vocab.json, metrics.csv (per epoch),
model.safetensors (best by validation MSE), summary.json (test metrics, floors, coverage,
n_params, seed, versions, wall time) and curves.png.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import platform
import random
import shutil
import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bioformer.config import RunConfig, check_device, check_inference_options
from bioformer.data.load import check_data_file
from bioformer.data.pipeline import PreparedData, coverage_warning, prepare_data, role_prior
from bioformer.errors import BioformerError
from bioformer.models import build_model, count_parameters, model_class, uses_prior
from bioformer.training import distributed
from bioformer.training.checkpoint import (
    TRAINING_STATE,
    atomic_write_json,
    atomic_write_text,
    load_training_state,
    load_weights,
    save_figure,
    save_weights,
)
from bioformer.training.floors import Floors
from bioformer.training.loop import Runtime, auto_folds, autocast_dtype, evaluate, train
from bioformer.training.metrics import FLOOR_LABELS, EvalResult
from bioformer.training.rundir import (
    HELDOUT_EDGES,
    check_heldout_edges,
    check_out_dir,
    file_hashes,
    read_summary,
    remove_run_files,
    write_marker,
)

log = logging.getLogger("bioformer")
METRICS = ("mse", "mre", "mae", "pearson")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("bioformer", "torch", "numpy", "scanpy", "anndata", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_out(cfg: RunConfig) -> Path:
    name = cfg.name or cfg.model.model
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_curves(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Train loss and validation MSE per epoch with the per-gene floor; validation Pearson."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [r["train_loss"] for r in rows], "o-", label="train loss (masked MSE)")
    ax1.plot(ep, [r["valid_mse"] for r in rows], "o-", label="valid MSE")
    styles = {"cell": ("C3", "-."), "gene_mean": ("k", "--"), "const": ("grey", ":")}
    for name, (color, ls) in styles.items():
        if f"valid_floor_{name}_mse" in rows[0]:
            ax1.axhline(rows[0][f"valid_floor_{name}_mse"], color=color, ls=ls, lw=1, label=FLOOR_LABELS[name])
    if "valid_floor_const_mse" in rows[0]:  # keep the floors readable: early epochs may be far above
        lows = [r["valid_mse"] for r in rows] + [rows[0].get(f"valid_floor_{n}_mse", math.inf) for n in ("gene_mean", "cell")]
        ax1.set_ylim(0.9 * min(lows), 1.4 * rows[0]["valid_floor_const_mse"])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("MSE (bins²)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize=8)
    # per-gene Pearson across cells: gene identity removed (the per-gene floor has none)
    key = "valid_pearson_gene" if "valid_pearson_gene" in rows[0] else "valid_pearson"
    ax2.plot(ep, [r[key] for r in rows], "o-", color="C2", label="model")
    if f"valid_floor_cell_{key[6:]}" in rows[0]:
        ax2.axhline(rows[0][f"valid_floor_cell_{key[6:]}"], color="C3", ls="-.", lw=1, label="cell-aware floor")
    ax2.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("valid per-gene Pearson r (median)" if key == "valid_pearson_gene" else "valid Pearson r")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


TABLE_COLUMNS = (("mse", "MSE"), ("mse_log", "MSE log"), ("pearson_gene", "r gene"), ("spearman_cell", "rho cell"), ("pearson", "r pooled"), ("mre", "MRE"))


def format_test_table(result: EvalResult) -> str:
    """Model vs floors for the terminal: one row each, 95% intervals, and the verdict against
    the cell-aware and non-linear floors (a model that does not beat them shows no gene-gene skill)."""
    cols = [(k, label) for k, label in TABLE_COLUMNS if k in result.model]
    lines = [f"{'':<22}" + "".join(f"{label:>10}" for _, label in cols)]
    rows = [("model (test)", result.model)] + [(FLOOR_LABELS[n], result.floors[n]) for n in ("tree", "cell", "gene_mean", "const") if n in result.floors]
    for label, m in rows:
        lines.append(f"{label:<22}" + "".join(f"{m.get(k, math.nan):>10.3f}" for k, _ in cols))
    ci = [f"{k} [{result.ci[k][0]:.3f}, {result.ci[k][1]:.3f}]" for k in ("mse", "pearson_gene", "spearman_cell") if k in result.ci]
    if ci:
        lines.append("model 95% CI over cells: " + ", ".join(ci))
    c = result.counts
    if c:
        lines.append(f"scored: {c.get('positions', 0):,} masked positions in {c.get('cells', 0):,} cells ({c.get('folds', 1)} mask fold(s)); r gene = median per-gene Pearson across cells, rho cell = median per-cell Spearman")
    if "gene_mean" in result.floors:
        lines.append(f"MSE / per-gene floor: {result.ratio('gene_mean'):.3f} (< 1 beats the floor)")
    for name in ("cell", "tree"):
        if name not in result.floors:
            continue
        verdict = {True: "beats it (95% CI of the difference below 0)",
                   False: "does NOT beat it: no evidence of learnt gene-gene structure",
                   None: "no interval"}[result.beats(name)]
        lo_hi = result.ci.get(f"mse_minus_floor_{name}")
        diff = f", model - floor {lo_hi[0]:+.2f} to {lo_hi[1]:+.2f}" if lo_hi else ""
        lines.append(f"MSE / {FLOOR_LABELS[name]}: {result.ratio(name):.3f}{diff}; {verdict}")
    if "mse_role_tf" in result.model:
        parts = [f"{r} {result.model[f'mse_role_{r}']:.2f} (n={c.get(f'role_{r}', 0)}, cell floor {result.floors.get('cell', {}).get(f'mse_role_{r}', math.nan):.2f})" for r in ("tf", "target", "neither")]
        lines.append("MSE by the masked gene's role in the prior: " + "; ".join(parts))
    return "\n".join(lines)


N_BOOT = 200  # bootstrap resamples of the test cells


def test_folds(cfg) -> int:
    """The test split's mask folds: cfg.test_folds, or every position once (round(1 / mask_ratio))."""
    if cfg.test_folds is not None and cfg.test_folds < 1:
        raise BioformerError(f"test_folds must be >= 1 (1 = one mask_ratio mask), got {cfg.test_folds}")
    return cfg.test_folds or auto_folds(cfg.mask_ratio)


# options a resumed run may change: they do not change what the remaining epochs compute
RESUMABLE_CHANGES = {"train": {"epochs", "max_steps", "device", "num_threads", "num_workers", "progress"}}


def config_changes(old: dict[str, Any], new: dict[str, Any], allowed: dict[str, set[str]] | None = None) -> list[str]:
    """'section.key old -> new' for every config value that differs (except `allowed` ones)."""
    allowed = allowed or {}
    diffs = []
    for section in ("data", "model", "train"):
        a, b = old.get(section, {}), new.get(section, {})
        diffs += [f"{section}.{k} {a.get(k)!r} -> {v!r}" for k, v in b.items() if k not in allowed.get(section, ()) and a.get(k) != v]
    return diffs


def read_resume_state(out: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The training state in `out` (None when there is none), checked to belong to `cfg`."""
    path = out / TRAINING_STATE
    # rank 0 reads, every rank gets it: the run directory need not be shared between machines
    state = load_training_state(path) if (distributed.is_main() and path.exists()) else None
    state = distributed.broadcast_object(state)
    if state is None:
        return None
    diffs = config_changes(state.get("config", {}), cfg.to_dict(), RESUMABLE_CHANGES)
    if diffs:
        raise BioformerError(f"{out} holds a run of another configuration ({'; '.join(diffs[:4])}); resume it with its own config.yaml or use a new --out")
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


def floor_warning(summary: dict[str, Any]) -> str | None:
    """A warning when the test MSE does not beat the per-gene-mean floor, or (with 95% confidence)
    the cell-aware floor (None when it does)."""
    ratio = summary.get("test_mse_vs_floor")
    if ratio is None or ratio < 1.0:
        hi = summary.get("test_ci_mse_minus_floor_cell_high")
        if hi is None or hi < 0:
            return None
        return (
            f"the model did not beat the cell-aware floor on the test split (MSE {summary['test_mse']:.3f} vs "
            f"{summary['floor_cell_mse']:.3f}; 95% CI of the difference reaches {hi:+.3f}): per-cell statistics of its "
            "input explain as much, so it shows no gene-gene structure yet"
        )
    return (
        f"the model did not beat the per-gene-mean floor on the test split (MSE {summary['test_mse']:.3f} vs "
        f"{summary['floor_gene_mean_mse']:.3f}, ratio {ratio:.3f}): it predicts no better than each gene's training "
        f"mean; train for more than {summary['epochs']} epochs or on more cells before reading its numbers"
    )


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
    cfg.validate()
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
    if resume and distributed.broadcast_object((out / "summary.json").exists()):
        if not quiet:
            log.info("%s is finished; nothing to resume", out)
        return out, distributed.broadcast_object(json.loads((out / "summary.json").read_text()) if main else None)
    if main and not resume:
        check_out_dir(out, overwrite)
    resume_state = read_resume_state(out, cfg) if resume else None
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed = cfg.train.seed
    needs_prior = uses_prior(cfg.model, cfg.data.prior)
    runtime = Runtime(device, autocast_dtype(cfg.train.amp, device))
    if data is None:
        data = prepare_data(cfg.data, seed=seed, need_prior=needs_prior, quiet=quiet)
    coverage = data.coverage if needs_prior else {}
    if coverage and not quiet:
        c = coverage
        log.info(
            "prior coverage: %d genes, %d TFs, %d edges (+%d / -%d / unsigned %d); per cell: median %.1f, mean %.1f edges, %.0f%% of cells with none",
            c["genes"], c["tfs"], c["edges"], c["edges_activating"], c["edges_repressing"], c["edges_unsigned"],
            c["edges_per_cell_median"], c["edges_per_cell_mean"], 100 * c["cells_without_edges_frac"],
        )
        if "heldout_edges_in_prior" in c:
            log.info("held-out (GRN truth) edges in the model's prior: %d (must be 0)", c["heldout_edges_in_prior"])
        if (w := coverage_warning(c)) is not None:
            log.warning(w)
    if resume_state is not None and main:
        old_split = np.load(out / "split.npz")
        if any(not np.array_equal(old_split[k], v) for k, v in data.split.items()):
            raise BioformerError(f"the data of {out} gave another train/valid/test split than when the run started; was the data set changed?")
        if not quiet:
            log.info("resuming %s after epoch %d (step %d)", out, resume_state["epoch"], resume_state["step"])
    created = not out.exists()
    if main:
        if not created and not resume:  # --overwrite (of a marked run): its files go only now that the new one can start
            remove_run_files(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_marker(out)
        except OSError as e:
            raise BioformerError(f"cannot create --out {out} ({e.strerror}); choose another --out") from None
    try:
        summary = _train_into(cfg, data, out, runtime, needs_prior, coverage, quiet, t_start, resume_state, main)
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


def _train_into(
    cfg: RunConfig, data: PreparedData, out: Path, runtime: Runtime, needs_prior: bool, coverage: dict[str, Any],
    quiet: bool, t_start: float, resume_state: dict[str, Any] | None, main: bool,
) -> dict[str, Any]:
    """Everything after the checks: write the run files, train, test, summarise."""
    seed = cfg.train.seed
    if main:
        cfg.save(out / "config.yaml")
        np.savez(out / "split.npz", **data.split, obs_names=np.asarray(data.adata.obs_names, dtype=str))
        if data.heldout_edges is not None:
            atomic_write_text(out / HELDOUT_EDGES, data.heldout_edges.to_csv(index=False))
        atomic_write_json(out / "vocab.json", {"tokens": data.vocab.tokens, "genes": list(data.adata.var_names)})

    seed_everything(seed)
    model = build_model(cfg.model, len(data.vocab), data.vocab.pad_id, use_prior=needs_prior)
    n_params = count_parameters(model)
    floors = Floors.for_data(data)
    model.start_at(floors.const)  # the same start for every arm (resume then loads its weights)
    meta = {"config": json.dumps(cfg.to_dict())}

    def on_best(m, epoch, row):
        save_weights(m, out / "model.safetensors", metadata={**meta, "epoch": str(epoch)})

    train_set, valid_set, test_set = (data.dataset(s) for s in ("train", "valid", "test"))
    if not quiet:
        log.info("%s: %s parameters; %d train / %d valid / %d test cells; run dir %s", cfg.model.model, f"{n_params:,}", len(train_set), len(valid_set), len(test_set), out)
    result = train(
        model, train_set, valid_set, data.prior, cfg.train, runtime, on_best=on_best, floors=floors,
        on_epoch=lambda history: write_metrics_csv(out / "metrics.csv", history),
        state_path=out / TRAINING_STATE, resume_state=resume_state, state_meta={"config": cfg.to_dict()},
    )

    test = evaluate(
        model, test_set, data.prior, cfg.train.batch_size * 2, runtime.device, floors=floors, amp_dtype=runtime.amp_dtype,
        folds=test_folds(cfg.data), bin_edges=data.adata.obsm.get("bin_edges"), roles=role_prior(cfg.data, data.vocab.token_to_id, seed), n_boot=N_BOOT, seed=seed,
    )
    beside = prior_targets_summary(model, data, cfg, floors, runtime.device, runtime.amp_dtype)
    summary: dict[str, Any] = {
        "name": cfg.name or cfg.model.model,
        "model": cfg.model.model,
        "uses_prior": needs_prior,
        "test": test.to_dict(),
        **test.flat("test_"),  # flat copy of "test" for tables (report.py's results.csv)
        **beside,
        "n_params": n_params,
        "seed": seed,
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
        "versions": versions(),
    }
    if main:
        summary["files"] = file_hashes(out)  # sha256 of the files that define the run (checked on use)
    if not main:
        return summary
    if result.history:
        plot_curves(out / "curves.png", result.history, f"{summary['name']} on {Path(cfg.data.data).name} (seed {seed})")
    atomic_write_json(out / "summary.json", summary)  # last: its presence marks a finished run
    return summary


def load_run(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A finished run's resolved config and vocabulary (one BioformerError if anything is missing or damaged)."""
    run_dir = Path(run_dir)
    missing = [f for f in ("config.yaml", "vocab.json", "model.safetensors") if not (run_dir / f).is_file()]
    if missing:
        raise BioformerError(
            f"{run_dir} is not a finished run directory (missing {', '.join(missing)}); pass a directory written by bioformer train"
        )
    cfg = RunConfig.load(run_dir / "config.yaml")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    if "value_scale" not in (saved.get("model") or {}):  # trained before the field: raw bins
        cfg.model = dataclasses.replace(cfg.model, value_scale=1.0)
    try:
        cfg.validate(check_hardware=False)
    except BioformerError as e:
        raise BioformerError(f"{run_dir / 'config.yaml'} is damaged: {e}") from None
    try:
        vocab = json.loads((run_dir / "vocab.json").read_text())
        if not isinstance(vocab, dict) or not isinstance(vocab.get("tokens"), list) or not isinstance(vocab.get("genes"), list):
            raise ValueError("needs lists 'tokens' and 'genes'")
    except (ValueError, UnicodeDecodeError) as e:
        raise BioformerError(f"{run_dir / 'vocab.json'} is damaged ({e}); retrain the run or restore the file") from None
    return cfg, vocab


def load_run_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """The run's best weights into `model`; a truncated file or one that does not match
    config.yaml is one BioformerError."""
    path = run_dir / "model.safetensors"
    try:
        load_weights(model, path)
    except RuntimeError as e:  # load_state_dict: missing / unexpected keys, shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Error(s) in loading")]
        first = (lines[0] if lines else type(e).__name__)[:200]
        raise BioformerError(f"{path} does not match {run_dir / 'config.yaml'} ({first}); restore the config the run was trained with") from None
    except Exception as e:  # safetensors raises its own error types for truncated / non-safetensors files
        raise BioformerError(f"{path} is damaged and cannot be read ({type(e).__name__}); retrain the run") from None


def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    layer: str | None = None,
    gene_column: str | None = None,
    quiet: bool = False,
    eval_cells: int | None = None,
    folds: int | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[EvalResult, dict[str, Any]]:
    """Reload a run's best checkpoint and score it: on its test split (same data, seed and folds,
    so the numbers equal summary.json's); with `eval_cells`, on that many cells of the run's data
    set that were never in its (subsampled) cells; or on all cells of another data set `data`
    with genes mapped by name. `model`: the run's model already loaded (`Run.evaluate`), else it is
    built and loaded here. Returns (result, info: data, scored, cells, n_cells, unknown_genes, ...)."""
    import pandas as pd

    from bioformer.data.tokenize import CellDataset, GeneVocab

    run_dir = Path(run_dir)
    cfg, vocab_info = load_run(run_dir)
    vocab = GeneVocab(vocab_info["tokens"])
    needs_prior = uses_prior(cfg.model, cfg.data.prior)
    seed = cfg.train.seed
    if data is None and (layer is not None or gene_column is not None):
        raise BioformerError("--layer and --gene-column describe the file given with --data; without --data the run's own test split is scored with the run's settings")
    if eval_cells is not None and eval_cells < 1:
        raise BioformerError(f"--eval-cells must be >= 1, got {eval_cells}")
    check_inference_options(folds=folds, max_folds=cfg.data.max_len)
    heldout = pd.read_csv(run_dir / HELDOUT_EDGES) if check_heldout_edges(run_dir, read_summary(run_dir)) else None
    if heldout is None:  # trained with every prior edge (a run from before held-out edges, or frac 0)
        cfg.data = dataclasses.replace(cfg.data, heldout_edge_frac=0.0)
    own = data is None or (
        _same_source(data, cfg.data.data) and layer in (None, cfg.data.layer) and gene_column in (None, cfg.data.gene_column)
    )
    same = own and not eval_cells
    if model is None:
        model = build_model(cfg.model, len(vocab), vocab.pad_id, use_prior=needs_prior)
        load_run_weights(model, run_dir)  # before the data work: a damaged run fails fast
    info: dict[str, Any] = {"data": cfg.data.data if own else data, "unknown_genes": 0, "n_model_genes": len(vocab.genes), "floors_from": "the run's training cells"}
    if same:
        prepared = prepare_data(cfg.data, seed=seed, need_prior=needs_prior, gene_list=vocab.genes, quiet=quiet, heldout_edges=heldout)
        if list(prepared.adata.var_names) != vocab.genes:
            raise BioformerError("re-preprocessing the run's data gave different genes; was the data set changed?")
        dataset = prepared.dataset("test")
        train_cells = prepared.split["train"]
        info.update(scored="test split", cells="its test split")
    else:
        if eval_cells and not own:
            raise BioformerError("--eval-cells scores unseen cells of the run's own data set; drop --data (or --data the run's own file)")
        # other cells are read into memory (scoring all, or --eval-cells, of them)
        src = dict(data=cfg.data.data, layer=cfg.data.layer, gene_column=cfg.data.gene_column) if own else dict(data=data, layer=layer, gene_column=gene_column)
        dcfg = dataclasses.replace(cfg.data, **src, max_cells=None, backed=False)
        prepared = prepare_data(dcfg, seed=seed, need_prior=needs_prior, gene_list=vocab.genes, quiet=quiet, heldout_edges=heldout)
        t2i = vocab.token_to_id
        info["unknown_genes"] = len(vocab.genes) - prepared.adata.n_vars
        prepared.vocab = vocab
        if needs_prior:
            from bioformer.data.pipeline import edges_for_genes
            from bioformer.data.prior import PriorMatrix

            prepared.prior = PriorMatrix.from_edges(edges_for_genes(cfg.data.prior, t2i, seed, quiet, heldout=heldout), t2i)
        all_cells = np.arange(prepared.adata.n_obs)
        cells, train_cells = all_cells, all_cells
        if eval_cells:
            split = np.load(run_dir / "split.npz", allow_pickle=False)
            pos = pd.Index(prepared.adata.obs_names).get_indexer(split["obs_names"])
            if (pos < 0).any():
                raise BioformerError(f"{int((pos < 0).sum())} of the run's cells are not in {dcfg.data}; --eval-cells needs the run's own data set")
            unseen = np.setdiff1d(all_cells, pos)
            if unseen.size == 0:
                raise BioformerError(f"every cell of {dcfg.data} was in the run's subsample; --eval-cells needs a run trained with --max-cells")
            n = min(int(eval_cells), unseen.size)
            cells = np.sort(np.random.default_rng([seed, 29]).choice(unseen, size=n, replace=False))
            train_cells = pos[split["train"]]
            info.update(scored="unseen cells", cells=f"{n} cells never in the run's subsample")
        else:
            info.update(scored="all cells", cells=f"all {len(cells)} cells", floors_from="this data set (in-sample reference)")
        c = dcfg
        dataset = CellDataset(prepared.adata.X, prepared.gene_token_ids, cells, seed, c.max_len, c.include_zero_genes, c.append_cls, c.mask_ratio, vocab.cls_id, fixed_masks=True)
        if not quiet and info["unknown_genes"]:
            log.info("%d of the model's %d genes are not in %s (treated as unexpressed)", info["unknown_genes"], len(vocab.genes), dcfg.data)
    try:
        check_device(cfg.train.device)
        runtime = Runtime.from_config(cfg.train)
    except BioformerError:  # trained on a device this machine lacks (a GPU run read on a laptop)
        if not quiet:
            log.info("the run was trained on --device %s, which this machine lacks: evaluating on the default device", cfg.train.device)
        runtime = Runtime.from_config(dataclasses.replace(cfg.train, device="auto"))
    model.to(runtime.device)
    c = cfg.data
    if same:  # the run's own training cells (backed data too)
        floors = Floors.for_data(prepared)
    else:
        train_set = CellDataset(prepared.adata.X, prepared.gene_token_ids, train_cells, seed, c.max_len, c.include_zero_genes, c.append_cls, c.mask_ratio, vocab.cls_id)
        floors = Floors.fit(prepared.adata.X, prepared.gene_token_ids, train_cells, len(vocab), c.include_zero_genes, train_set, c.n_bins)
    result = evaluate(
        model, dataset, prepared.prior, cfg.train.batch_size * 2, runtime.device, floors=floors, amp_dtype=runtime.amp_dtype,
        folds=folds or test_folds(cfg.data), bin_edges=prepared.adata.obsm.get("bin_edges"), roles=role_prior(cfg.data, vocab.token_to_id, seed),
        n_boot=N_BOOT, seed=seed,
    )
    info["n_cells"] = len(dataset)
    return result, info


def _same_source(data: str, run_data: str) -> bool:
    """Does `data` name the run's own data set (same built-in name or the same file)?"""
    if data == run_data:
        return True
    a, b = Path(data).expanduser(), Path(run_data).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()
