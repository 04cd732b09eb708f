"""One tokenizer: the same cells turned into sequences by training's `CellDataset` and by
inference's `Run` are the same sequences, batches and model inputs, and neither path depends on
batch size or order."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from bioformer import Run
from bioformer.data.tokenize import collate
from bioformer.training.loop import evaluate, model_inputs
from bioformer.training.run import run_training
from tests.conftest import H5AD, tiny_config


def _both_paths(run: Run, split: str = "test"):
    """(training items, inference sequences, inference cells) of the run's `split` cells."""
    data = run.reader.training_data()
    dataset = data.dataset(split)
    names = np.asarray(data.adata.obs_names)[dataset.cells]
    cells = run.prepare(ad.read_h5ad(H5AD)[names].copy(), quiet=True)
    items = [dataset[k] for k in range(len(dataset))]
    seqs = [run._sequence(*run._visible(cells, i)[:2]) for i in range(cells.n_cells)]
    return data, dataset, items, seqs, cells


def _assert_same_tokens(run: Run, items, seqs, fits: np.ndarray) -> None:
    assert fits.sum() >= 5
    for k in np.flatnonzero(fits):  # cells that fit max_len: no subsample, the very same sequence
        np.testing.assert_array_equal(items[k]["gene_ids"], seqs[k]["gene_ids"])
        np.testing.assert_array_equal(items[k]["target_values"], seqs[k]["values"])  # unmasked values
    for k in np.flatnonzero(~fits):  # longer cells: each path draws its own subsample of the cell's genes
        assert len(items[k]["gene_ids"]) == len(seqs[k]["gene_ids"]) == run.config.data.max_len


@pytest.mark.parametrize("name", ["bioformer", "scgpt"])
def test_training_and_inference_tokenize_a_cell_alike(runs, name):
    run = Run.load(runs[name], device="cpu")
    data, dataset, items, seqs, _ = _both_paths(run)
    fits = dataset.expressed_counts() <= run.max_genes
    assert (~fits).any()  # the fixture has cells longer than max_len
    _assert_same_tokens(run, items, seqs, fits)
    # padded batches and model inputs (prior codes included) of the cells that fit: equal
    keep = np.flatnonzero(fits)[:8]
    train_batch = collate([{**items[k], "values": items[k]["target_values"]} for k in keep], run.vocab.pad_id)
    idx, infer_batch = next(run._batches([seqs[k] for k in keep], len(keep)))
    infer_batch = {k: v[np.argsort(idx)] for k, v in infer_batch.items()}  # back in cell order
    a = model_inputs(run.model, train_batch, data.prior, run.device)
    b = run._model_inputs(infer_batch)
    for x, y in zip(a, b, strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    assert (a[3] is not None) == (name == "bioformer")
    # and the model's reading of them: training-path hidden states = inference embeddings
    with torch.no_grad():
        hidden = run.model.encode(*a)  # [B, L, c]
    emb = run.embed(run.prepare(ad.read_h5ad(H5AD)[np.asarray(data.adata.obs_names)[dataset.cells[keep]]].copy(), quiet=True))
    np.testing.assert_allclose(hidden[:, 0].numpy(), emb, atol=1e-5)


def test_include_zero_runs_share_the_same_columns_in_both_paths(tmp_path):
    cfg = tiny_config(tmp_path, data={"include_zero_genes": True, "max_len": 40})
    cfg.train.epochs = 1
    run = Run.load(run_training(cfg, quiet=True)[0], device="cpu")
    assert len(run.genes) > run.max_genes  # the shared columns are a draw, not every gene
    _, dataset, items, seqs, _ = _both_paths(run)
    _assert_same_tokens(run, items, seqs, np.ones(len(items), dtype=bool))


def test_training_path_evaluation_does_not_depend_on_batch_size(runs):
    """The training/evaluation path's invariance (inference's: tests/inference/test_run.py)."""
    run = Run.load(runs["bioformer"], device="cpu")
    data = run.reader.training_data()
    dataset = data.dataset("test")
    one, many = (evaluate(run.model, dataset, data.prior, batch_size=b) for b in (1, 64))
    assert one.counts["positions"] == many.counts["positions"] > 0
    for k in ("mse", "pearson"):
        assert one[k] == pytest.approx(many[k], abs=1e-5)
