"""Running a study: train every unfinished (arm, seed) of a plan, serially or in worker
processes, then write the report.

For each seed the data are prepared once per process and every arm gets the same
PreparedData: same genes, same train/valid/test cells, same masks (they depend only on seed,
epoch and cell), so differences between arms are paired by seed. The arms are computed once
from that prepared data (`SeedData`). One runner, `train_arm`, trains one (arm, seed) in the
serial loop and in every worker.

Re-running skips every (arm, seed) whose summary.json exists (finished runs of another
configuration are refused); `report_only` rewrites the report from what is there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioformer.config import RunConfig, prior_enabled
from bioformer.data.pipeline import PreparedData
from bioformer.errors import BioformerError
from bioformer.experiments import sizing
from bioformer.experiments.plan import StudyPlan, plan_study
from bioformer.experiments.profiles import PROFILES
from bioformer.experiments.report import write_report
from bioformer.experiments.studies import STUDIES, Arm
from bioformer.models import model_class
from bioformer.training.reader import RunReader

log = logging.getLogger("bioformer")

__all__ = ["PROFILES", "STUDIES", "SeedData", "StudyPlan", "plan_study", "run_study", "seed_data", "train_arm"]


@dataclass
class SeedData:
    """One seed's prepared data and the arms computed from it; arm priors built on demand."""

    prepared: PreparedData
    arms: dict[str, Arm]
    study_prior: str
    _by_prior: dict[str, PreparedData] = field(default_factory=dict)

    def data_for(self, arm: Arm) -> PreparedData:
        """The seed's PreparedData with the arm's prior swapped in (same genes, split and masks)."""
        from bioformer.data.pipeline import edges_for_genes
        from bioformer.data.prior import PriorMatrix

        prior = arm.prior or self.study_prior
        if prior == self.study_prior or not prior_enabled(prior):
            return self.prepared
        if prior not in self._by_prior:
            p = self.prepared
            t2i = p.vocab.token_to_id
            matrix = PriorMatrix.from_edges(edges_for_genes(prior, t2i, p.seed, heldout=p.heldout_edges), t2i)
            if matrix.n_edges == 0:
                raise BioformerError(f"prior {prior} has no edges among the study's genes")
            cov = p.coverage_of(matrix)
            self._by_prior[prior] = dataclasses.replace(p, prior=matrix, coverage=cov)
        return self._by_prior[prior]


# per process: (what the arms depend on, seed) -> SeedData, so a worker prepares each seed once
_SEEDS: dict[tuple[str, int], SeedData] = {}


def seed_data(plan: StudyPlan, seed: int) -> SeedData:
    """Prepare `seed`'s data for `plan` (once per process) and compute its arms from it."""
    from bioformer.data.pipeline import prepare_data

    what = [plan.study.name, plan.profile_name, dataclasses.asdict(plan.data), dataclasses.asdict(plan.model)]
    key = (json.dumps(what, sort_keys=True), seed)
    if key not in _SEEDS:
        prepared = prepare_data(plan.data, seed=seed, need_prior=prior_enabled(plan.data.prior), quiet=True)
        _SEEDS[key] = SeedData(prepared, {a.name: a for a in plan.all_arms(len(prepared.vocab))}, plan.data.prior)
        log.debug("seed %d: %d cells, %d genes", seed, prepared.adata.n_obs, prepared.adata.n_vars)
    return _SEEDS[key]


def train_arm(plan: StudyPlan, seed: int, name: str, quiet: bool = True) -> dict[str, Any]:
    """Train one (arm, seed) of the plan and return its summary: the one per-run runner."""
    from bioformer.training import run as run_mod

    sd = seed_data(plan, seed)
    arm = sd.arms[name]
    # resume=True: an interrupted run continues from its last finished epoch
    run_dir, summary = run_mod.run_training(plan.run_config(arm, seed), data=sd.data_for(arm), quiet=quiet, resume=True)
    if plan.extra_test_cells:
        score_unsampled(Path(run_dir), plan.extra_test_cells)
    return summary


def score_unsampled(run_dir: Path, n_cells: int) -> None:
    """Score a finished run on up to `n_cells` cells its subsample never drew (a second, larger
    test set; floors refitted on its own training cells) into run_dir/extra_test.json."""
    from bioformer.training.checkpoint import atomic_write_text
    from bioformer.training.evaluate import evaluate_run

    result, info = evaluate_run(run_dir, eval_cells=n_cells, quiet=True)
    atomic_write_text(run_dir / "extra_test.json", json.dumps({"cells": info["cells"], "n_cells": info["n_cells"], "test": result.to_dict()}, indent=1))


# execution details that do not change what a run computes (on one device)
_NOT_COMPARED = {"train": {"device", "num_threads", "progress"}}


