"""Scoring one shard: read, check, run the model, score, drop repeated ids, commit, keep top M.

Plain functions over a :class:`~alray.models.LoadedModel`; the Ray actor only calls
:func:`scan_shard`, so all of this is testable without Ray.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pyarrow as pa
import torch

from alray.config import JobSpec
from alray.errors import ShardError
from alray.models.loaders import LoadedModel, as_two_classes
from alray.planning import columns_for
from alray.output.commits import ShardRecord, shard_key, write_commit
from alray.reduce import first_occurrences, top_k_rows
from alray.scoring import invalid_rows, log_probs_from_logits, log_probs_from_probs, score_all
from alray.scoring.validity import PROB_SUM_TOLERANCE
from alray.sources.files import atomic_write, parquet_bytes
from alray.runtime.embeddings import CandidateEmbeddings, EmbeddingsIncomplete
from alray.runtime.outcome import (CANDIDATE_COLUMNS, ShardOutcome, bad_shard_outcome,
                                   error_record, label_candidates, scores_uri)
from alray.sources.images import read_image_shard
from alray.sources.parquet import RowBatch, ShardColumns, read_shard
from alray.sources.plan import ShardSpec
from alray.sources.prefetch import prefetch

__all__ = ["SCORE_COLUMNS", "scan_and_commit", "scan_shard", "shard_columns"]

SCORE_COLUMNS = ("least_confidence", "margin", "ratio", "entropy")


def shard_columns(spec: JobSpec, model: LoadedModel) -> ShardColumns:
    return columns_for(spec, model.input_width)


# ----------------------------------------------------------------------------------- per batch


class _RowRejects:
    """Collects bad rows: raises on the first under ``fail``, records each under ``skip``."""

    def __init__(self, shard: ShardSpec, fail_fast: bool):
        self.shard = shard
        self.fail_fast = fail_fast
        self.records: list[dict] = []

    def add(self, kind: str, message: str, rows: np.ndarray, ids: pa.Array,
            positions: np.ndarray) -> None:
        """Reject ``rows`` (file row indices) whose ids sit at ``positions`` of ``ids``."""
        if len(rows) == 0:
            return
        if self.fail_fast:
            raise ShardError(kind, message, row=int(rows[0]), row_id=ids[int(positions[0])].as_py())
        for row, pos in zip(rows.tolist(), positions.tolist()):
            self.records.append(error_record(self.shard, kind, message, row, ids[pos].as_py()))


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A ``[n, ...]`` array as a float32 tensor on ``device``, sharing memory where it can."""
    with warnings.catch_warnings():
        # Arrow's buffers are read-only; alray never writes into this tensor.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(values)
    if device.type == "cuda":
        return t.pin_memory().to(device, dtype=torch.float32, non_blocking=True)
    return t.to(dtype=torch.float32)


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """``[n, ...]`` -> ``[n]`` bool, True where every value of a row is finite.

    A row sum is NaN or Inf whenever the row holds one, so one cheap reduction screens every row;
    only rows it flags (a NaN, an Inf, or finite values whose float32 sum overflows) are checked
    element by element.
    """
    flat = x.reshape(len(x), -1)
    finite = torch.isfinite(flat.sum(dim=1))
    if not finite.all():
        suspects = torch.nonzero(~finite).squeeze(1)
        finite[suspects] = torch.isfinite(flat[suspects]).all(dim=1)
    return finite


