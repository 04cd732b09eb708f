"""Option checks shared by the config dataclasses, the CLI and the `Run` API: one
BioformerError naming the option (as its command-line flag), the rule and the value given."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from bioformer.errors import BioformerError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def need(ok: bool, name: str, what: str, value: Any) -> None:
    """One BioformerError naming the option, the rule and the value given."""
    if not ok:
        raise BioformerError(f"{flag(name)} must be {what}, got {value!r}")


def check_types(section: str, obj: Any) -> None:
    """Each field holds its annotated type (YAML gives strings where numbers belong); ints are
    accepted for floats and numeric strings such as YAML's `1e-3` are converted."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        optional = isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union
        if optional:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if value is None and optional:
            continue
        ok = False
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            if isinstance(value, str):
                try:
                    value = float(value)
                    setattr(obj, f.name, value)
                except ValueError:
                    pass
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(obj, f.name, float(value))
        elif tp is str:
            ok = isinstance(value, str)
        else:  # nested sections are checked by their own validate()
            ok = True
        if not ok:
            raise BioformerError(
                f"{section}.{f.name} must be {'an int' if tp is int else 'a ' + tp.__name__}"
                f"{' or null' if optional else ''}, got {value!r} ({type(value).__name__}); fix it in the --config "
                f"file or pass {flag(f.name)}"
            )


def check_device(device: str) -> None:
    """`device` is auto, cpu, cuda, cuda:N or mps, and exists on this machine."""
    import torch

    if device in ("auto", "cpu"):
        return
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()):
        raise BioformerError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise BioformerError("--device mps: no MPS device on this machine; use --device cpu or auto")
        return
    if not torch.cuda.is_available():
        raise BioformerError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu or auto")
    n = torch.cuda.device_count()
    if index and int(index) >= n:
        raise BioformerError(f"--device {device}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")


def check_inference_options(
    batch_size: int = 64, device: str | None = None, n_query: int | None = None, top_k: int | None = None,
    min_cells: int | None = None, folds: int | None = None, max_folds: int | None = None,
) -> None:
    """The options of embed / impute / grn / evaluate, shared by the CLI (before any data is read)
    and the `Run` API: BioformerError naming the first bad one."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need(whole(batch_size) and batch_size >= 1, "batch_size", "an int >= 1", batch_size)
    need(n_query is None or (whole(n_query) and n_query >= 1), "n_query", "an int >= 1", n_query)
    need(top_k is None or (whole(top_k) and top_k >= 1), "top_k", "an int >= 1", top_k)
    need(min_cells is None or (whole(min_cells) and min_cells >= 1), "min_cells", "an int >= 1", min_cells)
    if folds is not None:
        bound = max_folds if max_folds is not None else folds
        need(whole(folds) and 1 <= folds <= bound, "folds", f"an int in [1, {bound}] (one fold per position of the longest sequence at most)", folds)
    if device is not None:
        check_device(device)


def unknown_keys(kind: str, unknown: set[str], known: set[str]) -> BioformerError:
    hints = [f"{u} -> {m[0]}?" for u in sorted(unknown) if (m := difflib.get_close_matches(str(u), known, n=1))]
    return BioformerError(
        f"unknown config key(s) for {kind}: {sorted(unknown)}"
        + (f" (did you mean {', '.join(hints)})" if hints else "") + f"; known: {sorted(known)}"
    )
