"""Per-family config sections: BioFormer's options live in `model.bioformer`; flat configs written
before the sections existed still load (the one migration: `ModelConfig.of`); flags still work."""

from __future__ import annotations

import pytest
import yaml

from bioformer.cli import build_parser, config_from_args
from bioformer.config import BioFormerConfig, ModelConfig, RunConfig
from bioformer.errors import BioformerError

# the model section of a config.yaml as runs wrote it before the sections (written by the code
# at commit 0b59720 with d_model 32, d_z 6, pair_mode linear)
FLAT_MODEL = """\
model:
  model: bioformer
  d_model: 32
  nhead: 4
  nlayers: 2
  ff_factor: 4
  dropout: 0.1
  attention_dropout: 0.0
  explicit_zero_prob: false
  pair_bias: true
  opm: true
  gating: true
  d_z: 6
  d_opm: 8
  opm_chunk_size: null
  checkpoint_blocks: false
  pair_mode: linear
  attention_chunk_size: null
  prior_direction: both
  value_scale: 0.04
"""


def test_flat_config_of_an_older_run_loads_into_sections_and_round_trips(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(FLAT_MODEL)
    cfg = RunConfig.load(old).validate(check_hardware=False)
    assert cfg.model.d_model == 32
    assert cfg.model.bioformer == BioFormerConfig(d_z=6, pair_mode="linear")
    cfg.save(tmp_path / "new.yaml")
    saved = yaml.safe_load((tmp_path / "new.yaml").read_text())["model"]
    assert saved["bioformer"]["d_z"] == 6 and "d_z" not in saved  # written in the new layout
    assert RunConfig.load(tmp_path / "new.yaml") == cfg


def test_family_fields_are_routed_by_name():
    cfg = ModelConfig.of(d_model=16, d_z=4, pair_mode="linear")
    assert cfg == ModelConfig(d_model=16, bioformer=BioFormerConfig(d_z=4, pair_mode="linear"))
    assert ModelConfig.of(bioformer={"d_z": 4}) == ModelConfig.of(d_z=4)
    changed = cfg.replace(nlayers=3, opm=False)
    assert (changed.nlayers, changed.bioformer.opm, changed.bioformer.d_z) == (3, False, 4)
    assert cfg.bioformer.opm  # replace copies
    assert changed.get("opm") is False and changed.get("nlayers") == 3
    with pytest.raises(AttributeError):
        cfg.d_z = 5  # a family field set on the common part would be silently ignored: it raises


@pytest.mark.parametrize(("values", "message"), [
    ({"d_zz": 4}, "unknown config key.*d_zz -> d_z"),
    ({"d_z": 4, "bioformer": {"d_z": 8}}, "model.d_z is given twice"),
    ({"bioformer": {"pair_bias": True, "c_z": 4}}, "unknown config key.*model.bioformer"),
    ({"bioformer": 5}, "model.bioformer must be a mapping"),
])
def test_bad_model_keys_are_one_clear_error(values, message):
    with pytest.raises(BioformerError, match=message):
        ModelConfig.of(**values)


def test_bad_family_value_is_checked_by_its_section():
    with pytest.raises(BioformerError, match="--d-z must be >= 1"):
        ModelConfig.of(d_z=0).validate()
    with pytest.raises(BioformerError, match="model.bioformer.d_opm must be an int"):
        ModelConfig.of(d_opm="eight").validate()


def test_flags_set_the_family_section(tmp_path):
    args = build_parser().parse_args(["train", "--d-model", "16", "--d-z", "6", "--pair-mode", "linear", "--no-opm"])
    cfg = config_from_args(args)
    assert cfg.model.d_model == 16
    assert (cfg.model.bioformer.d_z, cfg.model.bioformer.pair_mode, cfg.model.bioformer.opm) == (6, "linear", False)
    # flags override a flat --config file too
    (tmp_path / "old.yaml").write_text(FLAT_MODEL)
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "old.yaml"), "--d-opm", "5"]))
    assert (cfg.model.d_model, cfg.model.bioformer.d_z, cfg.model.bioformer.d_opm) == (32, 6, 5)


def test_resume_check_reads_a_training_state_written_before_the_sections():
    from bioformer.training.run import config_changes

    old = {**RunConfig().to_dict(), "model": yaml.safe_load(FLAT_MODEL)["model"]}  # last.pt's "config" of an older run
    new = RunConfig.from_dict(old).to_dict()
    assert config_changes(old, new) == []
    new["model"]["bioformer"]["d_z"] = 8
    assert config_changes(old, new) == ["model.bioformer.d_z 6 -> 8"]
