"""Which gene-pair readout of a model to trust: a positive control on the edges it was given.

A z readout that cannot find the prior edges that were in the model's input says nothing about
held-out ones. So every candidate readout (`bioformer.inference.readouts.candidates`: every
registered grn readout that applies to the model: each block's pair bias per head and as signed
mean / L2 / max over heads, scGPT's attention, and any readout registered later) is
first scored on the GIVEN prior edges over the validation cells (`choose_readout`); the default
readout is the one that recovers them best (average precision), chosen there and never on
held-out edges; only then is every candidate scored on the held-out edges and ChIP targets,
beside the baselines (`readout_table`). Pairs never seen together in a cell have no score (NaN):
ranked last and counted (`n_unscored`).

    python -c "from bioformer.inference.readout_choice import run_readout_table, format_readout_table; \
               print(format_readout_table(run_readout_table('runs/my-run')))"
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bioformer.evaluation.grn import TruthSet, edge_truth, score_matrix
from bioformer.inference.pairs import CandidateAccumulator
from bioformer.inference.readouts import candidate_readouts, candidates

CONTROL = "given prior edges (positive control)"
CONTROL_AP_FACTOR = 2.0  # pass: AP >= 2 x random level and per-TF AUROC CI above 0.5


def passes_control(m: dict | pd.Series) -> bool:
    """A readout passes the positive control when its AP on the given edges is at least
    `CONTROL_AP_FACTOR` times the random level and its per-TF AUROC 95% interval lies above 0.5
    (when fewer than two TFs are scored per TF, the AP rule alone decides)."""
    ap, rand, low = m["average_precision"], m["random"], m.get("per_tf_auroc_low", math.nan)
    if not ap >= CONTROL_AP_FACTOR * rand:
        return False
    return bool(math.isnan(low) or low > 0.5)


def control_truth(given: pd.DataFrame, genes: list[str], heldout: pd.DataFrame | None = None) -> TruthSet:
    """Truth set of the positive control: the `given` edges among `genes`, candidate rows their
    TFs; held-out pairs are not candidates (neither positives nor negatives)."""
    tfs = sorted(set(given["source"]) & set(genes))
    return edge_truth(CONTROL, given, genes, tfs=tfs, exclude=heldout)


def choose_readout(candidates: dict[str, np.ndarray], control: TruthSet) -> tuple[str, pd.DataFrame]:
    """(name of the readout with the highest AP on the given edges, one row per candidate with its
    control metrics and `passes`). Only `control` is looked at: no held-out edge can steer it."""
    rows = [{"readout": name, **score_matrix(S, control)} for name, S in candidates.items()]
    df = pd.DataFrame(rows)
    df["passes"] = [passes_control(r) for _, r in df.iterrows()]
    best = str(df.loc[df["average_precision"].fillna(-1.0).idxmax(), "readout"])
    return best, df


@torch.no_grad()
def candidate_pair_scores(run, adata, batch_size: int | None = None, progress: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every candidate readout of a `Run` over its genes, averaged over the cells of `adata` that
    hold both genes: (name -> [G, G] with NaN where no cell does, [G, G] cell counts)."""
    cells = run.prepare(adata, quiet=True)
    acc = CandidateAccumulator(len(run.genes))
    readouts = candidates(run.model)  # every registered grn readout that applies to the model
    for _, batch in run._sequence_batches(cells, batch_size, progress, "readouts"):
        acc.add(candidate_readouts(run.model, *run._model_inputs(batch), readouts=readouts), batch["columns"])
    return acc.result()


