"""Classic uncertainty scores from one model's class distribution.

Shape contract: every function takes ``log_probs`` of shape ``[B, C]`` (natural-log class
probabilities, ``C >= 2``, rows finite except ``-inf`` for a class of probability 0) and returns a
``[B]`` tensor in [0, 1] where higher means more uncertain. The caller states whether the model gave
logits or probabilities by choosing :func:`log_probs_from_logits` or :func:`log_probs_from_probs`;
nothing here guesses.

Confident rows keep their precision: ``1 - p1`` is computed as the sum of the other classes'
probabilities, never as a difference from 1, so a row with ``p1 = 1 - 1e-9`` scores about
``1e-9`` in float32, not 0, and such rows still rank by how confident they are.

Definitions (Settles, "Active Learning Literature Survey", 2009, section 3.1), normalized to [0, 1]:

=================  ===============================
least_confidence   (1 - p1) * C / (C - 1)
margin             1 - (p1 - p2)
ratio              p2 / p1
entropy            -sum_i p_i ln p_i / ln C
=================  ===============================
"""

from __future__ import annotations

import math
import torch

__all__ = [
    "entropy",
    "least_confidence",
    "log_probs_from_logits",
    "log_probs_from_probs",
    "margin",
    "ratio",
    "score_all",
]


def log_probs_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` or ``[B, C, K]`` logits -> log-probabilities over the class axis (1), via a
    stable log-softmax (float32 or wider)."""
    return torch.log_softmax(_at_least_float32(logits), dim=1)


def log_probs_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` or ``[B, C, K]`` probabilities -> log-probabilities; 0 maps to ``-inf``.

    Each distribution is renormalized over the class axis (a model's probabilities sum to 1 only
    within rounding), so every score sees one consistent distribution.
    """
    probs = _at_least_float32(probs)
    return torch.log(probs) - torch.log(probs.sum(dim=1, keepdim=True))


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _top2(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.topk(log_probs, 2, dim=-1).values
    return top[:, 0], top[:, 1]


def _rest_mass(probs: torch.Tensor, top_index: torch.Tensor) -> torch.Tensor:
    """``1 - p1`` as the sum of every other class's probability: exact to float rounding of the
    small terms, where ``1 - p1`` would cancel to 0 once ``p1`` rounds to 1. ``[B]``."""
    return probs.scatter(-1, top_index[:, None], 0.0).sum(dim=-1)


def _in_unit_range(score: torch.Tensor) -> torch.Tensor:
    """Clamp rounding overshoot into [0, 1] (and turn -0.0 into 0.0)."""
    return score.clamp_(0.0, 1.0).add_(0.0)


def least_confidence(log_probs: torch.Tensor) -> torch.Tensor:
    """``(1 - p1) * C / (C - 1)``: 0 when certain, 1 when uniform. ``[B, C] -> [B]``."""
    n = log_probs.shape[-1]
    top_index = log_probs.argmax(dim=-1)
    return _in_unit_range(_rest_mass(torch.exp(log_probs), top_index) * (n / (n - 1)))


def margin(log_probs: torch.Tensor) -> torch.Tensor:
    """``1 - (p1 - p2)``: 1 when the top two classes tie. ``[B, C] -> [B]``."""
    top = torch.topk(log_probs, 2, dim=-1)
    rest = _rest_mass(torch.exp(log_probs), top.indices[:, 0])
    return _in_unit_range(rest + torch.exp(top.values[:, 1]))


def ratio(log_probs: torch.Tensor) -> torch.Tensor:
    """``p2 / p1``: 1 when the top two classes tie. ``[B, C] -> [B]``."""
    log_p1, log_p2 = _top2(log_probs)
    return _in_unit_range(torch.exp(log_p2 - log_p1))


def _entropy_terms(probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``p ln p`` per class, 0 where ``p = 0``. ``[B, C]``."""
    return torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs))


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over ``ln C``: 1 when uniform. ``[B, C] -> [B]``."""
    n = log_probs.shape[-1]
    terms = _entropy_terms(torch.exp(log_probs), log_probs)
    return _in_unit_range(-terms.sum(dim=-1) / math.log(n))


def score_all(log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every classic score, the prediction and its confidence, from one top-2 and one exp.

    Args:
        log_probs: ``[B, C]`` log-probabilities, ``C >= 2``.

    Returns:
        ``least_confidence``, ``margin``, ``ratio``, ``entropy`` (``[B]`` float32 in [0, 1]),
        ``predicted`` (``[B]`` int32 argmax) and ``confidence`` (``[B]`` float32 p1).
    """
    n = log_probs.shape[-1]
    top = torch.topk(log_probs, 2, dim=-1)
    log_p1, log_p2 = top.values[:, 0], top.values[:, 1]
    probs = torch.exp(log_probs)
    rest = _rest_mass(probs, top.indices[:, 0])
    scores = {
        "least_confidence": rest * (n / (n - 1)),
        "margin": rest + torch.exp(log_p2),
        "ratio": torch.exp(log_p2 - log_p1),
        "entropy": -_entropy_terms(probs, log_probs).sum(dim=-1) / math.log(n),
    }
    out = {name: _in_unit_range(s).float() for name, s in scores.items()}
    out["predicted"] = top.indices[:, 0].int()
    out["confidence"] = torch.exp(log_p1).float()
    return out
