"""GRN part of the planted study (point 3b of issue #26): for every finished run under
results/planted/alpha*/runs/ARM/seedS, score on its validation cells

- the z readouts (every block's pair bias; `chosen` = best AP on the given edges, picked before
  any held-out edge is looked at) or scGPT's attention,
- the in-silico perturbation readouts (`bioformer.inference.perturb`),

and, once per (alpha, seed), the baselines on the training cells (|Pearson|, |Spearman|
co-expression, GENIE3-style trees, the leak-free degree baseline), against the given true edges
(positive control) and the held-out true edges (what no model saw). Writes alphaA/grn.csv and
prints per alpha and predictor the mean over seeds of AP / random and pooled AUROC (t 95% CI
over seeds), on the given and on the held-out edges.

    python scripts/planted_grn.py [RESULTS_DIR] [ALPHA ...]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bioformer.evaluation.grn import auroc, per_tf_metrics, ranking_metrics

HELDOUT = "heldout prior edges"


def metrics(S: np.ndarray, truth) -> dict[str, float]:
    """Pooled AP (with its random level) and AUROC over the truth's candidate pairs, and per-TF
    AUROC over TFs with >= 1 true candidate target (held-out sets have ~1 per TF)."""
    c = truth.candidates
    r = ranking_metrics(S[c], truth.truth[c], ks=())
    t = per_tf_metrics(S, truth, min_targets=1)
    return {"n_true": r["n_true"], "n_candidates": r["n_candidates"], "ap": r["average_precision"], "random": r["random"],
            "auroc": auroc(S[c], truth.truth[c]), "per_tf_auroc": t["per_tf_auroc"], "n_tfs": t["n_tfs"]}


def score_run(run_dir: Path, base_cache: dict) -> tuple[list[dict], dict[str, np.ndarray], object, object]:
    """(metric rows of the run's readouts, the seed's baselines, the control and held-out truths)."""
    from bioformer.data.load import load_anndata
    from bioformer.data.pipeline import edges_for_genes
    from bioformer.evaluation.baselines import baselines
    from bioformer.evaluation.grn import run_truth
    from bioformer.inference import Run
    from bioformer.inference.perturb import perturbation_pair_scores
    from bioformer.inference.readout_choice import (
        candidate_pair_scores,
        choose_readout,
        control_truth,
    )
    from bioformer.models import uses_prior

    run = Run.load(run_dir, device="cpu")
    d = run.config.data
    adata = load_anndata(d.data, d.layer, d.gene_column, d.max_cells, run.config.train.seed, quiet=True)
    idx = np.load(run_dir / "split.npz", allow_pickle=False)
    cells = adata[list(idx["obs_names"][idx["valid"]])]
    rt = run_truth(run_dir, run.genes)
    given = rt.given
    if uses_prior(run.config.model, d.prior):  # the edges this z was built from (rewired: a control)
        given_z = edges_for_genes(d.prior, set(run.genes), run.config.train.seed, heldout=rt.heldout)
    else:
        given_z = given
    tfs = sorted(set(rt.prior["source"]) & set(run.genes))
    control = control_truth(given, run.genes, rt.heldout)  # the given TRUE edges (precision 1 here)
    heldout = next(t for t in rt.truths if t.name == HELDOUT)
    z, _ = candidate_pair_scores(run, cells)
    chosen, _ = choose_readout(z, control_truth(given_z, run.genes, rt.heldout))
    pert, _ = perturbation_pair_scores(run, cells, regulators=tfs)
    predictors = {"z chosen": z[chosen], **pert}
    seed = run.config.train.seed
    if seed not in base_cache:
        base_cache[seed] = baselines(run.genes, rt.X_train, seed, given=given, regulators=tfs)
    rows = []
    for name, S in predictors.items():
        for truth in (control, heldout):
            rows.append({"predictor": name, "kind": "readout", "truth": "given" if truth is control else "heldout",
                         "chosen_z": chosen, **metrics(S, truth)})
    return rows, base_cache[seed], control, heldout


def score_alpha(adir: Path) -> pd.DataFrame:
    rows, done_base = [], set()
    cache: dict = {}
    for run_dir in sorted(adir.glob("runs/*/seed*")):
        if not (run_dir / "summary.json").exists():
            continue
        arm, seed = run_dir.parent.name, int(run_dir.name[4:])
        r, base, control, heldout = score_run(run_dir, cache)
        rows += [{"arm": arm, "seed": seed, **x} for x in r]
        if seed not in done_base:  # baselines: once per seed (they see only the training cells)
            done_base.add(seed)
            for name, S in base.items():
                for truth in (control, heldout):
                    rows.append({"arm": "baseline", "seed": seed, "predictor": name, "kind": "baseline",
                                 "truth": "given" if truth is control else "heldout", **metrics(S, truth)})
        print(f"  {run_dir}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, predictor, truth): mean over seeds of AP / random, AUROC and per-TF AUROC with a
    t 95% interval over seeds for AUROC."""
    from scipy import stats

    out = []
    for (arm, pred, truth), g in df.groupby(["arm", "predictor", "truth"], sort=False):
        a = g["auroc"].to_numpy()
        half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else math.nan
        out.append({"arm": arm, "predictor": pred, "truth": truth, "n_seeds": len(g), "n_true": int(g["n_true"].iloc[0]),
                    "ap_over_random": float((g["ap"] / g["random"]).mean()), "auroc": float(a.mean()),
                    "auroc_low": float(a.mean() - half), "auroc_high": float(a.mean() + half),
                    "per_tf_auroc": float(g["per_tf_auroc"].mean())})
    return pd.DataFrame(out)


def main() -> None:
    from bioformer.experiments.headroom import alpha_dirs

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/planted")
    for a, adir in alpha_dirs(root, sys.argv[2:]):
        df = score_alpha(adir)
        if df.empty:
            continue
        df.to_csv(adir / "grn.csv", index=False)
        s = summarise(df)
        s.to_csv(adir / "grn_summary.csv", index=False)
        print(f"\n## alpha {a}\n")
        print("| arm | predictor | truth | seeds | true edges | AP / random | AUROC [95% CI over seeds] | per-TF AUROC |")
        print("|---|---|---|---|---|---|---|---|")
        for _, r in s.iterrows():
            print(f"| {r['arm']} | {r['predictor']} | {r['truth']} | {r['n_seeds']} | {r['n_true']} | {r['ap_over_random']:.2f} | "
                  f"{r['auroc']:.3f} [{r['auroc_low']:.3f}, {r['auroc_high']:.3f}] | {r['per_tf_auroc']:.3f} |")


if __name__ == "__main__":
    main()
