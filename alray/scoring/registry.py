"""The scores a job may ask for, what each needs, and where its kernel lives; no torch here.

Spec validation and the command line read this module; a kernel (a pure torch function) is
imported only when an actor starts scoring. The per-shard pipeline (:mod:`alray.pipeline`) reads
an entry's ``inputs`` to know what to hand the kernel, and ``needs_samples`` to know that the model
must give K > 1 samples. Adding a score is one entry here and its kernel.

Inputs a kernel may take, by name (shapes for a batch of B rows, C classes, K samples):

==============  ===============================================================================
log_probs       ``[B, C, K]`` log-probabilities, samples last (K = 1 for one plain pass)
mean_log_probs  ``[B, C]`` log of the mean probability over K
embedding       ``[B, D]`` the model's embedding (a ``linear`` head's input features)
target_class    ``int``, ``scoring.target_class`` as a class index
gold            ``[B]`` int64, each row's given label (``pool.label_column``) as a class index
outputs         ``[B, O, K]`` a regression model's outputs, samples last
==============  ===============================================================================
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["CLASSIC_SCORES", "SCORES", "SCORE_DESCRIPTIONS", "SCORE_NAMES", "Score", "custom_score",
           "is_custom", "score_for"]


@dataclass(frozen=True)
class Score:
    """One registered score.

    Attributes:
        name: the ``scoring.strategy`` value, and the scores file's column.
        formula: its definition, as docs/scores.md gives it.
        value_range: what values it takes (higher is always selected first).
        kernel: ``module:function`` of the torch kernel.
        inputs: what the kernel takes, in order (see the module docstring).
        needs_samples: the score is defined only for K > 1 (MC dropout or a committee).
        task: ``classification`` or ``regression``.
    """

    name: str
    formula: str
    value_range: str
    kernel: str
    inputs: tuple[str, ...] = ("mean_log_probs",)
    needs_samples: bool = False
    task: str = "classification"

    @property
    def needs_embedding(self) -> bool:
        return "embedding" in self.inputs

    @property
    def needs_labels(self) -> bool:
        return "gold" in self.inputs

    @property
    def needs_target(self) -> bool:
        return "target_class" in self.inputs

    def load(self) -> Callable:
        """The kernel (imports torch)."""
        module, _, name = self.kernel.partition(":")
        return getattr(importlib.import_module(module), name)


_CLASSIC = "alray.scoring.uncertainty"
_SAMPLES = "alray.scoring.samples"
_LABELS = "alray.scoring.labels"


def _entries(*scores: Score) -> dict[str, Score]:
    return {score.name: score for score in scores}


#: Every built-in ``scoring.strategy``, by name.
SCORES: dict[str, Score] = _entries(
    Score("least_confidence", "(1 - p1) * C / (C - 1)", "[0, 1]", f"{_CLASSIC}:least_confidence"),
    Score("margin", "1 - (p1 - p2)", "[0, 1]", f"{_CLASSIC}:margin"),
    Score("ratio", "p2 / p1", "[0, 1]", f"{_CLASSIC}:ratio"),
    Score("entropy", "-sum_i p_i ln p_i / ln C", "[0, 1]", f"{_CLASSIC}:entropy"),
    Score("predictive_entropy", "H(p_mean) / ln C", "[0, 1]",
          f"{_SAMPLES}:predictive_entropy", ("log_probs",)),
    Score("bald", "(H(p_mean) - mean_k H(p_k)) / ln C", "[0, 1]", f"{_SAMPLES}:bald",
          ("log_probs",), needs_samples=True),
    Score("variation_ratio", "1 - (votes for the modal class) / K", "[0, 1)",
          f"{_SAMPLES}:variation_ratio", ("log_probs",), needs_samples=True),
    Score("vote_entropy", "entropy of the vote shares / ln min(C, K)", "[0, 1]",
          f"{_SAMPLES}:vote_entropy", ("log_probs",), needs_samples=True),
    Score("max_disagreement", "max_k KL(p_k || p_mean) / ln K", "[0, 1]",
          f"{_SAMPLES}:max_disagreement", ("log_probs",), needs_samples=True),
    Score("target_probability", "p_mean[target_class]", "[0, 1]",
          f"{_SAMPLES}:target_probability", ("log_probs", "target_class")),
    Score("expected_gradient_length",
          "sum_c p_mean_c * ||p_mean - e_c|| * sqrt(||h||^2 + 1)", ">= 0",
          f"{_SAMPLES}:expected_gradient_length", ("log_probs", "embedding")),
    Score("label_issue", "1 - mean_k p_k[gold]", "[0, 1]", f"{_LABELS}:label_issue",
          ("log_probs", "gold")),
    Score("variance", "mean over outputs of the variance over K", ">= 0", f"{_SAMPLES}:variance",
          ("outputs",), needs_samples=True, task="regression"),
)

#: ``scoring.strategy`` values and what each measures (the CLI and docs show these).
SCORE_DESCRIPTIONS: dict[str, str] = {name: s.formula for name, s in SCORES.items()}
SCORE_NAMES: tuple[str, ...] = tuple(SCORES)

#: The four scores every classification scores file keeps, whatever the strategy.
CLASSIC_SCORES: tuple[str, ...] = ("least_confidence", "margin", "ratio", "entropy")


def is_custom(strategy: str) -> bool:
    """A user's own score, given as ``package.module:function``."""
    return ":" in strategy


def custom_score(strategy: str) -> Score:
    """The entry for a user's own score ``package.module:function``: a function of the
    probabilities ``[B, C, K]`` returning ``[B]``, higher = select first (as modAL users pass
    their own query strategy)."""
    return Score("score", f"{strategy}(probs [B, C, K])", "as the function gives", strategy,
                 ("probs",))


def score_for(strategy: str) -> Score:
    """The registry entry of a built-in or custom ``scoring.strategy``."""
    return custom_score(strategy) if is_custom(strategy) else SCORES[strategy]
