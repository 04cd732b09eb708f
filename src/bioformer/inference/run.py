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

import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bioformer.checks import check_device, check_inference_options
from bioformer.config import RunConfig
from bioformer.data.preprocess import bins_to_values
from bioformer.data.prior import PriorMatrix
from bioformer.data.tokenize import EVAL_EPOCH_KEY, MASK_VALUE, GeneVocab, Tokenizer, pad
from bioformer.errors import BioformerError
from bioformer.inference.cells import PreparedCells, prepare_cells
from bioformer.inference.pairs import PairAccumulator, PairScores
from bioformer.inference.readouts import (
    Readout,
    applies,
    default_readout,
    families,
    get_readout,
    listing,
)
from bioformer.training.evaluate import evaluate_run
from bioformer.training.loop import model_inputs
from bioformer.training.metrics import EvalResult
from bioformer.training.reader import RunReader
from bioformer.training.runtime import resolve_device

log = logging.getLogger("bioformer")

ISOLATED_PER_PASS = 256  # isolated impute queries per sequence: speed only, never the result (docs/inference-speed.md)


@dataclass
class Imputation:
    """Predictions for every run gene of every cell ([n_cells, n_run_genes] each)."""

    genes: list[str]
    bins: np.ndarray  # predicted bin, clipped to [0, n_bins - 1]
    expression: np.ndarray  # the bin mapped back to log-normalised expression via the cell's edges
    zero_prob: np.ndarray | None  # P(value is 0) from the zero head, when the model has one
    readout: str = "expression"  # the impute readout that made `bins`
    value_if_detected: np.ndarray | None = None  # zero head: log-normalised value if the gene is detected

    @property
    def detected_prob(self) -> np.ndarray | None:
        """P(detected) = 1 - P(value is 0), when the model has a zero head."""
        return None if self.zero_prob is None else 1.0 - self.zero_prob


