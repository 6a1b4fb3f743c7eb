"""The simulation's data: a labeled dataset, its per-repeat split, and the pool files a job reads.

A dataset is one of scikit-learn's (loaded lazily: scikit-learn is in the ``demo`` extra) or a
parquet file, folder or fsspec URI with an id, a feature and a label column. Each repeat splits it
by its own seed: a stratified test split (held out, never in the pool), a random initial labeled
set from the rest, and features standardized with the train split's mean and standard deviation
(the pool's rows are known, only their labels are not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alray.errors import ConfigError
from alray.simulation.jobs import POOL_FEATURES, POOL_ID
from alray.simulation.spec import SimSpec

__all__ = ["Dataset", "Split", "check_rows", "load_dataset", "split_dataset", "write_pool",
           "write_split"]


@dataclass(frozen=True)
class Dataset:
    """A labeled dataset.

    Attributes:
        x: ``[N, D]`` float32 features, as given.
        y: ``[N]`` int64 class index in ``0..C-1``.
        ids: ``[N]`` unique ids (int64 or string), the pool's id column.
        classes: ``C`` class names (``y`` indexes them); what the ledger records as labels.
    """

    x: np.ndarray
    y: np.ndarray
    ids: pa.Array
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Split:
    """One repeat's split of a :class:`Dataset`; indices are rows of the dataset.

    Attributes:
        train: ``[n_train]`` sorted indices: the pool (labeled and not).
        test: ``[n_test]`` sorted indices: accuracy is measured here, never selectable.
        initial: ``[initial]`` sorted indices into the dataset, a subset of ``train``.
        x: ``[N, D]`` float32 features standardized with ``train``'s mean and std.
    """

    train: np.ndarray
    test: np.ndarray
    initial: np.ndarray
    x: np.ndarray


# ----------------------------------------------------------------------------------- loading


def _sklearn(name: str) -> Dataset:
    try:
        from sklearn import datasets
    except ImportError:
        raise ConfigError("dataset", f"got {name!r}, one of scikit-learn's datasets, and "
                                     "scikit-learn is not installed; pip install 'alray[demo]'"
                          ) from None
    bunch = getattr(datasets, f"load_{name}")()
    names = tuple(str(n) for n in bunch.target_names)
    ids = pa.array(np.arange(len(bunch.target), dtype=np.int64))
    return Dataset(np.asarray(bunch.data, np.float32), np.asarray(bunch.target, np.int64), ids,
                   names)


def _column(table: pa.Table, name: str, key: str, uri: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ConfigError(key, f"no column {name!r} in {uri}; it has: "
                               f"{', '.join(table.column_names)}")
    column = table.column(name)
    if column.null_count:
        raise ConfigError(key, f"column {name!r} of {uri} has {column.null_count} null values; "
                               "every row needs one")
    return column


def _features(column: pa.ChunkedArray, name: str, uri: str) -> np.ndarray:
    """A fixed_size_list or list column of floats -> ``[N, D]`` float32."""
    array = column.combine_chunks()
    if not (pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type)
            or pa.types.is_large_list(array.type)) \
            or not pa.types.is_floating(array.type.value_type):
        raise ConfigError("feature_column", f"column {name!r} of {uri} is {array.type}; expected "
                                            "fixed_size_list<float> or list<float>")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise ConfigError("feature_column", f"column {name!r} of {uri} holds vectors of "
                                            f"{lengths.min()} to {lengths.max()} values; every "
                                            "row needs the same number, at least 1")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    x = values.reshape(len(array), -1)
    if not np.isfinite(x).all():
        raise ConfigError("feature_column", f"column {name!r} of {uri} holds NaN or Inf")
    return x


def _parquet(spec: SimSpec) -> Dataset:
    from alray.sources.files import url_to_fs

    uri = spec.dataset
    columns = [spec.id_column, spec.feature_column, spec.label_column]
    try:
        fs, path = url_to_fs(uri)
        table = pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError("dataset", f"cannot read parquet at {uri} ({exc}); give a parquet "
                                     "file, folder or URI") from None
    ids = _column(table, columns[0], "id_column", uri).combine_chunks()
    if not (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type)):
        raise ConfigError("id_column", f"column {columns[0]!r} of {uri} is {ids.type}; ids are "
                                       "integers or strings")
    if len(pc.unique(ids)) != len(ids):
        raise ConfigError("id_column", f"column {columns[0]!r} of {uri} repeats ids; each row "
                                       "needs its own")
    x = _features(_column(table, columns[1], "feature_column", uri), columns[1], uri)
    labels = _column(table, columns[2], "label_column", uri).to_numpy(zero_copy_only=False)
    values, y = np.unique(labels, return_inverse=True)
    ids = ids.cast(pa.int64()) if pa.types.is_integer(ids.type) else ids
    return Dataset(x, y.astype(np.int64), ids, tuple(str(v) for v in values))


def load_dataset(spec: SimSpec) -> Dataset:
    """The spec's dataset, checked: at least two classes.

    Raises:
        ConfigError: (naming ``dataset`` or the column's key) it cannot be read or used.
    """
    dataset = _parquet(spec) if spec.is_parquet else _sklearn(spec.dataset)
    if len(dataset.classes) < 2:
        raise ConfigError("label_column" if spec.is_parquet else "dataset",
                          f"the dataset has {len(dataset.classes)} class; a classifier needs 2 "
                          "or more")
    return dataset


# ----------------------------------------------------------------------------------- splits


def split_dataset(dataset: Dataset, test_fraction: float, initial: int, seed: int) -> Split:
    """Stratified test split, initial labeled rows and standardized features, all by ``seed``.

    Each class gives ``round(test_fraction * its rows)`` rows to the test split.
    """
    rng = np.random.default_rng([seed, 0])
    test = []
    for c in range(len(dataset.classes)):
        rows = np.flatnonzero(dataset.y == c)
        test.append(rng.permutation(rows)[: round(test_fraction * len(rows))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(dataset)), test)
    draw = min(initial, len(train))  # check_rows reports a spec that asks for more
    first = np.sort(np.random.default_rng([seed, 1]).choice(train, draw, replace=False))
    mean = dataset.x[train].mean(axis=0)
    std = dataset.x[train].std(axis=0)
    std[std == 0] = 1.0  # a constant feature (digits' corner pixels) stays 0
    x = ((dataset.x - mean) / std).astype(np.float32)
    return Split(train, test, first, x)


def check_rows(spec: SimSpec, dataset: Dataset, split: Split) -> None:
    """Enough train rows for every round, and a test split to measure on."""
    if len(split.test) == 0:
        raise ConfigError("test_fraction", f"got {spec.test_fraction}; it leaves no test rows "
                                           f"of {len(dataset):,}: raise it")
    if spec.labels_needed > len(split.train):
        raise ConfigError("rounds", f"initial + rounds x batch = {spec.initial} + {spec.rounds} x "
                                    f"{spec.batch} = {spec.labels_needed} labels, and the train "
                                    f"split has {len(split.train):,} rows: lower rounds, batch "
                                    "or initial, or test_fraction")


# ----------------------------------------------------------------------------------- files


def write_pool(folder: Path, dataset: Dataset, split: Split, shards: int) -> None:
    """The train split as ``shards`` parquet files: ``id``, ``features``
    (fixed_size_list<float32>[D], standardized)."""
    folder.mkdir(parents=True, exist_ok=True)
    width = split.x.shape[1]
    for i, part in enumerate(np.array_split(split.train, min(shards, len(split.train)))):
        features = pa.FixedSizeListArray.from_arrays(pa.array(split.x[part].ravel()), width)
        table = pa.table({POOL_ID: dataset.ids.take(pa.array(part)), POOL_FEATURES: features})
        pq.write_table(table, folder / f"part-{i:03d}.parquet")


def write_split(path: Path, dataset: Dataset, split: Split) -> None:
    """``id``, ``label`` (class name), ``split`` (train | test), ``initial`` (bool), per row."""
    rows = np.concatenate([split.train, split.test])
    names = np.asarray(dataset.classes, dtype=object)[dataset.y[rows]]
    table = pa.table({
        "id": dataset.ids.take(pa.array(rows)),
        "label": pa.array(names.tolist(), pa.string()),
        "split": pa.array(["train"] * len(split.train) + ["test"] * len(split.test)),
        "initial": pa.array(np.isin(rows, split.initial)),
    })
    pq.write_table(table.sort_by("id"), path)
