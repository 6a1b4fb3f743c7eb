"""What each shard keeps for the selection, derived from the spec alone; no torch.

A shard's candidates file holds up to four parts, told apart by the ``part`` column:

=========  ===================================================================================
top        the shard's top M by (score desc, id asc), with the vectors the method reads
draw       ``random``/``power``: the rows with the smallest draw keys (``key`` asc, id asc)
explore    ``explore > 0``: the rows with the smallest uniform keys of the explore stream
labeled    ``kcenter``: the embeddings of rows the ledgers name as labeled
=========  ===================================================================================

Each part is exact under merging: the global first n of an order are among the union of every
shard's first n, so the reducer's result does not depend on how the pool was cut. Excluded ids
(the ledgers) are dropped before any part is taken; ``labeled`` rows are kept apart for
``kcenter`` to start from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from alray.selection.registry import METHODS

if TYPE_CHECKING:
    from alray.config import JobSpec

__all__ = ["EXPLORE_SALT", "CandidatePlan", "PARTS"]

PARTS = ("top", "draw", "explore", "labeled")
#: The explore stream's uniforms are drawn apart from the method's (random, power).
EXPLORE_SALT = 1


@dataclass(frozen=True)
class CandidatePlan:
    """How many rows each part keeps per shard, and what the rows carry.

    Attributes:
        top: rows of the ``top`` part (``selection.per_shard``).
        vectors: per-row vectors the ``top`` rows carry (``embedding``, ``probs``, ``samples``).
        draws: rows of the ``draw`` part (0: none).
        power: the exponent of ``power`` keys (None: uniform keys, ``random``).
        explore: rows of the ``explore`` part (0: none).
        labeled: keep the labeled rows' embeddings.
        seed: ``selection.seed``.
    """

    top: int
    vectors: tuple[str, ...]
    draws: int
    power: float | None
    explore: int
    labeled: bool
    seed: int

    @classmethod
    def of(cls, spec: "JobSpec") -> "CandidatePlan":
        selection = spec.selection
        method = METHODS[selection.method]
        vectors = list(method.vectors)
        if selection.balance == "predicted" and "probs" not in vectors:
            vectors.append("probs")  # its width is the class count the caps divide k by
        capped = selection.prefilter if selection.balance == "predicted" else 1
        return cls(
            top=selection.per_shard,
            vectors=tuple(vectors),
            draws=selection.method_count * capped if method.draws else 0,
            power=selection.power if method.name == "power" else None,
            explore=selection.explore_count + selection.method_count
            if selection.explore_count else 0,
            labeled=method.name == "kcenter",
            seed=selection.seed,
        )

    def key(self, exclusion_digest: str) -> str:
        """What a committed candidates file must match to be reused (with the ledgers'
        digest)."""
        text = json.dumps({**asdict(self), "exclusion": exclusion_digest}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def needs_scan(self) -> bool:
        """Candidates need more than the scores file holds (vectors), so rebuilding them means
        reading the shard and running the model again."""
        return bool(self.vectors) or self.labeled
