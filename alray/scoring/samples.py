"""Uncertainty scores from a sampled model output: MC-dropout passes or committee members.

Shape contract: classification functions take ``log_probs`` of shape ``[B, C, K]``: natural-log
class probabilities with ``C >= 2`` classes and ``K >= 1`` samples on the last axis, finite except
``-inf`` for a class of probability 0 (in any sample, or in all of them). Each returns a ``[B]``
tensor, higher = more uncertain. Regression functions take ``outputs`` of shape ``[B, K]`` or
``[B, O, K]``, samples again last. float32 and float64 inputs are computed and returned in their
own precision, as :mod:`alray.scoring.uncertainty` does; float16 and bfloat16 are promoted to
float32. Every score is row-wise (scoring a batch in parts gives the same rows) and symmetric in
the samples (permuting ``K`` changes only float rounding).

``p_k`` is sample ``k``'s distribution and ``p̄ = mean_k p_k`` the predictive one, kept in the log
domain by :func:`mean_log_probs`. ``H`` is the Shannon entropy, with ``0 ln 0 = 0``. A sample's
vote is its argmax class; a tie within a sample goes to the lowest class index (``torch.argmax``).

=========================  ==========================================================  ========
predictive_entropy         H(p̄) / ln C                                                 [0, 1]
bald                       (H(p̄) - mean_k H(p_k)) / ln C = mean_k KL(p_k || p̄) / ln C  [0, 1]
variation_ratio            1 - (votes for the modal class) / K                          [0, 1)
vote_entropy               H(vote shares) / ln min(C, K); 0 when K = 1                  [0, 1]
max_disagreement           max_k KL(p_k || p̄) / ln K; 0 when K = 1                      [0, 1]
target_probability         p̄[:, target]                                                 [0, 1]
expected_gradient_length   sum_c p̄_c ||p̄ - e_c|| sqrt(||h||^2 + 1)                     >= 0
variance                   mean over outputs of the variance over K (ddof 0)            >= 0
=========================  ==========================================================  ========

Identical samples (and ``K = 1``) score exactly 0 on the four disagreement scores (``bald``,
``variation_ratio``, ``vote_entropy``, ``max_disagreement``): :func:`mean_log_probs` then returns
each sample's log-probabilities to the bit. ``bald <= predictive_entropy`` always holds, and
``max_k KL(p_k || p̄) <= ln K`` because ``p̄ >= p_k / K``.

References:
    Houlsby, Huszár, Ghahramani, Lengyel, "Bayesian Active Learning for Classification and
    Preference Learning", 2011 (BALD). Gal, Islam, Ghahramani, "Deep Bayesian Active Learning with
    Image Data", ICML 2017 (MC dropout; BALD, variation ratios, predictive entropy). Freeman,
    "Elementary Applied Statistics", 1965 (variation ratio). Dagan & Engelson, "Committee-Based
    Sampling for Training Probabilistic Classifiers", ICML 1995 (vote entropy). McCallum & Nigam,
    "Employing EM and Pool-Based Active Learning for Text Classification", ICML 1998 (KL to the
    consensus). Settles, "Active Learning Literature Survey", 2009, sections 3.2 and 3.3. Settles,
    Craven & Ray, "Multiple-Instance Active Learning", NIPS 2008, and Huang et al., "Active Learning
    for Speech Recognition: the Power of Gradients", 2016 (expected gradient length).
"""

from __future__ import annotations

import math

import torch

from alray.scoring.uncertainty import (
    _at_least_float32,
    _entropy_terms,
    _in_unit_range,
    entropy,
)

__all__ = [
    "bald",
    "expected_gradient_length",
    "max_disagreement",
    "mean_log_probs",
    "mean_prediction",
    "predictive_entropy",
    "target_probability",
    "variance",
    "variation_ratio",
    "vote_entropy",
]


def _samples(log_probs: torch.Tensor) -> torch.Tensor:
    """Check the ``[B, C, K]`` contract (``C >= 2``, ``K >= 1``) and promote to float32+."""
    if log_probs.ndim != 3 or log_probs.shape[1] < 2 or log_probs.shape[2] < 1:
        raise ValueError(
            f"log_probs must be [B, C, K] with C >= 2 classes and K >= 1 samples on the last "
            f"axis; got shape {tuple(log_probs.shape)}"
        )
    return _at_least_float32(log_probs)


