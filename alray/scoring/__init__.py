"""Uncertainty scores: pure torch functions over log-probabilities ``[B, C]``.

Measuring is separate from selecting: each score returns one float per row, higher = more
uncertain, in [0, 1]; ranking, ties and diversity live in :mod:`alray.reduce`.
"""

from alray.scoring.uncertainty import (
    SCORES,
    ScoreInfo,
    entropy,
    least_confidence,
    log_probs_from_logits,
    log_probs_from_probs,
    margin,
    ratio,
    score_all,
)
from alray.scoring.validity import invalid_rows

__all__ = [
    "SCORES",
    "ScoreInfo",
    "entropy",
    "invalid_rows",
    "least_confidence",
    "log_probs_from_logits",
    "log_probs_from_probs",
    "margin",
    "ratio",
    "score_all",
]
