"""The score names a job spec may give, importable without torch.

Spec validation and the command line read this module; the kernels (``alray.scoring.uncertainty``)
import torch and load only when scoring starts. Each name here has exactly one kernel there, which
a test checks.
"""

from __future__ import annotations

__all__ = ["SCORE_NAMES", "SCORE_DESCRIPTIONS"]

#: ``scoring.strategy`` values and what each measures; every one is in [0, 1], higher = less sure.
SCORE_DESCRIPTIONS: dict[str, str] = {
    "least_confidence": "(1 - p1) * C / (C - 1)",
    "margin": "1 - (p1 - p2)",
    "ratio": "p2 / p1",
    "entropy": "-sum_i p_i ln p_i / ln C",
}

SCORE_NAMES: tuple[str, ...] = tuple(SCORE_DESCRIPTIONS)
