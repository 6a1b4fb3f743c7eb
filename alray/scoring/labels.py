"""Label-quality scores: how well a row's given (gold) label agrees with a model's samples.

Shape contract: ``log_probs`` is ``[B, C, K]`` (natural-log class probabilities, samples last, as
:mod:`alray.scoring.samples` takes them) and ``gold`` is ``[B]`` int64 class indices in
``0 .. C - 1``. The K samples are whatever the job gives: the checkpoints of K training epochs
(dataset cartography), the members of a committee, or K = 1 for one model, where
``gold_confidence`` is confident learning's *self-confidence*. Every function is row-wise and
symmetric in the samples, and keeps ``log_probs``' precision (float32 or float64).

=================  =========================================================  ========
gold_confidence    mean_k p_k[gold]                                            [0, 1]
gold_variability   population standard deviation (ddof 0) of p_k[gold] over K  [0, 0.5]
gold_correctness   share of the K samples whose argmax is gold                 [0, 1]
label_issue        1 - gold_confidence                                         [0, 1]
=================  =========================================================  ========

A sample's argmax ties go to the lowest class index (``torch.argmax``), as NumPy's do in the
reference implementation.

References:
    Swayamdipta, Schwartz, Lourie, Wang, Hajishirzi, Smith, Choi, "Dataset Cartography: Mapping
    and Diagnosing Datasets with Training Dynamics", EMNLP 2020. Northcutt, Jiang, Chuang,
    "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021 (self-confidence).
"""

from __future__ import annotations

import torch

from alray.scoring.samples import _samples

__all__ = ["gold_probabilities", "gold_statistics", "label_issue"]


def _gold_index(gold: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    if gold.ndim != 1 or gold.shape[0] != log_probs.shape[0]:
        raise ValueError(f"gold must be [B] with the B of log_probs ({log_probs.shape[0]}); got "
                         f"shape {tuple(gold.shape)}")
    return gold.to(device=log_probs.device, dtype=torch.int64)


def gold_probabilities(log_probs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """``p_k[gold]`` for every sample. ``[B, C, K], [B] -> [B, K]`` in [0, 1]."""
    log_probs = _samples(log_probs)
    index = _gold_index(gold, log_probs)[:, None, None].expand(-1, 1, log_probs.shape[-1])
    return torch.exp(log_probs.gather(1, index).squeeze(1))


def gold_statistics(log_probs: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dataset cartography's three coordinates of each row over the K samples.

    Args:
        log_probs: ``[B, C, K]`` log-probabilities.
        gold: ``[B]`` the given label of each row, a class index.

    Returns:
        ``gold_confidence``, ``gold_variability`` and ``gold_correctness``, each ``[B]``.
    """
    p_gold = gold_probabilities(log_probs, gold)
    correct = log_probs.argmax(dim=1) == _gold_index(gold, log_probs)[:, None]
    return {
        "gold_confidence": p_gold.mean(dim=-1),
        "gold_variability": p_gold.std(dim=-1, correction=0),
        "gold_correctness": correct.to(p_gold.dtype).mean(dim=-1),
    }


def label_issue(log_probs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """``1 - gold_confidence``: how likely the given label is wrong; the rows the model trusts
    least with their label come first. ``[B, C, K], [B] -> [B]`` in [0, 1].

    Computed as the mass of the other classes, so a row whose label the model is sure of keeps
    its precision (about ``1e-9``, not 0, in float32)."""
    log_probs = _samples(log_probs)
    probs = torch.exp(log_probs)
    index = _gold_index(gold, log_probs)[:, None, None].expand(-1, 1, log_probs.shape[-1])
    others = probs.scatter(1, index, 0.0).sum(dim=1)
    return others.mean(dim=-1).clamp_(0.0, 1.0).add_(0.0)