def _model_output(model: LoadedModel, x: torch.Tensor,
                  shard: ShardSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        return model(x)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShardError("schema", f"the model cannot take this shard's features: {first_line}")


def _score_batch(batch: RowBatch, model: LoadedModel, value_name: str, rejects: _RowRejects
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Score one batch; returns the positions of good rows, their score columns and (when the
    model gives one) their embeddings ``[good, E]``."""
    x = _tensor(batch.values, model.device)
    checks = list(batch.bad)
    finite = _finite_rows(x)
    bad_features = (~finite).cpu().numpy()
    checks.append(("non_finite", f"NaN or Inf in column {value_name!r}", bad_features))
    if bad_features.any():
        x = torch.where(finite[:, None], x, torch.zeros_like(x))
    out, embedding = _model_output(model, x, rejects.shard)
    out = as_two_classes(out, model.output)
    non_finite, bad_probs = invalid_rows(out, model.output)
    checks.append(("non_finite", "the model's output holds NaN or Inf", non_finite.cpu().numpy()))
    checks.append(("bad_probabilities", "probabilities are negative or do not sum to 1 within "
                                        f"{PROB_SUM_TOLERANCE:g}", bad_probs.cpu().numpy()))
    rejected = np.zeros(len(batch), dtype=bool)
    for kind, message, mask in checks:
        new = mask & ~rejected
        if new.any():
            positions = np.flatnonzero(new)
            rejects.add(kind, message, batch.first_row + positions, batch.ids, positions)
            rejected |= new
    bad_out = torch.from_numpy(rejected).to(out.device)
    if rejected.any():
        filler = 0.0 if model.output == "logits" else 1.0 / out.shape[1]
        out = torch.where(bad_out[:, None], torch.full_like(out, filler), out)
    log_probs = (log_probs_from_logits(out) if model.output == "logits"
                 else log_probs_from_probs(out))
    scores = {name: t.cpu().numpy() for name, t in score_all(log_probs).items()}
    good = np.flatnonzero(~rejected)
    kept = None if embedding is None else embedding.float().cpu().numpy()
    if len(good) < len(batch):  # gather only when a row was rejected; else keep the arrays
        scores = {name: col[good] for name, col in scores.items()}
        kept = None if kept is None else kept[good]
    return good, scores, kept


# ----------------------------------------------------------------------------------- per shard


class _ShardRows:
    """The good rows of a shard, accumulated batch by batch (bounded by the shard's size)."""

    def __init__(self):
        self.ids: list[pa.Array] = []
        self.rows: list[np.ndarray] = []
        self.scores: list[dict[str, np.ndarray]] = []
        self.carry: list[pa.Table] = []

    def add(self, batch: RowBatch, good: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        all_good = len(good) == len(batch)
        take = None if all_good else pa.array(good)
        self.ids.append(batch.ids if all_good else batch.ids.take(take))
        self.rows.append(batch.first_row + good)
        self.scores.append(scores)
        if batch.carry is not None:
            self.carry.append(batch.carry if all_good else batch.carry.take(take))

    def table(self, strategy: str, id_type: pa.DataType, carry: tuple[str, ...]) -> pa.Table:
        ids = pa.concat_arrays(self.ids) if self.ids else pa.array([], type=id_type)
        columns = {"id": ids, "row": np.concatenate(self.rows) if self.rows else np.zeros(0, "i8")}
        for name in (*SCORE_COLUMNS, "predicted", "confidence"):
            parts = [s[name] for s in self.scores]
            dtype = np.int32 if name == "predicted" else np.float32
            columns[name] = np.concatenate(parts) if parts else np.zeros(0, dtype)
        columns["score"] = columns[strategy]
        carried = pa.concat_tables(self.carry) if self.carry else None
        for name in carry:  # a shard of zero rows still has every column, typed null
            columns[name] = carried.column(name) if carried is not None else pa.nulls(0)
        return pa.table(columns)


def _drop_repeated_ids(table: pa.Table, rejects: _RowRejects) -> pa.Table:
    keep = first_occurrences(table.column("id"))
    if keep.all():
        return table
    repeated = np.flatnonzero(~keep)
    rows = table.column("row").to_numpy()[repeated]
    ids = table.column("id").combine_chunks()
    rejects.add("duplicate_id", "id repeated within the shard; its first copy is kept",
                rows, ids, repeated)
    return table.filter(pa.array(keep))


_SCORES_FILE_COLUMNS = ["id", "score", *SCORE_COLUMNS, "predicted", "confidence", "row"]


def _finish(shard: ShardSpec, spec: JobSpec, rows: _ShardRows, rejects: _RowRejects,
            id_type: pa.DataType, embeddings: CandidateEmbeddings) -> pa.Table:
    table = _drop_repeated_ids(rows.table(spec.scoring.strategy, id_type, spec.pool.carry),
                               rejects)
    atomic_write(scores_uri(spec.output.uri, shard.shard_id),
                 parquet_bytes(table.select(_SCORES_FILE_COLUMNS)), spec.fsspec_storage)
    candidates = top_k_rows(table, spec.selection.per_shard)
    candidates = candidates.select([*CANDIDATE_COLUMNS, *spec.pool.carry])
    if embeddings.width is not None:
        candidates = candidates.append_column("embedding", embeddings.column(
            candidates.column("row").to_numpy()))
    return label_candidates(candidates, shard)


def _batches(shard: ShardSpec, spec: JobSpec, columns: ShardColumns):
    if shard.members is not None:
        return read_image_shard(shard, spec.pool.image, spec.scoring.batch_size,
                                spec.fsspec_storage)
    return read_shard(shard, columns, spec.scoring.batch_size, spec.fsspec_storage)


def scan_shard(shard: ShardSpec, spec: JobSpec, model: LoadedModel,
               keep_all: bool = False, raise_transient: bool = False) -> ShardOutcome:
    """Score every row of ``shard``, commit its scores file, and return its top-M candidates.

    When the model returns an embedding, the candidates carry it (``embedding``); only vectors
    of rows that may still be among the shard's top M are held while scanning.

    Args:
        keep_all: hold every row's embedding (the exact fallback for shards that repeat ids).
        raise_transient: raise instead of quarantining when a remote read fails for a reason
            that may pass, so :func:`scan_with_retries` can try again.

    Under ``resources.on_error: fail`` the first bad row fails the shard and nothing is written;
    under ``skip`` bad rows are recorded and the rest is scored. A shard-level problem yields a
    ``quarantined`` (skip) or ``failed`` (fail) outcome holding one error record.
    """
    started = time.perf_counter()
    fail_fast = spec.resources.on_error == "fail"
    rejects = _RowRejects(shard, fail_fast)
    rows = _ShardRows()
    embeddings = CandidateEmbeddings(spec.selection.per_shard, keep_all)
    columns = shard_columns(spec, model)
    rows_in, id_type = 0, pa.int64()
    try:
        batches = _batches(shard, spec, columns)
        for batch in prefetch(batches, depth=2):
            rows_in += len(batch)
            id_type = batch.ids.type
            good, scores, vectors = _score_batch(batch, model, columns.value_column, rejects)
            rows.add(batch, good, scores)
            embeddings.add(batch.first_row + good, scores[spec.scoring.strategy], vectors)
        candidates = _finish(shard, spec, rows, rejects, id_type, embeddings)
    except EmbeddingsIncomplete:  # repeated ids pushed a row in whose vector was let go
        return scan_shard(shard, spec, model, keep_all=True, raise_transient=raise_transient)
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
                        seconds=time.perf_counter() - started)


_TRANSIENT_RETRIES, _FIRST_WAIT = 3, 0.5


def scan_with_retries(shard: ShardSpec, spec: JobSpec, model: LoadedModel) -> ShardOutcome:
    """:func:`scan_shard`, scanned again with backoff (0.5 s, 1 s, 2 s) while a remote read
    fails for a reason that may pass, before the shard counts as bad."""
    for attempt in range(_TRANSIENT_RETRIES + 1):
        try:
            return scan_shard(shard, spec, model, raise_transient=attempt < _TRANSIENT_RETRIES)
        except _TransientFailure:
            time.sleep(_FIRST_WAIT * 2 ** attempt)
    raise AssertionError("unreachable: the last attempt does not raise")


class _TransientFailure(Exception):
    pass


def scan_and_commit(shard: ShardSpec, spec: JobSpec, model: LoadedModel,
                    scoring: str) -> ShardOutcome:
    """:func:`scan_with_retries`, then commit a finished shard so a resumed job can reuse it."""
    outcome = scan_with_retries(shard, spec, model)
    if outcome.status == "done":
        record = ShardRecord(shard.shard_id, shard_key(shard, scoring), outcome.status,
                             outcome.rows_in, outcome.rows_scored, outcome.rows_quarantined,
                             spec.selection.per_shard, outcome.errors, round(outcome.seconds, 3))
        write_commit(spec.output.uri, record, outcome.candidates, spec.fsspec_storage)
    return outcome
