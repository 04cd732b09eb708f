"""Headroom of a planted data set, before any model: how much better than every gene-gene-free
floor can a masked value be predicted from the target's *true regulators' visible values*?

Every predictor is fitted on the training cells' masked positions and scored on the test
cells' masked positions, with the same fixed complementary masks the training floors use
(`bioformer.training.floors.fit_cell_floor`: every position is a target once), so all rows of
the table are scored on exactly the same positions:

- constant, per-gene mean, cell-aware (the training floors);
- non-linear: the training floors' `TreeFloor` (gradient-boosted trees on the gene's training
  statistics and the cell's statistics); gene-gene free, but not linear;
- cell + state: per-gene ridge on the cell statistics and the simulated cell state (one-hot);
  an upper bound on what per-state statistics explain (no model is told the state);
- oracle: per-gene ridge on the cell statistics plus the bins of the gene's true regulators as
  seen in the same cell (0 where a regulator is masked or not expressed) and a seen flag each;
- oracle (trees): the non-linear floor's model on its features plus the true-weight sum of the
  seen regulators' centred bins and how many are seen (the non-linear floor + the truth).

At alpha = 0 the oracle should tie the floors; at alpha > 0 its margin is the headroom.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bioformer.data.pipeline import PreparedData
from bioformer.data.tokenize import collate
from bioformer.training.floors import Floors, TreeFloor, cell_features


@dataclass
class Positions:
    """The masked positions of one split, every position once over the mask folds."""

    gene: np.ndarray  # [P] gene column
    cell: np.ndarray  # [P] cell row of data.adata
    target: np.ndarray  # [P] true bin
    feats: np.ndarray  # [P, 4] cell statistics of the unmasked inputs
    regs: np.ndarray  # [P, K] bins of the gene's true regulators seen in the cell (0 = not seen)


def regulator_table(edges: pd.DataFrame, genes: list[str], with_weights: bool = False):
    """[n_genes, K] gene columns of each gene's regulators in `edges` (-1 pads, ascending),
    K = max in-degree; with `with_weights`, also [n_genes, K] their `weight` (else `sign`; 0 pads)."""
    col = {g: i for i, g in enumerate(genes)}
    e = edges[edges["source"].isin(col) & edges["target"].isin(col)]
    w = (e["weight"] if "weight" in e.columns else e["sign"]).to_numpy(dtype=np.float64)
    by_target: dict[int, list[tuple[int, float]]] = {}
    for s, t, wt in zip(e["source"].map(col), e["target"].map(col), w, strict=True):
        by_target.setdefault(int(t), []).append((int(s), float(wt)))
    k = max((len(v) for v in by_target.values()), default=1)
    table = np.full((len(genes), k), -1, dtype=np.int64)
    weights = np.zeros((len(genes), k))
    for t, regs in by_target.items():
        regs.sort()
        table[t, : len(regs)] = [r for r, _ in regs]
        weights[t, : len(regs)] = [x for _, x in regs]
    return (table, weights) if with_weights else table


def masked_positions(data: PreparedData, split: str, regs: np.ndarray, batch_size: int = 256) -> Positions:
    """Every position of `split`'s cells once as a masked target (fixed complementary folds)."""
    ds = copy.copy(data.dataset(split))
    ds.fixed_masks = True
    n_folds = max(1, round(1 / ds.mask_ratio))
    n_genes = data.adata.n_vars
    col_of = np.full(len(data.vocab), n_genes, dtype=np.int64)  # specials -> a dummy column
    col_of[data.gene_token_ids] = np.arange(n_genes)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("gene", "cell", "target", "feats", "regs")}
    for fold in range(n_folds):
        ds.set_fold(fold, n_folds)
        for start in range(0, len(ds), batch_size):
            b = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
            m = b["mask"].numpy()  # [B, L]
            cols = col_of[b["gene_ids"].numpy()]  # [B, L]
            vals = b["values"].numpy()
            seen = (~b["padding_mask"].numpy()) & ~m & (cols < n_genes)
            visible = np.zeros((len(cols), n_genes + 1), dtype=np.float32)  # [B, G + 1]
            rows = np.broadcast_to(np.arange(len(cols))[:, None], cols.shape)
            visible[rows[seen], cols[seen]] = vals[seen]
            f = cell_features(b["gene_ids"], b["values"], b["padding_mask"], b["mask"], data.config.n_bins, ds.cls_id).numpy()
            bi, li = np.nonzero(m)
            g = cols[bi, li]
            r = regs[g]  # [P, K]
            out["gene"].append(g)
            out["cell"].append(b["cell"].numpy()[bi])
            out["target"].append(b["target_values"].numpy()[bi, li])
            out["feats"].append(f[bi])
            out["regs"].append(np.where(r >= 0, visible[bi[:, None], np.where(r >= 0, r, n_genes)], 0.0))
    return Positions(**{k: np.concatenate(v) for k, v in out.items()})


