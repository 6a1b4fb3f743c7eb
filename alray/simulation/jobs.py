"""Each round's job spec: the simulator's base, with a strategy's fragment merged over it.

The simulator owns the keys that keep its books: the pool it wrote, the model the learner just
trained, ``selection.k`` (the batch), ``selection.exclude`` (the run's ledger), the seeds (the
repeat) and the output folder. A strategy's fragment may set any other key of the sections in
:data:`FRAGMENT_SECTIONS`; the merged spec goes through :meth:`alray.JobSpec.from_dict` like any
job.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

__all__ = ["FRAGMENT_SECTIONS", "OWNED_KEYS", "POOL_FEATURES", "POOL_ID", "base_job", "merge"]

#: The pool files the simulator writes: an id column and a fixed_size_list<float32> of features.
POOL_ID, POOL_FEATURES = "id", "features"

#: The job-spec sections a strategy fragment may hold (``model`` and ``output`` are the
#: simulator's: the learner decides the model, each run has its own output folder).
FRAGMENT_SECTIONS = ("scoring", "selection", "resources", "pool", "storage")

#: Keys a fragment may not set, and who sets them.
OWNED_KEYS: dict[str, str] = {
    "pool.uri": "the pool the simulator writes per repeat",
    "pool.format": "the pool the simulator writes per repeat",
    "pool.id_column": "the pool the simulator writes per repeat",
    "pool.feature_column": "the pool the simulator writes per repeat",
    "pool.image": "the pool the simulator writes per repeat",
    "pool.image_column": "the pool the simulator writes per repeat",
    "pool.image_uri_column": "the pool the simulator writes per repeat",
    "selection.k": "batch",
    "selection.exclude": "the run's own ledger",
    "selection.seed": "the repeat (seeds 0..repeats-1)",
    "scoring.seed": "the repeat (seeds 0..repeats-1)",
}


def base_job(*, name: str, pool_uri: str, model: Mapping[str, Any], k: int, ledger: str,
             seed: int, output_uri: str) -> dict[str, Any]:
    """The simulator's part of a round's job spec, as plain data.

    Args:
        model: the ``model`` section (the learner's export).
        k: rows to select (the batch).
        ledger: the run's ledger URI, excluded from selection.
        seed: the repeat: ``selection.seed`` and ``scoring.seed``.
    """
    return {
        "name": name,
        "pool": {"uri": pool_uri, "id_column": POOL_ID, "feature_column": POOL_FEATURES},
        "model": dict(model),
        "scoring": {"seed": seed},
        "selection": {"k": k, "exclude": [ledger], "seed": seed},
        "output": {"uri": output_uri},
        # One actor: a round's pool is small, and actor start-up is most of a round's cost.
        # MC dropout needs its device named; CPU keeps masks identical on every machine.
        "resources": {"actors": 1, "gpus_per_actor": 0},
    }


def merge(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each section of ``fragment`` merged over it key by key (a copy)."""
    merged = copy.deepcopy(dict(base))
    for section, values in fragment.items():
        merged[section] = {**merged.get(section, {}), **copy.deepcopy(dict(values or {}))}
    return merged