def mean_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """``ln p̄``, the log of the mean probability over the samples. ``[B, C, K] -> [B, C]``.

    ``logsumexp - ln K``, computed as ``m + ln mean_k exp(x_k - m)`` with ``m`` the largest
    sample: just as stable, and exact when the samples are equal (then ``exp(0) = 1`` and the mean
    is 1), so identical samples give ``p̄ = p_k`` to the bit. A class that is ``-inf`` in every
    sample stays ``-inf``.
    """
    log_probs = _samples(log_probs)
    top = log_probs.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (top + torch.log(torch.exp(log_probs - top).mean(dim=-1, keepdim=True))).squeeze(-1)


def predictive_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """``H(p̄) / ln C``: total uncertainty, 1 when ``p̄`` is uniform. ``[B, C, K] -> [B]``."""
    return entropy(mean_log_probs(log_probs))


def _kl_to_mean(log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_k || p̄)`` in nats for every sample, ``>= 0`` up to rounding. ``[B, C, K] -> [B, K]``.

    A class with ``p_k = 0`` adds 0; where ``p_k > 0``, ``ln p̄ >= ln p_k - ln K`` is finite.
    """
    log_probs = _samples(log_probs)
    log_ratio = log_probs - mean_log_probs(log_probs)[..., None]
    probs = torch.exp(log_probs)
    return torch.where(probs > 0, probs * log_ratio, torch.zeros_like(probs)).sum(dim=1)


def bald(log_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between the label and the model: ``(H(p̄) - mean_k H(p_k)) / ln C``.

    Computed as ``mean_k KL(p_k || p̄) / ln C`` (the same quantity), which is exactly 0 for
    identical samples and ``K = 1``. Rounding below 0 is clamped to 0, and the result never exceeds
    :func:`predictive_entropy` of the same input. ``[B, C, K] -> [B]`` in [0, 1].
    """
    information = _kl_to_mean(log_probs).mean(dim=-1) / math.log(log_probs.shape[1])
    return torch.minimum(_in_unit_range(information), predictive_entropy(log_probs))


def max_disagreement(log_probs: torch.Tensor) -> torch.Tensor:
    """``max_k KL(p_k || p̄) / ln K``: the sample furthest from the consensus. 0 when ``K = 1``.

    ``[B, C, K] -> [B]`` in [0, 1].
    """
    k = log_probs.shape[-1]
    divergence = _kl_to_mean(log_probs).amax(dim=-1)
    if k == 1:
        return torch.zeros_like(divergence)
    return _in_unit_range(divergence / math.log(k))


def _vote_counts(log_probs: torch.Tensor) -> torch.Tensor:
    """How many samples vote for each class (argmax; ties to the lowest index). ``[B, C]``."""
    log_probs = _samples(log_probs)
    votes = log_probs.argmax(dim=1)
    counts = torch.zeros(log_probs.shape[:2], dtype=log_probs.dtype, device=log_probs.device)
    return counts.scatter_add_(1, votes, torch.ones_like(votes, dtype=log_probs.dtype))


def variation_ratio(log_probs: torch.Tensor) -> torch.Tensor:
    """``1 - (votes for the modal class) / K``: 0 when every sample votes alike, at most
    ``1 - 1/K``. ``[B, C, K] -> [B]`` in [0, 1)."""
    k = log_probs.shape[-1]
    return _in_unit_range((k - _vote_counts(log_probs).amax(dim=-1)) / k)


