"""The prior study's two tables that its summary.md does not hold: test MSE by prior role (masked
positions of TFs, of their targets, of neither; beside the cell-aware floor on the same
positions), and GRN recovery by every candidate z readout of each arm (each block's pair bias per
head and as signed mean / L2 / max; scGPT's attention), each first scored on the prior edges the
arm was given (the positive control, validation cells) and then on the run's held-out prior
edges and ENCODE ChIP targets, per TF and pooled, beside random, co-expression, GENIE3 and the
leak-free degree baseline (`bioformer.inference.readout_choice.run_readout_table`).

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
    from bioformer.experiments.stats import paired_test

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


def grn_rows(runs: dict[str, dict[int, Path]], seeds: list[int], genie3: bool = True) -> pd.DataFrame:
    """One row per (seed, arm, truth, predictor): every arm's candidate readouts (control score,
    held-out and ChIP scores) and, once per seed, the baselines (the same split and held-out
    edges in every arm of a seed)."""
    from tqdm import tqdm

    from bioformer.inference.readout_choice import run_readout_table

    frames = []
    for seed in tqdm(seeds, desc="GRN scoring", unit="seed"):
        for k, (arm, by_seed) in enumerate((a, b) for a, b in runs.items() if seed in b):
            df = run_readout_table(by_seed[seed], genie3=genie3, with_baselines=(k == 0))
            df.loc[df["kind"] == "readout", "predictor"] = arm + ": " + df.loc[df["kind"] == "readout", "predictor"]
            frames.append(df.assign(seed=seed, arm=arm))
    return pd.concat(frames, ignore_index=True)


def _mean_ci(x: pd.Series, digits: int) -> str:
    from bioformer.experiments.stats import t_interval

    mean, lo, hi = t_interval(x.to_numpy(dtype=float))
    return f"{mean:.{digits}f}" if np.isnan(lo) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def grn_table(df: pd.DataFrame, reference: str) -> str:
    """Per truth: every readout (control AP and pass rate beside its scores; chosen = best control
    AP, with how often) then the baselines; means over seeds, t intervals over seeds."""
    lines = []
    for truth, g in df.groupby("truth", sort=False):
        lines += [f"**{truth}** ({g['n_true'].mean():.0f} true edges per seed; {g['n_tfs'].mean():.0f} TFs with >= 5 true targets; "
                  f"random level AP {g['random'].mean():.4f}, per-TF AUROC 0.5, EPR 1)", "",
                  "| predictor | seeds | control AP | passes control | chosen | per-TF AUROC [95% CI over seeds] | per-TF AUPRC | pooled AUPRC | EPR (TF rows) | EPR (all pairs) | unscored pairs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for pred, p in g.groupby("predictor", sort=False):
            readout = p["kind"].iloc[0] == "readout"
            ctrl = f"{p['control_ap'].mean():.4f}" if readout else "–"
            passes = f"{int(p['passes_control'].sum())}/{len(p)}" if readout else "–"
            chosen = f"{int(p['chosen'].astype(bool).sum())}/{len(p)}" if readout else "–"
            lines.append(f"| {pred} | {len(p)} | {ctrl} | {passes} | {chosen} | {_mean_ci(p['per_tf_auroc'], 3)} | {p['per_tf_auprc'].mean():.4f} | "
                         f"{p['auprc'].mean():.4f} | {p['epr'].mean():.2f} | {p['epr_all_pairs'].mean():.2f} | {p['n_unscored'].mean():.0f} |")
        lines.append("")
    lines.append(f"Control AP: average precision of the readout on the prior edges the arm's z was given (validation cells; an arm without a prior is scored on the real visible prior and should fail). "
                 f"Chosen: how often the readout had the best control AP of its arm (the default readout). Reference arm for the MSE table: {reference}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--reference", default="zero-z", help="the arm every other is paired against")
    ap.add_argument("--grn-seeds", type=int, default=5, help="score the GRN readouts of the first N seeds (0: skip)")
    ap.add_argument("--no-genie3", action="store_true", help="skip the GENIE3 baseline (the slowest part)")
    args = ap.parse_args()
    runs = _runs(args.study_dir)
    if not runs:
        raise SystemExit(f"error: no finished runs under {args.study_dir}/runs")
    out = ["## MSE by prior role", "", role_table(runs, args.reference), ""]
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})[: args.grn_seeds]
    if seeds:
        df = grn_rows(runs, seeds, genie3=not args.no_genie3)
        df.to_csv(args.study_dir / "roles_grn.csv", index=False)
        out += ["## GRN recovery by every candidate z readout, judged first by the positive control", "", grn_table(df, args.reference)]
    text = "\n".join(out)
    print(text)
    (args.study_dir / "roles_grn.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
