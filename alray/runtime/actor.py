"""The scoring actor: holds the model, scores the shards the driver hands it.

torch and the scoring code load in the actor's process, not when the driver imports this module,
so a driver with nothing to score never pays for them.
"""

from __future__ import annotations

import os
import sys

import ray

from alray.config import JobSpec
from alray.errors import AlrayError, ModelError
from alray.pipeline.outcome import ShardOutcome
from alray.sources.plan import ShardSpec

__all__ = ["ScoringActor"]


@ray.remote
class ScoringActor:
    """Loads the model once, on ``cuda`` when Ray gave this actor a GPU, else on the CPU.

    A load failure is kept and reported by :meth:`ready`, so the driver can name the cause instead
    of a dead actor; an actor without a model refuses to score.
    """

    def __init__(self, spec: JobSpec, import_paths: list[str], scoring: str, exclusion=None):
        import torch

        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available()
                                   else "cpu")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.load(spec, import_paths, scoring, exclusion)

    def load(self, spec: JobSpec, import_paths: list[str], scoring: str,
             exclusion=None) -> dict:
        """Load a job's model (a warm actor takes its next job this way); returns
        :meth:`ready`'s report."""
        for path in reversed(import_paths):  # so `python` models import as on the driver
            if path not in sys.path:
                sys.path.insert(0, path)
        from alray.pipeline.batch import load_scorer

        self.spec = spec
        self.scoring = scoring
        self.exclusion = exclusion  # the ledgers' ids (alray.ledger.Exclusion), or None
        self.scorer = None
        self.load_error: str | None = None
        try:
            self.scorer = load_scorer(spec, self.device)
        except AlrayError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # a loader's own failure: reported, never a dead actor
            self.load_error = f"model: loading failed ({type(exc).__name__}: {exc})"
        return self.ready()

    def ready(self) -> dict:
        """``{"device": ..., "error": message or None}``."""
        return {"device": str(self.device), "error": self.load_error, "pid": os.getpid()}

    def score(self, shard: ShardSpec) -> ShardOutcome:
        """Score and commit one shard (see :func:`~alray.pipeline.shard.scan_and_commit`)."""
        from alray.pipeline.shard import scan_and_commit

        if self.scorer is None:
            raise ModelError(self.load_error or "model: not loaded")
        return scan_and_commit(shard, self.spec, self.scorer, self.scoring, self.exclusion)