def vote_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the vote shares over ``ln min(C, K)``, its largest value; 0 when ``K = 1``.

    ``[B, C, K] -> [B]`` in [0, 1].
    """
    counts = _vote_counts(log_probs)
    n, k = log_probs.shape[1], log_probs.shape[-1]
    shares = counts / k
    spread = -_entropy_terms(shares, torch.log(shares)).sum(dim=-1)
    if min(n, k) == 1:
        return torch.zeros_like(spread)
    return _in_unit_range(spread / math.log(min(n, k)))


def target_probability(log_probs: torch.Tensor, target: int) -> torch.Tensor:
    """``p̄[:, target]``, the mean probability of one class (for rare-class search).

    ``[B, C, K] -> [B]`` in [0, 1]. ``target`` must be in ``0 .. C - 1``.
    """
    log_probs = _samples(log_probs)
    n = log_probs.shape[1]
    if not 0 <= target < n:
        raise ValueError(f"target must be a class index in 0 .. {n - 1}; got {target}")
    return _in_unit_range(torch.exp(log_probs[:, target, :]).mean(dim=-1))


def expected_gradient_length(log_probs: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """Expected norm of the last linear layer's cross-entropy gradient, labels drawn from ``p̄``.

    For a head ``z = W h + b`` with softmax output ``p``, the loss for label ``c`` has gradient
    ``(p - e_c) h^T`` for ``W`` and ``p - e_c`` for ``b``, of norm
    ``||p - e_c|| sqrt(||h||^2 + 1)``. The score is that norm's expectation, ``p`` and the label
    distribution both taken as ``p̄``.

    ``||p̄ - e_c||^2 = ||p̄||^2 - 2 p̄_c + 1`` for every class but the most probable one; there it
    cancels once ``p̄_c`` is near 1, so it is summed as ``sum_{j != c} p̄_j^2 + (1 - p̄_c)^2`` with
    ``1 - p̄_c`` the other classes' mass, and confident rows keep their precision. No
    ``[B, C, C]`` tensor is formed. ``p̄`` is renormalized to sum to 1 first (float16 and bfloat16
    log-probabilities sum to 1 only within 1e-3), so both forms see one distribution.

    Args:
        log_probs: ``[B, C, K]`` log-probabilities.
        embedding: ``[B, D]``, the head's input ``h`` for each row.

    Returns:
        ``[B]`` scores ``>= 0``, in ``log_probs``' precision (float32 or float64); at most
        ``sqrt(1 - 1/C) * sqrt(||h||^2 + 1)``, since ``E ||p̄ - e_c||^2 = 1 - ||p̄||^2``.
    """
    if embedding.ndim != 2 or embedding.shape[0] != log_probs.shape[0]:
        raise ValueError(
            f"embedding must be [B, D] with the B of log_probs ({log_probs.shape[0]}); "
            f"got shape {tuple(embedding.shape)}"
        )
    probs = torch.exp(mean_log_probs(log_probs))
    probs = probs / probs.sum(dim=-1, keepdim=True)  # a softmax output, as the gradient assumes
    top = probs.argmax(dim=-1, keepdim=True)
    others = probs.scatter(-1, top, 0.0)
    sq_distance = probs.square().sum(dim=-1, keepdim=True) - 2 * probs + 1
    top_sq_distance = others.square().sum(dim=-1, keepdim=True) + others.sum(-1, keepdim=True) ** 2
    sq_distance = sq_distance.scatter(-1, top, top_sq_distance).clamp_(min=0.0)
    expected = (probs * sq_distance.sqrt()).sum(dim=-1)
    h = _at_least_float32(embedding)
    h_norm = torch.linalg.vector_norm(h.to(torch.promote_types(h.dtype, expected.dtype)), dim=-1)
    return expected * torch.hypot(h_norm, torch.ones_like(h_norm)).to(expected.dtype)


def _regression_samples(outputs: torch.Tensor) -> torch.Tensor:
    """Check the ``[B, K]`` or ``[B, O, K]`` contract and promote to float32+."""
    if outputs.ndim not in (2, 3) or outputs.shape[-1] < 1:
        raise ValueError(
            f"outputs must be [B, K] or [B, O, K] with K >= 1 samples on the last axis; "
            f"got shape {tuple(outputs.shape)}"
        )
    return _at_least_float32(outputs)


def mean_prediction(outputs: torch.Tensor) -> torch.Tensor:
    """The mean over the samples: ``[B, K] -> [B]``, ``[B, O, K] -> [B, O]``."""
    return _regression_samples(outputs).mean(dim=-1)


def variance(outputs: torch.Tensor) -> torch.Tensor:
    """Population variance (ddof 0) over the samples, averaged over the outputs.

    ``[B, K]`` or ``[B, O, K] -> [B]``, ``>= 0``; 0 when ``K = 1``.
    """
    spread = torch.var(_regression_samples(outputs), dim=-1, correction=0)
    return spread if spread.ndim == 1 else spread.mean(dim=-1)
