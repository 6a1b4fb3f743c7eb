"""The selection methods a job may ask for, what each needs from the scan, and where its code
lives; no torch here.

Spec validation, planning and the scan read this module: an entry's ``vectors`` tell the scan which
per-row vectors to keep for the candidates (``embedding [D]``, ``probs [C]``, ``samples [C*K]``),
``draws`` that the method draws from the whole pool by per-row keys instead of choosing among the
top candidates, and ``diversity`` that it chooses among the global top ``prefilter * k``. The
function (torch) is imported only when the selection runs. Adding a method is one entry here and
its function in :mod:`alray.selection.methods`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["METHODS", "METHOD_NAMES", "Method", "method_for"]

_METHODS_MODULE = "alray.selection.methods"


@dataclass(frozen=True)
class Method:
    """One registered ``selection.method``.

    Attributes:
        name: the ``selection.method`` value.
        summary: what it does, as docs/selection.md gives it.
        paper: where it comes from.
        function: ``module:function`` of its torch code (None: the selection stage does it alone).
        vectors: the per-row vectors the candidates must carry.
        diversity: chooses among the global top ``prefilter * k`` candidates.
        draws: draws from the whole pool by per-row keys (``random``, ``power``).
        needs_samples: needs K > 1 model outputs per row.
        classification_only: needs class probabilities.
    """

    name: str
    summary: str
    paper: str
    function: str | None = None
    vectors: tuple[str, ...] = ()
    diversity: bool = False
    draws: bool = False
    needs_samples: bool = False
    classification_only: bool = False

    def load(self) -> Callable:
        """The method's function (imports torch)."""
        module, _, name = (self.function or "").partition(":")
        return getattr(importlib.import_module(module), name)


def _entries(*methods: Method) -> dict[str, Method]:
    return {method.name: method for method in methods}


#: Every ``selection.method``, by name.
METHODS: dict[str, Method] = _entries(
    Method("topk", "the k highest scores", "Settles 2009 (uncertainty sampling)"),
    Method("kmeans", "weighted k-means over the embeddings of the top prefilter*k, weighted by "
                     "score; per cluster the candidate nearest its centroid",
           "Zhdanov 2019", f"{_METHODS_MODULE}:weighted_kmeans", ("embedding",), diversity=True),
    Method("kcenter", "greedy k-center (farthest-first) over the embeddings, from the labeled "
                      "rows where the ledgers name some, else from the top candidate",
           "Sener and Savarese 2018", f"{_METHODS_MODULE}:kcenter_greedy", ("embedding",),
           diversity=True),
    Method("badge", "k-means++ seeding over gradient embeddings (p - onehot(argmax p)) x h, "
                    "never materialized", "Ash et al. 2020", f"{_METHODS_MODULE}:badge",
           ("probs", "embedding"), diversity=True, classification_only=True),
    Method("cluster_margin", "clusters of the top candidates, round-robin from the smallest "
                             "cluster, a seeded random member each turn",
           "Citovsky et al. 2021", f"{_METHODS_MODULE}:cluster_margin", ("embedding",),
           diversity=True),
    Method("batchbald", "greedy maximization of the mutual information of the batch's joint "
                        "prediction with the model's parameters", "Kirsch et al. 2019",
           f"{_METHODS_MODULE}:batchbald", ("samples",), diversity=True, needs_samples=True,
           classification_only=True),
    Method("power", "draws from the whole pool without replacement, P(row) ~ score^power",
           "Kirsch et al. 2023 (stochastic batch acquisition); Efraimidis and Spirakis 2006",
           draws=True),
    Method("random", "uniform draws from the whole pool", "the baseline every method must beat",
           draws=True),
)

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_for(name: str) -> Method:
    return METHODS[name]
