"""bioformer: masked single-cell expression transformers with an Evoformer-style gene-pair path."""

from bioformer.errors import BioformerError

__version__ = "0.1.0"
__all__ = ["BioformerError", "__version__"]
