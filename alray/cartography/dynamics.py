"""Training dynamics, row by row: the running statistics of p(gold) over epochs, and the regions.

:class:`GoldDynamics` takes a log one epoch at a time. Each epoch's rows are reduced batch by
batch to four numbers per row (p(gold), whether the argmax is gold, the argmax, the gold label)
by :func:`reduce_batch`, the definitions of :mod:`alray.scoring.labels` in NumPy (the tests hold
the two paths equal); the epoch's ids are then matched to the rows already seen through an
:class:`IdIndex` built once, and each row's mean and sum of squared deviations are updated in
place (Welford's update, so the standard deviation keeps its precision when it is tiny beside the
mean). Memory: 48 bytes of state per row, plus one epoch's reduced rows and one batch of logits,
whatever the number of epochs.

Rows missing from some epochs: a row's statistics are over the epochs it appears in (``epochs``
counts them), as the reference implementation's are over the epochs it logged; a row first seen
in a later epoch is added then.

Regions (Swayamdipta et al. 2020 select by such shares): ``hard_to_learn`` is the ``hard`` share
of all rows with the lowest ``gold_confidence``; ``ambiguous`` the ``ambiguous`` share of all rows,
taken from the rest, with the highest ``gold_variability``; the others are ``easy_to_learn``.
Shares are rounded half up to rows, and ties go to the row seen first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.cartography.log import EpochFile, LogBatch
from alray.errors import ConfigError
from alray.scoring.validity import PROB_SUM_TOLERANCE

__all__ = ["REGIONS", "EpochRows", "GoldDynamics", "reduce_batch", "regions"]

#: Region names, from the rows most likely mislabeled to the rows a model learns at once.
REGIONS = ("hard_to_learn", "ambiguous", "easy_to_learn")


@dataclass
class EpochRows:
    """One epoch's rows reduced to what the statistics need, each ``[n]``."""

    ids: pa.Array
    gold: np.ndarray         # int64
    p_gold: np.ndarray       # float64, p(gold) in [0, 1]
    correct: np.ndarray      # bool, argmax == gold
    predicted: np.ndarray    # int32, argmax (ties to the lowest class)

    @classmethod
    def concat(cls, parts: list["EpochRows"]) -> "EpochRows":
        if len(parts) == 1:
            return parts[0]
        return cls(pa.concat_arrays([p.ids for p in parts]),
                   *(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("gold", "p_gold", "correct", "predicted")))


def _where(file: EpochFile, batch: LogBatch, position: int) -> str:
    name = file.uri.rsplit("/", 1)[-1]
    return f"{name}, row {batch.first_row + position} (id {batch.ids[position].as_py()!r})"


def _first_bad(mask: np.ndarray) -> int | None:
    return int(np.flatnonzero(mask)[0]) if mask.any() else None


def _reject(batch: LogBatch, file: EpochFile, bad: np.ndarray, cause: str) -> None:
    row = _first_bad(bad)
    if row is not None:
        raise ConfigError("DYNAMICS", f"{_where(file, batch, row)}: the model's output {cause}")


