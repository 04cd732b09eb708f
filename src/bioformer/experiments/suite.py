"""The five studies as one command each: `bioformer experiment STUDY`.

A study is a list of arms (named model configurations, optionally with their own z prior)
trained over several seeds, plus the pairs of arms whose paired differences answer its
question. For each seed the data are prepared once and every arm gets the same PreparedData:
same genes, same train/valid/test cells, same masks (they depend only on seed, epoch and
cell), so differences between arms are paired by seed.

Layout of a study directory:

    OUT/study.json                 what was asked (study, profile, options, arms, pairs)
    OUT/runs/ARM/seedS/            one run directory each (summary.json marks it finished)
    OUT/results.csv, pairs.csv, summary.md, comparison.png, curves.png

Re-running skips every (arm, seed) whose summary.json exists; `--report-only` rewrites the
report from what is there.

Profiles (the one table: PROFILES below)
-----------------------------------------
quick     checks the machinery in seconds per study (tests, CI): 300 cells, ~128 genes, d_model 16.
standard  each study on kang2018 within ~45 min on a 2-core CPU (see the sizing notes on
          STANDARD below), with models that get below the per-gene floor.
full      for a GPU: all cells, 2,048 HVGs + prior genes, d_model 128, 30 epochs.

All studies select genes as HVGs + genes of the study's prior (CollecTRI by default), so that
the prior reaches the cells (median edges per cell well above 20 at max_len 64 on kang2018);
scGPT arms train on the same genes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from bioformer.errors import BioformerError
from bioformer.experiments import sizing
from bioformer.experiments.report import write_report

log = logging.getLogger("bioformer")


@dataclass(frozen=True)
class Profile:
    """Overrides of DataConfig / ModelConfig / TrainConfig shared by every arm of every study.

    `model` is the reference size (the scGPT of same-params / same-attention, the BioFormer of
    the ablations and the prior study); `depths` the N of the depth study.
    """

    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    seeds: int
    depths: tuple[int, ...] = (2, 4, 8)
    study_data: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-study data changes
    study_train: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-study training changes
    note: str = ""


# Sizing notes behind STANDARD (kang2018; measured on the 2-core dev box while other jobs ran,
# one torch thread per run):
# - 2,000 cells (1,600 train / 200 valid / 200 test), 256 HVGs + up to 256 CollecTRI genes
#   (512 genes), max_len 64: cells express ~55-90 of them, so sequences are ~64 long and the
#   median training cell has 52 CollecTRI edges among its genes (the prior study needs >= ~20).
# - d_model 32, 4 heads, N 2, c_z = c_opm = 16, batch 16 (100 steps / epoch), lr 2e-3 after 30
#   warm-up steps, 20 epochs (2,000 steps). Measured with 3-4 processes sharing the 2 cores:
#   scGPT d_model 32: 5-8 s / epoch, 144 s / run, test MSE 106.4 vs per-gene floor 116.6 (-9%),
#   validation below the floor from epoch 8; BioFormer d_model 32: 5-14 s / epoch, 193 s / run,
#   test MSE 103.0 vs 116.6 (-12%), validation below the floor from epoch 8. Alone on a core the
#   same BioFormer ran 3 s / epoch at 1,200 train cells, i.e. ~4 s / epoch here (~90 s / run).
#   lr 3e-3 left a d_model 64 scGPT stuck above the floor for 6 epochs (post-LN), hence 2e-3
#   and d_model 32.
# - One thread per run: on a shared 2-core machine two torch threads per process thrash (10x
#   slower measured); on an idle machine run two studies side by side instead.
# - Runs per study: same-params 10, same-attention 15, ablation 25, prior 20 (~90 s each on an
#   idle core: 15-40 min per study; up to 2x that on a loaded machine).
# - depth has 40 runs and its N = 8 arms cost ~4x an N = 2 arm: ~90 core-minutes, so run it
#   with --jobs 2 (~45 min on 2 cores). A first version used 1,000 cells to save time: every
#   model ended only 3-5% below the floor and two arms above it (no clear result). At 2,000
#   cells, the post-LN scGPT at N = 8 collapses to a constant prediction at lr 2e-3 with 30
#   warm-up steps (validation MSE 176 vs 116 floor, Pearson NaN from epoch 8, seed 0), and
#   trains at lr 1e-3 with 100 warm-up steps (112.6 at epoch 12, still falling); so every
#   depth arm uses lr 1e-3 and 100 warm-up steps. Measured: 48 min with --jobs 2 on the idle
#   2-core machine, every arm below the floor (0.88-0.97 of it).
STANDARD = Profile(
    data=dict(data="kang2018", max_cells=2000, n_hvg=256, max_prior_genes=256, max_len=64, genes="hvg+prior", prior="collectri"),
    model=dict(d_model=32, nhead=4, nlayers=2, ff_factor=4, d_z=16, d_opm=16, dropout=0.1),
    train=dict(epochs=20, batch_size=16, lr=2e-3, warmup_steps=30, plateau_patience=2, num_threads=1),
    seeds=5,
    study_train={"depth": {"lr": 1e-3, "warmup_steps": 100}},  # deep post-LN scGPT diverges at 2e-3
    note="kang2018, 2,000 cells, 512 genes, max_len 64, d_model 32, 20 epochs (depth: lr 1e-3, 100 warm-up steps)",
)

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        data=dict(data="kang2018", max_cells=300, n_hvg=64, max_prior_genes=64, max_len=32, genes="hvg+prior", prior="collectri"),
        model=dict(d_model=16, nhead=2, nlayers=2, ff_factor=4, d_z=4, d_opm=4, dropout=0.1),
        train=dict(epochs=2, batch_size=32, lr=3e-3, warmup_steps=5, num_threads=1),
        seeds=2,
        depths=(1, 2, 4),
        note="machinery check only: 300 cells, d_model 16, 2 epochs; numbers mean nothing",
    ),
    "standard": STANDARD,
    "full": Profile(
        data=dict(data="kang2018", max_cells=None, n_hvg=2048, max_prior_genes=512, max_len=512, genes="hvg+prior", prior="collectri"),
        model=dict(d_model=128, nhead=8, nlayers=2, ff_factor=4, d_z=32, d_opm=32, dropout=0.1),
        train=dict(epochs=30, batch_size=32, lr=1e-3, warmup_steps=500, plateau_patience=3),
        seeds=5,
        note="GPU: all cells, 2,048 HVGs + prior genes, max_len 512, d_model 128, 30 epochs",
    ),
}


@dataclass(frozen=True)
class Arm:
    """One model of a study. `prior` is the z prior for BioFormer ("none" = z starts at zero);
    None = the study's prior. The gene set is the study's in every case."""

    name: str
    model: ModelConfig
    prior: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    arms: Callable[[ModelConfig, str, int | None], list[Arm]]  # (reference model, study prior, vocab size or None)
    pairs: Callable[[list[str]], list[tuple[str, str]]]


def _model(base: ModelConfig, **changes) -> ModelConfig:
    return dataclasses.replace(base, **changes)


def _same_params(base: ModelConfig, prior: str, vocab: int | None) -> list[Arm]:
    ref = _model(base, model="scgpt")
    bio = _model(base, model="bioformer")
    if vocab is not None:  # None: only the arm names are wanted
        bio = sizing.match_total_params(ref, bio, vocab, tol=0.02, use_prior=prior != "none")
    return [
        Arm("scgpt", ref, description=f"scGPT, d_model {ref.d_model}"),
        Arm("bioformer", bio, description=f"BioFormer sized to scGPT's total parameters (±2%): d_model {bio.d_model}, c_opm {bio.d_opm}"),
    ]


def _same_attention(base: ModelConfig, prior: str, vocab: int | None) -> list[Arm]:
    ref = _model(base, model="scgpt")
    bio = sizing.same_attention(ref, _model(base, model="bioformer"))
    plain = _model(bio, pair_bias=False, opm=False)
    return [
        Arm("scgpt", ref, description="scGPT (post-LN nn.TransformerEncoderLayer)"),
        Arm("bioformer", bio, description="same attention + transition as scGPT, gate off; extra = pair path"),
        Arm("bioformer-no-pair-path", plain, description="the same BioFormer without pair bias and OPM: a pre-LN transformer with scGPT's parameters (separates pre-LN from the pair path)"),
    ]


def _ablation(base: ModelConfig, prior: str, vocab: int | None) -> list[Arm]:
    full = _model(base, model="bioformer")
    return [
        Arm("full", full, description="BioFormer: pair bias + OPM + gate, transition x4"),
        Arm("no-opm", _model(full, opm=False), description="z = prior embedding, never updated"),
        Arm("no-pair-bias", _model(full, pair_bias=False), description="no pair bias; nothing reads z then, so this is also 'neither' (no OPM, no pair bias)"),
        Arm("no-gating", _model(full, gating=False), description="no sigmoid gate on the attention output"),
        Arm("transition-1", _model(full, ff_factor=1), description="transition factor 1 (scGPT paper) instead of 4"),
    ]


def _depth(base: ModelConfig, prior: str, vocab: int | None, depths: tuple[int, ...] = (2, 4, 8)) -> list[Arm]:
    arms = []
    for family in ("scgpt", "bioformer"):
        for n in depths:
            arms.append(Arm(f"{family}-N{n}", _model(base, model=family, nlayers=n), description=f"{family}, N {n}, d_model {base.d_model}"))
    for n in (depths[0], depths[-1]):  # separates the pair path from pre-LN in the depth effect
        arms.append(Arm(f"bioformer-no-pair-path-N{n}", _model(base, model="bioformer", nlayers=n, pair_bias=False, opm=False),
                        description=f"the same BioFormer without pair bias and OPM (a gated pre-LN transformer), N {n}"))
    small = max(base.nhead, base.d_model // 2 // base.nhead * base.nhead)
    arms.append(Arm(f"bioformer-small-N{depths[-1]}", _model(base, model="bioformer", d_model=small, nlayers=depths[-1]), description=f"BioFormer d_model {small}, N {depths[-1]}"))
    arms.append(Arm(f"scgpt-large-N{depths[0]}", _model(base, model="scgpt", d_model=2 * base.d_model, nlayers=depths[0]), description=f"scGPT d_model {2 * base.d_model}, N {depths[0]}"))
    return arms


def _depth_pairs(names: list[str]) -> list[tuple[str, str]]:
    ns = sorted({int(n.rsplit("-N", 1)[1]) for n in names if n.startswith(("scgpt-N", "bioformer-N"))})
    pairs = [(f"bioformer-N{n}", f"scgpt-N{n}") for n in ns]
    pairs += [(f"bioformer-N{ns[-1]}", f"bioformer-N{ns[0]}"), (f"scgpt-N{ns[-1]}", f"scgpt-N{ns[0]}")]
    pairs += [(f"bioformer-small-N{ns[-1]}", f"scgpt-large-N{ns[0]}")]
    pairs += [(f"bioformer-N{ns[-1]}", f"bioformer-no-pair-path-N{ns[-1]}"), (f"bioformer-no-pair-path-N{ns[-1]}", f"bioformer-no-pair-path-N{ns[0]}")]
    return [(a, b) for a, b in pairs if a in names and b in names]


def _prior_name(prior: str) -> str:
    return Path(prior).stem if ("/" in prior or "." in prior) else prior


def _prior(base: ModelConfig, prior: str, vocab: int | None) -> list[Arm]:
    full = _model(base, model="bioformer")
    p = _prior_name(prior)
    arms = [Arm(p, full, prior=prior, description=f"z from the {p} prior")]
    if prior not in ("dorothea",):
        arms.append(Arm("dorothea", full, prior="dorothea", description="z from the DoRothEA prior (same genes)"))
    arms.append(Arm("zero-z", full, prior="none", description="z starts at zero (no prior)"))
    arms.append(Arm(f"{p}-shuffled", full, prior=f"{prior}-shuffled", description=f"{p} edges with targets permuted among the study's genes (degree-preserving): same structure, no knowledge"))
    return arms


def _prior_pairs(names: list[str]) -> list[tuple[str, str]]:
    main, shuffled = names[0], f"{names[0]}-shuffled"
    pairs = [(main, "zero-z"), (main, shuffled), (shuffled, "zero-z")]
    if "dorothea" in names:
        pairs += [("dorothea", "zero-z"), (main, "dorothea")]
    return pairs


STUDIES: dict[str, Study] = {
    "same-params": Study("same-params", "scGPT vs BioFormer at equal total parameters (±2%)", _same_params, lambda n: [("bioformer", "scgpt")]),
    "same-attention": Study(
        "same-attention", "equal attention + transition; BioFormer adds only the pair path", _same_attention,
        lambda n: [("bioformer", "scgpt"), ("bioformer", "bioformer-no-pair-path"), ("bioformer-no-pair-path", "scgpt")],
    ),
    "ablation": Study("ablation", "which BioFormer part matters", _ablation, lambda n: [("full", a) for a in n[1:]]),
    "depth": Study("depth", "N in {2, 4, 8} for both; small-c BioFormer at large N vs large-c scGPT at small N", _depth, _depth_pairs),
    "prior": Study("prior", "does TF knowledge in z help, beyond the structure of a graph?", _prior, _prior_pairs),
}


# ----------------------------------------------------------------------------------- running


@dataclass
class StudyPlan:
    study: Study
    profile_name: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    seeds: list[int]
    depths: tuple[int, ...]
    out: Path
    only: tuple[str, ...] | None = None  # run and report just these arms (--arms)

    def all_arms(self, vocab_size: int | None) -> list[Arm]:
        if self.study.name == "depth":
            return _depth(self.model, self.data.prior, vocab_size, self.depths)
        return self.study.arms(self.model, self.data.prior, vocab_size)

    def arms(self, vocab_size: int | None) -> list[Arm]:
        return [a for a in self.all_arms(vocab_size) if self.only is None or a.name in self.only]

    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms(vocab_size=None)]

    def pairs(self) -> list[tuple[str, str]]:
        names = set(self.arm_names())
        return [(a, b) for a, b in self.study.pairs([x.name for x in self.all_arms(None)]) if a in names and b in names]


def plan_study(
    study: str,
    profile: str = "standard",
    out: str | Path | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    first_seed: int = 0,
    arms: list[str] | None = None,
) -> StudyPlan:
    """Resolve a study + profile + overrides ({"data": {...}, "model": {...}, "train": {...}}).

    arms: a subset of the study's arms to run and report (e.g. a longer check of one pair)."""
    if study not in STUDIES:
        raise BioformerError(f"unknown study {study!r}; use one of {', '.join(STUDIES)}")
    if profile not in PROFILES:
        raise BioformerError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    p = PROFILES[profile]
    o = overrides or {}
    data = {**p.data, **p.study_data.get(study, {}), **o.get("data", {})}
    if data.get("prior") in (None, "", "none"):
        if study == "prior":
            raise BioformerError("the prior study needs a prior (--prior collectri or a file)")
        data["genes"] = "hvg"
        data["prior"] = "none"
    train = {**p.train, **p.study_train.get(study, {}), **o.get("train", {}), "progress": False}
    if epochs is not None:
        train["epochs"] = epochs
    plan = StudyPlan(
        study=STUDIES[study], profile_name=profile, data=DataConfig(**data),
        model=ModelConfig(**{**p.model, **o.get("model", {})}), train=TrainConfig(**train),
        seeds=list(range(first_seed, first_seed + (seeds if seeds is not None else p.seeds))), depths=p.depths,
        out=Path(out) if out else Path("studies") / profile / study,
    )
    if arms:
        known = [a.name for a in plan.all_arms(None)]
        unknown = [a for a in arms if a not in known]
        if unknown:
            raise BioformerError(f"unknown arm(s) {', '.join(unknown)} for study {study}; its arms are: {', '.join(known)}")
        plan = dataclasses.replace(plan, only=tuple(arms))
    return plan


