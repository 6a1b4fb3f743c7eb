"""Confident learning's label-issue flags, streamed over a pool too large to hold at once.

Computes, for a pool of rows with a given (gold) label and out-of-sample predicted class
probabilities, the rows whose given label is probably wrong: exactly the rows that cleanlab 2.9's
``cleanlab.filter.find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate")`` flags
(its other arguments left at their defaults), without ever holding all of ``pred_probs``.

Shape contract. The pool arrives as chunks ``(ids, gold, probs)``: ``ids`` a ``pa.Array`` of
``[n]`` int64 or string row ids, ``gold`` an ``[n]`` integer array of class indices in
``0 .. C - 1``, ``probs`` an ``[n, C]`` float32 or float64 array of probabilities in [0, 1].
Everything is computed in float64.

The algorithm (Northcutt, Jiang, Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021, Sections 3.1-3.2, as cleanlab implements it):

1. Per-class thresholds ``t[k]``: the mean of ``p[k]`` over the rows given ``k`` (2.0 for a class
   no row is given, so nothing counts into it), floored at 2e-6.
2. The confident joint ``[C, C]``: row ``r`` given ``i`` counts at ``(i, j)`` where ``j`` is its
   one class with ``p[j] >= t[j] - 1e-6``; with several such classes, ``j`` is the argmax of the
   *whole* row (which need not be one of them); with none, ``r`` is not counted.
3. Its diagonal is floored at 1, every row is rescaled to the rows given that class, the whole to
   the pool size, and each row is rounded to integers keeping its total.
4. Prune counts ``[C, C]``: ``to_flag[i, j]`` rows given ``i`` to flag toward ``j``: the calibrated
   off-diagonal counts, less what keeps each class's diagonal at ``min_examples_per_class``,
   times ``frac_noise``, truncated. A class with at most ``max(min_examples_per_class, 1)`` rows
   is never flagged.
5. For each pair, the ``to_flag[i, j]`` rows given ``i`` with the largest margin ``p[j] - p[i]``;
   a row is flagged if any pair picks it.
6. A flagged row is dropped again when ``argmax(p + 1e-6 * onehot(given)) == given``: when the
   model agrees with the given label to within 1e-6.

Passes. The thresholds need the whole pool before any row can be counted into the confident
joint, and the prune counts need the whole confident joint before any row can be picked: three
dependent reductions, one read each. Pass 1 (:class:`ClassTotals`) is a plain sum, cheap enough
to fold into scoring and merge per shard; :func:`flag_rows` takes the pool's totals and reads the
chunks twice more: the confident joint (:func:`confident_joint`), then an :class:`IssueFlagger`
built with the prune counts. :func:`find_label_issues` does all three reads itself.

Memory: O(C^2) for the reductions. A flagger holds at most ``sum(to_flag)`` (row number, margin)
entries of 16 bytes, plus id, labels and two floats for those of them that can survive step 6,
and a ``[rows given i, C]`` margin block per class while offering a chunk; never the pool.

Ties. cleanlab orders margins with NumPy's default (unstable) argsort, so it has no rule for
rows of equal margin; here the earlier row wins (chunk order, then position in the chunk).
Rounding in step 3 ranks the residuals with NumPy's default argsort as cleanlab does, so tied
residuals resolve the same way. Float32 input: cleanlab computes the thresholds, the margins and
the 1e-6 comparisons in float32, this module in float64; the flags can differ only for a row
within float32 rounding (~1e-7) of a threshold or of the 1e-6 bump, or between float32-equal
margins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

__all__ = [
    "ClassTotals",
    "confident_joint",
    "calibrate_joint",
    "prune_counts",
    "IssueFlagger",
    "find_label_issues",
    "flag_rows",
]

#: cleanlab's FLOATING_POINT_COMPARISON: the slack under a threshold and the bump of the given
#: label's probability in the final agreement check.
_FUZZ = 1e-6
#: cleanlab's CONFIDENT_THRESHOLDS_LOWER_BOUND.
_THRESHOLD_FLOOR = 2 * _FUZZ
#: The threshold of a class no row is given: above any probability, so nothing counts into it.
_ABSENT_CLASS_THRESHOLD = 2.0
#: cleanlab's TINY_VALUE, the floor of a calibration denominator.
_TINY = 1e-100
#: The result's columns, in order.
RESULT_COLUMNS = ("id", "given", "suggested", "self_confidence", "margin")

Chunk = tuple[pa.Array, np.ndarray, np.ndarray]


# -- input checks ----------------------------------------------------------------------------------


def _checked_classes(classes: int) -> int:
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
        raise ValueError(f"classes must be a positive int; got {classes!r}")
    return int(classes)


def _checked_gold(gold, classes: int) -> np.ndarray:
    """``gold`` as an ``[n]`` int64 array of class indices in ``0 .. classes - 1``."""
    gold = np.asarray(gold)
    if gold.ndim != 1:
        raise ValueError(f"gold must be 1-D [n]; got shape {list(gold.shape)}")
    if gold.size == 0:
        return gold.astype(np.int64)
    if not np.issubdtype(gold.dtype, np.integer):
        raise ValueError(f"gold must hold integer class indices; got dtype {gold.dtype}")
    low, high = int(gold.min()), int(gold.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"gold out of range: class indices must be in 0..{classes - 1}; got {low}..{high}"
        )
    return gold.astype(np.int64, copy=False)


def _checked_probs(probs, rows: int, classes: int) -> np.ndarray:
    """``probs`` as an ``[rows, classes]`` float64 array of probabilities."""
    probs = np.asarray(probs)
    if probs.shape != (rows, classes):
        raise ValueError(
            f"probs shape mismatch: expected [{rows}, {classes}] (rows of gold, classes); "
            f"got {list(probs.shape)}"
        )
    if not (np.issubdtype(probs.dtype, np.floating) or np.issubdtype(probs.dtype, np.integer)):
        raise ValueError(f"probs must be a float array; got dtype {probs.dtype}")
    probs = probs.astype(np.float64, copy=False)
    if probs.size == 0:
        return probs
    if np.isnan(probs).any():
        raise ValueError("probs contain NaN")
    if probs.min() < -_FUZZ or probs.max() > 1 + _FUZZ:
        raise ValueError(
            f"probs outside [0, 1]: got values in [{probs.min():.6g}, {probs.max():.6g}]"
        )
    return probs


def _checked_ids(ids, rows: int) -> pa.Array:
    """``ids`` as an ``[rows]`` ``pa.Array`` of int64 or string, without nulls."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        raise ValueError(f"ids must be a pyarrow Array; got {type(ids).__name__}")
    if len(ids) != rows:
        raise ValueError(f"ids length mismatch: {len(ids)} ids for {rows} rows of gold")
    kind = ids.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)):
        raise ValueError(f"ids must be integer or string; got {kind}")
    if ids.null_count:
        raise ValueError(f"ids contain {ids.null_count} nulls")
    return ids


