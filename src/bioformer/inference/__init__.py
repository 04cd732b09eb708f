"""Using a trained model: `Run` (embed, impute, pair scores, evaluate) over any AnnData.

Sits above `training` (it reloads what a run wrote) and below `cli`.
"""

from bioformer.inference.cells import PreparedCells
from bioformer.inference.pairs import PairScores
from bioformer.inference.run import Imputation, Run

__all__ = ["Imputation", "PairScores", "PreparedCells", "Run"]
