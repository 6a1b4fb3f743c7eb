"""Model factories importable as ``tests.models:<name>`` by `python` model specs."""

import torch


def binary_head() -> torch.nn.Module:
    """A single-logit binary head over 8 features (alray treats it as two classes)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 1))