def _checked_square(matrix, name: str, classes: int | None = None) -> np.ndarray:
    """``matrix`` as a ``[C, C]`` non-negative int64 array (``C = classes`` when given)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{name} must be a square [C, C] matrix; got shape {list(matrix.shape)}")
    if classes is not None and matrix.shape[0] != classes:
        raise ValueError(f"{name} shape mismatch: expected [{classes}, {classes}]; "
                         f"got {list(matrix.shape)}")
    if matrix.size and not np.issubdtype(matrix.dtype, np.integer):
        if not np.array_equal(matrix, np.round(matrix)):
            raise ValueError(f"{name} must hold integer counts; got dtype {matrix.dtype}")
    if (matrix < 0).any():
        raise ValueError(f"{name} must be non-negative counts")
    return matrix.astype(np.int64)


def _checked_class_counts(class_counts, classes: int) -> np.ndarray:
    """``class_counts`` as a ``[classes]`` int64 array of non-negative row counts."""
    class_counts = np.asarray(class_counts)
    if class_counts.shape != (classes,):
        raise ValueError(f"class_counts shape mismatch: expected [{classes}]; "
                         f"got {list(class_counts.shape)}")
    if (class_counts < 0).any():
        raise ValueError("class_counts must be non-negative")
    return class_counts.astype(np.int64)


# -- pass 1: per-class totals ----------------------------------------------------------------------


@dataclass(eq=False)
class ClassTotals:
    """Pass 1: per given class, the rows and the sum of ``p[class]`` over them.

    ``sums`` is ``[C]`` float64 (sum of ``probs[r, k]`` over rows ``r`` given ``k``); ``counts`` is
    ``[C]`` int64 (rows given ``k``). Summable across chunks and shards.
    """

    sums: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.sums = np.array(self.sums, dtype=np.float64)
        self.counts = np.array(self.counts, dtype=np.int64)
        if self.sums.ndim != 1 or self.sums.shape != self.counts.shape or self.sums.size < 1:
            raise ValueError(f"sums and counts must both be [C], C >= 1; got shapes "
                             f"{list(self.sums.shape)} and {list(self.counts.shape)}")
        if (self.counts < 0).any():
            raise ValueError("counts must be non-negative")

    @property
    def classes(self) -> int:
        """C, the number of classes."""
        return int(self.sums.size)

    @classmethod
    def zeros(cls, classes: int) -> ClassTotals:
        """Empty totals for ``classes`` classes."""
        classes = _checked_classes(classes)
        return cls(np.zeros(classes, np.float64), np.zeros(classes, np.int64))

    def add(self, gold, probs) -> ClassTotals:
        """Accumulate a chunk (``gold`` ``[n]``, ``probs`` ``[n, C]``) in place; return self."""
        gold = _checked_gold(gold, self.classes)
        probs = _checked_probs(probs, gold.size, self.classes)
        self._add_checked(gold, probs)
        return self

    def _add_checked(self, gold: np.ndarray, probs: np.ndarray) -> None:
        own = probs[np.arange(gold.size), gold]
        self.sums += np.bincount(gold, weights=own, minlength=self.classes)
        self.counts += np.bincount(gold, minlength=self.classes)

    def merge(self, other: ClassTotals) -> ClassTotals:
        """A new ClassTotals, the sum of ``self`` and ``other`` (same C)."""
        if other.classes != self.classes:
            raise ValueError(f"class count mismatch: merging {other.classes} classes into "
                             f"{self.classes}")
        return ClassTotals(self.sums + other.sums, self.counts + other.counts)

    def to_dict(self) -> dict:
        """JSON-able ``{"sums": [C floats], "counts": [C ints]}``."""
        return {"sums": self.sums.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d) -> ClassTotals:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or set(d) != {"sums", "counts"}:
            raise ValueError("ClassTotals dict must have exactly the keys 'sums' and 'counts'")
        return cls(np.asarray(d["sums"], np.float64), np.asarray(d["counts"], np.int64))

    def thresholds(self) -> np.ndarray:
        """``[C]`` float64 per-class thresholds, as cleanlab's ``get_confident_thresholds``.

        The mean self-confidence of the rows given each class; 2.0 for a class no row is given
        (above any probability); floored at 2e-6.
        """
        present = self.counts > 0
        means = np.divide(self.sums, self.counts, out=np.zeros(self.classes), where=present)
        thresholds = np.where(present, means, _ABSENT_CLASS_THRESHOLD)
        return np.maximum(thresholds, _THRESHOLD_FLOOR)


# -- pass 2: the confident joint and the prune counts ----------------------------------------------


def _confident_class(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``[n]`` int64: each row's confidently-belongs-to class, -1 where there is none.

    One class at or over its threshold (less 1e-6): that class. Several: the argmax of the whole
    row, as cleanlab, even when the argmax itself is under its threshold. None: -1.
    """
    confident = probs >= thresholds - _FUZZ
    confident_count = confident.sum(axis=1)
    guess = np.where(confident_count > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    guess[confident_count == 0] = -1
    return guess.astype(np.int64)


def _joint_of(gold: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    classes = probs.shape[1]
    guess = _confident_class(probs, thresholds)
    counted = guess >= 0
    cells = gold[counted] * classes + guess[counted]
    return np.bincount(cells, minlength=classes * classes).reshape(classes, classes)


def confident_joint(gold, probs, thresholds) -> np.ndarray:
    """``[C, C]`` int64 uncalibrated confident-joint counts of one chunk, summable across chunks.

    ``gold`` ``[n]``, ``probs`` ``[n, C]``, ``thresholds`` ``[C]`` (:meth:`ClassTotals.thresholds`
    of the whole pool). Entry ``(i, j)`` counts rows given ``i`` that confidently belong to ``j``.
    The diagonal is not yet floored at 1; :func:`calibrate_joint` does that on the pool's sum.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size < 1:
        raise ValueError(f"thresholds must be [C]; got shape {list(thresholds.shape)}")
    if np.isnan(thresholds).any():
        raise ValueError("thresholds contain NaN")
    gold = _checked_gold(gold, thresholds.size)
    probs = _checked_probs(probs, gold.size, thresholds.size)
    return _joint_of(gold, probs, thresholds)


def _round_keeping_total(values: np.ndarray) -> np.ndarray:
    """``[K]`` floats rounded to integers whose sum is the rounded sum of ``values``.

    Rounds half to even, then moves the entries with the largest residual in the direction of the
    shortfall, as cleanlab's ``round_preserving_sum``; residuals are ranked with NumPy's default
    argsort, as there, so that tied residuals resolve identically.
    """
    values = np.asarray(values, dtype=np.float64)
    rounded = values.round()
    target = np.sum(values).round()
    total = np.sum(rounded).round()
    while abs(total - target) > _FUZZ:
        shortfall = np.round(target - total)
        step = -1 if shortfall < 0 else 1
        moves = min(int(abs(shortfall)), values.size)
        by_residual = np.argsort(values - rounded)
        movers = (by_residual[::-1] if step > 0 else by_residual)[:moves]
        rounded[movers] += step
        total = np.sum(rounded).round()
    return rounded


def calibrate_joint(counts, class_counts) -> np.ndarray:
    """``[C, C]`` int64 calibrated confident joint, as cleanlab's ``calibrate_confident_joint``.

    ``counts`` ``[C, C]``: the pool's summed :func:`confident_joint`; ``class_counts`` ``[C]``:
    rows given each class (``ClassTotals.counts``). First floors the diagonal at 1, as cleanlab's
    ``compute_confident_joint`` does before calibrating (a no-op on an already floored joint).
    Then row ``i`` is scaled to ``class_counts[i]``, the whole to ``class_counts.sum()``, and each
    row rounded to integers keeping its total. The arithmetic follows cleanlab's order of
    operations so that the float values, and hence the rounding, are bit-for-bit the same.
    """
    joint = _checked_square(counts, "counts")
    class_counts = _checked_class_counts(class_counts, joint.shape[0])
    np.fill_diagonal(joint, np.maximum(np.diagonal(joint), 1))
    row_totals = np.clip(joint.sum(axis=1), _TINY, None)
    # [suggested, given], C-contiguous: cleanlab's joint is sklearn's confusion matrix transposed,
    # so its total is summed in this memory order, and the last bits of the total decide ties.
    scaled_by_suggested = np.ascontiguousarray(joint.T / row_totals * class_counts)
    total = np.clip(np.sum(scaled_by_suggested), _TINY, None)
    scaled = scaled_by_suggested.T / total * int(class_counts.sum())
    rounded = [_round_keeping_total(row) for row in scaled]
    return np.array(rounded).astype(np.int64)


def _check_prune_options(min_examples_per_class: int, frac_noise: float) -> None:
    if (isinstance(min_examples_per_class, bool)
            or not isinstance(min_examples_per_class, (int, np.integer))
            or min_examples_per_class < 0):
        raise ValueError(f"min_examples_per_class must be an int >= 0; "
                         f"got {min_examples_per_class!r}")
    if not 0.0 <= frac_noise <= 1.0:
        raise ValueError(f"frac_noise must be in [0, 1]; got {frac_noise!r}")


def prune_counts(calibrated, class_counts, *, min_examples_per_class: int = 1,
                 frac_noise: float = 1.0) -> np.ndarray:
    """``[C, C]`` int64 ``to_flag``: rows given label ``i`` to flag toward class ``j``.

    ``calibrated`` ``[C, C]``: :func:`calibrate_joint`'s output; ``class_counts`` ``[C]``: rows
    given each class. As cleanlab's ``_keep_at_least_n_per_class`` feeding ``_prune_by_count``:
    each given class's diagonal is raised to ``min_examples_per_class`` and the raise taken
    evenly off that class's non-zero off-diagonal counts (clipped at 0); the off-diagonals are
    multiplied by ``frac_noise`` and truncated to integers. The diagonal is 0, and a class with at
    most ``max(min_examples_per_class, 1)`` rows is not flagged at all (cleanlab skips classes
    with at most ``min_examples_per_class`` rows, and drops the mask of a one-row class).
    """
    joint = _checked_square(calibrated, "calibrated")
    classes = joint.shape[0]
    class_counts = _checked_class_counts(class_counts, classes)
    _check_prune_options(min_examples_per_class, frac_noise)
    # Columns are given labels, rows suggested ones: cleanlab's prune_count_matrix.
    by_suggested = joint.T.astype(np.float64)
    diagonal = np.diagonal(by_suggested)
    raise_by = np.maximum(diagonal, min_examples_per_class) - diagonal
    nonzero_off_diagonal = np.maximum(np.count_nonzero(by_suggested, axis=0) - 1.0, 1.0)
    lowered = np.maximum(by_suggested - raise_by / nonzero_off_diagonal, 0.0)
    to_flag = (lowered * frac_noise).astype(np.int64).T.copy()
    np.fill_diagonal(to_flag, 0)
    to_flag[class_counts <= max(min_examples_per_class, 1)] = 0
    return to_flag


# -- pass 2 (or 3): picking the rows ---------------------------------------------------------------


def _top_rows(margin: np.ndarray, seq: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` entries with the largest ``margin``, ties to the smallest ``seq``."""
    if margin.size <= keep:
        return np.arange(margin.size)
    if keep == 0:
        return np.empty(0, np.int64)
    cut = np.partition(margin, margin.size - keep)[margin.size - keep]
    above = np.flatnonzero(margin > cut)
    tied = np.flatnonzero(margin == cut)
    tied = tied[np.argsort(seq[tied], kind="stable")[: keep - above.size]]
    return np.concatenate([above, tied])


class IssueFlagger:
    """Pass 2 (after the confident joint is summed): the flagged rows, streamed over chunks.

    ``to_flag`` ``[C, C]`` (:func:`prune_counts`): for each pair (given ``i``, suggested ``j``)
    keeps the ``to_flag[i, j]`` rows given ``i`` with the largest margin ``p[j] - p[i]``, ties to
    the earlier row (chunk order, then position). Memory ~ ``sum(to_flag)`` (row number, margin)
    entries plus the records (id and four numbers) of the kept rows that can be flagged; never
    the pool.
    """

    def __init__(self, to_flag: np.ndarray):
        to_flag = _checked_square(to_flag, "to_flag")
        np.fill_diagonal(to_flag, 0)
        classes = to_flag.shape[0]
        self._classes = classes
        self._limit = to_flag                       # [C, C] rows a pair keeps
        self._bar = np.full(to_flag.shape, -np.inf)  # [C, C] margin a new row must beat
        self._seq = [[np.empty(0, np.int64)] * classes for _ in range(classes)]
        self._margin = [[np.empty(0, np.float64)] * classes for _ in range(classes)]
        self._held = 0                              # (pair, row) entries kept
        self._rows_seen = 0
        self._class_rows = np.zeros(classes, np.int64)
        self._id_type: pa.DataType | None = None
        self._records: list[pa.Table] = []
        self._recorded = 0

    # public ------------------------------------------------------------------------------------

    def add(self, ids, gold, probs) -> None:
        """Stream one chunk: ``ids`` ``[n]`` pa.Array, ``gold`` ``[n]``, ``probs`` ``[n, C]``."""
        gold = _checked_gold(gold, self._classes)
        probs = _checked_probs(probs, gold.size, self._classes)
        ids = _checked_ids(ids, gold.size)
        self._add_checked(ids, gold, probs)

    def result(self) -> pa.Table:
        """The flagged rows after cleanlab's final agreement check, one row each.

        Columns: ``id`` (the ids' type: int64 or string), ``given`` int64, ``suggested`` int64
        (argmax of probs), ``self_confidence`` float64 (``p[given]``), ``margin`` float64
        (``p[suggested] - p[given]``, > 0); sorted by ``self_confidence`` ascending, ties by id.
        """
        table = self._live_records().select(list(RESULT_COLUMNS))
        return table.sort_by([("self_confidence", "ascending"), ("id", "ascending")])

    # streaming ---------------------------------------------------------------------------------

    def _add_checked(self, ids: pa.Array, gold: np.ndarray, probs: np.ndarray) -> None:
        self._check_id_type(ids)
        first = self._rows_seen
        self._rows_seen += gold.size
        per_class = np.bincount(gold, minlength=self._classes)
        self._class_rows += per_class
        by_class = np.argsort(gold, kind="stable")
        starts = np.concatenate([[0], np.cumsum(per_class)])
        admitted = np.zeros(gold.size, bool)
        for given in np.flatnonzero(per_class):
            rows = by_class[starts[given]:starts[given + 1]]
            for seq in self._offer_class(given, rows, probs, first):
                admitted[seq - first] = True
        if admitted.any():
            self._record(ids, gold, probs, np.flatnonzero(admitted), first)

    def _offer_class(self, given: int, rows: np.ndarray, probs: np.ndarray,
                     first: int) -> list[np.ndarray]:
        """Offer the chunk's rows given ``given`` (positions ``rows``) to that class's pairs;
        return the row numbers each pair admitted."""
        suggested = np.flatnonzero(self._limit[given])
        if suggested.size == 0:
            return []
        margins = probs[np.ix_(rows, suggested)] - probs[rows, given][:, None]
        # A full pair admits only rows beating its weakest kept one; a tie goes to the earlier.
        beating = margins > self._bar[given, suggested]
        admitted = []
        for column in np.flatnonzero(beating.any(axis=0)):
            chosen = beating[:, column]
            pair = (given, suggested[column])
            margin = np.concatenate([self._margin[given][pair[1]], margins[chosen, column]])
            seq = np.concatenate([self._seq[given][pair[1]], rows[chosen] + first])
            self._keep(pair, margin, seq)
            kept = self._seq[given][pair[1]]
            admitted.append(kept[kept >= first])
        return admitted

    def _keep(self, pair: tuple[int, int], margin: np.ndarray, seq: np.ndarray) -> None:
        """Make the pair's kept rows the best ``limit`` of ``margin``/``seq``; update its bar."""
        i, j = pair
        limit = int(self._limit[i, j])
        chosen = _top_rows(margin, seq, limit)
        self._held += chosen.size - self._seq[i][j].size
        self._margin[i][j], self._seq[i][j] = margin[chosen], seq[chosen]
        full = limit > 0 and chosen.size >= limit
        self._bar[i, j] = self._margin[i][j].min() if full else -np.inf

    def _record(self, ids: pa.Array, gold: np.ndarray, probs: np.ndarray,
                positions: np.ndarray, first: int) -> None:
        """Keep id, given, suggested, self-confidence and margin of the admitted rows that can
        survive the final check (the model disagrees with the given label by more than 1e-6)."""
        given = gold[positions]
        rows = probs[positions]
        bumped = rows.copy()
        bumped[np.arange(positions.size), given] += _FUZZ
        can_flag = bumped.argmax(axis=1) != given
        positions, rows, given = positions[can_flag], rows[can_flag], given[can_flag]
        suggested = rows.argmax(axis=1)
        own = rows[np.arange(positions.size), given]
        self._records.append(pa.table({
            "seq": pa.array(positions + first, pa.int64()),
            "id": ids.take(pa.array(positions, pa.int64())).cast(self._id_type),
            "given": pa.array(given, pa.int64()),
            "suggested": pa.array(suggested, pa.int64()),
            "self_confidence": pa.array(own, pa.float64()),
            "margin": pa.array(rows[np.arange(positions.size), suggested] - own, pa.float64()),
        }))
        self._recorded += positions.size
        if self._recorded > 2 * self._held + 65_536:
            self._records = [self._live_records(with_seq=True)]
            self._recorded = self._records[0].num_rows

    def _check_id_type(self, ids: pa.Array) -> None:
        """Fix the result's id type (int64 or string) on the first chunk; refuse a change."""
        kind = pa.int64() if pa.types.is_integer(ids.type) else pa.string()
        if self._id_type is None:
            self._id_type = kind
        elif kind != self._id_type:
            raise ValueError(f"ids type changed between chunks: {self._id_type} then {ids.type}")

    def _live_records(self, with_seq: bool = False) -> pa.Table:
        """The records of rows some pair keeps now (a row is recorded once)."""
        live = np.unique(np.concatenate([seq for row in self._seq for seq in row]))
        if self._records:
            records = pa.concat_tables(self._records)
        else:
            records = self._empty_records()
        in_use = np.isin(records.column("seq").to_numpy(), live)
        records = records.filter(pa.array(in_use))
        return records if with_seq else records.drop_columns(["seq"])

    def _empty_records(self) -> pa.Table:
        return pa.table({
            "seq": pa.array([], pa.int64()),
            "id": pa.array([], self._id_type or pa.int64()),
            "given": pa.array([], pa.int64()),
            "suggested": pa.array([], pa.int64()),
            "self_confidence": pa.array([], pa.float64()),
            "margin": pa.array([], pa.float64()),
        })


# -- both passes -----------------------------------------------------------------------------------


def _checked_chunks(chunks: Callable[[], Iterable[Chunk]], classes: int) -> Iterable[Chunk]:
    """``chunks()``, each chunk checked and ``gold`` int64, ``probs`` float64."""
    for ids, gold, probs in chunks():
        gold = _checked_gold(gold, classes)
        probs = _checked_probs(probs, gold.size, classes)
        yield _checked_ids(ids, gold.size), gold, probs


def _check_same_rows(rows_per_class: np.ndarray, totals: ClassTotals) -> None:
    if not np.array_equal(rows_per_class, totals.counts):
        raise ValueError("chunks() yielded different rows on a later read: rows per class "
                         f"{rows_per_class.tolist()}, first read {totals.counts.tolist()}")


def flag_rows(chunks: Callable[[], Iterable[Chunk]], totals: ClassTotals, *,
              min_examples_per_class: int = 1, frac_noise: float = 1.0) -> pa.Table:
    """The flagged rows of the pool ``chunks()`` yields, given its :class:`ClassTotals` (pass 1,
    however it was taken: a job sums them per shard while scoring). Reads the chunks twice: the
    confident joint, then an exact :class:`IssueFlagger`. Returns :meth:`IssueFlagger.result`.

    Raises:
        ValueError: a chunk is malformed, or the chunks hold other rows than ``totals`` counts.
    """
    _check_prune_options(min_examples_per_class, frac_noise)
    classes, thresholds = totals.classes, totals.thresholds()
    joint, rows_per_class = np.zeros((classes, classes), np.int64), np.zeros(classes, np.int64)
    for _, gold, probs in _checked_chunks(chunks, classes):
        joint += _joint_of(gold, probs, thresholds)
        rows_per_class += np.bincount(gold, minlength=classes)
    _check_same_rows(rows_per_class, totals)
    flagger = IssueFlagger(prune_counts(calibrate_joint(joint, totals.counts), totals.counts,
                                        min_examples_per_class=min_examples_per_class,
                                        frac_noise=frac_noise))
    for chunk in _checked_chunks(chunks, classes):
        flagger._add_checked(*chunk)
    _check_same_rows(flagger._class_rows, totals)
    return flagger.result()


def find_label_issues(chunks: Callable[[], Iterable[Chunk]], classes: int, *,
                      min_examples_per_class: int = 1, frac_noise: float = 1.0) -> pa.Table:
    """The flagged rows of the pool ``chunks()`` yields, as :meth:`IssueFlagger.result`.

    ``chunks()`` must yield the same ``(ids [n], gold [n], probs [n, C])`` chunks, in the same
    order, each time it is called; it is read three times: :class:`ClassTotals`, then
    :func:`flag_rows`. The result equals cleanlab's ``find_label_issues(labels, pred_probs,
    filter_by="prune_by_noise_rate", min_examples_per_class=..., frac_noise=...)`` on the
    concatenated pool (ties in margin aside, see the module docstring). Memory beyond one chunk:
    the rows flagged.
    """
    totals = ClassTotals.zeros(_checked_classes(classes))
    for _, gold, probs in _checked_chunks(chunks, classes):
        totals._add_checked(gold, probs)
    return flag_rows(chunks, totals, min_examples_per_class=min_examples_per_class,
                     frac_noise=frac_noise)
