"""Atomic checkpoint I/O: write to a temp file in the same directory, fsync, then rename.

Two kinds of checkpoint: the best weights (`model.safetensors`, plain tensors, loadable
anywhere) and the training state (`last.pt`, everything needed to continue a run exactly).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from bioformer.errors import BioformerError


def new_temp_file(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """mkstemp next to `path`, with the permissions the user's umask gives a new file (mkstemp
    alone makes it 0600, and the rename would keep that)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """`data` to `path`: temp file in the same directory, fsync, rename (never a partial file)."""
    path = Path(path)
    fd, tmp = new_temp_file(path)
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


TRAINING_STATE = "last.pt"


def rng_state() -> dict[str, Any]:
    """Every random stream a training epoch reads (Python, NumPy's global, torch CPU and CUDA),
    as tensors and plain containers only, so that it loads with `weights_only=True`."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj: Any) -> Any:
    """`obj` with NumPy scalars and arrays turned into Python numbers and tensors (recursively),
    so that nothing in it needs more than `torch.load(weights_only=True)` to read back."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """The whole training state to `path` atomically: torch.save format holding only tensors,
    numbers, strings and containers (see `load_training_state`)."""
    buf = io.BytesIO()
    torch.save(plain(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_training_state` without unpickling arbitrary objects
    (`weights_only=True`: a file that needs any other class or function is refused, so a
    planted last.pt cannot run code). Raises BioformerError on such or a damaged file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BioformerError(
            f"{path} is refused: it holds objects other than tensors, numbers and containers, and loading "
            "it could run code; a bioformer training state never does. Delete it (or the run) and train again"
        ) from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise BioformerError(f"{path} is damaged and cannot be read ({type(e).__name__}); delete it to train the run from the start") from None
    if not isinstance(state, dict) or not {"epoch", "step", "model", "rng"} <= set(state):
        raise BioformerError(f"{path} is not a bioformer training state; delete it to train the run from the start")
    return state