def _run_dir(plan: StudyPlan, arm: str, seed: int) -> Path:
    return plan.out / "runs" / arm / f"seed{seed}"


def _is_done(plan: StudyPlan, arm: str, seed: int) -> bool:
    return (_run_dir(plan, arm, seed) / "summary.json").exists()


def _data_for_arm(prepared, arm: Arm, study_prior: str, cache: dict):
    """The seed's PreparedData with the arm's prior swapped in (same genes, split and masks)."""
    from bioformer.data.pipeline import edges_for_genes, prior_coverage
    from bioformer.data.prior import PriorMatrix

    prior = arm.prior or study_prior
    if prior == study_prior or prior == "none":
        return prepared
    if prior not in cache:
        t2i = prepared.vocab.token_to_id
        edges = edges_for_genes(prior, t2i, prepared.seed)
        matrix = PriorMatrix.from_edges(edges, t2i)
        if matrix.n_edges == 0:
            raise BioformerError(f"prior {prior} has no edges among the study's genes")
        cov = prior_coverage(prepared.adata.X, prepared.gene_token_ids, matrix, prepared.dataset("train"))
        cache[prior] = dataclasses.replace(prepared, prior=matrix, coverage=cov)
    return cache[prior]


def _run_config(plan: StudyPlan, arm: Arm, seed: int) -> RunConfig:
    prior = arm.prior or plan.data.prior
    return RunConfig(
        data=dataclasses.replace(plan.data, prior=prior, gene_prior=plan.data.prior), model=arm.model,
        train=dataclasses.replace(plan.train, seed=seed), name=arm.name, out=str(_run_dir(plan, arm.name, seed)),
    )