class Run:
    """A trained model with everything needed to use it on new cells (see the module docstring)."""

    def __init__(self, reader: RunReader, model: torch.nn.Module, prior: PriorMatrix | None, device: torch.device) -> None:
        self.reader = reader
        self.run_dir = reader.dir
        self.config: RunConfig = reader.config()
        self.vocab: GeneVocab = reader.vocab()
        self.model = model
        self.prior = prior
        self.device = device
        self.genes: list[str] = self.vocab.genes
        t2i = self.vocab.token_to_id
        d = self.config.data
        token_of_column = np.array([t2i[g] for g in self.genes], dtype=np.int64)  # [n_run_genes]
        self.tokenizer = Tokenizer(token_of_column, d.max_len, d.include_zero_genes, d.append_cls, self.vocab.cls_id, self.config.train.seed, d.zero_gene_frac)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, quiet: bool = True) -> Run:
        """Restore config, vocabulary, prior and best weights of a finished run directory.

        `device`: auto | cpu | cuda (default: the run's own setting). A directory without all of
        config.yaml, vocab.json, model.safetensors and summary.json (training not finished), or
        with an unreadable one, is a BioformerError (see `RunReader`).
        """
        reader = RunReader.finished(run_dir)
        model = reader.model()
        prior = reader.prior(quiet) if model.needs_prior else None  # z as in training: without the held-out edges
        device = device or reader.config().train.device
        try:
            check_device(device)
        except BioformerError:  # trained on a device this machine lacks (a GPU run read on a laptop)
            log.info("the run was trained on --device %s, which this machine lacks: using the default device", device)
            device = "auto"
        dev = resolve_device(device)
        return cls(reader, model.to(dev).eval(), prior, dev)

    # ------------------------------------------------------------------ data
    def prepare(self, adata: ad.AnnData, layer: str | None = None, gene_column: str | None = None, quiet: bool = False) -> PreparedCells:
        """`adata` on the run's genes, preprocessed as training did (see `prepare_cells`)."""
        return prepare_cells(adata, self.genes, self.config.data, layer, gene_column, quiet)

    @property
    def max_genes(self) -> int:
        """Gene positions per sequence (max_len minus the <cls> token)."""
        return self.tokenizer.max_genes

    def _visible(self, cells: PreparedCells, i: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """The columns and bins of cell i's sequence (`Tokenizer.visible` with the cell's
        content-keyed generator), and that generator."""
        X = cells.binned
        cols = X.indices[X.indptr[i]:X.indptr[i + 1]]
        vals = X.data[X.indptr[i]:X.indptr[i + 1]]
        rng = self.tokenizer.content_rng(cols, vals)
        return (*self.tokenizer.visible(cols, vals, rng, EVAL_EPOCH_KEY), rng)

    # ------------------------------------------------------------------ batching
    def _sequence(self, cols: np.ndarray, vals: np.ndarray, targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One model input (`Tokenizer.sequence`); `targets` marks (by column, -1 = not asked)
        the positions whose prediction is wanted. `columns` is -1 at <cls>."""
        tgt = np.full(cols.size, -1, dtype=np.int64) if targets is None else targets
        return self.tokenizer.sequence(cols, values=np.asarray(vals, dtype=np.float32), columns=cols.astype(np.int64), targets=tgt)

    def _batches(self, seqs: list[dict[str, np.ndarray]], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Sequences padded into batches of similar length (`pad`: pad id, value -2, column -1):
        `batch_size` sequences of up to max_len, fewer of longer ones (as many gene pairs as
        `batch_size` sequences of max_len: attention's cost and memory)."""
        lengths = np.array([len(s["gene_ids"]) for s in seqs])
        order = np.argsort(lengths, kind="stable")
        budget = batch_size * self.config.data.max_len**2
        start = 0
        while start < len(order):
            stop = start + 1  # sorted: the last one added is the longest
            while stop < len(order) and stop - start < batch_size and (stop + 1 - start) * int(lengths[order[stop]]) ** 2 <= budget:
                stop += 1
            idx = order[start:stop]
            start = stop
            yield idx, pad([seqs[k] for k in idx], self.vocab.pad_id, ("values", "columns", "targets"))

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return model_inputs(self.model, batch, self.prior, self.device)

    def batch_size(self, batch_size: int | None = None) -> int:
        """Sequences per forward pass: `batch_size` (checked), else ~32k tokens per batch, or with
        a materialised z (BioFormer's full pair mode) ~4M gene pairs per batch (z of ~130 MB at
        c_z 8). Larger batches are much faster on CPU; results never depend on it."""
        if batch_size is not None:
            check_inference_options(batch_size=batch_size)  # the CLI's check, for API callers too
            return batch_size
        r = self.config.data.max_len
        if getattr(self.model, "uses_z", False) and self.config.model.bioformer.pair_mode == "full":
            return int(np.clip(2**22 // (r * r), 1, 512))
        return int(np.clip(2**15 // r, 1, 512))

    def _cell_chunks(self, n_cells: int, chunk: int, progress: bool, desc: str) -> Iterator[np.ndarray]:
        """Cells in chunks of `chunk` (memory bounded by the chunk, not the data set; sequences
        are sorted by length within a chunk, so larger chunks pad less)."""
        starts = range(0, n_cells, chunk)
        for start in tqdm(starts, desc=desc, disable=not progress, unit="chunk", leave=False):
            yield np.arange(start, min(start + chunk, n_cells))

    def _sequence_batches(self, cells: PreparedCells, batch_size: int | None, progress: bool, desc: str
                          ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """(cell indices, padded batch) of every cell's unmasked sequence, in chunks of cells."""
        batch_size = self.batch_size(batch_size)
        for chunk in self._cell_chunks(cells.n_cells, max(4096, 4 * batch_size), progress, desc):
            seqs = [self._sequence(*self._visible(cells, i)[:2]) for i in chunk]
            for idx, batch in self._batches(seqs, batch_size):
                yield chunk[idx], batch

    # ------------------------------------------------------------------ readouts
    def readout(self, task: str, name: str | Readout | None = None) -> Readout:
        """The readout `name` of `task` (embed | impute | grn; default: the task's default for
        this run), checked to apply to this run's model (see `bioformer.inference.readouts`)."""
        append_cls = self.config.data.append_cls
        found = default_readout(task, self.model, append_cls) if name is None else get_readout(name, task)
        found.check(self.model, append_cls)
        return found

    def readouts(self) -> list[tuple[str, str, str, str]]:
        """(name, task, AnnData destination, description) of every readout that applies to this run."""
        family = self.config.model.model
        found = []
        for name, task, _, _ in listing():
            named = [get_readout(name, task)] if "<" not in name else [r for f in families() if f.pattern == name for r in f.expand(self.model)]
            found += [(r.name, task, f'{r.slot}["{r.key.format(family=family)}"]', r.description)
                      for r in named if applies(r, self.model, self.config.data.append_cls)]
        return found

    @torch.inference_mode()
    def embed(self, adata: ad.AnnData | PreparedCells, readout: str | Readout | None = None, batch_size: int | None = None,
              layer: str | None = None, gene_column: str | None = None, progress: bool = False,
              pooling: str | None = None) -> np.ndarray:
        """One vector per cell, [n_cells, d_model] float32, by an embed readout (`pooling` is its
        older name): the hidden state of `<cls>` ("cls", the default when the run has a <cls>
        token) or the mean over the cell's gene tokens ("mean"), from the layer the decoder reads;
        all values unmasked. A cell without any run gene has only <cls> (its "mean" row is NaN)."""
        pool = self.readout("embed", readout or pooling)
        cells = self.prepare(adata, layer, gene_column, quiet=True)
        out = np.zeros((cells.n_cells, self.config.model.d_model), dtype=np.float32)
        cls_position = 0 if self.config.data.append_cls else None
        for rows, batch in self._sequence_batches(cells, batch_size, progress, "embed"):
            hidden = self.model.encode(*self._model_inputs(batch)).float()  # [B, r, c]
            gene_mask = (batch["columns"] >= 0).to(self.device)  # [B, r]
            out[rows] = pool(hidden, gene_mask, cls_position).cpu().numpy()
        return out

    def _impute_passes(self, cells: PreparedCells, i: int, n_query: int, per_pass: int | None
                       ) -> list[tuple[dict[str, np.ndarray], int]]:
        """(sequence, positions shared) pairs that together predict every run gene of cell i
        exactly once; the positions from `shared` on are isolated queries (models/isolation.py).

        The cell's sequence genes are predicted in complementary folds of `n_query` masked
        positions (each fold pass looks like a training sequence: the rest visible). Every other
        run gene (unexpressed, or dropped by the max_len subsample) is a masked query:
        - `per_pass` given (the default path): isolated, appended to a fold pass (round-robin over
          the folds; a cell without genes: to <cls> alone), at most `per_pass` per sequence (a
          fold pass is repeated for more). An isolated query sees the fold's sequence and itself
          only and nothing sees it, so its prediction is that of asking it alone in its fold's
          pass, and `per_pass` changes the speed only.
        - `per_pass` None (the older definition): `n_query` at a time, seeing each other, appended
          to the cell's sequence subsampled to `max_genes - n_query` visible genes.
        """
        cols, vals, rng = self._visible(cells, i)
        folds = []
        if cols.size:
            perm = rng.permutation(cols.size)
            for fold in np.array_split(perm, int(np.ceil(cols.size / n_query))):
                inputs = vals.copy()
                inputs[fold] = MASK_VALUE
                targets = np.full(cols.size, -1, dtype=np.int64)
                targets[fold] = cols[fold]
                folds.append((cols, inputs, targets))
        others = np.setdiff1d(np.arange(len(self.genes)), cols)
        if per_pass is None:
            passes = [self._sequence(*f) for f in folds]
            if others.size:
                n_ctx = min(cols.size, self.max_genes - n_query)
                keep = np.sort(rng.choice(cols.size, size=n_ctx, replace=False)) if n_ctx < cols.size else np.arange(cols.size)
                for q in np.array_split(others, int(np.ceil(others.size / n_query))):
                    passes.append(self._sequence(*self._with_queries((cols[keep], vals[keep], np.full(keep.size, -1, dtype=np.int64)), q)))
            return [(p, len(p["gene_ids"])) for p in passes]
        none = np.zeros(0, dtype=np.int64)
        folds = folds or [(none, np.zeros(0, dtype=np.float32), none)]  # no genes: queries next to <cls> alone
        out = []
        for f, (c, x, t) in enumerate(folds):
            mine = others[f::len(folds)]
            for g, q in enumerate(np.array_split(mine, max(1, int(np.ceil(mine.size / per_pass))))):
                fold = (c, x, t if g == 0 else np.full_like(t, -1))  # the fold's own genes asked once
                seq = self._sequence(*self._with_queries(fold, q))
                out.append((seq, len(seq["gene_ids"]) - q.size))
        return out

    @staticmethod
    def _with_queries(seq: tuple[np.ndarray, np.ndarray, np.ndarray], q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns, input values, targets) of a sequence with masked queries at columns `q` appended."""
        cols, inputs, targets = seq
        return (np.concatenate([cols, q]), np.concatenate([inputs, np.full(q.size, MASK_VALUE, dtype=np.float32)]),
                np.concatenate([targets, q]))

    def _predict_passes(self, passes: list[tuple[dict[str, np.ndarray], int]], cell_of: np.ndarray, batch_size: int,
                        value: Readout, out: dict[str, np.ndarray]) -> None:
        """Run the passes (`_impute_passes`; of cells `cell_of`, one row of `out` each) and write
        every asked position's prediction into `out` (bins, and zero_prob / value_bins with a zero
        head) at [cell, column]."""
        seqs = [p[0] for p in passes]
        shared = np.array([p[1] for p in passes])
        for idx, batch in self._batches(seqs, batch_size):
            asked = batch["targets"] >= 0  # [B, r]
            position = torch.arange(asked.shape[1])[None, :]  # [1, r]
            isolated = (position >= torch.from_numpy(shared[idx])[:, None]) & ~batch["padding_mask"]  # [B, r]
            extra = {"isolated": isolated.to(self.device)} if isolated.any() else {}
            pred = self.model(*self._model_inputs(batch), **extra)
            rows = cell_of[idx][:, None].repeat(asked.shape[1], 1)[asked.numpy()]
            cols = batch["targets"][asked].numpy()
            out["bins"][rows, cols] = value(pred).float().cpu()[asked].numpy()
            if "zero_prob" in out:
                out["zero_prob"][rows, cols] = torch.sigmoid(pred["zero_logit"].float()).cpu()[asked].numpy()
                out["value_bins"][rows, cols] = pred["value"].float().cpu()[asked].numpy()

    @torch.inference_mode()
    def imputation(self, adata: ad.AnnData | PreparedCells, batch_size: int | None = None, n_query: int | None = None,
                   layer: str | None = None, gene_column: str | None = None, progress: bool = False,
                   readout: str | Readout | None = None, isolated: bool = True) -> Imputation:
        """Predict every run gene of every cell (see `_impute_passes`) by an impute readout
        (default "expression"), in bins and mapped back to log-normalised expression through the
        cell's own bin edges.

        `n_query` masked positions per fold (default: the training mask share of max_len).
        `isolated` (default): the cell's other genes are asked as isolated queries appended to
        its fold passes, at most `ISOLATED_PER_PASS` per sequence (exact to asking each alone in
        its fold's pass); False: `n_query` per sequence, seeing each other, next to a context of
        their own (the older, ~2-3x slower definition).
        With a zero head `bins` is the expected bin (the model's "pred"), `expression` the
        expected value P(detected) x value-if-detected (`value_if_detected`) and `zero_prob`
        P(value is 0).
        """
        value = self.readout("impute", readout)
        cells = self.prepare(adata, layer, gene_column, quiet=True)
        n_bins = self.config.data.n_bins
        default_q = max(1, int(round(self.config.data.mask_ratio * self.max_genes)))
        n_query = default_q if n_query is None else n_query
        if not isinstance(n_query, int) or not 1 <= n_query < self.max_genes:
            raise BioformerError(f"n_query must be between 1 and {self.max_genes - 1} (max_len leaves {self.max_genes} gene positions)")
        isolated = isolated and "isolated" in inspect.signature(self.model.forward).parameters  # a family without it: the older path
        per_pass = ISOLATED_PER_PASS if isolated else None
        shape = (cells.n_cells, len(self.genes))
        names = ("bins", "zero_prob", "value_bins") if self.config.model.explicit_zero_prob else ("bins",)
        out = {k: np.full(shape, np.nan, dtype=np.float32) for k in names}
        batch_size = self.batch_size(batch_size)
        for chunk in self._cell_chunks(cells.n_cells, 4 * batch_size, progress, "impute"):
            passes = [self._impute_passes(cells, i, n_query, per_pass) for i in chunk]
            cell_of = np.repeat(chunk, [len(p) for p in passes])
            self._predict_passes([s for p in passes for s in p], cell_of, batch_size, value, out)

        def expression_of(b: np.ndarray) -> np.ndarray:  # bins -> log-normalised, through each cell's edges
            b = np.clip(b, 0, n_bins - 1)
            return np.stack([bins_to_values(b[i], cells.bin_edges[i]) for i in range(cells.n_cells)]).astype(np.float32) if cells.n_cells else b.copy()

        bins = np.clip(out["bins"], 0, n_bins - 1)
        if "zero_prob" not in out:
            return Imputation(list(self.genes), bins, expression_of(bins), None, value.name)
        # expected value in expression units: P(detected) x value if detected (the expected bin
        # read through the cell's edges would land on the flat low edges, i.e. on one count)
        zero_prob, detected = out["zero_prob"], expression_of(out["value_bins"])
        return Imputation(list(self.genes), bins, ((1.0 - zero_prob) * detected).astype(np.float32), zero_prob, value.name, detected)

    def impute(self, adata: ad.AnnData | PreparedCells, **kwargs: Any) -> np.ndarray:
        """Imputed log-normalised expression of every run gene, [n_cells, n_run_genes]
        (see `imputation` for the bins and the zero probability)."""
        return self.imputation(adata, **kwargs).expression

    @torch.inference_mode()
    def pair_scores(self, adata: ad.AnnData | PreparedCells, groupby: str | None = None, batch_size: int | None = None,
                    layer: str | None = None, gene_column: str | None = None, progress: bool = False,
                    groups: np.ndarray | None = None, readout: str | Readout | None = None) -> PairScores | dict[str, PairScores]:
        """Gene x gene scores (source -> target) of a grn readout (default: BioFormer's last-block
        pair bias, averaged over heads; scGPT's attention averaged over heads and layers), averaged
        over the cells in which both genes are in the sequence, with the number of such cells (see
        `PairScores`). With `groupby` (an obs column of `adata`), or `groups` (one label per cell),
        one PairScores per group, e.g. per condition.
        """
        pair = self.readout("grn", readout)
        if groupby is not None and groups is None:
            if isinstance(adata, PreparedCells) or groupby not in adata.obs:
                raise BioformerError(f"groupby {groupby!r} is not an obs column of the AnnData")
            groups = np.asarray(adata.obs[groupby].astype(str))
        cells = self.prepare(adata, layer, gene_column, quiet=True)
        labels = np.zeros(cells.n_cells, dtype=object) if groups is None else np.asarray(groups, dtype=object)
        names = list(pd.unique(labels))
        accs = {g: PairAccumulator(len(self.genes)) for g in names}
        for rows, batch in self._sequence_batches(cells, batch_size, progress, "pair scores"):
            scores = pair.scores(self.model, self._model_inputs(batch), {})  # [B, r, r]
            for g in pd.unique(labels[rows]):
                sel = torch.from_numpy(labels[rows] == g)
                accs[g].add(scores[sel.to(scores.device)], batch["columns"][sel])
        if groups is None:
            return (accs[names[0]] if names else PairAccumulator(len(self.genes))).result(self.genes, pair.name)
        return {str(g): a.result(self.genes, pair.name) for g, a in accs.items()}

    # ------------------------------------------------------------------ scoring
    def evaluate(self, data: str | None = None, layer: str | None = None, gene_column: str | None = None, quiet: bool = False,
                 eval_cells: int | None = None, folds: int | None = None) -> tuple[EvalResult, dict[str, Any]]:
        """Masked-prediction metrics with the three floors (`bioformer evaluate`): on the run's own
        test split (equal to summary.json's `test`), on `eval_cells` cells never in the run's
        subsample, or on all cells of another data set with genes mapped by name. Uses this
        object's model. Returns (EvalResult, info)."""
        return evaluate_run(self.reader, data, layer, gene_column, quiet=quiet, eval_cells=eval_cells, folds=folds, model=self.model)
