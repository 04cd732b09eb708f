"""The prior study's two tables that its summary.md does not hold: test MSE by prior role (masked
positions of TFs, of their targets, of neither; beside the cell-aware floor on the same
positions), and GRN recovery by each arm's pair-score readout (`Run.pair_scores` over the run's
training cells) on the run's held-out prior edges and on ENCODE ChIP targets, against
co-expression and random, per seed and paired against a reference arm.

    python scripts/prior_study_tables.py results/prior-v2 [--reference zero-z] [--grn-seeds 5]

Writes STUDY_DIR/roles_grn.md (the printed tables) and STUDY_DIR/roles_grn.csv (GRN rows per seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROLES = ("tf", "target", "neither")


def _runs(study: Path) -> dict[str, dict[int, Path]]:
    """arm -> seed -> finished run directory."""
    out: dict[str, dict[int, Path]] = {}
    for path in sorted(study.glob("runs/*/seed*/summary.json")):
        out.setdefault(path.parent.parent.name, {})[int(path.parent.name[4:])] = path.parent
    return out


def _fmt_diff(test: dict) -> str:
    return f"{test['mean_diff']:+.2f} [{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]"


def role_table(runs: dict[str, dict[int, Path]], reference: str) -> str:
    from bioformer.experiments.report import paired_test

    summary = {arm: {s: json.loads((d / "summary.json").read_text()) for s, d in seeds.items()} for arm, seeds in runs.items()}
    lines = ["| arm | n | " + " | ".join(f"MSE {r} (cell floor)" for r in ROLES) + " | " + " | ".join(f"{r}: arm − {reference}" for r in ROLES) + " |",
             "|---|---|" + "---|" * (2 * len(ROLES))]
    ref = summary.get(reference, {})
    for arm, by_seed in summary.items():
        cells = []
        for r in ROLES:
            m = np.mean([s[f"test_mse_role_{r}"] for s in by_seed.values()])
            f = np.mean([s[f"floor_cell_mse_role_{r}"] for s in by_seed.values()])
            cells.append(f"{m:.2f} ({f:.2f})")
        diffs = []
        seeds = sorted(set(by_seed) & set(ref))
        for r in ROLES:
            if arm == reference or len(seeds) < 2:
                diffs.append("–")
            else:
                diffs.append(_fmt_diff(paired_test([by_seed[s][f"test_mse_role_{r}"] for s in seeds], [ref[s][f"test_mse_role_{r}"] for s in seeds])))
        lines.append(f"| {arm} | {len(by_seed)} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    n = {r: int(np.mean([s[f"test_n_role_{r}"] for by_seed in summary.values() for s in by_seed.values()])) for r in ROLES}
    lines.append("")
    lines.append("Scored positions per run (mean): " + ", ".join(f"{r} {n[r]:,}" for r in ROLES) + ".")
    return "\n".join(lines)


def _readout(run_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The run's pair scores [genes, genes] averaged over its training cells, and the genes."""
    from bioformer.data.load import load_anndata
    from bioformer.inference import Run

    run = Run.load(run_dir, device="cpu")
    d = run.config.data
    adata = load_anndata(d.data, d.layer, d.gene_column, d.max_cells, run.config.train.seed, quiet=True)
    split = np.load(run_dir / "split.npz", allow_pickle=False)
    result = run.pair_scores(adata[list(split["obs_names"][split["train"]])])
    return result.scores, list(result.genes)


def grn_rows(runs: dict[str, dict[int, Path]], seeds: list[int]) -> pd.DataFrame:
    """One row per (seed, truth, predictor): every arm's readout of that seed scored on the truth
    sets of the seed's first arm (the same split and held-out edges in every arm of a seed)."""
    from tqdm import tqdm

    from bioformer.evaluation.grn import score_run

    frames = []
    for seed in tqdm(seeds, desc="GRN scoring", unit="seed"):
        arms = {arm: by_seed[seed] for arm, by_seed in runs.items() if seed in by_seed}
        first = next(iter(arms.values()))
        scores, genes = {}, None
        for arm, run_dir in arms.items():
            s, g = _readout(run_dir)
            if genes is None:
                genes = g
            if g != genes:  # another gene set: not comparable on this seed's truth
                continue
            scores[f"{arm} readout"] = s
        df = score_run(first, scores, genes=genes)
        df["seed"] = seed
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def grn_table(df: pd.DataFrame, reference: str) -> str:
    from bioformer.experiments.report import paired_test

    lines = []
    for truth, g in df.groupby("truth", sort=False):
        n_true = g["n_true"].mean()
        lines.append(f"**{truth}** ({n_true:.0f} true edges per seed on average; random level AP {g['random'].mean():.4f}, EPR 1)")
        lines.append("")
        lines.append(f"| predictor | seeds | AP (mean) | EPR (mean) | AP − {reference} readout [95% CI] | EPR − {reference} readout [95% CI] |")
        lines.append("|---|---|---|---|---|---|")
        ref = g[g["predictor"] == f"{reference} readout"].set_index("seed")
        for pred, p in g.groupby("predictor", sort=False):
            p = p.set_index("seed")
            seeds = sorted(set(p.index) & set(ref.index))
            if pred == f"{reference} readout" or len(seeds) < 2:
                d_ap = d_epr = "–"
            else:
                d_epr = _fmt_diff(paired_test(p.loc[seeds, "epr"], ref.loc[seeds, "epr"]))
                test_ap = paired_test(p.loc[seeds, "average_precision"], ref.loc[seeds, "average_precision"])
                d_ap = f"{test_ap['mean_diff']:+.4f} [{test_ap['ci_low']:+.4f}, {test_ap['ci_high']:+.4f}]"
            lines.append(f"| {pred} | {len(p)} | {p['average_precision'].mean():.4f} | {p['epr'].mean():.2f} | {d_ap} | {d_epr} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--reference", default="zero-z", help="the arm every other is paired against")
    ap.add_argument("--grn-seeds", type=int, default=5, help="score the GRN readouts of the first N seeds (0: skip)")
    args = ap.parse_args()
    runs = _runs(args.study_dir)
    if not runs:
        raise SystemExit(f"error: no finished runs under {args.study_dir}/runs")
    out = ["## MSE by prior role", "", role_table(runs, args.reference), ""]
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})[: args.grn_seeds]
    if seeds:
        df = grn_rows(runs, seeds)
        df.to_csv(args.study_dir / "roles_grn.csv", index=False)
        out += ["## GRN recovery by each arm's pair-score readout", "", grn_table(df, args.reference)]
    text = "\n".join(out)
    print(text)
    (args.study_dir / "roles_grn.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
