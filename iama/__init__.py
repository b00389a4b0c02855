"""iama: inference-aware alignment of language models.

Train one model so that best-of-N, worst-of-N, soft best-of-N, tilting or majority voting applied to it with a
small budget satisfies several criteria at once (IAMA, non-linear GRPO), calibrate and transform rewards for the decoding
procedure (InfAlign-CTRL), and evaluate models the way they are decoded.
"""

from .algorithms import Algorithm, BestOfN, MajorityVote, Sampling, SoftBestOfN, Tilted, WorstOfN, parse_algorithm
from .objective import Criterion, Estimates, Objective, parse_criteria

__version__ = "0.1.0"

__all__ = [
    "Algorithm", "BestOfN", "Criterion", "Estimates", "IAMATrainer", "MajorityVote", "Objective", "Sampling", "SoftBestOfN",
    "Tilted", "WorstOfN", "parse_algorithm", "parse_criteria", "save_final",
]


def __getattr__(name):
    # the trainer pulls in torch, transformers and TRL: imported on first use, so `import iama` stays light
    if name in ("IAMATrainer", "save_final"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'iama' has no attribute {name!r}")
