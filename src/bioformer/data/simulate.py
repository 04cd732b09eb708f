"""Planted truth: UMI counts from a known signed, acyclic TF -> target network.

The point is a data set where, by construction, a masked target's value is predictable from its
regulators' visible values *in the same cell* beyond anything per-cell or per-state statistics
explain, with a knob `alpha` for how much. Every gene g has a standardised activity z[g, c]
(unit variance over cells) and a log-rate x[g, c] = mu[g] + s[g] * z[g, c], with

    own part      o[g, c] = sqrt(state_share) * b[g, k(c)] + sqrt(1 - state_share) * eps[g, c]   (TF)
                  o[g, c] = eta[g, c]                                                          (target)
    regulation    r[g, c] = sum_t w[t, g] * z[t, c], standardised over cells
    activity      z[g, c] = sqrt(alpha) * r[g, c] + sqrt(1 - alpha) * o[g, c]   (z = o without regulators)
                  (a TF uses alpha * tf_coupling instead of alpha: it stays mostly its own factor,
                  else at alpha = 1 every cell would be a function of TF000 alone)
    counts        y[g, c] ~ Poisson(l[c] * exp(x[g, c])),   log l[c] ~ N(0, library_sd)

so `alpha` in [0, 1] is the share of a regulated gene's log-rate variance that its regulators
explain. `b` is the state-specific TF activity (>= 4 states k); `eps` each cell's own regulator
fluctuation, which reaches targets only through the edges (gene-gene, not cell-level); `eta` a
target's own noise. TFs are processed in index order and regulate only later genes (acyclic);
`w` is signed (+ activates, - represses), magnitudes in [0.5, 1.5]. Every gene's marginal
log-rate distribution is the same at every alpha, so sparsity and the floors barely move along
the curve, and at alpha = 0 targets carry no regulation at all (not even the states'): the null.
Library size varies per cell; log-normal rates times Poisson give UMI-like overdispersed
counts, and `mu` is drawn so the cells are about as sparse as PBMC3k over its top 256 HVGs.

Files (`write_simulation`): counts.h5ad (X counts, obs['state']), truth_edges.csv (source,
target, sign, weight), prior_given.csv (a `recall` share of the true edges plus decoys so that a
`precision` share of it is true; the format `--prior PATH` reads), heldout_edges.csv (the true
edges not given: GRN truth the model never sees), config.json.

The built-in name `synthetic:alpha=1,cells=5000,...` (keys of `SPEC_KEYS`) simulates on first
use into the cache and is accepted as `--data`; the same string as `--prior` is its given prior.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioformer.errors import BioformerError

SYNTHETIC_PREFIX = "synthetic:"
SIM_VERSION = 2  # bump when the generative model changes (names the cache directory)
FILES = ("counts.h5ad", "truth_edges.csv", "prior_given.csv", "heldout_edges.csv", "config.json")


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulator; defaults give a PBMC-like 5,000 x 256 set at strong alpha."""

    n_cells: int = 5000
    n_genes: int = 256
    n_tfs: int = 24
    n_states: int = 4
    alpha: float = 0.8  # share of a regulated gene's log-rate variance from its regulators, in [0, 1]
    in_degree: float = 3.0  # mean number of regulators of a target (at least 1 each)
    repress_frac: float = 0.3  # share of repressing edges
    state_share: float = 0.4  # share of a TF's own variance that is its state's activity b
    tf_coupling: float = 0.3  # a regulated TF's variance share from its regulators is alpha * this
    tf_sd: float = 1.0  # sd of a TF's log-rate across cells
    target_sd: float = 1.5  # sd of a target's log-rate across cells
    library_sd: float = 0.43  # sd of log library size (PBMC3k: 0.43)
    tf_log_mean: float = 1.0  # mean of mu over TFs (log counts at the median library)
    target_log_mean: float = -3.3  # mean of mu over targets
    log_mean_sd: float = 1.0  # sd of mu within each group
    recall: float = 0.8  # share of the true edges in the given prior
    precision: float = 1.0  # share of the given prior's edges that are true (the rest are decoys)
    seed: int = 0

    def validate(self) -> None:
        """Raise BioformerError on values the simulator cannot honour."""
        checks = [
            (self.n_cells >= 1, "cells", ">= 1", self.n_cells),
            (self.n_states >= 1, "states", ">= 1", self.n_states),
            (1 <= self.n_tfs < self.n_genes, "tfs", f">= 1 and < genes ({self.n_genes})", self.n_tfs),
            (0 <= self.alpha <= 1, "alpha", "in [0, 1]", self.alpha),
            (0 <= self.state_share <= 1, "state_share", "in [0, 1]", self.state_share),
            (0 <= self.tf_coupling <= 1, "tf_coupling", "in [0, 1]", self.tf_coupling),
            (self.in_degree >= 1, "in_degree", ">= 1", self.in_degree),
            (0 <= self.repress_frac <= 1, "repress_frac", "in [0, 1]", self.repress_frac),
            (0 <= self.recall <= 1, "recall", "in [0, 1]", self.recall),
            (0 < self.precision <= 1, "precision", "in (0, 1]", self.precision),
        ]
        for f in ("tf_sd", "target_sd", "library_sd", "log_mean_sd"):
            checks.append((getattr(self, f) >= 0, f, ">= 0", getattr(self, f)))
        for ok, name, what, value in checks:
            if not ok:
                raise BioformerError(f"simulate: {name} must be {what}, got {value!r}")