def reduce_batch(batch: LogBatch, file: EpochFile) -> EpochRows:
    """A batch of logits or probabilities ``[n, C]`` -> its :class:`EpochRows`, in float64.

    ``p(gold)`` is the softmax ``exp(z_gold - z_max) / sum_c exp(z_c - z_max)`` for logits (the
    definition :func:`alray.scoring.labels.gold_probabilities` computes from a log-softmax) and
    ``p_gold / sum_c p_c`` for probabilities: NumPy over the batch, one copy, one argmax and one
    row sum, which also screens the rows for NaN and +Inf; sums and ratios in float64, the
    exponentials in the log's precision (float64 logs are computed in float64 throughout). A
    logit of -Inf is a probability of 0.

    Raises:
        ConfigError: (naming the file, row and id) a NaN or +Inf, probabilities that are
            negative or do not sum to 1, or a gold label that is not one of the row's C classes.
    """
    values = batch.values
    rows, classes = values.shape
    out_of_range = _first_bad((batch.gold < 0) | (batch.gold >= classes))
    if out_of_range is not None:
        raise ConfigError("DYNAMICS", f"{_where(file, batch, out_of_range)}: gold label "
                                      f"{batch.gold[out_of_range]} is not a class of the "
                                      f"{classes} the row has values for (0..{classes - 1})")
    everyone = np.arange(rows)
    predicted = values.argmax(axis=1)  # float32 -> float64 is exact: the same argmax
    if batch.output == "logits":
        # exp in the log's own precision (float32 logits: relative error ~1e-7, the precision
        # they were logged in), the sums and the division in float64
        work = values - values[everyone, predicted][:, None]
        np.exp(work, out=work)
        total = work.sum(axis=1, dtype=np.float64)
        _reject(batch, file, ~np.isfinite(total), "holds NaN or Inf")
    else:
        work = values.astype(np.float64)
        total = work.sum(axis=1)
        _reject(batch, file, ~np.isfinite(total), "holds NaN or Inf")
        _reject(batch, file, (np.abs(total - 1.0) > PROB_SUM_TOLERANCE) | (work < 0).any(axis=1),
                f"probabilities are negative or do not sum to 1 within {PROB_SUM_TOLERANCE:g}")
    return EpochRows(batch.ids, batch.gold, work[everyone, batch.gold].astype(np.float64) / total,
                     predicted == batch.gold, predicted.astype(np.int32))


def _duplicate(ids: pa.Array) -> object | None:
    """An id that appears more than once in ``ids`` (None if none does)."""
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return repeated.field("values")[0].as_py() if len(repeated) else None


#: The running state of a row, one float64 each (counts and labels are exact below 2^53).
_STATE = ("count", "mean", "m2", "correct", "gold", "predicted")
_ROW = np.dtype((np.void, 8 * len(_STATE)))


class IdIndex:
    """Each id's row in the statistics (the order ids were first seen), looked up per epoch.

    Integer ids that are dense enough (non-negative, the largest below 4 x rows + 2^20: dataset
    indices, usually) are looked up in a table indexed by the id itself; other integers by
    binary search in a sorted copy; strings by Arrow's hash lookup. The first two are built when
    ids are added, not per epoch.
    """

    def __init__(self):
        self.ids: pa.Array | None = None
        self._table: np.ndarray | None = None             # id -> row, -1 for none
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, their rows)

    def __len__(self) -> int:
        return 0 if self.ids is None else len(self.ids)

    def lookup(self, ids: pa.Array) -> np.ndarray:
        """``[n]`` int64 rows of ``ids``, -1 for an id not seen before."""
        if self.ids is None:
            return np.full(len(ids), -1, np.int64)
        if not pa.types.is_integer(ids.type):
            return pc.index_in(ids, value_set=self.ids).fill_null(-1).to_numpy().astype(np.int64)
        values = ids.to_numpy()
        if self._table is not None:
            inside = (values >= 0) & (values < len(self._table))
            if inside.all():
                return self._table[values]
            return np.where(inside, self._table[np.where(inside, values, 0)], -1)
        keys, rows = self._sorted
        at = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
        return np.where(keys[at] == values, rows[at], -1)

    def extend(self, new: pa.Array) -> None:
        """Add ids not seen before (unique among themselves), as the next rows."""
        first = len(self)
        self.ids = new if self.ids is None else pa.concat_arrays([self.ids, new])
        if not pa.types.is_integer(new.type):
            return
        values = new.to_numpy()
        rows = first + np.arange(len(values))
        if self._table is not None or first == 0:
            largest = int(values.max(initial=-1))
            if values.min(initial=0) >= 0 and largest < 4 * len(self) + 2**20:
                self._grow_table(largest)
                self._table[values] = rows
                return
        self._table = None
        everything = self.ids.to_numpy()
        order = np.argsort(everything, kind="stable")
        self._sorted = (everything[order], order.astype(np.int64))

    def _grow_table(self, largest: int) -> None:
        size = 0 if self._table is None else len(self._table)
        if largest >= size:
            grown = np.full(max(largest + 1, 2 * size), -1, np.int64)
            if size:
                grown[:size] = self._table
            self._table = grown


