"""A study plan: one study + one profile + overrides, resolved to configs, seeds and a directory.

Layout of a study directory:

    OUT/study.json                 what was asked (study, profile, options, arms, pairs)
    OUT/runs/ARM/seedS/            one run directory each (summary.json marks it finished)
    OUT/results.csv, pairs.csv, summary.md, comparison.png, curves.png
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig, prior_enabled
from bioformer.errors import BioformerError
from bioformer.experiments.profiles import PROFILES, Profile
from bioformer.experiments.studies import STUDIES, Arm, Study


@dataclass
class StudyPlan:
    study: Study
    profile_name: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    seeds: list[int]
    out: Path
    only: tuple[str, ...] | None = None  # run and report just these arms (--arms)
    extra_test_cells: int = 0  # score this many never-sampled cells after each run (0: none)

    @property
    def profile(self) -> Profile:
        return PROFILES[self.profile_name]

    def all_arms(self, vocab_size: int | None) -> list[Arm]:
        return self.study.arms(self.model, self.data.prior, vocab_size, self.profile)

    def arms(self, vocab_size: int | None) -> list[Arm]:
        return [a for a in self.all_arms(vocab_size) if self.only is None or a.name in self.only]

    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms(vocab_size=None)]

    def runs(self) -> list[tuple[int, str]]:
        """Every (seed, arm) the plan trains: an arm with `seeds` set runs on that many of the plan's seeds."""
        limit = {a.name: a.seeds for a in self.arms(vocab_size=None)}
        return [(s, name) for i, s in enumerate(self.seeds) for name in self.arm_names() if limit[name] is None or i < limit[name]]

    def pairs(self) -> list[tuple[str, str]]:
        names = set(self.arm_names())
        return [(a, b) for a, b in self.study.pairs([x.name for x in self.all_arms(None)]) if a in names and b in names]

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed{seed}"

    def is_done(self, arm: str, seed: int) -> bool:
        return (self.run_dir(arm, seed) / "summary.json").exists()

    def run_config(self, arm: Arm, seed: int) -> RunConfig:
        """The run of `arm` at `seed`: the study's data (with the arm's z prior), the arm's model."""
        prior = arm.prior or self.data.prior
        return RunConfig(
            data=dataclasses.replace(self.data, prior=prior, gene_prior=self.data.prior), model=arm.model,
            train=dataclasses.replace(self.train, seed=seed), name=arm.name, out=str(self.run_dir(arm.name, seed)),
        ).resolved()  # as the run saves it (a finished run is compared with this config)


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
    """Resolve a study + profile + overrides ({"data": {...}, "model": {...}, "train": {...}}, any
    config field; "model" changes the reference model the arms are derived from).

    arms: a subset of the study's arms to run and report (e.g. a longer check of one pair)."""
    if study not in STUDIES:
        raise BioformerError(f"unknown study {study!r}; use one of {', '.join(STUDIES)}")
    if profile not in PROFILES:
        raise BioformerError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if seeds is not None and seeds < 1:
        raise BioformerError(f"--seeds must be >= 1, got {seeds}")
    if first_seed < 0:
        raise BioformerError(f"--first-seed must be >= 0, got {first_seed}")
    p = PROFILES[profile]
    o = overrides or {}
    data = {**p.data, **p.study_data.get(study, {}), **o.get("data", {})}
    if not prior_enabled(data.get("prior")):
        if study in ("prior", "prior-transfer", "planted"):
            raise BioformerError("the prior study needs a prior (--prior collectri or a file)")
        data["genes"] = "hvg"
        data["prior"] = "none"
    train = {**p.train, **p.study_train.get(study, {}), **o.get("train", {}), "progress": False}
    if epochs is not None:
        train["epochs"] = epochs
    plan = StudyPlan(
        study=STUDIES[study], profile_name=profile, data=DataConfig(**data),
        model=ModelConfig.of(**{**p.model, **o.get("model", {})}), train=TrainConfig(**train),
        seeds=list(range(first_seed, first_seed + (seeds if seeds is not None else p.study_seeds.get(study, p.seeds)))),
        out=Path(out) if out else Path("studies") / profile / study,
    )
    if p.extra_test_cells and plan.data.max_cells is not None and plan.data.split_by is None:
        plan = dataclasses.replace(plan, extra_test_cells=p.extra_test_cells)
    if arms:
        known = [a.name for a in plan.all_arms(None)]
        unknown = [a for a in arms if a not in known]
        if unknown:
            raise BioformerError(f"unknown arm(s) {', '.join(unknown)} for study {study}; its arms are: {', '.join(known)}")
        plan = dataclasses.replace(plan, only=tuple(arms))
    return plan
