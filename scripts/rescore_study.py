"""Re-score a study's finished runs with the current evaluation and print the tables the README
quotes: every arm's test MSE beside the three floors, per-gene Pearson and per-cell Spearman with
bootstrap 95% intervals, and the GRN table (held-out prior edges and ENCODE ChIP targets) of the
arms' pair-score readouts (`Run.pair_scores` over each run's training cells) beside the baselines.

Each run's summary.json gets the new `test` block (and its flat copy), so
`bioformer experiment STUDY --report-only --out STUDY_DIR ...` then rewrites summary.md with the
cell-aware floor.

    python scripts/rescore_study.py STUDY_DIR [--arms A,B] [--grn]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ci(result, key: str) -> str:
    lo, hi = result.ci.get(key, (float("nan"), float("nan")))
    return f"[{lo:.3f}, {hi:.3f}]"


def main() -> None:
    from bioformer.evaluation.grn import format_grn_table, score_run
    from bioformer.training.evaluate import evaluate_run

    ap = argparse.ArgumentParser()
    ap.add_argument("study_dir")
    ap.add_argument("--grn", action="store_true", help="also print the GRN table: each arm's pair-score readout beside the baselines")
    ap.add_argument("--arms", help="comma-separated arms to re-score (default: all)")
    args = ap.parse_args()
    runs = sorted(Path(args.study_dir).glob("runs/*/seed*/summary.json"))
    if args.arms:
        runs = [r for r in runs if r.parent.parent.name in args.arms.split(",")]
    print("| arm | seed | test MSE [95% CI] | cell-aware floor | per-gene floor | constant floor | model − cell floor [95% CI] | per-gene Pearson [95% CI] (cell floor) | per-cell Spearman [95% CI] (cell floor) | MSE log | positions / cells |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in runs:
        run = path.parent
        result, _ = evaluate_run(run, quiet=True)
        summary = json.loads(path.read_text())
        summary.update({"test": result.to_dict(), **result.flat("test_")})
        path.write_text(json.dumps(summary, indent=1, default=float))
        f = result.floors
        print(f"| {run.parent.name} | {summary['seed']} | {result['mse']:.2f} {_ci(result, 'mse')} | {f['cell']['mse']:.2f} | {f['gene_mean']['mse']:.2f} | {f['const']['mse']:.2f} "
              f"| {_ci(result, 'mse_minus_floor_cell')} | {result['pearson_gene']:.3f} {_ci(result, 'pearson_gene')} ({f['cell']['pearson_gene']:.3f}) "
              f"| {result['spearman_cell']:.3f} {_ci(result, 'spearman_cell')} ({f['cell']['spearman_cell']:.3f}) | {result['mse_log']:.3f} (cell floor {f['cell']['mse_log']:.3f}) "
              f"| {result.counts['positions']:,} / {result.counts['cells']} |", flush=True)
        roles = ", ".join(f"{r} {result[f'mse_role_{r}']:.1f} vs {f['cell'][f'mse_role_{r}']:.1f} (n={result.counts[f'role_{r}']})" for r in ("tf", "target", "neither"))
        print(f"|  |  | MSE by role, model vs cell floor: {roles} |||||||||")
    if args.grn and runs:
        # each arm's first run: its pair-score readout (Run.pair_scores: z for BioFormer, attention
        # for scGPT) over the run's training cells, beside the baselines, on the first run's truth
        scores, first = {}, {}
        for path in runs:
            first.setdefault(path.parent.parent.name, path.parent)
        for arm, run_dir in first.items():
            scores[f"{arm} readout"] = _readout(run_dir)
        print(format_grn_table(score_run(runs[0].parent, scores)))


def _readout(run_dir: Path):
    """The run's pair scores [genes, genes] averaged over its training cells (NaN where unseen)."""
    import numpy as np

    from bioformer.data.load import load_anndata
    from bioformer.inference import Run

    run = Run.load(run_dir, device="cpu")
    d = run.config.data
    adata = load_anndata(d.data, d.layer, d.gene_column, d.max_cells, run.config.train.seed, quiet=True)
    split = np.load(run_dir / "split.npz", allow_pickle=False)
    adata = adata[list(split["obs_names"][split["train"]])]
    return run.pair_scores(adata).ranked()  # unseen pairs NaN: ranked last


if __name__ == "__main__":
    main()
