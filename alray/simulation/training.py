"""Training the simulation's learners (torch), deterministic per seed, and exporting them as the
models a job loads.

Every learner takes ``x [n, D]`` float32 (standardized features of the labeled rows), ``y [n]``
int64 class indices in ``0..C-1``, the class count ``C`` (classes missing from the labeled rows
still get an output) and a seed, and returns a :class:`Trained` whose :meth:`~Trained.probabilities`
give ``[N, C]`` and whose :meth:`~Trained.export` writes the model files and returns the job's
``model`` section. Training runs torch on one thread (:func:`one_thread`). Randomness comes only from ``torch.Generator`` and ``numpy.random.Generator``
objects made from the seed, never from the global generators.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DropoutMlp", "LinearHeads", "MlpModel", "Trained", "fit_logistic", "one_thread",
           "train_ensemble", "train_logistic", "train_mlp"]

#: L-BFGS iterations at most; it stops earlier once the gradient is below the tolerance.
_LBFGS_MAX_ITER = 1000
#: The MLP: hidden units, dropout rate, full-batch Adam steps, learning rate, weight decay.
MLP_HIDDEN, MLP_DROPOUT, MLP_STEPS, MLP_LR, MLP_WEIGHT_DECAY = 64, 0.25, 300, 1e-2, 1e-4


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread, restoring the caller's setting after. These models are small:
    on two threads torch was 5-16x slower here while the other core was busy, and the scoring
    actors need the other cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _on_one_thread(train):
    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        with one_thread():
            return train(*args, **kwargs)

    return wrapper


def _softmax(z: np.ndarray) -> np.ndarray:
    """``[N, C]`` logits -> probabilities, rows summing to 1 (float64)."""
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Trained:
    """A trained learner: what the round measures and what the job loads."""

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``[N, D]`` float32 features -> ``[N, C]`` float64 class probabilities."""
        raise NotImplementedError

    def export(self, folder: Path, stem: str) -> dict[str, Any]:
        """Write the model's files under ``folder`` (named from ``stem``); returns the job
        spec's ``model`` section (absolute paths)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------- linear


@dataclass
class LinearHeads(Trained):
    """One linear head (a ``linear`` model), or several (a committee, ``model.members``).

    Attributes:
        heads: ``(weight [C, D], bias [C])`` float32 per member.
        committee: export as ``model.members`` (even for one head).
    """

    heads: list[tuple[np.ndarray, np.ndarray]]
    committee: bool = False

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return np.mean([_softmax(x @ w.T + b) for w, b in self.heads], axis=0)

    def export(self, folder: Path, stem: str) -> dict[str, Any]:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for m, (weight, bias) in enumerate(self.heads):
            path = folder / (f"{stem}-m{m}.safetensors" if self.committee
                             else f"{stem}.safetensors")
            save_file({"weight": np.ascontiguousarray(weight), "bias": np.ascontiguousarray(bias)},
                      str(path))
            paths.append(str(path))
        if self.committee:
            return {"kind": "linear", "members": paths}
        return {"kind": "linear", "path": paths[0]}


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: ``weight [C, D]``, ``bias [C]`` (float32).

    Minimizes the mean cross-entropy plus ``||weight||^2 / (2 n)`` (scikit-learn's
    ``LogisticRegression(C=1)``; the bias is not penalized) with L-BFGS in float64 from zeros, to
    convergence. The problem is strictly convex, so the answer depends on the data only.
    """
    xt, yt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y)
    n, width = x.shape
    weight = torch.zeros(classes, width, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=_LBFGS_MAX_ITER,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (torch.nn.functional.cross_entropy(xt @ weight.T + bias, yt)
                + weight.pow(2).sum() / (2 * n))
        loss.backward()
        return loss

    optimizer.step(closure)
    return (weight.detach().numpy().astype(np.float32),
            bias.detach().numpy().astype(np.float32))


@_on_one_thread
def train_logistic(x: np.ndarray, y: np.ndarray, classes: int, seed: int,
                   members: int = 1) -> LinearHeads:
    """One logistic regression (``seed`` and ``members`` unused: the fit is deterministic)."""
    return LinearHeads([fit_logistic(x, y, classes)])


@_on_one_thread
def train_ensemble(x: np.ndarray, y: np.ndarray, classes: int, seed: int,
                   members: int = 5) -> LinearHeads:
    """``members`` logistic regressions, member m on a bootstrap resample (n rows drawn with
    replacement) by ``(seed, m)``: a committee whose disagreement K-scores read."""
    heads = []
    for m in range(members):
        rows = np.random.default_rng([seed, m]).integers(0, len(y), len(y))
        heads.append(fit_logistic(x[rows], y[rows], classes))
    return LinearHeads(heads, committee=True)


# ----------------------------------------------------------------------------------- MLP


class DropoutMlp(torch.nn.Module):
    """``[B, D]`` -> Linear -> ReLU -> Dropout -> Linear: returns (logits ``[B, C]``, the hidden
    layer ``[B, H]``, the last layer's input when dropout is off: the embedding diversity
    methods use)."""

    def __init__(self, width: int, hidden: int, classes: int, p: float, device=None):
        super().__init__()
        self.hidden = torch.nn.Linear(width, hidden, device=device)
        self.dropout = torch.nn.Dropout(p)
        self.head = torch.nn.Linear(hidden, classes, device=device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.hidden(x))
        return self.head(self.dropout(hidden)), hidden


@dataclass
class MlpModel(Trained):
    module: DropoutMlp

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        with one_thread(), torch.inference_mode():
            logits, _ = self.module.eval()(torch.from_numpy(x))
        return _softmax(logits.numpy())

    def export(self, folder: Path, stem: str) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.pt"
        with warnings.catch_warnings():
            # torch 2.10+ deprecates TorchScript in favour of torch.export; alray loads .pt files
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(self.module.eval()).save(str(path))
        return {"kind": "torchscript", "path": str(path)}


def _init_linear(layer: torch.nn.Linear, generator: torch.Generator) -> None:
    """Uniform in ``+-1/sqrt(fan_in)`` (torch's default bounds), from ``generator``."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


@_on_one_thread
def train_mlp(x: np.ndarray, y: np.ndarray, classes: int, seed: int,
              members: int = 1) -> MlpModel:
    """A :class:`DropoutMlp` trained with full-batch Adam (``MLP_STEPS`` steps, weight decay),
    its initial weights and dropout masks drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    module = torch.nn.utils.skip_init(DropoutMlp, x.shape[1], MLP_HIDDEN, classes, MLP_DROPOUT)
    _init_linear(module.hidden, generator)
    _init_linear(module.head, generator)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(module.parameters(), lr=MLP_LR, weight_decay=MLP_WEIGHT_DECAY)
    keep = 1.0 - MLP_DROPOUT
    for _ in range(MLP_STEPS):
        optimizer.zero_grad()
        hidden = torch.relu(module.hidden(xt))
        mask = (torch.rand(hidden.shape, generator=generator) < keep).to(hidden.dtype) / keep
        torch.nn.functional.cross_entropy(module.head(hidden * mask), yt).backward()
        optimizer.step()
    return MlpModel(module.eval())
