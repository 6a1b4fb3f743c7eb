"""Scoring one shard: stream its batches through the job's scorer, drop repeated ids, write its
scores file, keep its top-M candidates, and commit.

Plain functions over a :class:`~alray.pipeline.batch.BatchScorer`; the Ray actor only calls
:func:`scan_and_commit`, so all of this runs and is tested without Ray.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from alray.cartography.pool import class_totals
from alray.config import JobSpec
from alray.errors import ShardError
from alray.output.commits import ShardRecord, shard_key, write_commit
from alray.output.folder import OutputFolder
from alray.pipeline.batch import BatchScorer, RowRejects
from alray.ledger import Exclusion
from alray.pipeline.candidates import take_candidates
from alray.pipeline.outcome import (ShardOutcome, bad_shard_outcome, error_record,
                                    label_candidates, scores_file_columns)
from alray.pipeline.vectors import CandidateVectors, VectorsIncomplete
from alray.reduce import first_occurrences
from alray.selection.parts import CandidatePlan
from alray.sources.files import parquet_bytes
from alray.sources.images import read_image_shard
from alray.sources.parquet import read_shard
from alray.sources.plan import ShardSpec
from alray.sources.prefetch import prefetch
from alray.sources.rows import RowBatch, ShardColumns

__all__ = ["scan_and_commit", "scan_shard", "scan_with_retries"]


_EMPTY_TYPES = {"predicted": pa.int32(), "gold": pa.int32(), "probs": pa.list_(pa.float32())}


class _ShardRows:
    """The good rows of a shard, accumulated batch by batch (bounded by the shard's size)."""

    def __init__(self):
        self.ids: list[pa.Array] = []
        self.rows: list[np.ndarray] = []
        self.columns: list[dict[str, np.ndarray]] = []
        self.carry: list[pa.Table] = []

    def add(self, batch: RowBatch, good: np.ndarray, columns: dict[str, np.ndarray]) -> pa.Array:
        """Keep the ``good`` rows of ``batch``; returns their ids."""
        all_good = len(good) == len(batch)
        take = None if all_good else pa.array(good)
        ids = batch.ids if all_good else batch.ids.take(take)
        self.ids.append(ids)
        self.rows.append(batch.first_row + good)
        self.columns.append(columns)
        if batch.carry is not None:
            self.carry.append(batch.carry if all_good else batch.carry.take(take))
        return ids

    @staticmethod
    def _column(parts: list[np.ndarray]) -> pa.Array:
        values = np.concatenate(parts)
        if values.ndim == 2:  # one vector per row (a regression model with several outputs)
            return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
        return pa.array(values)

    def table(self, names: list[str], id_type: pa.DataType, carry: tuple[str, ...]) -> pa.Table:
        """The shard's rows with the columns ``names`` (then ``carry``)."""
        ids = pa.concat_arrays(self.ids) if self.ids else pa.array([], type=id_type)
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, "i8")
        columns: dict[str, pa.Array] = {"id": ids, "row": pa.array(rows)}
        for name in names:
            if name in columns:
                continue
            if self.columns:
                columns[name] = self._column([c[name] for c in self.columns])
            else:  # a shard of zero rows still has every column
                columns[name] = pa.array([], _EMPTY_TYPES.get(name, pa.float32()))
        carried = pa.concat_tables(self.carry) if self.carry else None
        for name in carry:
            columns[name] = carried.column(name) if carried is not None else pa.nulls(0)
        return pa.table({name: columns[name] for name in [*names, *carry]})


def _drop_repeated_ids(table: pa.Table, rejects: RowRejects) -> pa.Table:
    keep = first_occurrences(table.column("id"))
    if keep.all():
        return table
    repeated = np.flatnonzero(~keep)
    rows = table.column("row").to_numpy()[repeated]
    ids = table.column("id").combine_chunks()
    rejects.add("duplicate_id", "id repeated within the shard; its first copy is kept",
                rows, ids, repeated)
    return table.filter(pa.array(keep))


class _LabeledRows:
    """The embeddings of the rows the ledgers name as labeled (``kcenter`` starts from them);
    as many as the shard holds, which a labeled set keeps small."""

    def __init__(self, exclusion: Exclusion | None, wanted: bool):
        self.exclusion = exclusion if wanted and exclusion is not None \
            and len(exclusion.labeled) else None
        self.ids: list[pa.Array] = []
        self.embeddings: list[np.ndarray] = []

    def add(self, ids: pa.Array, vectors: dict[str, np.ndarray]) -> None:
        if self.exclusion is None or "embedding" not in vectors:
            return
        labeled = self.exclusion.mask(ids, "labeled")
        if labeled.any():
            self.ids.append(ids.filter(pa.array(labeled)))
            self.embeddings.append(vectors["embedding"][labeled])

    def table(self) -> pa.Table | None:
        if not self.ids:
            return None
        values = np.concatenate(self.embeddings).astype(np.float32)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
        table = pa.table({"id": pa.concat_arrays(self.ids), "embedding": embedding})
        return table.filter(pa.array(first_occurrences(table.column("id"))))


def _finish(shard: ShardSpec, spec: JobSpec, rows: _ShardRows, rejects: RowRejects,
            id_type: pa.DataType, vectors: CandidateVectors, exclusion: Exclusion | None,
            labeled: _LabeledRows) -> tuple[pa.Table, dict | None]:
    """Write the shard's scores file; returns its candidates and, with ``pool.label_column``,
    its class totals."""
    names = scores_file_columns(spec)
    table = _drop_repeated_ids(rows.table(names, id_type, spec.pool.carry), rejects)
    folder = OutputFolder.of(spec)
    folder.write(folder.scores(shard.shard_id), parquet_bytes(table))
    candidates = take_candidates(table, spec, exclusion, vectors, labeled.table())
    totals = class_totals(table) if spec.pool.label_column is not None else None
    return label_candidates(candidates, shard), totals