def per_gene_ridge(gene: np.ndarray, X: np.ndarray, y: np.ndarray, n_genes: int, ridge: float = 10.0) -> np.ndarray:
    """[n_genes, 1 + F] closed-form ridge weights per gene (unpenalised intercept); X already scaled."""
    F = X.shape[1]
    A = np.concatenate([np.ones((len(X), 1)), X], axis=1)  # [P, 1 + F]
    XtX = np.zeros((n_genes, F + 1, F + 1))
    Xty = np.zeros((n_genes, F + 1))
    np.add.at(XtX, gene, A[:, :, None] * A[:, None, :])
    np.add.at(Xty, gene, A * y[:, None])
    penalty = ridge * np.eye(F + 1)
    penalty[0, 0] = 1e-9
    return np.linalg.solve(XtX + penalty, Xty[:, :, None])[:, :, 0]


def _ridge_mse(train: tuple, test: tuple, n_genes: int) -> float:
    (g0, X0, y0), (g1, X1, y1) = train, test
    mu, sd = X0.mean(0), X0.std(0)
    sd[sd == 0] = 1.0
    w = per_gene_ridge(g0, (X0 - mu) / sd, y0, n_genes)
    A1 = np.concatenate([np.ones((len(X1), 1)), (X1 - mu) / sd], axis=1)
    return float(np.mean(((A1 * w[g1]).sum(1) - y1) ** 2))


def _trees_mse(tr: Positions, te: Positions, n_genes: int, extra: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0) -> float:
    """Test MSE of the non-linear floor (`TreeFloor`: trees on the gene's training statistics and
    the cell statistics), fitted on the training positions; with `extra` ([P_train, E], [P_test, E])
    the same trees also get those columns (the oracle's regulator summary)."""
    f_tr, f_te = (tr.feats, te.feats) if extra is None else (np.column_stack([tr.feats, extra[0]]), np.column_stack([te.feats, extra[1]]))
    tree = TreeFloor.fit(tr.gene, f_tr, tr.target, n_bins=0, cls_id=0, vocab=n_genes, seed=seed)
    X = np.concatenate([tree.gene_stats.numpy().astype(np.float64)[te.gene], f_te], axis=1)
    return float(np.mean((tree.model.predict(X) - te.target) ** 2))


def _drive(p: Positions, weights: np.ndarray, reg_mean: np.ndarray) -> np.ndarray:
    """[P, 3] the oracle's summary of the regulators seen: sum of true weight x (bin - the
    regulator's mean bin) over those seen, how many are seen, and how many the gene has."""
    seen = p.regs > 0
    w = weights[p.gene]  # [P, K]
    centred = np.where(seen, p.regs - reg_mean[p.gene], 0.0)
    return np.column_stack([(w * centred).sum(1), seen.sum(1), (w != 0).sum(1)])


def headroom(data: PreparedData, truth: pd.DataFrame, state: np.ndarray | None = None, seed: int = 0) -> dict[str, float]:
    """Test MSE (bins^2) of every floor and of the oracle on one prepared planted data set.

    `truth`: the true edges (source, target); `state`: [n_cells] cell state labels of
    data.adata (for the cell + state bound). Also counts the scored positions.
    """
    genes = list(data.adata.var_names)
    n = len(genes)
    regs, weights = regulator_table(truth, genes, with_weights=True)
    tr, te = masked_positions(data, "train", regs), masked_positions(data, "test", regs)
    floors = Floors.fit(data.adata.X, np.arange(n), data.split["train"], n, data.config.has_zero_genes)
    gene_mean = floors.gene_mean.numpy().astype(np.float64)
    row = {
        "positions": float(len(te.target)),
        "const": float(np.mean((floors.const - te.target) ** 2)),
        "gene_mean": float(np.mean((gene_mean[te.gene] - te.target) ** 2)),
        "cell": _ridge_mse((tr.gene, tr.feats, tr.target), (te.gene, te.feats, te.target), n),
        "nonlinear": _trees_mse(tr, te, n, seed=seed),
    }
    if state is not None:
        codes = pd.Categorical(state).codes
        onehot = np.eye(codes.max() + 1)[codes][:, 1:]  # [cells, S - 1]
        row["cell_state"] = _ridge_mse(
            (tr.gene, np.column_stack([tr.feats, onehot[tr.cell]]), tr.target),
            (te.gene, np.column_stack([te.feats, onehot[te.cell]]), te.target), n,
        )
    row["oracle"] = _ridge_mse(
        (tr.gene, np.column_stack([tr.feats, tr.regs, tr.regs > 0]), tr.target),
        (te.gene, np.column_stack([te.feats, te.regs, te.regs > 0]), te.target), n,
    )
    reg_mean = np.where(regs >= 0, gene_mean[np.maximum(regs, 0)], 0.0)  # [n_genes, K]
    row["oracle_trees"] = _trees_mse(tr, te, n, (_drive(tr, weights, reg_mean), _drive(te, weights, reg_mean)), seed)
    return row


