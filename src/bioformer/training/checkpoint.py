"""Atomic checkpoint I/O: write to a temp file in the same directory, fsync, then rename.

Two kinds of checkpoint: the best weights (`model.safetensors`, plain tensors, loadable
anywhere) and the training state (`last.pt`, everything needed to continue a run exactly).
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors to `path` atomically (a kill mid-write leaves the previous file intact)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(state, metadata=metadata))


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure to PNG `path` atomically, then closed."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    model.load_state_dict(load_file(str(path)))


TRAINING_STATE = "last.pt"


def rng_state() -> dict[str, Any]:
    """Every random stream a training epoch reads: Python, NumPy's global, torch CPU and CUDA."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """The whole training state (torch.save format) to `path` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_training_state` (our own file: it holds RNG states, which
    are not plain tensors, hence weights_only=False)."""
    return torch.load(path, map_location="cpu", weights_only=False)
