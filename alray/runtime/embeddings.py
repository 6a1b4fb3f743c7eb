"""Keeping a model's embedding for a shard's top-M candidates without holding it for every row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["CandidateEmbeddings", "EmbeddingsIncomplete"]


class EmbeddingsIncomplete(Exception):
    """A final candidate's vector was let go (possible only when the shard repeats ids, which
    removes rows that had ranked above it); the caller scans the shard again keeping all."""


class CandidateEmbeddings:
    """Vectors of the rows that may end among the shard's top ``m`` by score.

    After each batch, a row whose score is below the m-th best score seen so far can no longer
    be a candidate (unless repeated ids are dropped later), so its vector is let go. Memory is
    about ``2 m`` vectors, not the shard's row count.

    Args:
        m: candidates per shard.
        keep_all: keep every vector (the exact fallback for shards with repeated ids).
    """

    def __init__(self, m: int, keep_all: bool = False):
        self.m, self.keep_all = m, keep_all
        self.width: int | None = None
        self._rows = np.zeros(0, np.int64)
        self._scores = np.zeros(0, np.float32)
        self._vectors: np.ndarray | None = None

    def add(self, rows: np.ndarray, scores: np.ndarray, vectors: np.ndarray | None) -> None:
        """``rows`` (file row numbers), their ``scores`` and ``[n, E]`` ``vectors`` (or None)."""
        if vectors is None:
            return
        self.width = vectors.shape[1]
        keep = slice(None) if self.keep_all else scores >= self._threshold(scores)
        self._rows = np.concatenate([self._rows, rows[keep]])
        self._scores = np.concatenate([self._scores, scores[keep]])
        parts = [vectors[keep]] if self._vectors is None else [self._vectors, vectors[keep]]
        self._vectors = np.concatenate(parts)
        if not self.keep_all and len(self._rows) > 2 * self.m:
            self._prune()

    def _threshold(self, new_scores: np.ndarray) -> float:
        pooled = np.concatenate([self._scores, new_scores])
        if len(pooled) <= self.m:
            return -np.inf
        return float(np.partition(pooled, len(pooled) - self.m)[len(pooled) - self.m])

    def _prune(self) -> None:
        keep = self._scores >= self._threshold(np.zeros(0, np.float32))
        self._rows, self._scores = self._rows[keep], self._scores[keep]
        self._vectors = self._vectors[keep]

    def column(self, rows: np.ndarray) -> pa.FixedSizeListArray:
        """The vectors of ``rows`` as ``fixed_size_list<float32>[E]``, in that order.

        Raises:
            EmbeddingsIncomplete: a requested row's vector was let go.
        """
        order = np.argsort(self._rows, kind="stable")
        at = np.searchsorted(self._rows, rows, sorter=order)
        at = np.minimum(at, max(len(order) - 1, 0))
        if len(rows) and (len(order) == 0 or not np.array_equal(self._rows[order[at]], rows)):
            raise EmbeddingsIncomplete
        picked = self._vectors[order[at]] if len(rows) else np.zeros((0, self.width), np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(picked.astype(np.float32).ravel()),
                                                 self.width)
