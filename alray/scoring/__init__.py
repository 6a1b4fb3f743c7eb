"""Uncertainty scores: pure torch functions over log-probabilities ``[B, C]``.

Measuring is separate from selecting: each score returns one float per row, higher = more
uncertain, in [0, 1]; ranking, ties and diversity live in :mod:`alray.reduce`.

The score names (:mod:`alray.scoring.registry`) import without torch, so that spec validation and
the command line stay quick; the kernels load on first use of any other name here.
"""

from alray.scoring.registry import SCORE_DESCRIPTIONS, SCORE_NAMES

__all__ = [
    "SCORES",
    "SCORE_DESCRIPTIONS",
    "SCORE_NAMES",
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


def __getattr__(name: str):
    if name == "invalid_rows":
        from alray.scoring.validity import invalid_rows

        return invalid_rows
    if name in __all__:
        from alray.scoring import uncertainty

        return getattr(uncertainty, name)
    raise AttributeError(f"module 'alray.scoring' has no attribute {name!r}")