# spec keys of the `synthetic:` name -> SimConfig fields (short names for the common ones)
SPEC_KEYS = {"cells": "n_cells", "genes": "n_genes", "tfs": "n_tfs", "states": "n_states"}
SPEC_KEYS.update({f.name: f.name for f in dataclasses.fields(SimConfig)})


def is_synthetic(name: str | None) -> bool:
    """Is `name` a built-in synthetic data set / prior (`synthetic:...`)?"""
    return isinstance(name, str) and name.startswith(SYNTHETIC_PREFIX)


def parse_spec(name: str) -> SimConfig:
    """`synthetic:alpha=1,cells=3000,seed=2` -> SimConfig (unnamed fields keep their defaults)."""
    if not is_synthetic(name):
        raise BioformerError(f"{name!r} is not a synthetic data set name (synthetic:KEY=VALUE,...)")
    kwargs: dict[str, object] = {}
    types = {f.name: f.type for f in dataclasses.fields(SimConfig)}
    for part in filter(None, (p.strip() for p in name[len(SYNTHETIC_PREFIX):].split(","))):
        key, eq, value = part.partition("=")
        field = SPEC_KEYS.get(key.strip())
        if not eq or field is None:
            raise BioformerError(
                f"bad synthetic spec {part!r} in {name!r}; use KEY=VALUE with KEY one of {', '.join(sorted(SPEC_KEYS))}"
            )
        try:
            kwargs[field] = int(value) if types[field] in ("int", int) else float(value)
        except ValueError:
            raise BioformerError(f"synthetic spec {key}={value!r}: not a number") from None
    cfg = SimConfig(**kwargs)  # type: ignore[arg-type]
    cfg.validate()
    return cfg


def canonical_spec(cfg: SimConfig) -> str:
    """The `synthetic:` name of `cfg` listing only its non-default fields, in field order."""
    default = SimConfig()
    parts = [f"{f.name}={getattr(cfg, f.name):g}" for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)]
    return SYNTHETIC_PREFIX + ",".join(parts)


@dataclass
class Simulation:
    """A simulated data set and its truth."""

    config: SimConfig
    adata: ad.AnnData  # cells x genes, X = UMI counts (CSR float32), obs['state'], var['is_tf']
    truth: pd.DataFrame  # source, target, sign, weight: every true edge
    given: pd.DataFrame  # source, target, sign: the prior a model is given (true edges + decoys)
    heldout: pd.DataFrame  # source, target, sign: true edges not in `given`


def gene_names(cfg: SimConfig) -> list[str]:
    """TFs first (TF000, ...), then targets (G0000, ...)."""
    return [f"TF{i:03d}" for i in range(cfg.n_tfs)] + [f"G{i:04d}" for i in range(cfg.n_genes - cfg.n_tfs)]


