"""Uncertainty scores: pure torch functions over log-probabilities, ``[B, C]`` or ``[B, C, K]``
with the samples (MC-dropout passes, committee members) on the last axis.

Measuring is separate from selecting: each score returns one float per row, higher = select first;
ranking, ties and diversity live in :mod:`alray.reduce`. The registry (:mod:`.registry`: names,
what each score needs, where its kernel is) imports without torch, so that spec validation and the
command line stay quick; the kernels (:mod:`.uncertainty`, :mod:`.samples`) load on first use.
"""

from alray.scoring.registry import (CLASSIC_SCORES, SCORE_DESCRIPTIONS, SCORE_NAMES, SCORES,
                                    Score, score_for)

__all__ = ["CLASSIC_SCORES", "SCORES", "SCORE_DESCRIPTIONS", "SCORE_NAMES", "Score", "score_for"]
