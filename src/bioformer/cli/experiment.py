"""`bioformer experiment`: run one of the studies over seeds and report it."""

from __future__ import annotations

import argparse

from bioformer.cli.options import add_config_args, overrides_from_args
from bioformer.config import prior_enabled
from bioformer.errors import BioformerError


def cmd_experiment(args: argparse.Namespace) -> int:
    from bioformer.experiments import sizing
    from bioformer.experiments.plan import plan_study
    from bioformer.experiments.suite import run_study, seed_data

    if args.jobs < 1:  # checked before the plan reads any data (--sizing does)
        raise BioformerError(f"--jobs must be >= 1, got {args.jobs}")
    overrides = overrides_from_args(args)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    plan = plan_study(args.study, args.profile, args.out, args.seeds, None, overrides, first_seed=args.first_seed, arms=arms)
    if args.sizing:
        sd = seed_data(plan, plan.seeds[0] if plan.seeds else 0)
        v = len(sd.prepared.vocab)
        print(f"{plan.study.name} ({plan.profile_name}), vocabulary {v} tokens:")
        print(sizing.format_breakdown({a.name: (a.model, prior_enabled(a.prior or plan.data.prior)) for a in plan.arms(v)}, v))
        return 0
    out = run_study(plan, report_only=args.report_only, quiet=True, jobs=args.jobs)
    print((out / "summary.md").read_text())
    print(f"study directory: {out}")
    return 0


def register(sub) -> None:
    """Add the experiment command to the subparsers `sub`."""
    from bioformer.experiments.profiles import PROFILES
    from bioformer.experiments.studies import STUDIES

    x = sub.add_parser(
        "experiment", help="run one of the studies over seeds and report means, 95%% CIs and paired tests",
        description="Studies: " + "; ".join(f"{s.name}: {s.question}" for s in STUDIES.values())
        + ". Every config option below overrides the profile for all arms (model options change the reference model).",
    )
    x.add_argument("study", choices=list(STUDIES))
    x.add_argument("--profile", choices=list(PROFILES), default="standard", help="sizes and epochs (default standard)")
    x.add_argument("--seeds", type=int, help="number of seeds 0..S-1 (default: profile, 5 for standard)")
    x.add_argument("--first-seed", type=int, default=0, help="start at this seed, e.g. to run seeds 3..4 in a second process on the same --out (finished runs are skipped either way)")
    x.add_argument("--arms", help="comma-separated subset of the study's arms to run and report, e.g. a longer check of one pair (default: all)")
    x.add_argument("--out", help="study directory (default studies/PROFILE/STUDY)")
    x.add_argument("--jobs", type=int, default=1, help="train this many runs at once in worker processes, one torch thread each (e.g. 2 on a 2-core CPU; default 1)")
    x.add_argument("--report-only", action="store_true", help="only rewrite results.csv / summary.md / plots from finished runs")
    x.add_argument("--sizing", action="store_true", help="print the arms' parameter breakdown and exit")
    add_config_args(x, ("data", "model", "train"), config_file=False, exclude={"seed", "progress"}, defaults_from="the profile")
    x.set_defaults(func=cmd_experiment)
