"""What the report reads from an output folder: ``job.json``, the selection, and the pool's
scores tallied in one streamed pass.

The pool can be far larger than memory, so it is never read as one table: each scores file is
read in record batches of the columns a plot needs (``score``, ``predicted``, ``confidence``),
and each batch is added to fixed-bin counts (:class:`PoolTally`, ``update``/``merge`` like the
reducers). The score bins are fixed before that pass, from the files' parquet statistics (the
footers only), so no file is read twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.errors import ConfigError
from alray.output.folder import OutputFolder
from alray.sources.files import open_parquet

__all__ = ["PoolTally", "SelectionView", "read_selection", "score_files",
           "score_range", "tally_pool", "SCORE_BINS", "CONFIDENCE_BINS", "TOP_ROWS"]

#: Bins of the score histogram, between the pool's lowest and highest score.
SCORE_BINS = 60
#: Bins of the confidence histogram, over [0, 1].
CONFIDENCE_BINS = 40
#: Rows of the selection the page lists.
TOP_ROWS = 20
_BATCH_ROWS = 65_536
_READ_COLUMNS = ("id", "score", "shard", "predicted", "reason")


# ----------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class SelectionView:
    """What the report uses of ``selection.parquet``.

    Attributes:
        columns: ``id``, ``score``, ``shard``, ``reason`` and (classification) ``predicted`` of
            every selected row, in rank order.
        top: every column of the first :data:`TOP_ROWS` rows.
    """

    columns: pa.Table
    top: pa.Table

    @property
    def rows(self) -> int:
        return self.columns.num_rows

    @property
    def scores(self) -> np.ndarray:
        return self.columns.column("score").to_numpy().astype(np.float64)

    @property
    def reasons(self) -> list[str]:
        return self.columns.column("reason").to_pylist()

    def predicted(self) -> np.ndarray | None:
        if "predicted" not in self.columns.column_names:
            return None
        return self.columns.column("predicted").to_numpy()

    def ids_by_shard(self) -> dict[str, pa.Array]:
        """The selected ids of each shard (the scores file they are in)."""
        shards = self.columns.column("shard")
        return {shard: self.columns.column("id").filter(pc.equal(shards, shard)).combine_chunks()
                for shard in pc.unique(shards).to_pylist()}


def read_selection(folder: OutputFolder) -> SelectionView:
    """The selection's small columns for every row, and all of its columns for the top rows
    only (carried columns may be large)."""
    with open_parquet(folder.path(folder.SELECTION), folder.storage) as pf:
        names = pf.schema_arrow.names
        columns = pf.read(columns=[c for c in _READ_COLUMNS if c in names])
        first = next(pf.iter_batches(batch_size=TOP_ROWS), None)
        top = pa.Table.from_batches([first]) if first is not None else \
            pf.schema_arrow.empty_table()
    return SelectionView(columns, top)


# ----------------------------------------------------------------------------------- scores


def score_files(folder: OutputFolder) -> dict[str, str]:
    """URI of each shard's scores file, by shard id, sorted; a :class:`ConfigError` when the
    folder holds none."""
    shards = sorted(filter(None, map(folder.shard_of, folder.listing(folder.SCORES))))
    if not shards:
        raise ConfigError("OUT", f"no scores files under {folder.path(folder.SCORES)!r}; run the "
                                 "job again to score the pool")
    return {shard: folder.scores(shard) for shard in shards}


def score_range(uris: list[str], storage) -> tuple[float, float]:
    """The lowest and highest finite score over the files: from each row group's parquet
    statistics, or from reading the ``score`` column of a file whose footer has none."""
    low, high = np.inf, -np.inf
    for uri in uris:
        with open_parquet(uri, storage) as pf:
            bounds = _footer_bounds(pf)
            if bounds is None:
                scores = pf.read(columns=["score"]).column("score").to_numpy().astype(np.float64)
                finite = scores[np.isfinite(scores)]
                bounds = (finite.min(), finite.max()) if len(finite) else (np.inf, -np.inf)
        low, high = min(low, bounds[0]), max(high, bounds[1])
    return float(low), float(high)


def _footer_bounds(pf) -> tuple[float, float] | None:
    """``(min, max)`` of ``score`` from the row-group statistics; None where any is missing or
    not finite."""
    metadata = pf.metadata
    index = pf.schema_arrow.get_field_index("score")
    if index < 0:
        raise ConfigError("OUT", "a scores file has no 'score' column; it was not written by "
                                 "alray run")
    bounds = []
    for group in range(metadata.num_row_groups):
        column = metadata.row_group(group)
        if column.num_rows == 0:
            continue
        stats = column.column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        bounds.append((float(stats.min), float(stats.max)))
    if not bounds:
        return (np.inf, -np.inf)
    low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
    return (low, high) if np.isfinite(low) and np.isfinite(high) else None


def score_edges(low: float, high: float, bins: int = SCORE_BINS) -> np.ndarray:
    """``bins + 1`` evenly spaced edges from ``low`` to ``high`` (a unit-wide range around a
    single value, or around 0 when no score is finite)."""
    if not np.isfinite(low) or not np.isfinite(high):
        low = high = 0.0
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


@dataclass
class PoolTally:
    """Fixed-bin counts over the pool, built batch by batch.

    Attributes:
        score_edges: ``[SCORE_BINS + 1]`` edges; ``score_counts`` ``[SCORE_BINS]`` rows per bin.
        confidence_edges, confidence_counts: the same over [0, 1] for ``confidence``.
        class_counts: rows per predicted class index (grows with the largest index seen).
        rows: rows seen; ``non_finite``: of them, rows whose score is NaN or infinite (not in
            ``score_counts``).
        selected_confidence: ``confidence`` of the selected rows found in the scores files.
        classification: whether the files hold ``predicted`` and ``confidence``.
    """

    score_edges: np.ndarray
    confidence_edges: np.ndarray = field(
        default_factory=lambda: np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1))
    score_counts: np.ndarray = field(init=False)
    confidence_counts: np.ndarray = field(init=False)
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rows: int = 0
    non_finite: int = 0
    selected_confidence: list[np.ndarray] = field(default_factory=list)
    classification: bool = True

    def __post_init__(self):
        self.score_counts = np.zeros(len(self.score_edges) - 1, np.int64)
        self.confidence_counts = np.zeros(len(self.confidence_edges) - 1, np.int64)

    def update(self, batch: pa.RecordBatch | pa.Table, selected: pa.Array | None = None) -> None:
        """Add one batch (``score``, and ``predicted``, ``confidence`` when present); ``selected``
        holds the ids of the batch's shard that were selected (the batch then has ``id``)."""
        scores = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        finite = np.isfinite(scores)
        self.rows += len(scores)
        self.non_finite += int((~finite).sum())
        self.score_counts += np.histogram(scores[finite], self.score_edges)[0]
        if "predicted" not in batch.column_names or "confidence" not in batch.column_names:
            self.classification = False
            return
        predicted = batch.column("predicted").to_numpy(zero_copy_only=False).astype(np.int64)
        self._add_classes(np.bincount(predicted, minlength=len(self.class_counts)))
        confidence = batch.column("confidence").to_numpy(zero_copy_only=False)
        self.confidence_counts += np.histogram(confidence, self.confidence_edges)[0]
        if selected is not None and len(selected):
            mask = pc.is_in(batch.column("id"), value_set=selected).to_numpy(
                zero_copy_only=False)
            self.selected_confidence.append(confidence[mask].astype(np.float64))

    def _add_classes(self, counts: np.ndarray) -> None:
        if len(counts) > len(self.class_counts):
            self.class_counts = np.pad(self.class_counts, (0, len(counts) - len(self.class_counts)))
        self.class_counts[:len(counts)] += counts

    def merge(self, other: "PoolTally") -> None:
        """Add another tally over the same edges (a tally per file, merged)."""
        if not (np.array_equal(self.score_edges, other.score_edges)
                and np.array_equal(self.confidence_edges, other.confidence_edges)):
            raise ValueError("tallies over different bin edges cannot be merged")
        self.score_counts += other.score_counts
        self.confidence_counts += other.confidence_counts
        self._add_classes(other.class_counts)
        self.rows += other.rows
        self.non_finite += other.non_finite
        self.selected_confidence.extend(other.selected_confidence)
        self.classification = self.classification and other.classification

    def selected_confidences(self) -> np.ndarray:
        return np.concatenate(self.selected_confidence) if self.selected_confidence else \
            np.zeros(0)


def _batches(uri: str, storage, selected: bool) -> Iterator[pa.RecordBatch]:
    """The file's record batches, with only the columns the tally reads."""
    with open_parquet(uri, storage) as pf:
        names = pf.schema_arrow.names
        wanted = ["score", "predicted", "confidence"] + (["id"] if selected else [])
        yield from pf.iter_batches(batch_size=_BATCH_ROWS,
                                   columns=[c for c in wanted if c in names])


def tally_pool(folder: OutputFolder, selection: SelectionView | None = None,
               bins: int = SCORE_BINS) -> PoolTally:
    """Counts over every scores file of ``folder``, streamed: bins from the footers, then one
    pass over the files' ``score``, ``predicted`` and ``confidence`` columns (and ``id`` in the
    files that hold a selected row)."""
    files = score_files(folder)
    tally = PoolTally(score_edges(*score_range(list(files.values()), folder.storage), bins))
    selected = selection.ids_by_shard() if selection is not None else {}
    for shard, uri in files.items():
        ids = selected.get(shard)
        for batch in _batches(uri, folder.storage, ids is not None):
            tally.update(batch, ids)
    return tally
