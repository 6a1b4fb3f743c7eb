"""Keeping per-row vectors (the embedding, the class probabilities) for a shard's top-M candidates
without holding them for every row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CandidateVectors", "VectorsIncomplete"]


class VectorsIncomplete(Exception):
    """A final candidate's vectors were let go (possible only when the shard repeats ids, which
    removes rows that had ranked above it); the caller scans the shard again keeping all."""


class CandidateVectors:
    """Named vectors (``embedding [n, D]``, ``probs [n, C]``) of the rows that may end among the
    shard's top ``m`` by score.

    After each batch, a row ranked below the m-th best seen so far by (score descending, id
    ascending), the shard's own order, can no longer be a candidate (unless repeated ids are
    dropped later), so its vectors are let go. Memory is at most ``2 m`` rows of vectors plus one
    batch, whatever the ties (scores such as variation_ratio take a few values only).

    Args:
        m: candidates per shard.
        keep_all: keep every row's vectors (the exact fallback for shards with repeated ids).
    """

    def __init__(self, m: int, keep_all: bool = False):
        self.m, self.keep_all = m, keep_all
        self._rows = np.zeros(0, np.int64)
        self._scores = np.zeros(0, np.float32)
        self._ids: pa.Array | None = None
        self._vectors: dict[str, np.ndarray] = {}

    def add(self, rows: np.ndarray, ids: pa.Array, scores: np.ndarray,
            vectors: dict[str, np.ndarray]) -> None:
        """``rows`` (file row numbers), their ``ids`` and ``scores``, and ``{name: [n, width]}``
        vectors."""
        if not vectors:
            return
        keep = np.ones(len(rows), bool) if self.keep_all else scores >= self._threshold(scores)
        self._rows = np.concatenate([self._rows, rows[keep]])
        self._scores = np.concatenate([self._scores, scores[keep]])
        kept_ids = ids.filter(pa.array(keep))
        self._ids = kept_ids if self._ids is None else pa.concat_arrays([self._ids, kept_ids])
        for name, values in vectors.items():
            kept = values[keep].astype(np.float32, copy=False)
            held = self._vectors.get(name)
            self._vectors[name] = kept if held is None else np.concatenate([held, kept])
        if not self.keep_all and len(self._rows) > 2 * self.m:
            self._prune()

    def _threshold(self, new_scores: np.ndarray) -> float:
        pooled = np.concatenate([self._scores, new_scores])
        if len(pooled) <= self.m:
            return -np.inf
        return float(np.partition(pooled, len(pooled) - self.m)[len(pooled) - self.m])

    def _prune(self) -> None:
        """Keep exactly the best ``m`` rows by (score descending, id ascending)."""
        order = pc.sort_indices(pa.table({"score": self._scores, "id": self._ids}),
                                sort_keys=[("score", "descending"), ("id", "ascending")])
        keep = order.to_numpy()[: self.m]
        self._rows, self._scores = self._rows[keep], self._scores[keep]
        self._ids = self._ids.take(pa.array(keep))
        self._vectors = {name: values[keep] for name, values in self._vectors.items()}

    def columns(self, rows: np.ndarray) -> dict[str, pa.FixedSizeListArray]:
        """The vectors of ``rows`` as ``fixed_size_list<float32>[width]`` columns, in that order.

        Raises:
            VectorsIncomplete: a requested row's vectors were let go.
        """
        if not self._vectors:  # nothing to carry (a regression model without an embedding)
            return {}
        order = np.argsort(self._rows, kind="stable")
        at = np.minimum(np.searchsorted(self._rows, rows, sorter=order), max(len(order) - 1, 0))
        if len(rows) and (len(order) == 0 or not np.array_equal(self._rows[order[at]], rows)):
            raise VectorsIncomplete
        out = {}
        for name, values in self._vectors.items():
            picked = values[order[at]] if len(rows) else values[:0]
            out[name] = pa.FixedSizeListArray.from_arrays(pa.array(picked.ravel()),
                                                          values.shape[1])
        return out