# execution details that do not change what a run computes (on one device)
_NOT_COMPARED = {"train": {"device", "num_threads", "progress"}}


def _stale_runs(plan: StudyPlan, names: list[str]) -> list[str]:
    """Finished runs in plan.out whose config differs from what the plan would train now.

    Resuming must never mix runs of an old profile (say 1,000 cells) into a new report."""
    problems = []
    arms_by_vocab: dict[int, dict[str, Arm]] = {}
    for seed in plan.seeds:
        for name in names:
            run_dir = _run_dir(plan, name, seed)
            if not (run_dir / "summary.json").exists():
                continue
            old = RunConfig.load(run_dir / "config.yaml")
            vocab = len(json.loads((run_dir / "vocab.json").read_text())["tokens"])
            if vocab not in arms_by_vocab:
                arms_by_vocab[vocab] = {a.name: a for a in plan.arms(vocab)}
            new = _run_config(plan, arms_by_vocab[vocab][name], seed)
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
    return m.nlayers * m.d_model * (2.0 if m.model == "bioformer" else 1.0)


def _train_one(plan: StudyPlan, arm: Arm, seed: int, prepared, swapped: dict, quiet: bool) -> dict[str, Any]:
    from bioformer.training.run import run_training

    data = _data_for_arm(prepared, arm, plan.data.prior, swapped)
    _, s = run_training(_run_config(plan, arm, seed), data=data, quiet=quiet)
    return s