HEADROOM_COLUMNS = ("const", "gene_mean", "cell", "nonlinear", "cell_state", "oracle", "oracle_trees")


def with_alpha(spec: str, alpha: float) -> str:
    """`spec` (a `synthetic:` name) with its alpha set to `alpha` (other keys kept)."""
    from dataclasses import replace

    from bioformer.data.simulate import canonical_spec, parse_spec

    return canonical_spec(replace(parse_spec(spec), alpha=alpha))


def headroom_table(spec: str, alphas: list[float], cfg=None, seed: int = 0) -> pd.DataFrame:
    """One `headroom` row per alpha of the synthetic data set `spec` (the given prior, default
    data options or `cfg`, a DataConfig). Adds the oracle's gain over the best gene-gene-free
    floor (constant, per-gene, cell-aware, non-linear), in % of that floor."""
    from dataclasses import replace

    from bioformer.config import DataConfig
    from bioformer.data.datasets import cache_dir
    from bioformer.data.pipeline import prepare_data
    from bioformer.data.simulate import cached_simulation

    rows = []
    for alpha in alphas:
        name = with_alpha(spec, alpha)
        dcfg = replace(cfg or DataConfig(), data=name, prior=name, gene_prior=None)
        data = prepare_data(dcfg, seed=seed, quiet=True)
        truth = pd.read_csv(cached_simulation(name, cache_dir()) / "truth_edges.csv")
        r = headroom(data, truth, data.adata.obs["state"].to_numpy(), seed=seed)
        best = min(r["const"], r["gene_mean"], r["cell"], r["nonlinear"])
        oracle = min(r["oracle"], r["oracle_trees"])
        rows.append({"alpha": alpha, **r, "best_floor": best, "oracle_gain_pct": 100.0 * (best - oracle) / best})
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    """The headroom table as markdown (MSE in bins^2 on the test cells' masked positions)."""
    head = "| alpha | positions | " + " | ".join(HEADROOM_COLUMNS) + " | oracle vs best floor |"
    lines = [head, "|" + "---|" * (len(HEADROOM_COLUMNS) + 3)]
    for _, r in df.iterrows():
        cells = " | ".join(f"{r[c]:.2f}" for c in HEADROOM_COLUMNS)
        lines.append(f"| {r['alpha']:g} | {int(r['positions'])} | {cells} | {-r['oracle_gain_pct']:+.1f}% |")
    return "\n".join(lines)


def compare_counts(sim_counts, reference: str, n_genes: int) -> pd.DataFrame:
    """`count_stats` of a simulated count matrix beside a real data set's (`reference`: name or
    .h5ad path) over its top `n_genes` HVGs (seurat_v3 on counts), as two columns."""
    import scanpy as sc

    from bioformer.data.load import load_anndata
    from bioformer.data.simulate import count_stats

    real = load_anndata(reference, quiet=True)
    hvg = sc.pp.highly_variable_genes(real, n_top_genes=min(n_genes, real.n_vars), flavor="seurat_v3", inplace=False)
    X = real.X[:, hvg["highly_variable"].to_numpy()]
    return pd.DataFrame({"simulated": count_stats(sim_counts), f"{reference} (top {n_genes} HVG)": count_stats(X)})


def alpha_dirs(root: str | Path, alphas: list[str] | None = None) -> list[tuple[str, Path]]:
    """(alpha, directory) of a planted study's results, `root/alpha<A>`: the alphas given, or
    every one under `root` (what the planted-study scripts report on)."""
    root = Path(root)
    names = alphas or sorted(p.name[len("alpha"):] for p in root.glob("alpha*"))
    return [(a, root / f"alpha{a}") for a in names]
