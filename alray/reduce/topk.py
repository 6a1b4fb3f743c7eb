"""Exact top-k by (score descending, id ascending), per shard and across shards.

The global order is defined over stored float32 scores: sort every scored row by score descending,
then id ascending, and take the first k. Each shard keeps its own top M >= k; because an id kept
in the global top k has fewer than k distinct ids above it, it is always among its shard's top M,
so merging the shards' candidates gives the same rows as a full sort.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["KEY_ORDER", "RANK_ORDER", "TopKReducer", "first_occurrences", "top_k_rows"]

RANK_ORDER = [("score", "descending"), ("id", "ascending")]
#: The order of whole-pool draws: the smallest key first (see :mod:`alray.selection.keys`).
KEY_ORDER = [("key", "ascending"), ("id", "ascending")]
#: What a dropped duplicate keeps for ``errors.jsonl``.
_DUPLICATE_COLUMNS = ("id", "score", "shard", "uri", "row")


def top_k_rows(table: pa.Table, k: int, order=RANK_ORDER) -> pa.Table:
    """The first ``k`` rows of ``table`` in ``order`` (default: score descending, id ascending).

    A partition finds the k-th value of the first sort column, so only rows at or before it are
    sorted.
    """
    if table.num_rows > k:
        column, direction = order[0]
        values = table.column(column).to_numpy()
        if direction == "descending":
            kth = np.partition(values, table.num_rows - k)[table.num_rows - k]
            table = table.filter(pa.array(values >= kth))
        else:
            kth = np.partition(values, k - 1)[k - 1]
            table = table.filter(pa.array(values <= kth))
    return table.take(pc.sort_indices(table, sort_keys=order)[:k])


def first_occurrences(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``[n]`` bool mask, True at the first occurrence of each id (all nulls count as one id;
    sources reject null ids before this)."""
    n = len(ids)
    if n == 0 or pc.count_distinct(ids, mode="all").as_py() == n:
        return np.ones(n, dtype=bool)
    index = pa.table({"id": ids, "i": pa.array(np.arange(n, dtype=np.int64))})
    firsts = index.group_by("id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    keep = np.zeros(n, dtype=bool)
    keep[firsts.to_numpy()] = True
    return keep


class TopKReducer:
    """Streams candidate tables into the global top ``k``, in memory bounded by ``k``.

    An id that arrives from two shards keeps its higher-scoring copy (ties: the lower shard id);
    each copy dropped while it was still in contention is reported by :meth:`duplicates`. Tables
    need ``id``, ``score`` and ``shard`` columns and one schema.

    ``update`` adds one shard's candidates, ``merge`` another reducer's state, ``result`` gives the
    rows in rank order.
    """

    def __init__(self, k: int, order=RANK_ORDER):
        self.k, self.order = k, order
        self._table: pa.Table | None = None
        self._duplicates: list[pa.Table] = []

    def update(self, candidates: pa.Table) -> None:
        if candidates.num_rows == 0:
            return
        merged = candidates if self._table is None else pa.concat_tables(
            [self._table, candidates], promote_options="permissive")
        merged = merged.take(pc.sort_indices(merged, sort_keys=self.order + [("shard", "ascending")]))
        keep = first_occurrences(merged.column("id"))
        if not keep.all():
            dropped, merged = merged.filter(pa.array(~keep)), merged.filter(pa.array(keep))
            winners = merged.select(["id", "shard", self.order[0][0]]).rename_columns(
                ["id", "kept_in", "kept_score"])
            # a join takes scalar columns only: the vectors (probs, embedding) stay behind
            dropped = dropped.select([c for c in _DUPLICATE_COLUMNS if c in dropped.column_names])
            self._duplicates.append(dropped.join(winners, "id", use_threads=False))
        self._table = merged.slice(0, self.k)

    def merge(self, other: "TopKReducer") -> None:
        if other._table is not None:
            self.update(other._table)
        self._duplicates.extend(other._duplicates)

    def result(self) -> pa.Table | None:
        """The selected rows in rank order (None when nothing was added)."""
        return self._table

    def duplicates(self) -> pa.Table | None:
        """Copies of ids dropped because another shard's copy ranked higher; ``kept_in`` names
        the shard whose copy won in the end (a copy that won once may lose to a later one)."""
        if not self._duplicates:
            return None
        dropped = pa.concat_tables(self._duplicates)
        best: dict = {}  # id -> (-score, shard) of the best copy that ever beat another
        for row_id, shard, score in zip(dropped.column("id").to_pylist(),
                                        dropped.column("kept_in").to_pylist(),
                                        dropped.column("kept_score").to_pylist()):
            best[row_id] = min(best.get(row_id, (float("inf"), "")), (-score, shard))
        kept_in = pa.array([best[i][1] for i in dropped.column("id").to_pylist()], pa.string())
        dropped = dropped.drop_columns(["kept_in", "kept_score"])
        return dropped.append_column("kept_in", kept_in)