def _done_line(name: str, seed: int, s: dict[str, Any]) -> str:
    return (f"{name} seed {seed}: test MSE {s['test_mse']:.2f} (per-gene floor {s['floor_gene_mean_mse']:.2f}), "
            f"Pearson {s['test_pearson']:.3f}, {s['n_params']:,} params, {s['wall_seconds']:.0f}s")


def _report_done(bar, line: str) -> None:
    bar.write(line)
    sys.stdout.flush()  # one line per finished run, also when stdout is a log file


# per worker process: seed -> (PreparedData, {prior: PreparedData with that prior})
_WORKER_DATA: dict[int, tuple[Any, dict]] = {}


def _worker(spec: dict[str, Any], name: str, seed: int, quiet: bool) -> dict[str, Any]:
    """Train one (arm, seed) in a worker process; the seed's data are prepared once per worker."""
    from bioformer.data.pipeline import prepare_data

    logging.getLogger("bioformer").setLevel(logging.WARNING)
    plan = StudyPlan(study=STUDIES[spec.pop("study")], **spec)
    if seed not in _WORKER_DATA:
        _WORKER_DATA[seed] = (prepare_data(plan.data, seed=seed, need_prior=plan.data.prior != "none", quiet=True), {})
    prepared, swapped = _WORKER_DATA[seed]
    arm = {a.name: a for a in plan.arms(len(prepared.vocab))}[name]
    return _train_one(plan, arm, seed, prepared, swapped, quiet)


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
    from tqdm.auto import tqdm

    from bioformer.data.pipeline import prepare_data

    if jobs < 1:
        raise BioformerError(f"--jobs must be >= 1, got {jobs}")
    plan.out.mkdir(parents=True, exist_ok=True)
    names, pairs = plan.arm_names(), plan.pairs()
    breakdown = ""
    if not report_only:
        stale = _stale_runs(plan, names)
        if stale:
            raise BioformerError(
                f"{len(stale)} finished run(s) in {plan.out} were trained with another configuration; use a new --out "
                f"(or delete them) so that the study does not mix the two:\n  " + "\n  ".join(stale[:5])
                + ("\n  ..." if len(stale) > 5 else "")
            )
        _write_plan(plan, names, pairs)
        todo = [(s, a) for s in plan.seeds for a in names if not _is_done(plan, a, s)]
        skipped = len(plan.seeds) * len(names) - len(todo)
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
            todo_set = set(todo)
            for seed in plan.seeds:
                pending = [a for a in names if (seed, a) in todo_set]
                if not pending:
                    continue
                t0 = time.perf_counter()
                prepared = prepare_data(plan.data, seed=seed, need_prior=plan.data.prior != "none", quiet=True)
                log.info("seed %d: %d cells, %d genes (%.0fs to prepare)", seed, prepared.adata.n_obs, prepared.adata.n_vars, time.perf_counter() - t0)
                arms = {a.name: a for a in plan.arms(len(prepared.vocab))}
                swapped: dict[str, Any] = {}
                for name in pending:
                    s = _train_one(plan, arms[name], seed, prepared, swapped, quiet)
                    bar.update(1)
                    _report_done(bar, _done_line(name, seed, s))
        bar.close()
    if plan.seeds:
        breakdown = _breakdown(plan)
    write_report(plan.out, plan.study.name, names, pairs, header=_header(plan), breakdown=breakdown)
    return plan.out


