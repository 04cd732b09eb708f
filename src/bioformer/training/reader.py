"""`RunReader`: the one code that opens a run directory's files.

Training writes a run (`bioformer.training.run`); everything that reads one goes through here:
training's resume (the training state, the split), `evaluate`, `embed` / `impute` / `grn`
(`bioformer.inference.Run`), GRN scoring and the studies. Each file is read once per reader and
checked when it is read, with one BioformerError naming the file and the fix:

    config.yaml        `config()`          resolved RunConfig (older runs: value_scale 1)
    vocab.json         `vocab()`           GeneVocab (special tokens, then the run's genes)
    model.safetensors  `model()`           the model of config.yaml with the best weights
    split.npz          `split()`           train / valid / test cell indices and obs_names
    heldout_edges.csv  `heldout_edges()`   GRN truth, sha256-checked against summary.json
    summary.json       `summary()`         test metrics, file checksums ("files")
    last.pt            `training_state()`  what `train --resume` continues from
    metrics.csv        `metrics()`         per-epoch history; extra_test.json `extra_test()` (studies)

and two facts derived from them, decided here only: the prior the model was given
(`given_edges` / `prior`: the run's prior without its held-out edges) and the run's own cells
preprocessed as in training (`training_data`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from bioformer.config import RunConfig, with_unsaved_fields_off
from bioformer.data.pipeline import PreparedData, edges_for_genes, prepare_data
from bioformer.data.prior import PriorMatrix
from bioformer.data.tokenize import GeneVocab
from bioformer.errors import BioformerError
from bioformer.models import build_model, uses_prior
from bioformer.training.checkpoint import TRAINING_STATE, load_training_state
from bioformer.training.rundir import HELDOUT_EDGES, sha256_file

SUMMARY, CONFIG, VOCAB, WEIGHTS, SPLIT = "summary.json", "config.yaml", "vocab.json", "model.safetensors", "split.npz"
METRICS, EXTRA_TEST = "metrics.csv", "extra_test.json"


T = TypeVar("T")


def _read_once(read: Callable[[Any], T]) -> Callable[[Any], T]:
    """A `RunReader` method that reads its file on the first call and returns that same object
    on every later one (a failed read is not kept: it raises again)."""
    slot = f"_{read.__name__}_read"

    @wraps(read)
    def method(self: Any) -> T:
        if slot not in self.__dict__:
            self.__dict__[slot] = read(self)
        return self.__dict__[slot]

    return method


class RunReader:
    """A run directory, read lazily and at most once per file (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    @classmethod
    def finished(cls, run_dir: str | Path) -> RunReader:
        """A reader of a run whose training finished (summary.json written), else one error."""
        reader = cls(run_dir)
        if not reader.dir.is_dir():
            raise BioformerError(f"run directory not found: {reader.dir}")
        if not reader.is_finished:
            raise BioformerError(
                f"{reader.dir} is not a finished run directory (missing summary.json: training did not finish); "
                "use a directory written by a completed `bioformer train` (or finish it with --resume)"
            )
        reader.summary()  # a damaged summary.json fails here, not halfway through a command
        return reader

    # ------------------------------------------------------------------ files
    @property
    def is_finished(self) -> bool:
        return (self.dir / SUMMARY).is_file()

    @_read_once
    def summary(self) -> dict[str, Any] | None:
        """summary.json (None when training has not finished); a damaged file is an error."""
        path = self.dir / SUMMARY
        if not path.is_file():
            return None
        try:
            out = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise BioformerError(f"{path} is damaged ({type(e).__name__}: {e}); retrain or restore the run directory") from None
        if not isinstance(out, dict):
            raise BioformerError(f"{path} is damaged (not a JSON object); retrain or restore the run directory")
        return out

    def _require(self) -> None:
        missing = [f for f in (CONFIG, VOCAB, WEIGHTS) if not (self.dir / f).is_file()]
        if missing:
            raise BioformerError(
                f"{self.dir} is not a finished run directory (missing {', '.join(missing)}); pass a directory written by bioformer train"
            )

    @_read_once
    def config(self) -> RunConfig:
        """config.yaml, resolved and validated (not the hardware: the run may come from elsewhere)."""
        self._require()
        path = self.dir / CONFIG
        cfg = RunConfig.load(path)
        saved = yaml.safe_load(path.read_text()) or {}
        if "value_scale" not in (saved.get("model") or {}):  # trained before the field: raw bins
            cfg.model = dataclasses.replace(cfg.model, value_scale=1.0)
        cfg = with_unsaved_fields_off(cfg, saved)  # issue-27 options: off for runs saved before them
        try:
            cfg.validate(check_hardware=False)
        except BioformerError as e:
            raise BioformerError(f"{path} is damaged: {e}") from None
        return cfg

    @_read_once
    def vocab(self) -> GeneVocab:
        """vocab.json: the run's tokens (special tokens, then its genes in column order)."""
        self._require()
        path = self.dir / VOCAB
        try:
            vocab = json.loads(path.read_text())
            if not isinstance(vocab, dict) or not isinstance(vocab.get("tokens"), list) or not isinstance(vocab.get("genes"), list):
                raise ValueError("needs lists 'tokens' and 'genes'")
        except (ValueError, UnicodeDecodeError) as e:
            raise BioformerError(f"{path} is damaged ({e}); retrain the run or restore the file") from None
        return GeneVocab(vocab["tokens"])

    @_read_once
    def split(self) -> dict[str, np.ndarray]:
        """split.npz: train / valid / test cell indices and the obs_names they index."""
        try:
            with np.load(self.dir / SPLIT, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise BioformerError(f"{self.dir / SPLIT} is missing or damaged ({type(e).__name__}); retrain the run or restore the file") from None

    def heldout_edges(self) -> pd.DataFrame | None:
        """heldout_edges.csv (None when the run holds none), checked against summary.json's file
        list: a missing, added or edited file is an error (what is scored must be what training
        withheld). Runs written before the list (no "files") are taken as they are."""
        path = self.dir / HELDOUT_EDGES
        files = (self.summary() or {}).get("files")
        if isinstance(files, dict):
            if HELDOUT_EDGES not in files:
                if path.exists():
                    raise BioformerError(f"{path} was not written by training (summary.json lists no held-out edges); remove it")
                return None
            if not path.is_file():
                raise BioformerError(f"{path} is missing; the run's held-out GRN edges are part of the run: restore it or retrain the run")
            if sha256_file(path) != files[HELDOUT_EDGES]:
                raise BioformerError(f"{path} was changed after training (sha256 differs from summary.json); restore it or retrain the run")
        elif not path.is_file():
            return None
        return pd.read_csv(path)

    def saved_config(self) -> dict[str, Any]:
        """config.yaml as written, unvalidated ({} when absent): for tables over runs of any age."""
        path = self.dir / CONFIG
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def metrics(self) -> pd.DataFrame | None:
        """metrics.csv: one row per finished epoch (None before the first)."""
        path = self.dir / METRICS
        return pd.read_csv(path) if path.is_file() else None

    def extra_test(self) -> dict[str, Any] | None:
        """extra_test.json: a study's second test set (never-sampled cells), when it was scored."""
        path = self.dir / EXTRA_TEST
        return json.loads(path.read_text()) if path.is_file() else None

    def training_state(self) -> dict[str, Any] | None:
        """last.pt (None when no epoch finished yet); see `load_training_state` for its checks."""
        path = self.dir / TRAINING_STATE
        return load_training_state(path) if path.exists() else None

    def model(self) -> torch.nn.Module:
        """The model of config.yaml with the best weights, on the CPU, in eval mode."""
        cfg, vocab = self.config(), self.vocab()
        model = build_model(cfg.model, len(vocab), vocab.pad_id, use_prior=self.uses_prior)
        path = self.dir / WEIGHTS
        try:
            model.load_state_dict(load_file(str(path)))
        except RuntimeError as e:  # load_state_dict: missing / unexpected keys, shape mismatches
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Error(s) in loading")]
            first = (lines[0] if lines else type(e).__name__)[:200]
            raise BioformerError(f"{path} does not match {self.dir / CONFIG} ({first}); restore the config the run was trained with") from None
        except Exception as e:  # safetensors raises its own error types for truncated / non-safetensors files
            raise BioformerError(f"{path} is damaged and cannot be read ({type(e).__name__}); retrain the run") from None
        return model.eval()

    # ------------------------------------------------------------------ derived facts
    @property
    def uses_prior(self) -> bool:
        """Was the model's z built from a prior?"""
        cfg = self.config()
        return uses_prior(cfg.model, cfg.data.prior)

    def given_edges(self, genes: set[str] | dict[str, int] | None = None, quiet: bool = True) -> pd.DataFrame | None:
        """The edges the run's prior option gives over `genes` (default the run's vocabulary),
        without the held-out ones: what the model's z could be built from."""
        cfg = self.config()
        genes = self.vocab().token_to_id if genes is None else genes
        return edges_for_genes(cfg.data.prior, genes, cfg.train.seed, quiet, heldout=self.heldout_edges())

    def prior(self, quiet: bool = True) -> PriorMatrix | None:
        """The prior codes over the run's vocabulary exactly as in training (held-out edges out);
        None for a model that reads no prior."""
        if not self.uses_prior:
            return None
        t2i = self.vocab().token_to_id
        return PriorMatrix.from_edges(self.given_edges(t2i, quiet), t2i)

    def data_config(self):
        """The run's DataConfig as evaluation re-creates it: a run without held-out edges (from
        before them, or frac 0) trained with every prior edge."""
        d = self.config().data
        return d if self.heldout_edges() is not None else dataclasses.replace(d, heldout_edge_frac=0.0)

    def training_data(self, quiet: bool = True) -> PreparedData:
        """The run's own data set preprocessed as in training (its genes, split and held-out
        edges), once per reader."""
        if getattr(self, "_training_data", None) is None:
            cfg = self.config()
            data = prepare_data(self.data_config(), seed=cfg.train.seed, need_prior=self.uses_prior, gene_list=self.vocab().genes,
                                quiet=quiet, heldout_edges=self.heldout_edges())
            if list(data.adata.var_names) != self.vocab().genes:
                raise BioformerError("re-preprocessing the run's data gave different genes; was the data set changed?")
            self._training_data = data
        return self._training_data
