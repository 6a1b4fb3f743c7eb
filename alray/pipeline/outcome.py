"""What scoring one shard produced, and the records the driver and the output folder keep of it.

No torch and no Ray here: the driver, resume and the job state read these without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from alray.scoring.registry import CLASSIC_SCORES, is_custom
from alray.sources.plan import ShardSpec

if TYPE_CHECKING:
    from alray.config import JobSpec

__all__ = ["LABEL_COLUMNS", "SCORES_FILE_COLUMNS", "ShardOutcome", "bad_shard_outcome",
           "candidate_columns", "error_record", "label_candidates", "scores_file_columns"]

#: A classification scores file's columns, in order. A built-in strategy beyond the classic four
#: adds a column of its own name (``bald``, ...) before ``predicted``.
SCORES_FILE_COLUMNS = ["id", "score", *CLASSIC_SCORES, "predicted", "confidence", "row"]


#: What a scores file adds with ``pool.label_column``, before ``row``: the given label, its
#: statistics over the K samples, and the mean class probabilities ``[C]`` (what confident
#: learning's flags read).
LABEL_COLUMNS = ["gold", "gold_confidence", "gold_variability", "gold_correctness", "probs"]


def scores_file_columns(spec: "JobSpec") -> list[str]:
    """The columns of ``spec``'s scores files, in order."""
    strategy = spec.scoring.strategy
    own = [] if is_custom(strategy) or strategy in CLASSIC_SCORES else [strategy]
    if spec.model.task == "regression":
        return ["id", "score", *own, "prediction", "row"]
    labels = LABEL_COLUMNS if spec.pool.label_column is not None else []
    return [*SCORES_FILE_COLUMNS[:-3], *own, *SCORES_FILE_COLUMNS[-3:-1], *labels, "row"]


def candidate_columns(spec: "JobSpec") -> list[str]:
    """The columns every candidate carries from its scores (then ``shard``, ``uri``, carried
    columns, ``probs``, ``embedding``)."""
    return ["id", "score", "row"] + (["predicted"] if spec.model.task == "classification" else [])


@dataclass
class ShardOutcome:
    """What scoring one shard produced, sent back to the driver.

    Attributes:
        status: ``done``, ``quarantined`` (skip: the whole shard is bad) or ``failed`` (fail: the
            first bad shard or row stops the job).
        errors: ``errors.jsonl`` records for the shard or its bad rows.
        candidates: the shard's top M rows (``id``, ``score``, ``shard``, ``uri``, ``predicted``,
            ``row``, carried columns), in rank order; None unless done.
        class_totals: with ``pool.label_column``, the shard's part of confident learning's
            per-class thresholds (:meth:`alray.cartography.confident.ClassTotals.to_dict`).
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
    class_totals: dict | None = None


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
