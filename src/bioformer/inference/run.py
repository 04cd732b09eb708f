"""`Run`: a finished run directory as one object that embeds, imputes and reads gene pairs.

    run = Run.load("runs/bioformer-...")
    emb = run.embed(adata)                 # [n_cells, d_model]
    imp = run.impute(adata)                # [n_cells, n_run_genes], log-normalised
    pairs = run.pair_scores(adata)         # PairScores over the run's genes

Any AnnData is mapped onto the run's genes by name and preprocessed exactly as training did
(`prepare`). Inference is deterministic per cell: a cell's sequence (and the subsample of a cell
with more genes than fit `max_len`) is drawn from the run's seed and the cell's own content, never
from its position or its batch, and everything runs in float32 without dropout, so results do not
depend on batch size, batch composition, cell order or thread count (up to float rounding).
Memory is bounded by the batch: cells are processed in chunks, and the input matrix stays sparse.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from bioformer.config import RunConfig, check_device, check_inference_options
from bioformer.data.load import as_checked_csr
from bioformer.data.pipeline import edges_for_genes
from bioformer.data.preprocess import bins_to_values, preprocess
from bioformer.data.prior import PriorMatrix
from bioformer.data.tokenize import (
    CLS_VALUE,
    EVAL_EPOCH_KEY,
    MASK_VALUE,
    PAD_VALUE,
    GeneVocab,
)
from bioformer.errors import BioformerError
from bioformer.inference.readouts import POOLINGS, PairAccumulator, PairScores, pool
from bioformer.models import build_model, uses_prior
from bioformer.training.loop import resolve_device
from bioformer.training.metrics import EvalResult
from bioformer.training.run import evaluate_run, load_run, load_run_weights
from bioformer.training.rundir import HELDOUT_EDGES, check_heldout_edges

log = logging.getLogger("bioformer")

RUN_FILES = ("config.yaml", "vocab.json", "model.safetensors", "summary.json")


@dataclass
class PreparedCells:
    """Cells of any AnnData on a run's genes: `binned` [n_cells, n_run_genes] CSR of bins (0 = not
    expressed; run genes missing from the input are all-zero columns), `bin_edges` [n_cells, n_bins]
    per-cell edges to map bins back to log-normalised values."""

    binned: sp.csr_matrix
    bin_edges: np.ndarray
    obs_names: pd.Index
    input_genes: pd.Index  # the input's gene names (after gene_column)
    input_to_run: np.ndarray  # [n_input_genes] run gene column of each input gene, -1 if none
    n_missing: int  # run genes absent from the input
    var_to_run: np.ndarray | None = None  # [adata.n_vars] run column of each of the AnnData's own genes (-1: none),
    # when the matrix read (layer "raw") has other genes than adata.var; None: the same as input_to_run

    @property
    def output_to_run(self) -> np.ndarray:
        """Run column of each gene of the AnnData that outputs are written into."""
        return self.input_to_run if self.var_to_run is None else self.var_to_run

    @property
    def n_cells(self) -> int:
        return self.binned.shape[0]


@dataclass
class Imputation:
    """Predictions for every run gene of every cell ([n_cells, n_run_genes] each)."""

    genes: list[str]
    bins: np.ndarray  # predicted bin, clipped to [0, n_bins - 1]
    expression: np.ndarray  # the bin mapped back to log-normalised expression via the cell's edges
    zero_prob: np.ndarray | None  # P(value is 0) from the zero head, when the model has one


def _read_run_file(path: Path, reader):
    try:
        return reader(path)
    except BioformerError:
        raise
    except Exception as e:
        raise BioformerError(f"{path} is damaged ({type(e).__name__}: {e}); retrain or restore the run directory") from None


def matrix_of(adata: ad.AnnData, layer: str | None, gene_column: str | None) -> tuple[sp.csr_matrix, pd.Index]:
    """(expression matrix as CSR float32, gene names) of an in-memory AnnData, checked as
    `load_anndata` checks files: known layer / gene column, values that can be expression."""
    if layer in (None, "X"):
        X, var = adata.X, adata.var
    elif layer == "raw":
        if adata.raw is None:
            raise BioformerError("the AnnData has no .raw; pass layer=None to use X or name a layer")
        X, var = adata.raw.X, adata.raw.var
    elif layer in adata.layers:
        X, var = adata.layers[layer], adata.var
    else:
        raise BioformerError(f"layer {layer!r} not found; available layers: {sorted(adata.layers.keys()) or 'none'} (omit it to use X)")
    if gene_column is not None and gene_column not in var.columns:
        raise BioformerError(f"gene column {gene_column!r} not in var; available: {list(var.columns)} (omit it to use var_names)")
    names = pd.Index(var[gene_column].astype(str) if gene_column is not None else var.index.astype(str))
    return as_checked_csr(X, "the input"), names


class Run:
    """A trained model with everything needed to use it on new cells (see the module docstring)."""

    def __init__(self, run_dir: Path, config: RunConfig, vocab: GeneVocab, model: torch.nn.Module,
                 prior: PriorMatrix | None, device: torch.device, summary: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.config = config
        self.vocab = vocab
        self.model = model
        self.prior = prior
        self.device = device
        self.summary = summary
        t2i = vocab.token_to_id
        self.genes: list[str] = vocab.genes
        self.token_of_column = np.array([t2i[g] for g in self.genes], dtype=np.int64)  # [n_run_genes]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, quiet: bool = True) -> Run:
        """Restore config, vocabulary, prior and best weights of a finished run directory.

        `device`: auto | cpu | cuda (default: the run's own setting). A directory without all of
        config.yaml, vocab.json, model.safetensors and summary.json (training not finished), or
        with an unreadable one, is a BioformerError.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise BioformerError(f"run directory not found: {run_dir}")
        if not (run_dir / "summary.json").is_file():
            raise BioformerError(
                f"{run_dir} is not a finished run directory (missing summary.json: training did not finish); "
                "use a directory written by a completed `bioformer train` (or finish it with --resume)"
            )
        config, vocab_info = load_run(run_dir)  # the same checks as `bioformer evaluate`
        summary = _read_run_file(run_dir / "summary.json", lambda p: json.loads(p.read_text()))
        vocab = GeneVocab(vocab_info["tokens"])
        model = build_model(config.model, len(vocab), vocab.pad_id, use_prior=uses_prior(config.model, config.data.prior))
        load_run_weights(model, run_dir)
        prior = None
        if model.needs_prior:  # z as in training: without the edges held out for scoring
            t2i = vocab.token_to_id
            held = run_dir / HELDOUT_EDGES
            heldout = pd.read_csv(held) if check_heldout_edges(run_dir, summary) else None
            prior = PriorMatrix.from_edges(edges_for_genes(config.data.prior, t2i, config.train.seed, quiet, heldout=heldout), t2i)
        device = device or config.train.device
        try:
            check_device(device)
        except BioformerError:  # trained on a device this machine lacks (a GPU run read on a laptop)
            log.info("the run was trained on --device %s, which this machine lacks: using the default device", device)
            device = "auto"
        dev = resolve_device(device)
        model.to(dev).eval()
        return cls(run_dir, config, vocab, model, prior, dev, summary)

    # ------------------------------------------------------------------ data
    def prepare(self, adata: ad.AnnData, layer: str | None = None, gene_column: str | None = None, quiet: bool = False) -> PreparedCells:
        """Map `adata` onto the run's genes by name and preprocess it as training did (normalise,
        log1p unless already logged, per-cell binning). Every cell is kept, in order; run genes the
        input lacks are treated as not expressed (their number is logged and kept in `n_missing`).
        """
        if isinstance(adata, PreparedCells):
            return adata
        X, names = matrix_of(adata, layer, gene_column)
        run_column = {g: i for i, g in enumerate(self.genes)}
        tmp = ad.AnnData(X=X, obs=pd.DataFrame(index=np.asarray(adata.obs_names, dtype=str)))
        tmp.var_names = names
        tmp.var_names_make_unique()
        input_to_run = np.array([run_column.get(g, -1) for g in tmp.var_names], dtype=np.int64)
        n_found = int((input_to_run >= 0).sum())
        if n_found == 0:
            raise BioformerError(
                f"none of the run's {len(self.genes)} genes (e.g. {', '.join(self.genes[:3])}) is among the "
                f"input's {len(names)} genes (e.g. {', '.join(map(str, names[:3]))}); pass gene_column/--gene-column "
                "with gene symbols"
            )
        cfg = self.config.data
        binned = preprocess(tmp, n_bins=cfg.n_bins, min_counts=cfg.min_counts, gene_list=self.genes, quiet=True)
        cols = np.array([run_column[g] for g in binned.var_names], dtype=np.int64)
        B = binned.X.tocsr()
        B.sort_indices()
        full = sp.csr_matrix((B.data.astype(np.float32), cols[B.indices], B.indptr.copy()), shape=(B.shape[0], len(self.genes)))
        full.sort_indices()
        n_missing = len(self.genes) - n_found
        if not quiet:
            log.info("mapped %d cells onto the run's genes: %d of %d found, %d missing (treated as not expressed)",
                     full.shape[0], n_found, len(self.genes), n_missing)
        var_to_run = None
        if layer == "raw" and not adata.raw.var_names.equals(adata.var_names):  # scanpy: raw keeps every gene, X the HVGs
            pos = pd.Index(adata.raw.var_names).get_indexer(adata.var_names)
            var_to_run = np.where(pos >= 0, input_to_run[np.maximum(pos, 0)], -1)
        return PreparedCells(full, np.asarray(binned.obsm["bin_edges"]), tmp.obs_names, tmp.var_names, input_to_run, n_missing, var_to_run)

    @property
    def max_genes(self) -> int:
        """Gene positions per sequence (max_len minus the <cls> token)."""
        return self.config.data.max_len - int(self.config.data.append_cls)

    def _cell_rng(self, cols: np.ndarray, vals: np.ndarray) -> np.random.Generator:
        """A generator fixed by the run's seed and the cell's content, not by its index or batch."""
        key = [self.config.train.seed, EVAL_EPOCH_KEY, zlib.crc32(cols.astype(np.int64).tobytes()), zlib.crc32(vals.astype(np.float32).tobytes())]
        return np.random.default_rng(key)

    def _shared_columns(self) -> np.ndarray:
        """Include-zero runs: the gene columns every cell's sequence holds (as evaluation drew them)."""
        n = len(self.genes)
        if n <= self.max_genes:
            return np.arange(n)
        rng = np.random.default_rng([self.config.train.seed, EVAL_EPOCH_KEY, 2**31 - 1])
        return np.sort(rng.choice(n, size=self.max_genes, replace=False))

    def _visible(self, cells: PreparedCells, i: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """The columns and bins of cell i's sequence (expressed genes, or the shared columns in
        include-zero mode), subsampled to `max_genes` when longer; and the cell's generator."""
        X = cells.binned
        cols = X.indices[X.indptr[i]:X.indptr[i + 1]]
        vals = X.data[X.indptr[i]:X.indptr[i + 1]].astype(np.float32)
        rng = self._cell_rng(cols, vals)
        if self.config.data.include_zero_genes:
            row = np.zeros(len(self.genes), dtype=np.float32)
            row[cols] = vals
            cols = self._shared_columns()
            return cols, row[cols], rng
        if cols.size > self.max_genes:
            pick = np.sort(rng.choice(cols.size, size=self.max_genes, replace=False))
            cols, vals = cols[pick], vals[pick]
        return cols, vals, rng

    # ------------------------------------------------------------------ batching
    def _sequence(self, cols: np.ndarray, vals: np.ndarray, targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One model input: optional <cls>, then genes; `targets` marks (by column, -1 = not asked)
        the positions whose prediction is wanted. `columns` is -1 at <cls>."""
        gene_ids = self.token_of_column[cols]
        columns = cols.astype(np.int64)
        tgt = np.full(cols.size, -1, dtype=np.int64) if targets is None else targets
        if self.config.data.append_cls:
            gene_ids = np.concatenate([[self.vocab.cls_id], gene_ids])
            vals = np.concatenate([[CLS_VALUE], vals]).astype(np.float32)
            columns = np.concatenate([[-1], columns])
            tgt = np.concatenate([[-1], tgt])
        return {"gene_ids": gene_ids, "values": vals.astype(np.float32), "columns": columns, "targets": tgt}

    def _batches(self, seqs: list[dict[str, np.ndarray]], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Sequences padded into batches of similar length (pad id, value -2, column -1)."""
        order = np.argsort([len(s["gene_ids"]) for s in seqs], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            L = max(len(seqs[k]["gene_ids"]) for k in idx)
            B = len(idx)
            out = {
                "gene_ids": np.full((B, L), self.vocab.pad_id, dtype=np.int64),
                "values": np.full((B, L), PAD_VALUE, dtype=np.float32),
                "columns": np.full((B, L), -1, dtype=np.int64),
                "targets": np.full((B, L), -1, dtype=np.int64),
                "padding_mask": np.ones((B, L), dtype=bool),
            }
            for b, k in enumerate(idx):
                n = len(seqs[k]["gene_ids"])
                for key in ("gene_ids", "values", "columns", "targets"):
                    out[key][b, :n] = seqs[k][key]
                out["padding_mask"][b, :n] = False
            yield idx, {k: torch.from_numpy(v) for k, v in out.items()}

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        gene_ids = batch["gene_ids"].to(self.device)
        prior = self.prior.prior_for(gene_ids) if (self.prior is not None and getattr(self.model, "needs_prior", False)) else None
        return gene_ids, batch["values"].to(self.device), batch["padding_mask"].to(self.device), prior

    def _cell_chunks(self, n_cells: int, batch_size: int, progress: bool, desc: str) -> Iterator[np.ndarray]:
        """Cells in chunks of a few batches (memory bounded by the chunk, not the data set)."""
        check_inference_options(batch_size=batch_size)  # the CLI's check, for API callers too
        step = max(1, batch_size * 4)
        starts = range(0, n_cells, step)
        for start in tqdm(starts, desc=desc, disable=not progress, unit="chunk", leave=False):
            yield np.arange(start, min(start + step, n_cells))

    # ------------------------------------------------------------------ readouts
    @torch.no_grad()
    def embed(self, adata: ad.AnnData | PreparedCells, pooling: str | None = None, batch_size: int = 64,
              layer: str | None = None, gene_column: str | None = None, progress: bool = False) -> np.ndarray:
        """One vector per cell, [n_cells, d_model] float32: the hidden state of `<cls>`
        (pooling="cls", the default when the run has a <cls> token) or the mean over the cell's
        gene tokens (pooling="mean"), from the layer the decoder reads; all values unmasked.
        A cell without any run gene has only <cls> (its "mean" row is NaN)."""
        pooling = pooling or ("cls" if self.config.data.append_cls else "mean")
        if pooling not in POOLINGS:
            raise BioformerError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        if pooling == "cls" and not self.config.data.append_cls:
            raise BioformerError("this run has no <cls> token (trained with --no-append-cls); use pooling='mean'")
        cells = self.prepare(adata, layer, gene_column, quiet=True)
        out = np.zeros((cells.n_cells, self.config.model.d_model), dtype=np.float32)
        cls_position = 0 if self.config.data.append_cls else None
        for chunk in self._cell_chunks(cells.n_cells, batch_size, progress, "embed"):
            seqs = [self._sequence(*self._visible(cells, i)[:2]) for i in chunk]
            for idx, batch in self._batches(seqs, batch_size):
                hidden = self.model.encode(*self._model_inputs(batch)).float()  # [B, r, c]
                gene_mask = (batch["columns"] >= 0).to(self.device)  # [B, r]
                out[chunk[idx]] = pool(hidden, gene_mask, pooling, cls_position).cpu().numpy()
        return out

    def _impute_passes(self, cells: PreparedCells, i: int, n_query: int) -> list[dict[str, np.ndarray]]:
        """Sequences that together predict every run gene of cell i exactly once.

        The cell's sequence genes are predicted in complementary folds of `n_query` masked
        positions (each looks like a training sequence: the rest visible); every other run gene
        (unexpressed, or dropped by the max_len subsample) is appended as a masked query, `n_query`
        at a time, to the cell's sequence subsampled to `max_genes - n_query` visible genes.
        """
        cols, vals, rng = self._visible(cells, i)
        passes = []
        if cols.size:
            perm = rng.permutation(cols.size)
            for fold in np.array_split(perm, int(np.ceil(cols.size / n_query))):
                inputs = vals.copy()
                inputs[fold] = MASK_VALUE
                targets = np.full(cols.size, -1, dtype=np.int64)
                targets[fold] = cols[fold]
                passes.append(self._sequence(cols, inputs, targets))
        others = np.setdiff1d(np.arange(len(self.genes)), cols)
        if others.size:
            n_ctx = min(cols.size, self.max_genes - n_query)
            keep = np.sort(rng.choice(cols.size, size=n_ctx, replace=False)) if n_ctx < cols.size else np.arange(cols.size)
            ctx_cols, ctx_vals = cols[keep], vals[keep]
            for q in np.array_split(others, int(np.ceil(others.size / n_query))):
                seq_cols = np.concatenate([ctx_cols, q])
                inputs = np.concatenate([ctx_vals, np.full(q.size, MASK_VALUE, dtype=np.float32)])
                targets = np.concatenate([np.full(ctx_cols.size, -1, dtype=np.int64), q])
                passes.append(self._sequence(seq_cols, inputs, targets))
        return passes

    @torch.no_grad()
    def imputation(self, adata: ad.AnnData | PreparedCells, batch_size: int = 64, n_query: int | None = None,
                   layer: str | None = None, gene_column: str | None = None, progress: bool = False) -> Imputation:
        """Predict every run gene of every cell (see `_impute_passes`), in bins and mapped back to
        log-normalised expression through the cell's own bin edges.

        `n_query` masked positions per sequence (default: the training mask share of max_len).
        With a zero head, a gene whose predicted P(zero) exceeds 0.5 is imputed as 0.
        """
        cells = self.prepare(adata, layer, gene_column, quiet=True)
        n_bins = self.config.data.n_bins
        default_q = max(1, int(round(self.config.data.mask_ratio * self.max_genes)))
        n_query = default_q if n_query is None else n_query
        if not isinstance(n_query, int) or not 1 <= n_query < self.max_genes:
            raise BioformerError(f"n_query must be between 1 and {self.max_genes - 1} (max_len leaves {self.max_genes} gene positions)")
        n_genes = len(self.genes)
        bins = np.full((cells.n_cells, n_genes), np.nan, dtype=np.float32)
        has_zero_head = bool(self.config.model.explicit_zero_prob)
        zero_prob = np.full_like(bins, np.nan) if has_zero_head else None
        for chunk in self._cell_chunks(cells.n_cells, batch_size, progress, "impute"):
            seqs, owner = [], []
            for row, i in enumerate(chunk):
                passes = self._impute_passes(cells, i, n_query)
                seqs.extend(passes)
                owner.extend([row] * len(passes))
            owner = np.asarray(owner)
            for idx, batch in self._batches(seqs, batch_size):
                out = self.model(*self._model_inputs(batch))
                asked = batch["targets"] >= 0  # [B, r]
                rows = chunk[owner[idx]][:, None].repeat(asked.shape[1], 1)[asked.numpy()]
                cols = batch["targets"][asked].numpy()
                bins[rows, cols] = out["pred"].float().cpu()[asked].numpy()
                if zero_prob is not None:
                    zero_prob[rows, cols] = torch.sigmoid(out["zero_logit"].float()).cpu()[asked].numpy()
        bins = np.clip(bins, 0, n_bins - 1)
        if zero_prob is not None:
            bins = np.where(zero_prob > 0.5, 0.0, bins).astype(np.float32)
        expression = np.stack([bins_to_values(bins[i], cells.bin_edges[i]) for i in range(cells.n_cells)]).astype(np.float32) if cells.n_cells else bins.copy()
        return Imputation(list(self.genes), bins, expression, zero_prob)

    def impute(self, adata: ad.AnnData | PreparedCells, **kwargs: Any) -> np.ndarray:
        """Imputed log-normalised expression of every run gene, [n_cells, n_run_genes]
        (see `imputation` for the bins and the zero probability)."""
        return self.imputation(adata, **kwargs).expression

    @torch.no_grad()
    def pair_scores(self, adata: ad.AnnData | PreparedCells, groupby: str | None = None, batch_size: int = 64,
                    layer: str | None = None, gene_column: str | None = None, progress: bool = False,
                    groups: np.ndarray | None = None) -> PairScores | dict[str, PairScores]:
        """Gene x gene scores (source -> target) averaged over the cells in which both genes are in
        the sequence, with the number of such cells (see `PairScores`).

        BioFormer: the last block's pair-bias logits, averaged over heads (`BioFormer.pair_scores`);
        scGPT: attention probabilities averaged over heads and layers. With `groupby` (an obs
        column of `adata`), or `groups` (one label per cell), one PairScores per group, e.g. per
        condition.
        """
        if groupby is not None and groups is None:
            if isinstance(adata, PreparedCells) or groupby not in adata.obs:
                raise BioformerError(f"groupby {groupby!r} is not an obs column of the AnnData")
            groups = np.asarray(adata.obs[groupby].astype(str))
        cells = self.prepare(adata, layer, gene_column, quiet=True)
        labels = np.zeros(cells.n_cells, dtype=object) if groups is None else np.asarray(groups, dtype=object)
        names = list(pd.unique(labels))
        accs = {g: PairAccumulator(len(self.genes)) for g in names}
        for chunk in self._cell_chunks(cells.n_cells, batch_size, progress, "pair scores"):
            seqs = [self._sequence(*self._visible(cells, i)[:2]) for i in chunk]
            for idx, batch in self._batches(seqs, batch_size):
                scores = self.model.pair_scores(*self._model_inputs(batch))  # [B, r, r]
                for g in pd.unique(labels[chunk[idx]]):
                    sel = torch.from_numpy(labels[chunk[idx]] == g)
                    accs[g].add(scores[sel.to(scores.device)], batch["columns"][sel])
        readout = type(self.model).__name__
        if groups is None:
            return (accs[names[0]] if names else PairAccumulator(len(self.genes))).result(self.genes, readout)
        return {str(g): a.result(self.genes, readout) for g, a in accs.items()}

    # ------------------------------------------------------------------ scoring
    def evaluate(self, data: str | None = None, layer: str | None = None, gene_column: str | None = None, quiet: bool = False,
                 eval_cells: int | None = None, folds: int | None = None) -> tuple[EvalResult, dict[str, Any]]:
        """Masked-prediction metrics with the three floors (`bioformer evaluate`): on the run's own
        test split (equal to summary.json's `test`), on `eval_cells` cells never in the run's
        subsample, or on all cells of another data set with genes mapped by name. Uses this
        object's model. Returns (EvalResult, info)."""
        return evaluate_run(self.run_dir, data, layer, gene_column, quiet=quiet, eval_cells=eval_cells, folds=folds, model=self.model)
