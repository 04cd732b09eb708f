"""bioformer: masked single-cell expression transformers with an Evoformer-style gene-pair path."""

from bioformer.errors import BioformerError

__version__ = "0.1.0"
__all__ = ["BioformerError", "Run", "__version__", "tl"]


def __getattr__(name: str):
    """`from bioformer import Run` / `bioformer.tl` without importing torch/scanpy for every command."""
    if name == "Run":
        from bioformer.inference.run import Run

        return Run
    if name == "tl":
        import importlib

        return importlib.import_module("bioformer.tl")
    raise AttributeError(f"module 'bioformer' has no attribute {name!r}")