class GoldDynamics:
    """Running per-row statistics of p(gold) over the epochs of a log, keyed by id.

    Attributes:
        ids: every id seen, in the order first seen (None before the first epoch).
        classes: C, the number of values per row (the same in every epoch).
        epochs: the epochs taken, in order.
    """

    def __init__(self):
        self._index = IdIndex()
        self.classes: int | None = None
        self.epochs: list[int] = []
        #: One row of running state per id: a shuffled epoch then costs one random gather and
        #: one scatter per row, not one per quantity (columns: _STATE).
        self._state = np.zeros((0, len(_STATE)), np.float64)
        self._pending: list[EpochRows] = []

    def __len__(self) -> int:
        return len(self._state)

    @property
    def ids(self) -> pa.Array | None:
        return self._index.ids

    def add_epoch(self, file: EpochFile, batches: Iterable[LogBatch]) -> int:
        """Take one epoch's rows (:meth:`take` each batch, then :meth:`end_epoch`); returns how
        many there were."""
        for batch in batches:
            self.take(file, batch)
        return self.end_epoch(file)

    def take(self, file: EpochFile, batch: LogBatch) -> None:
        """Reduce one batch of ``file``'s epoch; the rows count when the epoch ends."""
        self._check_classes(batch, file)
        self._pending.append(reduce_batch(batch, file))

    def end_epoch(self, file: EpochFile) -> int:
        """Fold the epoch's reduced rows into the statistics; returns how many there were.

        Raises:
            ConfigError: (naming the file) an id twice in the epoch, a row's gold label that
                differs from an earlier epoch's, or ids of another type.
        """
        parts, self._pending = self._pending, []
        self.epochs.append(file.epoch)
        if not parts:
            return 0
        rows = EpochRows.concat(parts)
        if len(self._index) and self.ids.type != rows.ids.type:
            raise ConfigError("DYNAMICS", f"{_file(file)}: ids are {rows.ids.type}, earlier "
                                          f"epochs' are {self.ids.type}; log one id type")
        positions = self._positions(rows.ids, file)
        self._update(positions, rows, file)
        return len(rows.ids)

    def _check_classes(self, batch: LogBatch, file: EpochFile) -> None:
        width = batch.values.shape[1]
        if self.classes is None:
            if width < 2:
                raise ConfigError("DYNAMICS", f"{_file(file)}: rows hold {width} value(s); "
                                              "log one logit or probability per class (C >= 2)")
            self.classes = width
        elif width != self.classes:
            raise ConfigError("DYNAMICS", f"{_file(file)}: rows hold {width} values, earlier "
                                          f"rows {self.classes}; log one value per class")

    def _positions(self, ids: pa.Array, file: EpochFile) -> np.ndarray:
        """Each id's row in the statistics, adding the ids not seen before. ``[n]`` int64."""
        positions = self._index.lookup(ids)
        fresh = positions < 0
        if fresh.any():
            added = ids.filter(pa.array(fresh))
            first_new = len(self._index)
            self._index.extend(added)
            positions[fresh] = first_new + np.arange(len(added))
            self._grow(len(added))
        if np.bincount(positions, minlength=len(self._index)).max(initial=0) > 1:
            raise ConfigError("DYNAMICS", f"{_file(file)}: id {_duplicate(ids)!r} appears more "
                                          "than once in the epoch; log each row once per epoch")
        return positions

    def _grow(self, n: int) -> None:
        self._state = np.concatenate([self._state, np.zeros((n, len(_STATE)), np.float64)])

    def _update(self, positions: np.ndarray, rows: EpochRows, file: EpochFile) -> None:
        """Welford's update of each row's mean and squared deviations, with one gather and one
        scatter of its state; a gold label that changed is an error before anything is kept."""
        rows_of_state = self._state.view(_ROW).ravel()  # gather whole rows, not six columns
        state = rows_of_state[positions].view(np.float64).reshape(len(positions), len(_STATE))
        count, mean, m2, correct, gold, predicted = state.T
        differs = (count > 0) & (gold != rows.gold)
        if differs.any():
            i = int(np.flatnonzero(differs)[0])
            raise ConfigError("DYNAMICS", f"{_file(file)}: id {rows.ids[i].as_py()!r} has gold "
                                          f"label {rows.gold[i]} here and {int(gold[i])} in an "
                                          "earlier epoch; a row's given label must not change "
                                          "between epochs")
        count += 1
        delta = rows.p_gold - mean
        mean += delta / count
        m2 += delta * (rows.p_gold - mean)
        correct += rows.correct
        gold[:] = rows.gold
        predicted[:] = rows.predicted
        rows_of_state[positions] = state.view(_ROW).ravel()

    def statistics(self) -> pa.Table:
        """One row per id seen: ``id``, ``gold``, ``gold_confidence``, ``gold_variability``
        (ddof 0), ``gold_correctness``, ``epochs`` (how many the row appears in) and
        ``predicted`` (its argmax in the last epoch it appears in), in the order first seen."""
        count, mean, m2, correct, gold, predicted = self._state.T
        seen = np.maximum(count, 1)
        return pa.table({
            "id": self.ids if self.ids is not None else pa.array([], pa.int64()),
            "gold": gold.astype(np.int64),
            "gold_confidence": mean,
            "gold_variability": np.sqrt(np.maximum(m2, 0.0) / seen),
            "gold_correctness": correct / seen,
            "epochs": count.astype(np.int32),
            "predicted": predicted.astype(np.int32),
        })


