"""Training dynamics, row by row: the running statistics of p(gold) over epochs, and the regions.

:class:`GoldDynamics` takes a log one epoch at a time. Each epoch's rows are reduced batch by
batch to four numbers per row (p(gold), whether the argmax is gold, the argmax, the gold label)
with the scoring kernels of :mod:`alray.scoring.labels`, in float64; the epoch's ids are then
matched to the rows already seen with one hash lookup, and each row's mean and sum of squared
deviations are updated in place (Welford's update, so the standard deviation keeps its precision
when it is tiny beside the mean). Memory: 37 bytes per row for the statistics plus one epoch's
reduced rows and one batch of logits, whatever the number of epochs.

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
import torch

from alray.cartography.log import EpochFile, LogBatch
from alray.errors import ConfigError
from alray.scoring.labels import gold_probabilities
from alray.scoring.uncertainty import log_probs_from_logits, log_probs_from_probs
from alray.scoring.validity import PROB_SUM_TOLERANCE, invalid_rows

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


def reduce_batch(batch: LogBatch, file: EpochFile) -> EpochRows:
    """A batch of logits or probabilities ``[n, C]`` -> its :class:`EpochRows`, in float64.

    Raises:
        ConfigError: (naming the file, row and id) a value is NaN or Inf, probabilities do not
            sum to 1, or a gold label is not a class of the ``C`` the row has values for.
    """
    values = torch.from_numpy(np.array(batch.values, dtype=np.float64))  # a writable copy
    classes = values.shape[1]
    non_finite, bad_probs = invalid_rows(values, batch.output)
    for mask, cause in ((non_finite, "holds NaN or Inf"),
                        (bad_probs, f"probabilities are negative or do not sum to 1 within "
                                    f"{PROB_SUM_TOLERANCE:g}")):
        if mask.any():
            raise ConfigError("DYNAMICS", f"{_where(file, batch, int(mask.nonzero()[0, 0]))}: "
                                          f"the model's output {cause}")
    out_of_range = (batch.gold < 0) | (batch.gold >= classes)
    if out_of_range.any():
        first = int(np.flatnonzero(out_of_range)[0])
        raise ConfigError("DYNAMICS", f"{_where(file, batch, first)}: gold label "
                                      f"{batch.gold[first]} is not a class of the {classes} the "
                                      f"row has values for (0..{classes - 1})")
    to_log_probs = log_probs_from_logits if batch.output == "logits" else log_probs_from_probs
    log_probs = to_log_probs(values)
    gold = torch.from_numpy(batch.gold)
    predicted = log_probs.argmax(dim=1)
    return EpochRows(batch.ids, batch.gold,
                     gold_probabilities(log_probs[..., None], gold)[:, 0].numpy(),
                     (predicted == gold).numpy(), predicted.to(torch.int32).numpy())


def _duplicate(ids: pa.Array) -> object | None:
    """An id that appears more than once in ``ids`` (None if none does)."""
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return repeated.field("values")[0].as_py() if len(repeated) else None


class GoldDynamics:
    """Running per-row statistics of p(gold) over the epochs of a log, keyed by id.

    Attributes:
        ids: every id seen, in the order first seen (None before the first epoch).
        classes: C, the number of values per row (the same in every epoch).
        epochs: the epochs taken, in order.
    """

    def __init__(self):
        self.ids: pa.Array | None = None
        self.classes: int | None = None
        self.epochs: list[int] = []
        self._count = np.zeros(0, np.int32)
        self._mean = np.zeros(0, np.float64)
        self._m2 = np.zeros(0, np.float64)
        self._correct = np.zeros(0, np.int32)
        self._gold = np.zeros(0, np.int64)
        self._predicted = np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self._count)

    def add_epoch(self, file: EpochFile, batches: Iterable[LogBatch]) -> int:
        """Take one epoch's rows; returns how many there were.

        Raises:
            ConfigError: (naming the file) an id twice in the epoch, a row's gold label that
                differs from an earlier epoch's, or a different number of classes.
        """
        parts = []
        for batch in batches:
            self._check_classes(batch, file)
            parts.append(reduce_batch(batch, file))
        if not parts:
            self.epochs.append(file.epoch)
            return 0
        rows = EpochRows.concat(parts)
        if self.ids is not None and len(self.ids) and self.ids.type != rows.ids.type:
            raise ConfigError("DYNAMICS", f"{_file(file)}: ids are {rows.ids.type}, earlier "
                                          f"epochs' are {self.ids.type}; log one id type")
        positions = self._positions(rows.ids, file)
        self._check_gold(positions, rows, file)
        self._update(positions, rows)
        self.epochs.append(file.epoch)
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
        if self.ids is not None and len(self.ids) == len(ids) and self.ids.equals(ids):
            return np.arange(len(ids))  # the same rows in the same order: no lookup needed
        known = self.ids if self.ids is not None else pa.array([], ids.type)
        found = pc.index_in(ids, value_set=known)
        new = found.is_null()
        positions = found.fill_null(-1).to_numpy().astype(np.int64)
        fresh = new.to_numpy(zero_copy_only=False)
        if fresh.any():
            added = ids.filter(new)
            positions[fresh] = len(known) + np.arange(len(added))
            self.ids = pa.concat_arrays([known, added]) if len(known) else added
            self._grow(len(added))
        if np.bincount(positions, minlength=len(self.ids)).max(initial=0) > 1:
            raise ConfigError("DYNAMICS", f"{_file(file)}: id {_duplicate(ids)!r} appears more "
                                          "than once in the epoch; log each row once per epoch")
        return positions

    def _grow(self, n: int) -> None:
        for name in ("_count", "_mean", "_m2", "_correct", "_gold", "_predicted"):
            current = getattr(self, name)
            setattr(self, name, np.concatenate([current, np.zeros(n, current.dtype)]))

    def _check_gold(self, positions: np.ndarray, rows: EpochRows, file: EpochFile) -> None:
        seen = self._count[positions] > 0
        differs = seen & (self._gold[positions] != rows.gold)
        if differs.any():
            i = int(np.flatnonzero(differs)[0])
            raise ConfigError("DYNAMICS", f"{_file(file)}: id {rows.ids[i].as_py()!r} has gold "
                                          f"label {rows.gold[i]} here and "
                                          f"{self._gold[positions[i]]} in an earlier epoch; a "
                                          "row's given label must not change between epochs")

    def _update(self, positions: np.ndarray, rows: EpochRows) -> None:
        count = self._count[positions] + 1
        mean = self._mean[positions]
        delta = rows.p_gold - mean
        mean = mean + delta / count
        self._m2[positions] += delta * (rows.p_gold - mean)
        self._mean[positions] = mean
        self._count[positions] = count
        self._correct[positions] += rows.correct
        self._gold[positions] = rows.gold
        self._predicted[positions] = rows.predicted

    def statistics(self) -> pa.Table:
        """One row per id seen: ``id``, ``gold``, ``gold_confidence``, ``gold_variability``
        (ddof 0), ``gold_correctness``, ``epochs`` (how many the row appears in) and
        ``predicted`` (its argmax in the last epoch it appears in), in the order first seen."""
        count = np.maximum(self._count, 1)
        return pa.table({
            "id": self.ids if self.ids is not None else pa.array([], pa.int64()),
            "gold": self._gold,
            "gold_confidence": self._mean,
            "gold_variability": np.sqrt(np.maximum(self._m2, 0.0) / count),
            "gold_correctness": self._correct / count,
            "epochs": self._count,
            "predicted": self._predicted,
        })


def _file(file: EpochFile) -> str:
    return file.uri.rsplit("/", 1)[-1]


def _share_rows(share: float, n: int) -> int:
    return min(n, int(share * n + 0.5))


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
    by_confidence = np.argsort(confidence, kind="stable")
    hardest = by_confidence[:_share_rows(hard, n)]
    region[hardest] = REGIONS.index("hard_to_learn")
    rest = by_confidence[len(hardest):]
    most_variable = rest[np.lexsort((rest, -variability[rest]))]  # ties: the row seen first
    region[most_variable[:_share_rows(ambiguous, n)]] = REGIONS.index("ambiguous")
    return region
