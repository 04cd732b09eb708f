"""Paired-seed check of the use objectives (issue 27): MVC loss, unexpressed genes, the zero head.

Arms (same data, split and seeds; only the named options differ):

    base        the defaults before issue 27 (expressed genes only, no MVC, no zero head)
    mvc         + --mvc-weight 1 (the cell-embedding objective)
    ecs         + --ecs-weight W (scGPT's elastic cell similarity of the batch's cell embeddings)
    zeros       + --zero-gene-frac F (unexpressed genes in the sequences), no zero head
    zeros-head  + --zero-gene-frac F --explicit-zero-prob

Every run is scored on its own test cells: kNN (k = 15) accuracy and silhouette of the <cls> and
mean embeddings (kNN fitted on `--knn-train-cells` training cells), the masked test MSE
(`summary.json`; on expressed positions only for the zero arms, `test_mse_nonzero`), and on
`--impute-cells` test cells with 10% of their non-zero counts hidden: the hidden values' MSE and
the AUROC of hidden non-zero vs true zero. Differences to `base` per seed, mean and t interval.

    python scripts/use_objectives.py --family scgpt --seeds 0 1 2 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"pbmc3k": "celltype", "kang2018": "cell_type"}


def arm_flags(arm: str, zero_frac: float, mvc_weight: float, ecs_weight: float = 10.0) -> list[str]:
    """CLI flags of an arm; every arm names every option, so a change of default cannot leak in."""
    mvc = mvc_weight if arm == "mvc" else 0.0
    ecs = ecs_weight if arm == "ecs" else 0.0
    zeros = zero_frac if arm.startswith("zeros") else 0.0
    head = "--explicit-zero-prob" if arm == "zeros-head" else "--no-explicit-zero-prob"
    return ["--mvc-weight", str(mvc), "--ecs-weight", str(ecs), "--zero-gene-frac", str(zeros), head]


def train(run_dir: Path, data: str, family: str, seed: int, epochs: int, flags: list[str], extra: list[str]) -> float:
    """Train one arm (skipped when finished); returns the wall seconds of training (nan if skipped)."""
    if (run_dir / "summary.json").exists():
        return float("nan")
    cmd = [sys.executable, "-m", "bioformer.cli", "-q", "train", "--data", data, "--model", family, "--seed", str(seed),
           "--epochs", str(epochs), "--num-threads", "1", "--no-progress", "--out", str(run_dir), *flags, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def _test_cells(run_dir: Path, data: str, knn_train_cells: int):
    """(run, raw AnnData, sampled training cells, test cells) of a finished run."""
    from bioformer import Run
    from bioformer.data.load import load_anndata

    run = Run.load(run_dir, device="cpu")
    raw = load_anndata(data, max_cells=run.config.data.max_cells, seed=run.config.train.seed, quiet=True)
    split = np.load(run_dir / "split.npz")
    pos = {n: i for i, n in enumerate(raw.obs_names)}
    train = np.array([pos[n] for n in split["obs_names"][split["train"]]])
    test = np.array([pos[n] for n in split["obs_names"][split["test"]]])
    train = np.sort(np.random.default_rng(0).choice(train, min(knn_train_cells, len(train)), replace=False))
    return run, raw, train, test


def score(run_dir: Path, data: str, knn_train_cells: int, impute_cells: int) -> dict[str, float]:
    """Embedding and imputation scores of one finished run on its test cells."""
    from bioformer.evaluation.use import embedding_scores

    run, raw, train, test = _test_cells(run_dir, data, knn_train_cells)
    cells = np.r_[train, test]
    sub = raw[cells].copy()
    labels = sub.obs[LABELS[data]].astype(str).to_numpy()
    tr, te = np.arange(len(train)), np.arange(len(train), len(cells))
    out = json.loads((run_dir / "summary.json").read_text())
    scores = {"test_mse": out["test_mse"], "test_mse_nonzero": out.get("test_mse_nonzero", out["test_mse"])}
    for pooling in ("cls", "mean"):
        for k, v in embedding_scores(run.embed(sub, pooling=pooling), labels, tr, te).items():
            scores[f"{pooling}_{k}"] = v
    return {**scores, **impute_scores(run, raw, test, impute_cells)}


def impute_scores(run, raw, test: np.ndarray, impute_cells: int) -> dict[str, float]:
    """Hide 10% of the non-zero counts of `impute_cells` test cells; MSE / Pearson of the hidden
    values (value if detected for a zero-head model) and AUROC hidden non-zero vs true zero."""
    from bioformer.evaluation.use import hide_nonzeros, imputation_scores, lognorm, zero_positions

    imp = np.sort(np.random.default_rng(1).choice(test, min(impute_cells, len(test)), replace=False))
    hidden, hr, hc = hide_nonzeros(raw.X[imp], 0.10, seed=0)
    col = {g: j for j, g in enumerate(raw.var_names)}
    run_cols = np.array([col[g] for g in run.genes if g in col])
    to_run = {c: run.genes.index(raw.var_names[c]) for c in run_cols}
    keep = np.isin(hc, run_cols)
    hr, hc = hr[keep], hc[keep]
    truth = np.asarray(lognorm(raw.X[imp])[hr, hc]).ravel()
    a = raw[imp].copy()
    a.X = hidden
    result = run.imputation(a)
    zr, zc = zero_positions(raw.X[imp], run_cols)
    hj = np.array([to_run[c] for c in hc])
    zj = np.array([to_run[c] for c in zc])
    # detection score: P(detected), else the predicted bin (the bin read through a cell's edges is
    # flat over the low bins, which all map to one count)
    detect = result.detected_prob if result.detected_prob is not None else result.bins
    value = result.value_if_detected if result.value_if_detected is not None else result.expression
    s = imputation_scores(value[hr, hj], truth, detect[hr, hj], detect[zr, zj])
    out = {"impute_mse": s["mse"], "impute_pearson": s["pearson"], "auroc_hidden_vs_zero": s["auroc_hidden_vs_zero"]}
    if result.value_if_detected is not None:
        out["impute_mse_expected"] = float(np.mean((result.expression[hr, hj] - truth) ** 2))
    return out


def paired(rows: list[dict], arm: str, metric: str) -> dict[str, float]:
    """Mean difference arm - base over seeds with a 95% t interval."""
    from scipy import stats

    base = {r["seed"]: r[metric] for r in rows if r["arm"] == "base"}
    d = np.array([r[metric] - base[r["seed"]] for r in rows if r["arm"] == arm and r["seed"] in base])
    if len(d) < 2:
        return {"mean": float(d.mean()) if len(d) else float("nan"), "low": float("nan"), "high": float("nan"), "n": len(d)}
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"mean": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half), "n": len(d)}


REPORTED = ("cls_knn_accuracy", "mean_knn_accuracy", "cls_silhouette", "test_mse_nonzero", "impute_mse", "auroc_hidden_vs_zero")


def report(doc: dict) -> str:
    """Markdown: per arm, the mean over seeds and the paired difference to base [95% t CI]."""
    rows, diffs = doc["rows"], doc["difference_to_base"]
    arms = ["base", *sorted(diffs)]
    head = "| metric | " + " | ".join(arms) + " |\n|---|" + "---|" * len(arms)
    lines = [head]
    for m in REPORTED:
        cells = []
        for arm in arms:
            vals = [r[m] for r in rows if r["arm"] == arm]
            cell = f"{np.mean(vals):.3f} (n={len(vals)})" if vals else "-"
            if arm != "base" and m in diffs.get(arm, {}):
                d = diffs[arm][m]
                cell += f"; {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="pbmc3k", choices=list(LABELS))
    p.add_argument("--family", default="scgpt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--arms", default="base,mvc,zeros,zeros-head")
    p.add_argument("--zero-gene-frac", type=float, default=0.25)
    p.add_argument("--mvc-weight", type=float, default=1.0)
    p.add_argument("--ecs-weight", type=float, default=10.0, help="the ecs arm's weight (scGPT's: 10)")
    p.add_argument("--knn-train-cells", type=int, default=1200)
    p.add_argument("--impute-cells", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "results" / "use-objectives"))
    p.add_argument("--table", default=None, help="JSON file name under --out (default DATA-FAMILY.json); --merge reads every other")
    p.add_argument("--merge", nargs="*", default=[], help="more tables (same arms) whose rows join this one")
    p.add_argument("--report", action="store_true", help="print the paired table of the existing JSON and exit")
    p.add_argument("--rescore-imputation", action="store_true", help="recompute the imputation scores of every row (runs kept)")
    p.add_argument("--extra", default="", help="more train flags for every arm, e.g. '--max-cells 2000'")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    table = out / (args.table or f"{args.data}-{args.family}.json")
    if args.report:
        print(report(json.loads(table.read_text())))
        return
    rows = json.loads(table.read_text())["rows"] if table.exists() else []
    for other in args.merge:
        rows += [r for r in json.loads((out / other).read_text())["rows"] if (r["arm"], r["seed"]) not in {(q["arm"], q["seed"]) for q in rows}]
    if args.rescore_imputation:
        for r in rows:
            run_dir = out / "runs" / f"{args.data}-{args.family}-{r['arm']}-s{r['seed']}"
            run, raw, _, test = _test_cells(run_dir, args.data, args.knn_train_cells)
            r.update(impute_scores(run, raw, test, args.impute_cells))
            print(json.dumps(r), flush=True)
    done = {(r["arm"], r["seed"]) for r in rows}
    for seed in args.seeds:  # seeds outer: every arm of a seed is done before the next seed
        for arm in args.arms.split(","):
            if (arm, seed) in done:
                continue
            run_dir = out / "runs" / f"{args.data}-{args.family}-{arm}-s{seed}"
            secs = train(run_dir, args.data, args.family, seed, args.epochs, arm_flags(arm, args.zero_gene_frac, args.mvc_weight, args.ecs_weight), args.extra.split())
            row = {"arm": arm, "seed": seed, "train_seconds": secs, **score(run_dir, args.data, args.knn_train_cells, args.impute_cells)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            write(table, args, rows)
    write(table, args, rows)


def write(table: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    """The rows and the paired differences to base (atomic rewrite)."""
    metrics = [k for k in rows[0] if k not in ("arm", "seed")] if rows else []
    arms = sorted({r["arm"] for r in rows} - {"base"})
    diffs = {arm: {m: paired(rows, arm, m) for m in metrics if all(m in r for r in rows if r["arm"] in (arm, "base"))} for arm in arms}
    doc = {"command": "python scripts/use_objectives.py " + " ".join(sys.argv[1:]), "recipe": vars(args), "rows": rows,
           "difference_to_base": diffs, "note": "CPU, 1 thread, shared 2-core machine: train_seconds are contended"}
    tmp = table.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(table)


if __name__ == "__main__":
    main()