def _batches(shard: ShardSpec, spec: JobSpec, columns: ShardColumns):
    if shard.members is not None:
        return read_image_shard(shard, spec.pool.image, spec.scoring.batch_size,
                                spec.fsspec_storage)
    return read_shard(shard, columns, spec.scoring.batch_size, spec.fsspec_storage)


def scan_shard(shard: ShardSpec, spec: JobSpec, scorer: BatchScorer,
               keep_all: bool = False, raise_transient: bool = False,
               exclusion: Exclusion | None = None) -> ShardOutcome:
    """Score every row of ``shard``, write its scores file, and return its top-M candidates.

    The candidates carry ``probs`` (classification) and the model's ``embedding`` where it gives
    one; only vectors of rows that may still be among the shard's top M are held while scanning.
    Ids in ``exclusion`` (the ledgers) are scored and written to the scores file, but never
    become candidates.

    Args:
        keep_all: hold every row's vectors (the exact fallback for shards that repeat ids).
        raise_transient: raise instead of quarantining when a remote read fails for a reason
            that may pass, so :func:`scan_with_retries` can try again.

    Under ``resources.on_error: fail`` the first bad row fails the shard and nothing is written;
    under ``skip`` bad rows are recorded and the rest is scored. A shard-level problem yields a
    ``quarantined`` (skip) or ``failed`` (fail) outcome holding one error record.
    """
    started = time.perf_counter()
    fail_fast = spec.resources.on_error == "fail"
    rejects = RowRejects(shard, fail_fast)
    rows = _ShardRows()
    vectors = CandidateVectors(spec.selection.per_shard, keep_all)
    plan = CandidatePlan.of(spec)
    labeled = _LabeledRows(exclusion, plan.labeled)
    excluding = exclusion is not None and len(exclusion) > 0
    kept_vectors = plan.vectors
    columns = ShardColumns.of(spec, scorer.predictor.input_width)
    rows_in, id_type = 0, pa.int64()
    try:
        batches = _batches(shard, spec, columns)
        for index, batch in enumerate(prefetch(batches, depth=2)):
            rows_in += len(batch)
            id_type = batch.ids.type
            scored = scorer(batch, columns.value_column, rejects, index)
            ids = rows.add(batch, scored.good, scored.columns)
            labeled.add(ids, scored.vectors)
            open_rows = ~exclusion.mask(ids) if excluding else slice(None)
            vectors.add((batch.first_row + scored.good)[open_rows],
                        ids.filter(pa.array(open_rows)) if excluding else ids,
                        scored.columns["score"][open_rows],
                        {name: v[open_rows] for name, v in scored.vectors.items()
                         if name in kept_vectors})
        candidates, totals = _finish(shard, spec, rows, rejects, id_type, vectors, exclusion,
                                     labeled)
    except VectorsIncomplete:  # repeated ids pushed a row in whose vectors were let go
        return scan_shard(shard, spec, scorer, keep_all=True, raise_transient=raise_transient,
                          exclusion=exclusion)
    except ShardError as exc:
        if exc.transient and raise_transient:
            raise _TransientFailure from exc
        return bad_shard_outcome(shard, error_record(shard, exc.kind, str(exc), exc.row,
                                                     exc.row_id),
                                 fail_fast, rows_read=rows_in,
                                 seconds=time.perf_counter() - started)
    quarantined = len(rejects.records)
    return ShardOutcome(shard.shard_id, shard.uri, "done", rows_in=rows_in,
                        rows_scored=rows_in - quarantined, rows_quarantined=quarantined,
                        errors=rejects.records, candidates=candidates,
                        seconds=time.perf_counter() - started, class_totals=totals)


_TRANSIENT_RETRIES, _FIRST_WAIT = 3, 0.5


def scan_with_retries(shard: ShardSpec, spec: JobSpec, scorer: BatchScorer,
                      exclusion: Exclusion | None = None) -> ShardOutcome:
    """:func:`scan_shard`, scanned again with backoff (0.5 s, 1 s, 2 s) while a remote read
    fails for a reason that may pass, before the shard counts as bad."""
    for attempt in range(_TRANSIENT_RETRIES + 1):
        try:
            return scan_shard(shard, spec, scorer, raise_transient=attempt < _TRANSIENT_RETRIES,
                              exclusion=exclusion)
        except _TransientFailure:
            time.sleep(_FIRST_WAIT * 2 ** attempt)
    raise AssertionError("unreachable: the last attempt does not raise")


class _TransientFailure(Exception):
    pass


def scan_and_commit(shard: ShardSpec, spec: JobSpec, scorer: BatchScorer, scoring: str,
                    exclusion: Exclusion | None = None) -> ShardOutcome:
    """:func:`scan_with_retries`, then commit a finished shard so a resumed job can reuse it."""
    outcome = scan_with_retries(shard, spec, scorer, exclusion)
    if outcome.status == "done":
        record = ShardRecord(shard.shard_id, shard_key(shard, scoring), outcome.status,
                             outcome.rows_in, outcome.rows_scored, outcome.rows_quarantined,
                             spec.selection.per_shard, outcome.errors, round(outcome.seconds, 3),
                             CandidatePlan.of(spec).key(exclusion.digest if exclusion else ""),
                             outcome.class_totals)
        write_commit(OutputFolder.of(spec), record, outcome.candidates)
    return outcome