def _network(cfg: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sources, targets, weights) of the true edges; TF i regulates only genes with index > i."""
    src, tgt = [], []
    for g in range(1, cfg.n_genes):
        n_up = min(g, cfg.n_tfs)  # the TFs before g
        k = min(n_up, 1 + rng.poisson(cfg.in_degree - 1))
        src.extend(rng.choice(n_up, size=k, replace=False).tolist())
        tgt.extend([g] * k)
    src_a, tgt_a = np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64)
    sign = np.where(rng.random(src_a.size) < cfg.repress_frac, -1.0, 1.0)
    weight = sign * rng.uniform(0.5, 1.5, size=src_a.size)
    return src_a, tgt_a, weight


def _standardise(v: np.ndarray) -> np.ndarray:
    sd = v.std(0)
    return (v - v.mean(0)) / np.where(sd > 0, sd, 1.0)


def _log_rates(cfg: SimConfig, rng: np.random.Generator, W: np.ndarray, state: np.ndarray) -> np.ndarray:
    """[cells, genes] log-rates x (see the module docstring). W: [genes, genes] edge weights."""
    n, G, T = cfg.n_cells, cfg.n_genes, cfg.n_tfs
    mu = np.concatenate([
        rng.normal(cfg.tf_log_mean, cfg.log_mean_sd * 0.5, size=T),
        rng.normal(cfg.target_log_mean, cfg.log_mean_sd, size=G - T),
    ])
    b = rng.normal(size=(cfg.n_states, T))  # state-specific TF activity
    own = np.empty((n, G))
    own[:, :T] = np.sqrt(cfg.state_share) * b[state] + np.sqrt(1 - cfg.state_share) * rng.normal(size=(n, T))
    own[:, T:] = rng.normal(size=(n, G - T))
    own = _standardise(own)
    regulated = (W != 0).any(0)  # [G]
    z = own.copy()
    share = cfg.alpha * cfg.tf_coupling  # a TF keeps most of its own variance: independent factors
    for t in range(1, T):  # TF -> TF edges, in topological (index) order
        if regulated[t]:
            z[:, t] = np.sqrt(share) * _standardise(z[:, :t] @ W[:t, t]) + np.sqrt(1 - share) * own[:, t]
    tg = np.flatnonzero(regulated[T:]) + T
    z[:, tg] = np.sqrt(cfg.alpha) * _standardise(z[:, :T] @ W[:T, tg]) + np.sqrt(1 - cfg.alpha) * own[:, tg]
    sd = np.where(np.arange(G) < T, cfg.tf_sd, cfg.target_sd)
    return mu + sd * z


def simulate(cfg: SimConfig) -> Simulation:
    """Draw the network, the cells and the prior files of `cfg` (deterministic in cfg.seed)."""
    cfg.validate()
    rng = np.random.default_rng([cfg.seed, 26])
    names = np.asarray(gene_names(cfg))
    src, tgt, weight = _network(cfg, rng)
    W = np.zeros((cfg.n_genes, cfg.n_genes))
    W[src, tgt] = weight
    state = rng.integers(0, cfg.n_states, size=cfg.n_cells)
    x = _log_rates(cfg, rng, W, state)
    library = np.exp(rng.normal(0.0, cfg.library_sd, size=cfg.n_cells))
    counts = rng.poisson(np.minimum(library[:, None] * np.exp(x), 1e6)).astype(np.float32)
    empty = counts.sum(1) == 0
    if empty.any():  # a cell with no UMI is not a cell: give it one in its most likely gene
        counts[np.flatnonzero(empty), x[empty].argmax(1)] = 1.0
    obs = pd.DataFrame({"state": pd.Categorical([f"state{k}" for k in state]), "library": library})
    obs.index = [f"cell{i:05d}" for i in range(cfg.n_cells)]
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=names))
    adata.var["is_tf"] = np.arange(cfg.n_genes) < cfg.n_tfs
    truth = pd.DataFrame({"source": names[src], "target": names[tgt], "sign": np.sign(weight).astype(np.int8), "weight": weight})
    given, heldout = _given_prior(cfg, truth, names, rng)
    return Simulation(cfg, adata, truth, given, heldout)


def _given_prior(cfg: SimConfig, truth: pd.DataFrame, names: np.ndarray, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A `recall` share of the true edges plus decoys (TF -> non-target pairs with random signs)
    so that `precision` of the given edges are true; and the true edges left out."""
    n_true = int(round(cfg.recall * len(truth)))
    pick = np.zeros(len(truth), dtype=bool)
    pick[rng.choice(len(truth), size=n_true, replace=False)] = True
    cols = ["source", "target", "sign"]
    kept, heldout = truth.loc[pick, cols], truth.loc[~pick, cols]
    n_decoy = int(round(n_true * (1.0 / cfg.precision - 1.0)))
    is_true = set(zip(truth["source"], truth["target"], strict=True))
    free = [(s, t) for s in names[: cfg.n_tfs] for t in names if s != t and (s, t) not in is_true]
    if n_decoy > len(free):
        raise BioformerError(f"simulate: precision {cfg.precision} needs {n_decoy} decoy edges but only {len(free)} TF -> gene pairs are free")
    chosen = rng.choice(len(free), size=n_decoy, replace=False)
    decoys = pd.DataFrame(
        {"source": [free[i][0] for i in chosen], "target": [free[i][1] for i in chosen],
         "sign": np.where(rng.random(n_decoy) < cfg.repress_frac, -1, 1).astype(np.int8)},
    )
    given = pd.concat([kept, decoys], ignore_index=True).sort_values(["source", "target"]).reset_index(drop=True)
    return given, heldout.sort_values(["source", "target"]).reset_index(drop=True)