def _stale_runs(plan: StudyPlan, names: list[str]) -> list[str]:
    """Finished runs in plan.out whose config differs from what the plan would train now.

    Resuming must never mix runs of an old profile (say 1,000 cells) into a new report."""
    problems = []
    for seed in plan.seeds:
        finished = [n for n in names if plan.is_done(n, seed)]
        if not finished:
            continue
        arms = seed_data(plan, seed).arms
        for name in finished:
            run_dir = plan.run_dir(name, seed)
            old, new = RunReader(run_dir).config(), plan.run_config(arms[name], seed)
            diffs = []
            for section in ("data", "model", "train"):
                a, b = dataclasses.asdict(getattr(old, section)), dataclasses.asdict(getattr(new, section))
                diffs += [f"{section}.{k} {a.get(k)!r} -> {v!r}" for k, v in b.items()
                          if k not in _NOT_COMPARED.get(section, ()) and a.get(k) != v]
            if diffs:
                problems.append(f"{run_dir}: {', '.join(diffs)}")
    return problems


def _cost(arm: Arm) -> float:
    """Rough relative cost of one run, to start the longest runs first when running in parallel."""
    m = arm.model
    return m.nlayers * m.d_model * (2.0 if model_class(m.model).pair_path(m).reads_z else 1.0)


def _done_line(name: str, seed: int, s: dict[str, Any]) -> str:
    cell = f", cell-aware {s['floor_cell_mse']:.2f}" if "floor_cell_mse" in s else ""
    return (f"{name} seed {seed}: test MSE {s['test_mse']:.2f} (per-gene floor {s['floor_gene_mean_mse']:.2f}{cell}), "
            f"Pearson {s['test_pearson']:.3f}, {s['n_params']:,} params, {s['wall_seconds']:.0f}s")


def _report_done(bar, line: str) -> None:
    bar.write(line)
    sys.stdout.flush()  # one line per finished run, also when stdout is a log file


def _worker(spec: dict[str, Any], name: str, seed: int, quiet: bool) -> dict[str, Any]:
    """Train one (arm, seed) in a worker process (the plan travels as its fields)."""
    logging.getLogger("bioformer").setLevel(logging.WARNING)
    plan = StudyPlan(study=STUDIES[spec.pop("study")], **spec)
    return train_arm(plan, seed, name, quiet)


def _run_parallel(plan: StudyPlan, todo: list[tuple[int, str]], jobs: int, quiet: bool, bar) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    costs = {a.name: _cost(a) for a in plan.arms(vocab_size=None)}
    order = sorted(todo, key=lambda t: (-costs[t[1]], t[0]))  # longest first: the last runs are short
    spec = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    spec["study"] = plan.study.name
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, dict(spec), name, seed, quiet): (name, seed) for seed, name in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise f.exception()
                name, seed = futures[f]
                bar.update(1)
                _report_done(bar, _done_line(name, seed, f.result()))


def run_study(plan: StudyPlan, report_only: bool = False, quiet: bool = True, jobs: int = 1) -> Path:
    """Train every unfinished (arm, seed) of `plan`, then write the report. Returns the study dir.

    jobs > 1 trains that many runs at once in worker processes (one torch thread each unless the
    plan sets num_threads); results are the same as with jobs = 1, since each run is seeded.
    """
    if jobs < 1:
        raise BioformerError(f"--jobs must be >= 1, got {jobs}")
    # options and data are checked before --out exists (seed_data is cached: no work is repeated)
    RunConfig(data=plan.data, model=plan.model, train=plan.train).validate()
    if not report_only and plan.seeds:
        seed_data(plan, plan.seeds[0])
    check_study_dir(plan.out, plan.study.name)
    created = not plan.out.exists()
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        return _run_study_in(plan, report_only, quiet, jobs)
    except Exception:
        if created and not any(plan.out.glob("runs/*/*/summary.json")):  # nothing worth keeping
            shutil.rmtree(plan.out, ignore_errors=True)
        raise