def _file(file: EpochFile) -> str:
    return file.uri.rsplit("/", 1)[-1]


def _share_rows(share: float, n: int) -> int:
    return min(n, int(share * n + 0.5))


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``keys``, ties to the lowest position: a stable sort's
    first ``k``, found in linear time (one partition), unordered."""
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= len(keys):
        return np.arange(len(keys))
    cut = np.partition(keys, k - 1)[k - 1]
    below = np.flatnonzero(keys < cut)
    return np.concatenate([below, np.flatnonzero(keys == cut)[:k - len(below)]])


def regions(confidence: np.ndarray, variability: np.ndarray, hard: float = 0.33,
            ambiguous: float = 0.33) -> np.ndarray:
    """Each row's region (an index into :data:`REGIONS`). ``[N], [N] -> [N]`` int8.

    Args:
        confidence: ``gold_confidence`` per row.
        variability: ``gold_variability`` per row.
        hard: share of all rows that are ``hard_to_learn`` (the lowest confidence).
        ambiguous: share of all rows that are ``ambiguous`` (the highest variability of the
            rest); ``hard + ambiguous <= 1``.
    """
    if not (0 <= hard <= 1 and 0 <= ambiguous <= 1 and hard + ambiguous <= 1 + 1e-12):
        raise ConfigError("--hard", f"got --hard {hard} and --ambiguous {ambiguous}; each is a "
                                    "share in [0, 1] and together at most 1")
    n = len(confidence)
    region = np.full(n, REGIONS.index("easy_to_learn"), np.int8)
    region[_smallest(confidence, _share_rows(hard, n))] = REGIONS.index("hard_to_learn")
    rest = np.flatnonzero(region != REGIONS.index("hard_to_learn"))
    region[rest[_smallest(-variability[rest], _share_rows(ambiguous, n))]] = \
        REGIONS.index("ambiguous")
    return region