def readout_table(candidates: dict[str, np.ndarray], control: TruthSet, truths: list[TruthSet],
                  baselines: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Long table: per truth (the control first, then `truths`), one row per candidate readout
    (`kind` readout, with the control's AP and pass beside every truth's row, and `chosen`) and,
    on the other truths, one per baseline (`kind` baseline)."""
    chosen, ctrl = choose_readout(candidates, control)
    ctrl = ctrl.set_index("readout")
    rows = []
    for truth in [control, *truths]:
        for name, S in candidates.items():
            m = ctrl.loc[name].to_dict() if truth is control else score_matrix(S, truth)
            rows.append({"truth": truth.name, "predictor": name, "kind": "readout", **m,
                         "control_ap": ctrl.loc[name, "average_precision"], "control_per_tf_auroc": ctrl.loc[name, "per_tf_auroc"],
                         "passes_control": bool(ctrl.loc[name, "passes"]), "chosen": name == chosen})
        if truth is not control:
            for name, S in (baselines or {}).items():
                rows.append({"truth": truth.name, "predictor": name, "kind": "baseline", **score_matrix(S, truth)})
    return pd.DataFrame(rows).drop(columns=["passes"], errors="ignore")


def run_readout_table(run_dir: str | Path, split: str = "valid", chip_path: str | Path | None = None,
                      genie3: bool = True, batch_size: int | None = None, with_baselines: bool = True) -> pd.DataFrame:
    """`readout_table` of a run directory: candidates over its `split` cells (validation by
    default), the positive control on the edges its z was built from (the real visible prior for
    an arm without one: it should fail), held-out prior edges and ChIP with every baseline."""
    from bioformer.data.load import load_anndata
    from bioformer.evaluation.baselines import baselines
    from bioformer.evaluation.grn import run_truth
    from bioformer.inference import Run

    run = Run.load(run_dir, device="cpu")
    d = run.config.data
    adata = load_anndata(d.data, d.layer, d.gene_column, d.max_cells, run.config.train.seed, quiet=True)
    idx = run.reader.split()
    names = list(idx["obs_names"][idx[split]])
    candidates, _ = candidate_pair_scores(run, adata[names], batch_size)
    rt = run_truth(run.reader, run.genes, chip_path)
    given = run.reader.given_edges(set(run.genes)) if run.reader.uses_prior else rt.given
    if given is None:
        given = pd.DataFrame({"source": [], "target": []})
    regulators = sorted(set(rt.prior["source"]) & set(run.genes)) if rt.prior is not None else None
    base = baselines(run.genes, rt.X_train, rt.seed, given=rt.given, regulators=regulators, with_genie3=genie3) if with_baselines else {}
    return readout_table(candidates, control_truth(given, run.genes, rt.heldout), rt.truths, base)


def format_readout_table(df: pd.DataFrame) -> str:
    """The readout table for the terminal: per truth, readouts (chosen marked *) then baselines."""
    lines = []
    for truth, g in df.groupby("truth", sort=False):
        r0 = g.iloc[0]
        lines.append(f"{truth}: {int(r0['n_true'])} true edges among {int(r0['n_candidates'])} candidates, {int(r0['n_tfs'])} TFs scored per TF "
                     f"(random: AP {r0['random']:.4f}, per-TF AUROC 0.5)")
        lines.append(f"  {'predictor':<28}{'control AP':>11}{'pass':>6}{'AP':>8}{'AUPRC':>8}{'EPR TF':>8}{'EPR all':>8}{'per-TF AUROC [95% CI]':>24}{'unscored':>9}")
        for _, r in g.iterrows():
            name = ("* " if r.get("chosen") is True else "  ") + str(r["predictor"])
            ctrl = f"{r['control_ap']:.4f}" if r["kind"] == "readout" else "–"
            ok = ("yes" if r["passes_control"] else "NO") if r["kind"] == "readout" else "–"
            ci = f"{r['per_tf_auroc']:.3f} [{r['per_tf_auroc_low']:.3f}, {r['per_tf_auroc_high']:.3f}]"
            lines.append(f"  {name:<28}{ctrl:>11}{ok:>6}{r['average_precision']:>8.4f}{r['auprc']:>8.4f}{r['epr']:>8.2f}{r['epr_all_pairs']:>8.2f}{ci:>24}{int(r['n_unscored']):>9}")
    lines.append("* = default readout: best AP on the given edges (validation cells), chosen before any held-out edge is looked at.")
    return "\n".join(lines)
