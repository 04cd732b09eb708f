"""Every cell (issue 27, point 3): `--max-cells none` lifts a profile's or config's cell cap."""

from __future__ import annotations

from bioformer.cli import build_parser, config_from_args, overrides_from_args
from bioformer.experiments.plan import plan_study
from bioformer.experiments.profiles import PROFILES


def test_max_cells_none_lifts_the_study_profile_cap():
    """Mutant: an explicit `none` dropped as "flag not given" (the profile's 2,000 cells stay)."""
    assert PROFILES["standard"].data["max_cells"] is not None  # the cap the flag must lift
    args = build_parser().parse_args(["experiment", "prior", "--max-cells", "none"])
    plan = plan_study("prior", "standard", overrides=overrides_from_args(args))
    assert plan.data.max_cells is None and plan.extra_test_cells == 0  # no second test set: no unsampled cells


def test_max_cells_none_overrides_a_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  max_cells: 300\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--max-cells", "none"])
    assert config_from_args(args).data.max_cells is None
    args = build_parser().parse_args(["train", "--config", str(cfg)])
    assert config_from_args(args).data.max_cells == 300