def write_simulation(sim: Simulation, out_dir: str | Path) -> Path:
    """Write the FILES of `sim` into `out_dir` (created; an existing one is replaced whole): all
    files go to a temporary sibling directory first, which is renamed, so a reader never sees a
    half-written set."""
    out = Path(out_dir).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise BioformerError(f"cannot write {out} ({e.strerror or type(e).__name__})") from None
    try:
        sim.adata.write_h5ad(tmp / "counts.h5ad")
        sim.truth.to_csv(tmp / "truth_edges.csv", index=False)
        sim.given.to_csv(tmp / "prior_given.csv", index=False)
        sim.heldout.to_csv(tmp / "heldout_edges.csv", index=False)
        meta = {"spec": canonical_spec(sim.config), **dataclasses.asdict(sim.config)}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        for f in FILES:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cached_simulation(name: str, root: Path) -> Path:
    """The directory holding the FILES of the synthetic data set `name` under `root`,
    simulated and written on first use (keyed by the canonical spec, so equal specs share it)."""
    cfg = parse_spec(name)
    key = canonical_spec(cfg)[len(SYNTHETIC_PREFIX):] or "default"
    # the full config and the model's version name the directory too: a changed default or
    # generative model never reuses an old simulation
    digest = hashlib.sha256(json.dumps([SIM_VERSION, dataclasses.asdict(cfg)], sort_keys=True).encode()).hexdigest()[:10]
    path = root / "synthetic" / (key.replace("=", "-").replace(",", "_") + "-" + digest)
    if not all((path / f).is_file() for f in FILES):
        write_simulation(simulate(cfg), path)
    return path


def count_stats(X: sp.spmatrix | np.ndarray) -> dict[str, float]:
    """Sparsity and mean-variance summary of a cells x genes count matrix, for comparing a
    simulation with real data over the same number of genes: genes per cell (median, 10th and
    90th percentile), zero fraction, log library size sd, the slope of log variance on log mean
    across genes, and the median NB overdispersion (var - mean) / mean^2."""
    X = sp.csr_matrix(X, dtype=np.float64)
    nnz = np.asarray(X.getnnz(axis=1))
    lib = np.asarray(X.sum(1)).ravel()
    mean = np.asarray(X.mean(0)).ravel()
    var = np.asarray(X.multiply(X).mean(0)).ravel() - mean**2
    ok = (mean > 0) & (var > 0)
    slope = float(np.polyfit(np.log(mean[ok]), np.log(var[ok]), 1)[0]) if ok.sum() > 1 else float("nan")
    return {
        "cells": int(X.shape[0]),
        "genes": int(X.shape[1]),
        "genes_per_cell_median": float(np.median(nnz)),
        "genes_per_cell_p10": float(np.percentile(nnz, 10)),
        "genes_per_cell_p90": float(np.percentile(nnz, 90)),
        "zero_frac": float(1.0 - X.nnz / (X.shape[0] * X.shape[1])),
        "log_library_sd": float(np.log(lib[lib > 0]).std()),
        "mean_median": float(np.median(mean)),
        "logvar_logmean_slope": slope,
        "nb_overdispersion_median": float(np.median(((var - mean) / mean**2)[ok])) if ok.any() else float("nan"),
    }
