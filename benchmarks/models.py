"""Models the benchmarks score with, importable as ``benchmarks.models:<name>`` from the repo root."""

import torch

DIM, HIDDEN, CLASSES = 256, 256, 10


def mlp() -> torch.nn.Module:
    """256 -> 256 -> ReLU -> Dropout(0.5) -> 10: a head with dropout, for MC-dropout runs."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(),
                               torch.nn.Dropout(0.5), torch.nn.Linear(HIDDEN, CLASSES))
