"""Confident learning over a whole pool: the flags of a job with ``pool.label_column``.

Confident learning's per-class thresholds are means over the whole pool, so the flags take two
steps. In the scan, each shard adds up its rows' probability of their given class per class
(:func:`class_totals`, kept in the shard's commit record, so a resumed job reuses it). After the
scan, :func:`write_label_issues` merges those totals into the thresholds, then reads the scores
files twice, only their ``id``, ``gold`` and ``probs`` columns: once to count the confident
joint, once to keep the rows to flag (:mod:`alray.cartography.confident`). The features are never
read again. Memory: one scores file at a time, and the rows flagged.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.cartography.confident import ClassTotals, flag_rows
from alray.output.folder import OutputFolder
from alray.sources.files import open_parquet, parquet_bytes

__all__ = ["class_totals", "flag_label_issues", "write_label_issues"]

_READ_COLUMNS = ["id", "gold", "probs"]


def _probs(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``probs`` column ``[n]`` of ``fixed_size_list<float32>[C]`` as ``[n, C]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)


def class_totals(scored: pa.Table) -> dict | None:
    """A shard's per-class totals (:class:`ClassTotals` as a dict) from its scored rows
    (``gold``, ``probs``); None for a shard with no rows."""
    if not scored.num_rows:
        return None
    probs = _probs(scored.column("probs"))
    gold = scored.column("gold").to_numpy().astype(np.int64)
    return ClassTotals.zeros(probs.shape[1]).add(gold, probs).to_dict()


def _chunks(folder: OutputFolder, shard_ids: list[str]) -> Iterator[tuple]:
    for shard_id in shard_ids:
        with open_parquet(folder.scores(shard_id), folder.storage) as pf:
            for batch in pf.iter_batches(batch_size=262_144, columns=_READ_COLUMNS):
                if batch.num_rows:
                    yield (batch.column("id"), batch.column("gold").to_numpy().astype(np.int64),
                           _probs(batch.column("probs")))


def flag_label_issues(folder: OutputFolder, shard_ids: list[str],
                      totals: list[dict]) -> pa.Table:
    """The rows confident learning flags (cleanlab's ``find_label_issues``, prune by noise
    rate), from the scores files of ``shard_ids`` and their class totals.

    Returns:
        ``id``, ``given``, ``suggested``, ``self_confidence``, ``margin`` and ``shard``, the
        likeliest errors (lowest self-confidence) first.
    """
    if not totals:
        return _empty()
    merged = ClassTotals.from_dict(totals[0])
    for part in totals[1:]:
        merged = merged.merge(ClassTotals.from_dict(part))
    flagged = flag_rows(lambda: _chunks(folder, shard_ids), merged)
    return flagged.append_column("shard", _shards_of(folder, shard_ids, flagged.column("id")))


def _shards_of(folder: OutputFolder, shard_ids: list[str], ids: pa.ChunkedArray) -> pa.Array:
    """The shard each flagged id was scored in (ids are unique across a job's scores), from
    the scores files' ``id`` column alone."""
    wanted = ids.combine_chunks()
    found = pa.nulls(len(wanted), pa.string())
    if not len(wanted):
        return found
    for shard_id in shard_ids:
        with open_parquet(folder.scores(shard_id), folder.storage) as pf:
            inside = pc.is_in(wanted, value_set=pf.read(columns=["id"]).column("id"))
        found = pc.if_else(inside, pa.scalar(shard_id), found)
    return found


def _empty() -> pa.Table:
    return pa.table({"id": pa.array([], pa.int64()), "given": pa.array([], pa.int64()),
                     "suggested": pa.array([], pa.int64()),
                     "self_confidence": pa.array([], pa.float64()),
                     "margin": pa.array([], pa.float64()), "shard": pa.array([], pa.string())})


def write_label_issues(folder: OutputFolder, shard_ids: list[str],
                       totals: list[dict]) -> tuple[str, int]:
    """Write ``label_issues.parquet`` (:func:`flag_label_issues`); returns its URI and how many
    rows it flags."""
    flagged = flag_label_issues(folder, shard_ids, totals)
    return folder.write(folder.path(folder.LABEL_ISSUES), parquet_bytes(flagged)), flagged.num_rows
