"""Which rows of a model's output may be scored (row-level problems; see docs/outputs.md)."""

from __future__ import annotations

import torch

__all__ = ["invalid_rows", "PROB_SUM_TOLERANCE"]

#: A probability row must sum to 1 within this.
PROB_SUM_TOLERANCE = 1e-3


def invalid_rows(output: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flag rows that must not be scored.

    Args:
        output: ``[B, C]`` or ``[B, C, K]`` model output (classes on axis 1, samples last); a
            row is bad when any of its K samples is.
        kind: ``"logits"``, ``"probs"``, or ``"outputs"`` (regression: only finiteness counts).

    Returns:
        Two ``[B]`` bool tensors: non-finite rows, and (for probs) rows with a negative entry or a
        sum off 1 by more than :data:`PROB_SUM_TOLERANCE`.
    """
    rows = len(output)
    non_finite = ~torch.isfinite(output).reshape(rows, -1).all(dim=1)
    if kind != "probs":
        return non_finite, torch.zeros_like(non_finite)
    shape = (-1,) + (1,) * (output.ndim - 1)
    finite = torch.where(non_finite.view(shape), torch.zeros_like(output), output)
    off_sum = ((finite.sum(dim=1) - 1.0).abs() > PROB_SUM_TOLERANCE).reshape(rows, -1).any(dim=1)
    negative = (finite < 0).reshape(rows, -1).any(dim=1)
    return non_finite, (off_sum | negative) & ~non_finite
