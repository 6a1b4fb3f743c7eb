"""The learners a simulation may train each round, what model each hands the job, and how many
outputs per row (K) it gives the scores; no torch here.

Spec validation reads this module (a strategy that needs K > 1 is checked against the learner
before anything runs); the training code (torch) lives in :mod:`alray.simulation.training` and is
imported only when a round trains.

==========  =====================================================================================
learner     what the job scores with
==========  =====================================================================================
logistic    multinomial logistic regression, L2 as scikit-learn's default (C = 1), L-BFGS to
            convergence; a ``linear`` head (its embedding is the input features); K = 1
mlp         one hidden layer (ReLU) with dropout, Adam; a ``torchscript`` model returning
            (logits, the hidden layer); K = 1, or ``scoring.mc_samples`` passes of MC dropout
ensemble    ``members`` logistic regressions, each on a bootstrap resample of the labeled rows;
            a committee of ``linear`` heads (``model.members``); K = members
==========  =====================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MEMBERS", "LEARNERS", "LEARNER_NAMES", "Learner"]

#: Committee size of ``learner: ensemble`` when ``members`` is not given.
DEFAULT_MEMBERS = 5


@dataclass(frozen=True)
class Learner:
    """One registered ``learner``.

    Attributes:
        name: the ``learner`` value.
        summary: what it trains.
        model_kind: the job's ``model.kind`` for its exported model.
        committee: exports one file per member (``model.members``), K = members.
        dropout: has dropout modules, so ``scoring.mc_samples`` applies.
        train: ``module:function`` of its training code (torch).
    """

    name: str
    summary: str
    model_kind: str
    train: str
    committee: bool = False
    dropout: bool = False

    def samples(self, members: int, mc_samples: int) -> int:
        """K, the model outputs per row the job scores: members x MC passes (at least 1)."""
        passes = max(1, mc_samples) if self.dropout else 1
        return (members if self.committee else 1) * passes


_TRAINING = "alray.simulation.training"

#: Every ``learner``, by name.
LEARNERS: dict[str, Learner] = {
    learner.name: learner for learner in (
        Learner("logistic", "multinomial logistic regression (L2, L-BFGS)", "linear",
                f"{_TRAINING}:train_logistic"),
        Learner("mlp", "one hidden layer with dropout (Adam)", "torchscript",
                f"{_TRAINING}:train_mlp", dropout=True),
        Learner("ensemble", "bootstrapped logistic regressions, one file each", "linear",
                f"{_TRAINING}:train_ensemble", committee=True),
    )
}

LEARNER_NAMES: tuple[str, ...] = tuple(LEARNERS)