def _breakdown(plan: StudyPlan) -> str:
    """Parameter table for the first seed's vocabulary (read from a finished run if there is one)."""
    vocab_size = None
    for arm in plan.arm_names():
        v = plan.out / "runs" / arm / f"seed{plan.seeds[0]}" / "vocab.json"
        if v.exists():
            vocab_size = len(json.loads(v.read_text())["tokens"])
            break
    if vocab_size is None:
        return ""
    arms = plan.arms(vocab_size)
    table = sizing.format_breakdown({a.name: (a.model, a.model.model == "bioformer" and (a.prior or plan.data.prior) != "none") for a in arms}, vocab_size)
    return f"Vocabulary {vocab_size} tokens.\n\n" + table + "\n\n" + "\n".join(f"- **{a.name}**: {a.description}" for a in arms)


def _header(plan: StudyPlan) -> str:
    d, t, m = plan.data, plan.train, plan.model
    lines = [
        f"**Question:** {plan.study.question}.",
        "",
        f"Profile **{plan.profile_name}** ({PROFILES[plan.profile_name].note}). Data {d.data}: max_cells {d.max_cells}, "
        f"genes {d.genes} (n_hvg {d.n_hvg}, max_prior_genes {d.max_prior_genes}, prior {d.prior}), max_len {d.max_len}, "
        f"split valid {d.valid_frac} / test {d.test_frac} by cell. Reference model: d_model {m.d_model}, nhead {m.nhead}, N {m.nlayers}, "
        f"ff_factor {m.ff_factor}, c_z {m.d_z}, c_opm {m.d_opm}. Training: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, "
        f"warm-up {t.warmup_steps} steps, plateau patience {t.plateau_patience}; best epoch by validation MSE. Seeds {plan.seeds}.",
        "",
        f"Reproduce: `bioformer experiment {plan.study.name} --profile {plan.profile_name} --seeds {len(plan.seeds)}"
        + (f" --epochs {t.epochs}" if t.epochs != PROFILES[plan.profile_name].train.get("epochs") else "")
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


# ----------------------------------------------------------------------------------- CLI


def cmd_experiment(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {"data": {}, "train": {}, "model": {}}
    for key in ("data", "max_cells", "prior", "layer", "gene_column"):
        if getattr(args, key) is not None:
            overrides["data"][key] = getattr(args, key)
    for key in ("device", "num_threads"):
        if getattr(args, key) is not None:
            overrides["train"][key] = getattr(args, key)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    plan = plan_study(args.study, args.profile, args.out, args.seeds, args.epochs, overrides, first_seed=args.first_seed, arms=arms)
    if args.sizing:
        from bioformer.data.pipeline import prepare_data

        prepared = prepare_data(plan.data, seed=0, need_prior=False, quiet=True)
        v = len(prepared.vocab)
        arms = plan.arms(v)
        print(f"{plan.study.name} ({plan.profile_name}), vocabulary {v} tokens:")
        print(sizing.format_breakdown({a.name: (a.model, a.model.model == "bioformer" and (a.prior or plan.data.prior) != "none") for a in arms}, v))
        return 0
    out = run_study(plan, report_only=args.report_only, quiet=True, jobs=args.jobs)
    print((out / "summary.md").read_text())
    print(f"study directory: {out}")
    return 0


def add_cli(subparsers) -> None:
    e = subparsers.add_parser(
        "experiment", help="run one of the studies over seeds and report means, 95%% CIs and paired tests",
        description="Studies: " + "; ".join(f"{s.name}: {s.question}" for s in STUDIES.values()),
    )
    e.add_argument("study", choices=list(STUDIES))
    e.add_argument("--profile", choices=list(PROFILES), default="standard", help="sizes and epochs (default standard)")
    e.add_argument("--data", help="data set (default from the profile: kang2018)")
    e.add_argument("--seeds", type=int, help="number of seeds 0..S-1 (default: profile, 5 for standard)")
    e.add_argument("--first-seed", type=int, default=0, help="start at this seed, e.g. to run seeds 3..4 in a second process on the same --out (finished runs are skipped either way)")
    e.add_argument("--epochs", type=int, help="epochs per run (default: profile)")
    e.add_argument("--arms", help="comma-separated subset of the study's arms to run and report, e.g. a longer check of one pair (default: all)")
    e.add_argument("--out", help="study directory (default studies/PROFILE/STUDY)")
    e.add_argument("--max-cells", type=int, help="subsample cells (default: profile)")
    e.add_argument("--prior", help="the study's prior and gene selection (default collectri)")
    e.add_argument("--layer", help="counts layer of a custom .h5ad")
    e.add_argument("--gene-column", help="var column with gene symbols")
    e.add_argument("--device", help="auto | cpu | cuda")
    e.add_argument("--num-threads", type=int, help="torch CPU threads")
    e.add_argument("--jobs", type=int, default=1, help="train this many runs at once in worker processes, one torch thread each (e.g. 2 on a 2-core CPU; default 1)")
    e.add_argument("--report-only", action="store_true", help="only rewrite results.csv / summary.md / plots from finished runs")
    e.add_argument("--sizing", action="store_true", help="print the arms' parameter breakdown and exit")
    e.set_defaults(func=cmd_experiment)
