"""Option checks live in the config dataclasses: the Python API, --config YAML and the CLI get the same ones."""

from __future__ import annotations

import pytest
import torch

from bioformer.checks import check_device
from bioformer.config import RunConfig
from bioformer.errors import BioformerError
from bioformer.training.run import run_training
from tests.conftest import tiny_config


def test_defaults_and_tiny_config_are_valid(tmp_path):
    RunConfig().validate(check_hardware=False)  # raises on a default that cannot work
    tiny_config(tmp_path).validate()


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("train", "epochs", 0, "--epochs must be >= 1"),
        ("train", "batch_size", 0, "--batch-size must be >= 1"),
        ("train", "lr", float("nan"), "--lr must be a finite number > 0"),
        ("train", "lr", float("inf"), "--lr must be a finite number > 0"),
        ("train", "amp", "fp8", "--amp must be auto | bf16 | fp16 | off"),
        ("train", "num_threads", 0, "--num-threads must be >= 1"),
        ("train", "device", "tpu", "--device must be auto, cpu, cuda"),
        ("train", "epochs", "ten", "train.epochs must be an int"),
        ("train", "epochs", 2.5, "train.epochs must be an int"),
        ("train", "progress", "yes", "train.progress must be a bool"),
        ("data", "mask_ratio", 0.0, "--mask-ratio must be between 0 and 1"),
        ("data", "mask_ratio", 1.0, "--mask-ratio must be between 0 and 1"),
        ("data", "n_bins", 2, "--n-bins must be >= 3"),
        ("data", "valid_frac", 0.0, "--valid-frac must be between 0 and 1"),
        ("data", "test_frac", 0.0, "--test-frac must be between 0 and 1"),
        ("data", "hvg_flavor", "seurat_v9", "--hvg-flavor must be seurat_v3 or cell_ranger or seurat"),
        ("data", "genes", "all", "--genes must be hvg or hvg\\+prior"),
        ("data", "max_cells", 0, "--max-cells must be >= 1"),
        ("model", "model", "gpt", "--model must be bioformer or scgpt"),
        ("model", "d_model", 15, "--d-model 15 is not divisible by --nhead 2"),
        ("model", "dropout", 1.0, "--dropout must be in \\[0, 1\\)"),
    ],
)
def test_bad_option_is_one_clear_error_before_anything_is_written(tmp_path, section, field, value, message):
    cfg = tiny_config(tmp_path)
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(BioformerError, match=message) as e:
        run_training(cfg, quiet=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_fractions_must_leave_training_cells(tmp_path):
    cfg = tiny_config(tmp_path, data={"valid_frac": 0.5, "test_frac": 0.5})
    with pytest.raises(BioformerError, match="leaves no training cells"):
        cfg.validate()


def test_yaml_types_are_checked_and_numeric_strings_converted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-3\n  epochs: 3\ndata:\n  min_cells_frac: 0\n")  # YAML 1.1 reads 1e-3 as a string
    cfg = RunConfig.load(p).validate(check_hardware=False)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.data.min_cells_frac == 0.0 and isinstance(cfg.data.min_cells_frac, float)
    p.write_text("train:\n  lr: fast\n")
    with pytest.raises(BioformerError, match="train.lr must be a float, got 'fast'"):
        RunConfig.load(p).validate(check_hardware=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [epochs: 3\n", "is not valid YAML at line"),
        ("- 1\n", "a config must be a mapping"),
        ("train: 5\n", "must be a mapping of options"),
        ("trian:\n  epochs: 3\n", "unknown config section"),
    ],
)
def test_malformed_yaml_is_one_clear_error(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(BioformerError, match=message):
        RunConfig.load(p)


def test_saved_config_round_trips_through_validation(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.save(tmp_path / "c.yaml")
    assert RunConfig.load(tmp_path / "c.yaml").validate().to_dict() == cfg.to_dict()


def test_device_must_exist():
    check_device("cpu")
    check_device("auto")
    with pytest.raises(BioformerError, match="cuda:N"):
        check_device("gpu0")
    if torch.cuda.is_available():
        with pytest.raises(BioformerError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(BioformerError, match="CUDA is not available"):
            check_device("cuda")
