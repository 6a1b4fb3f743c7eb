"""What scoring one shard produced, and the records the driver and the output folder keep of it.

No torch and no Ray here: the driver, resume and the job state read these without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from alray.sources.files import join_uri
from alray.sources.plan import ShardSpec

__all__ = ["CANDIDATE_COLUMNS", "ShardOutcome", "bad_shard_outcome", "error_record",
           "label_candidates", "scores_uri"]

#: The columns every candidate carries (then ``shard``, ``uri``, carried columns, embedding).
CANDIDATE_COLUMNS = ["id", "score", "predicted", "row"]


@dataclass
class ShardOutcome:
    """What scoring one shard produced, sent back to the driver.

    Attributes:
        status: ``done``, ``quarantined`` (skip: the whole shard is bad) or ``failed`` (fail: the
            first bad shard or row stops the job).
        errors: ``errors.jsonl`` records for the shard or its bad rows.
        candidates: the shard's top M rows (``id``, ``score``, ``shard``, ``uri``, ``predicted``,
            ``row``, carried columns), in rank order; None unless done.
    """

    shard_id: str
    uri: str
    status: str
    rows_in: int = 0
    rows_scored: int = 0
    rows_quarantined: int = 0
    errors: list[dict] = field(default_factory=list)
    candidates: pa.Table | None = None
    seconds: float = 0.0


def scores_uri(output_uri: str, shard_id: str) -> str:
    return join_uri(output_uri, "scores", f"{shard_id}.parquet")


def error_record(shard: ShardSpec, kind: str, message: str, row: int | None = None,
                 row_id=None) -> dict:
    """One ``errors.jsonl`` record."""
    return {"shard": shard.shard_id, "uri": shard.uri, "row": row, "id": row_id, "kind": kind,
            "message": message}


def bad_shard_outcome(shard: ShardSpec, record: dict, fail_fast: bool, rows_read: int = 0,
                      seconds: float = 0.0) -> ShardOutcome:
    """A shard none of whose rows count: ``failed`` under ``fail``, else ``quarantined``, with
    every row it holds (the footer's count, or the rows read if more) counted as quarantined."""
    rows = max(rows_read, shard.num_rows or 0)
    return ShardOutcome(shard.shard_id, shard.uri, "failed" if fail_fast else "quarantined",
                        rows_in=rows, rows_quarantined=rows, errors=[record], seconds=seconds)


def label_candidates(candidates: pa.Table, shard: ShardSpec) -> pa.Table:
    """Add the ``shard`` and ``uri`` columns the reducer and the selection need."""
    n = candidates.num_rows
    candidates = candidates.append_column("shard", pa.array([shard.shard_id] * n, pa.string()))
    return candidates.append_column("uri", pa.array([shard.uri] * n, pa.string()))
