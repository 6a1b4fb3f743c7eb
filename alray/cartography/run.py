"""``alray cartography``: a training log in, the data map and the rows to relabel out.

::

    OUT/
      statistics.parquet   per row: id, gold, gold_confidence, gold_variability,
                           gold_correctness, region, epochs, predicted
      data_map.png         variability against confidence, coloured by correctness
      selection.parquet    the hard-to-learn rows, lowest confidence first (what `alray export`
                           sends for relabeling)
      job.json             what was read and found, in the form `alray export` and
                           `alray report` read

The log is read once, epoch by epoch and batch by batch (:mod:`alray.cartography.log`); the
statistics are :class:`~alray.cartography.dynamics.GoldDynamics`'. Carried columns (the text or
image URI an annotator needs) are read afterwards, for the selected rows only, from the latest
epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.cartography.dynamics import REGIONS, GoldDynamics, regions
from alray.cartography.log import EpochFile, LogColumns, carried_columns, epoch_batches, find_epochs
from alray.errors import ConfigError
from alray.job.state import now
from alray.output.folder import OutputFolder
from alray.output.records import write_job_json
from alray.report.plots import plot_data_map
from alray.sources.files import Storage, access_refusals, parquet_bytes
from alray.sources.prefetch import prefetch

__all__ = ["CartographyResult", "cartography"]


@dataclass(frozen=True)
class CartographyResult:
    """What :func:`cartography` wrote and found.

    Attributes:
        statistics: ``statistics.parquet`` as a table (one row per training row).
        selection: ``selection.parquet`` as a table: the hard-to-learn rows, lowest confidence
            first.
        counts: ``rows``, ``epochs``, ``classes`` and the rows of each region.
        paths: URIs of ``statistics``, ``data_map``, ``selection`` and ``job``.
    """

    statistics: pa.Table
    selection: pa.Table
    counts: dict
    paths: dict = field(default_factory=dict)


def _log_batches(files: list[EpochFile], columns: LogColumns, storage: Storage | None):
    """``(file, batch)`` over every epoch in order (an epoch's parts one after the other),
    ``(file, None)`` where an epoch ends."""
    for at, file in enumerate(files):
        for batch in epoch_batches(file, columns, storage=storage):
            yield file, batch
        if at + 1 == len(files) or files[at + 1].epoch != file.epoch:
            yield file, None


def _read_log(files: list[EpochFile], columns: LogColumns, storage: Storage | None,
              say) -> GoldDynamics:
    """The log's statistics; the next batch is read (Arrow, in a thread) while this one is
    reduced (NumPy), across epochs."""
    dynamics = GoldDynamics()
    started = time.perf_counter()
    for file, batch in prefetch(_log_batches(files, columns, storage), depth=2):
        if batch is not None:
            dynamics.take(file, batch)
            continue
        rows = dynamics.end_epoch(file)
        say(f"epoch {file.epoch}: {rows:,} rows in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
    if not len(dynamics):
        raise ConfigError("DYNAMICS", "the log holds no rows")
    return dynamics


def _carried(files: list[EpochFile], ids: pa.Array, carry: tuple[str, ...],
             columns: LogColumns, storage: Storage | None) -> pa.Table | None:
    """``id`` and the ``carry`` columns of ``ids``, from the latest epoch that logged each."""
    if not carry or not len(ids):
        return None
    found, missing = [], ids
    for file in reversed(files):
        for table in carried_columns(file, carry, columns, storage):
            keep = pc.is_in(table.column(0), value_set=missing)
            if pc.any(keep).as_py():
                found.append(table.filter(keep))
        if found:
            seen = pa.concat_tables(found).column("id")
            missing = ids.filter(pc.invert(pc.is_in(ids, value_set=seen)))
        if not len(missing):
            break
    return pa.concat_tables(found) if found else None


def _selection(statistics: pa.Table, hard_rows: np.ndarray, k: int | None, uri: str,
               carried: pa.Table | None, carry: tuple[str, ...]) -> pa.Table:
    confidence = statistics.column("gold_confidence").to_numpy()
    order = hard_rows[np.argsort(confidence[hard_rows], kind="stable")][:k]
    rows = statistics.take(pa.array(order))
    table = pa.table({
        "rank": pa.array(np.arange(len(order)), pa.int64()),
        "id": rows.column("id"),
        "score": pa.array(1.0 - rows.column("gold_confidence").to_numpy(), pa.float32()),
        "shard": pa.nulls(len(order), pa.string()),
        "uri": pa.repeat(pa.scalar(uri, pa.string()), len(order)),
        "predicted": rows.column("predicted"),
        "reason": pa.repeat(pa.scalar("hard_to_learn", pa.string()), len(order)),
        "gold": rows.column("gold"),
    })
    if carried is None:
        return table
    joined = table.join(carried, "id", join_type="left outer")
    return joined.sort_by("rank").select([*table.column_names, *carry])


def _job_record(name: str, dynamics_uri: str, started: str, seconds: float, counts: dict,
                shares: dict, classes: tuple[str, ...] | None, carry: tuple[str, ...]) -> dict:
    """job.json: the parts of a job's record that `alray export`, `import-labels` and `report`
    read (a spec with the pool's carried columns, the classes, the strategy), and the figures."""
    return {
        "name": name, "kind": "cartography", "status": "succeeded", "started": started,
        "finished": now(), "seconds": round(seconds, 3), "counts": counts, "shares": shares,
        "spec": {"pool": {"uri": [dynamics_uri], "format": "training_log",
                          "carry": ["gold", *carry]},
                 "model": {"task": "classification",
                           "classes": list(classes) if classes else None},
                 "scoring": {"strategy": "label_issue"}},
    }


def cartography(dynamics: str, out: str, *, hard: float = 0.33, ambiguous: float = 0.33,
                k: int | None = None, columns: LogColumns = LogColumns(),
                carry: tuple[str, ...] = (), classes: tuple[str, ...] | None = None,
                storage: Storage | None = None, progress=None) -> CartographyResult:
    """Read a training log and write its statistics, its data map and the rows to relabel.

    Args:
        dynamics: the log: a folder (or glob, or fsspec URL) of per-epoch files
            (:mod:`alray.cartography.log`).
        out: the output folder, a local path or any fsspec URL.
        hard: share of rows that are ``hard_to_learn`` (lowest gold_confidence).
        ambiguous: share of rows that are ``ambiguous`` (highest gold_variability of the rest).
        k: send at most this many of the hard-to-learn rows (None: all of them).
        columns: the log's column names, where they are not the usual ones.
        carry: log columns to carry into the selection (what an annotator needs to see).
        classes: class names by index (for exports); None keeps indices.
        storage: fsspec options by protocol.
        progress: a callable taking one line per epoch read (None: quiet).

    Raises:
        ConfigError: (naming ``DYNAMICS``, the file, row and id) the log cannot be read or is
            inconsistent; a share or ``k`` is out of range.
    """
    if k is not None and k < 1:
        raise ConfigError("--k", f"got {k}; send at least 1 row, or leave --k out for every "
                                 "hard-to-learn row")
    regions(np.zeros(0), np.zeros(0), hard, ambiguous)  # check the shares before reading
    say = progress or (lambda line: None)
    started, clock = now(), time.perf_counter()
    with access_refusals("DYNAMICS", dynamics):
        files = find_epochs(dynamics, storage)
        state = _read_log(files, columns, storage, say)
        if classes is not None and len(classes) != state.classes:
            raise ConfigError("--classes", f"names {len(classes)} classes; the log has "
                                           f"{state.classes} values per row")
        statistics = state.statistics()
        region = regions(statistics.column("gold_confidence").to_numpy(),
                         statistics.column("gold_variability").to_numpy(), hard, ambiguous)
        names = pa.DictionaryArray.from_arrays(pa.array(region), pa.array(REGIONS))
        statistics = statistics.add_column(5, "region", names.cast(pa.string()))
        hard_rows = np.flatnonzero(region == REGIONS.index("hard_to_learn"))
        carried = _carried(files, statistics.column("id").combine_chunks().take(
            pa.array(hard_rows)), carry, columns, storage)
    selection = _selection(statistics, hard_rows, k, dynamics, carried, carry)
    counts = {"rows": statistics.num_rows, "epochs": len(state.epochs), "classes": state.classes,
              **{name: int((region == i).sum()) for i, name in enumerate(REGIONS)},
              "selected": selection.num_rows}
    folder = OutputFolder(out, storage or {})
    with access_refusals("--out", out):
        folder.remove(*folder.SUMMARIES, folder.STATISTICS, folder.DATA_MAP)
        paths = {"statistics": folder.write(folder.path(folder.STATISTICS),
                                            parquet_bytes(statistics))}
        paths["data_map"] = folder.path(folder.DATA_MAP)
        plot_data_map(statistics, paths["data_map"], title="data map", storage=storage)
        paths["selection"] = folder.write(folder.path(folder.SELECTION), parquet_bytes(selection))
        record = _job_record(folder.uri.rstrip("/").rsplit("/", 1)[-1] or "cartography",
                             dynamics, started, time.perf_counter() - clock, counts,
                             {"hard": hard, "ambiguous": ambiguous}, classes, carry)
        paths["job"] = write_job_json(folder, record)
    return CartographyResult(statistics, selection, counts, paths)