def check_study_dir(out: Path, study: str) -> None:
    """--out is new, empty, or a study directory of the same study (its study.json says so);
    anything else (a user's files, another study) is refused before anything is written."""
    from bioformer.training.rundir import check_writable_parent

    if out.exists() and not out.is_dir():
        raise BioformerError(f"--out {out} is a file; pass a directory path")
    check_writable_parent(out / "study.json", "--out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        kind = json.loads((out / "study.json").read_text()).get("study")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != study:
        what = f"a study of {kind!r}" if kind else "files that are not a bioformer study (no study.json)"
        raise BioformerError(f"--out {out} holds {what}; experiment {study} writes only into a new, empty or {study} study directory: choose another --out")


def _run_study_in(plan: StudyPlan, report_only: bool, quiet: bool, jobs: int) -> Path:
    """run_study's work once --out exists."""
    from tqdm.auto import tqdm

    names, pairs = plan.arm_names(), plan.pairs()
    if not report_only:
        stale = _stale_runs(plan, names)
        if stale:
            raise BioformerError(
                f"{len(stale)} finished run(s) in {plan.out} were trained with another configuration; use a new --out "
                f"(or delete them) so that the study does not mix the two:\n  " + "\n  ".join(stale[:5])
                + ("\n  ..." if len(stale) > 5 else "")
            )
        _write_plan(plan, names, pairs)
        runs = plan.runs()
        todo = [(s, a) for s, a in runs if not plan.is_done(a, s)]
        skipped = len(runs) - len(todo)
        log.info("%s (%s): %d arms x %d seeds; %d finished run(s) skipped, %d to train%s -> %s",
                 plan.study.name, plan.profile_name, len(names), len(plan.seeds), skipped, len(todo),
                 f" in {jobs} processes" if jobs > 1 and len(todo) > 1 else "", plan.out)
        bar = tqdm(total=len(todo), desc=plan.study.name, disable=not todo)
        if jobs > 1 and len(todo) > 1:
            if plan.train.num_threads is None:
                import os

                plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, num_threads=max(1, (os.cpu_count() or 1) // jobs)))
            _run_parallel(plan, todo, jobs, quiet, bar)
        else:
            for seed, name in todo:
                bar.update(1)
                _report_done(bar, _done_line(name, seed, train_arm(plan, seed, name, quiet)))
        bar.close()
    write_report(plan.out, plan.study.name, names, pairs, header=_header(plan), breakdown=_breakdown(plan, names))
    return plan.out


def _breakdown(plan: StudyPlan, names: list[str]) -> str:
    """Parameter table of the models as trained: each arm's config.yaml of its first finished seed."""
    models, vocab_size, descriptions = {}, None, {a.name: a.description for a in plan.arms(None)}
    for name in names:
        runs = [plan.run_dir(name, s) for s in plan.seeds if plan.is_done(name, s)]
        if not runs:
            continue
        reader = RunReader(runs[0])
        cfg, summary = reader.config(), reader.summary() or {}
        vocab_size = vocab_size or summary.get("vocab_size") or len(reader.vocab())
        models[name] = (cfg.model, summary.get("uses_prior", prior_enabled(cfg.data.prior)))
    if not models:
        return ""
    table = sizing.format_breakdown(models, vocab_size)
    return f"Vocabulary {vocab_size} tokens.\n\n" + table + "\n\n" + "\n".join(f"- **{n}**: {descriptions.get(n, '')}" for n in models)


def _fewer_seeds(plan: StudyPlan) -> str:
    """" (scgpt: 5 seeds, ...)" for arms that run on fewer of the plan's seeds, else ""."""
    runs = plan.runs()
    fewer = [(n, c) for n in plan.arm_names() if (c := sum(1 for _, a in runs if a == n)) < len(plan.seeds)]
    return f" ({', '.join(f'{n}: {c} seeds' for n, c in fewer)})" if fewer else ""


def _header(plan: StudyPlan) -> str:
    d, t, m = plan.data, plan.train, plan.model
    lines = [
        f"**Question:** {plan.study.question}.",
        "",
        f"Profile **{plan.profile_name}** ({plan.profile.note}). Data {d.data}: max_cells {d.max_cells}, "
        f"genes {d.genes} (n_hvg {d.n_hvg}, max_prior_genes {d.max_prior_genes}, prior {d.prior}), max_len {d.max_len}, "
        f"split valid {d.valid_frac} / test {d.test_frac} by cell. Reference model: d_model {m.d_model}, nhead {m.nhead}, N {m.nlayers}, "
        f"ff_factor {m.ff_factor}, c_z {m.bioformer.d_z}, c_opm {m.bioformer.d_opm}. Training: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, "
        f"warm-up {t.warmup_steps} steps, plateau patience {t.plateau_patience}; best epoch by validation MSE. Seeds {plan.seeds}"
        + _fewer_seeds(plan) + ".",
        "",
        f"Reproduce: `bioformer experiment {plan.study.name} --profile {plan.profile_name} --seeds {len(plan.seeds)}"
        + (f" --epochs {t.epochs}" if t.epochs != plan.profile.train.get("epochs") else "")
        + (f" --arms {','.join(plan.only)}" if plan.only else "")
        + f" --out {plan.out}` "
        "(add `--jobs 2` to use two cores; the numbers do not change)",
    ]
    return "\n".join(lines)


def _write_plan(plan: StudyPlan, names: list[str], pairs: list[tuple[str, str]]) -> None:
    from bioformer.training.checkpoint import atomic_write_json

    atomic_write_json(plan.out / "study.json", {
        "study": plan.study.name, "profile": plan.profile_name, "seeds": plan.seeds,
        "data": dataclasses.asdict(plan.data), "model": dataclasses.asdict(plan.model),
        "train": dataclasses.asdict(plan.train), "arms": names, "pairs": pairs,
    })
