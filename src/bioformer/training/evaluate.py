"""`bioformer evaluate`: re-score a finished run on its test split, on unseen cells of its data
set, or on another data set. The run is read through `RunReader`; nothing of the run is patched."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioformer.checks import check_device, check_inference_options
from bioformer.data.pipeline import PreparedData, prepare_data, role_prior
from bioformer.errors import BioformerError
from bioformer.training.floors import Floors
from bioformer.training.loop import auto_folds, evaluate
from bioformer.training.metrics import EvalResult
from bioformer.training.reader import RunReader
from bioformer.training.runtime import Runtime

log = logging.getLogger("bioformer")
N_BOOT = 200  # bootstrap resamples of the test cells


def test_folds(cfg) -> int:
    """The test split's mask folds: cfg.test_folds, or every position once (round(1 / mask_ratio))."""
    if cfg.test_folds is not None and cfg.test_folds < 1:
        raise BioformerError(f"test_folds must be >= 1 (1 = one mask_ratio mask), got {cfg.test_folds}")
    return cfg.test_folds or auto_folds(cfg.mask_ratio)


def evaluate_run(
    run: str | Path | RunReader,
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
    read here. Returns (result, info: data, scored, cells, n_cells, unknown_genes, ...)."""
    reader = run if isinstance(run, RunReader) else RunReader(run)
    cfg = reader.config()
    if data is None and (layer is not None or gene_column is not None):
        raise BioformerError("--layer and --gene-column describe the file given with --data; without --data the run's own test split is scored with the run's settings")
    if eval_cells is not None and eval_cells < 1:
        raise BioformerError(f"--eval-cells must be >= 1, got {eval_cells}")
    check_inference_options(folds=folds, max_folds=cfg.data.max_len)
    reader.heldout_edges()  # a damaged run fails before any data work
    own = data is None or (_same_source(data, cfg.data.data) and layer in (None, cfg.data.layer) and gene_column in (None, cfg.data.gene_column))
    if eval_cells and not own:
        raise BioformerError("--eval-cells scores unseen cells of the run's own data set; drop --data (or --data the run's own file)")
    model = model if model is not None else reader.model()  # before the data work: a damaged run fails fast
    info: dict[str, Any] = {"data": cfg.data.data if own else data, "unknown_genes": 0, "n_model_genes": len(reader.vocab().genes),
                            "floors_from": "the run's training cells"}
    if own and not eval_cells:
        prepared = reader.training_data(quiet)
        info.update(scored="test split", cells="its test split")
    else:
        prepared = _other_cells(reader, info, data, layer, gene_column, eval_cells, quiet)
    runtime = _runtime(cfg, quiet)
    model.to(runtime.device)
    dataset = prepared.dataset("test")
    result = evaluate(
        model, dataset, prepared.prior, cfg.train.batch_size * 2, runtime.device, floors=Floors.for_data(prepared),
        amp_dtype=runtime.amp_dtype, folds=folds or test_folds(cfg.data), bin_edges=prepared.adata.obsm.get("bin_edges"),
        roles=role_prior(cfg.data, reader.vocab().token_to_id, cfg.train.seed), n_boot=N_BOOT, seed=cfg.train.seed,
    )
    info["n_cells"] = len(dataset)
    return result, info


def _other_cells(reader: RunReader, info: dict[str, Any], data: str | None, layer: str | None, gene_column: str | None,
                 eval_cells: int | None, quiet: bool) -> PreparedData:
    """Cells other than the test split, read into memory on the run's genes, with the run's
    vocabulary and prior: `eval_cells` unseen cells of the run's data set (floors from its
    training cells), or every cell of `data` (floors from those cells: an in-sample reference).
    Scored with random masks (the run's prior-target graph belongs to its own cells)."""
    vocab, seed = reader.vocab(), reader.config().train.seed
    src = dict(data=data, layer=layer, gene_column=gene_column) if data is not None and not eval_cells else {}
    dcfg = dataclasses.replace(reader.data_config(), **src, max_cells=None, backed=False, mask_strategy="random")
    binned = prepare_data(dcfg, seed=seed, need_prior=False, gene_list=vocab.genes, quiet=quiet, heldout_edges=reader.heldout_edges()).adata
    info["unknown_genes"] = len(vocab.genes) - binned.n_vars
    all_cells = np.arange(binned.n_obs)
    cells, train_cells = all_cells, all_cells
    if eval_cells:
        split = reader.split()
        pos = pd.Index(binned.obs_names).get_indexer(split["obs_names"])
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
    if not quiet and info["unknown_genes"]:
        log.info("%d of the model's %d genes are not in %s (treated as unexpressed)", info["unknown_genes"], len(vocab.genes), dcfg.data)
    return PreparedData(binned, vocab, {"train": train_cells, "test": cells}, reader.prior(quiet), dcfg, seed)


def _runtime(cfg: Any, quiet: bool) -> Runtime:  # cfg: the run's RunConfig
    """The run's device, or the default one when this machine lacks it (a GPU run read on a laptop)."""
    train_cfg = cfg.train
    try:
        check_device(train_cfg.device)
        return Runtime.from_config(train_cfg, cfg.model)
    except BioformerError:
        if not quiet:
            log.info("the run was trained on --device %s, which this machine lacks: evaluating on the default device", train_cfg.device)
        return Runtime.from_config(dataclasses.replace(train_cfg, device="auto"), cfg.model)


def _same_source(data: str, run_data: str) -> bool:
    """Does `data` name the run's own data set (same built-in name or the same file)?"""
    if data == run_data:
        return True
    a, b = Path(data).expanduser(), Path(run_data).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()
