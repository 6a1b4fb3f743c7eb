"""Streaming one parquet shard as record batches of ids, a float matrix and carried columns.

The float column (an embedding, or a precomputed model output) becomes a ``[n, D]`` NumPy view of
Arrow's buffer without a Python loop over rows, and without a copy where the column has no nulls.
Row-level problems are reported as masks, shard-level ones raise :class:`ShardError`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.errors import ShardError
from alray.sources.files import Storage, is_local, is_transient, open_parquet
from alray.sources.decode import decode_images, fetch_uri
from alray.sources.plan import ShardSpec
from alray.sources.rows import RowBatch, ShardColumns, check_schema, decode_folds, decode_labels

__all__ = ["decode_values", "read_shard"]


# ----------------------------------------------------------------------------------- decoding


def _fixed_size_matrix(arr: pa.FixedSizeListArray) -> tuple[np.ndarray, np.ndarray]:
    width = arr.type.list_size
    values = arr.values.slice(arr.offset * width, len(arr) * width)
    null_values = values.null_count > 0
    matrix = values.to_numpy(zero_copy_only=False).reshape(len(arr), width)
    null_rows = arr.is_null().to_numpy(zero_copy_only=False)
    if null_values:
        null_rows |= values.is_null().to_numpy(zero_copy_only=False).reshape(len(arr), width).any(1)
    return matrix, null_rows


def _variable_list_matrix(arr: pa.Array, width: int | None) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray, int]:
    lengths = pc.list_value_length(arr)
    null_rows = lengths.is_null().to_numpy(zero_copy_only=False)
    lengths_np = lengths.fill_null(-1).to_numpy()
    if width is None:
        valid = lengths_np[~null_rows]
        width = int(valid[0]) if len(valid) else 0
    wrong = (lengths_np != width) & ~null_rows
    good = ~(wrong | null_rows)
    if good.all():  # one contiguous run of values: a view, no copy
        start = arr.offsets[0].as_py()
        flat = arr.values.slice(start, len(arr) * width)
    else:
        flat = arr.filter(pa.array(good)).flatten()
    values = flat.to_numpy(zero_copy_only=False).reshape(-1, width)
    if flat.null_count > 0:
        null_in_row = flat.is_null().to_numpy(zero_copy_only=False).reshape(-1, width).any(1)
    if good.all():
        matrix = values
        if flat.null_count > 0:
            null_rows = null_rows | null_in_row
    else:
        matrix = np.zeros((len(arr), width), dtype=values.dtype)
        matrix[good] = values
        if flat.null_count > 0:
            null_rows = null_rows.copy()
            null_rows[np.flatnonzero(good)[null_in_row]] = True
    return matrix, null_rows, wrong, width


def decode_values(arr: pa.Array, width: int | None) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                              int]:
    """A list-of-float Arrow column -> (``[n, D]`` matrix, bad-row masks by kind, D)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        matrix, null_rows = _fixed_size_matrix(arr)
        return matrix, {"null_value": null_rows}, arr.type.list_size
    matrix, null_rows, wrong, width = _variable_list_matrix(arr, width)
    return matrix, {"null_value": null_rows, "wrong_length": wrong}, width


def _row_checks(columns: ShardColumns, width: int, null_ids: np.ndarray,
                masks: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    name = columns.value_column
    checks = [("null_value", f"null id in column {columns.id_column!r}", null_ids),
              ("null_value", f"null vector or value in column {name!r}", masks["null_value"])]
    if "wrong_length" in masks:
        checks.append(("wrong_length", f"vector in column {name!r} does not hold {width} values",
                       masks["wrong_length"]))
    return checks


def _decode_image_column(arr: pa.Array, columns: ShardColumns, null_ids: np.ndarray,
                         storage) -> tuple[np.ndarray, list[tuple[str, str, np.ndarray]]]:
    values = arr.to_pylist()  # one Python object per image is inherent to decoding it
    if columns.image_kind == "bytes":
        def fetch(blob):
            if blob is None:
                raise FileNotFoundError("null image bytes")
            return blob
    else:
        fetch = fetch_uri(storage)
    matrix, checks = decode_images(values, fetch, columns.image)
    return matrix, [("null_value", f"null id in column {columns.id_column!r}", null_ids),
                    *checks]


def _ids(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_integer(arr.type) and arr.type != pa.int64():
        arr = arr.cast(pa.int64())
    elif pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    return arr, arr.is_null().to_numpy(zero_copy_only=False)


def _row_values(batch: pa.RecordBatch, columns: ShardColumns,
                bad: list) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The batch's labels and folds (-1 where unusable), where the job reads them; rows without
    a usable one are added to ``bad``."""
    labels = folds = None
    if columns.label_column is not None:
        name = columns.label_column
        labels = decode_labels(batch.column(name), columns.label_names)
        _flag_unusable(batch, name, "label", labels, bad, "bad_label",
                       f"label in column {name!r} is not a class: give a class index >= 0, or "
                       "a name listed in model.classes")
    if columns.fold_column is not None:
        name = columns.fold_column
        folds = decode_folds(batch.column(name), columns.folds)
        _flag_unusable(batch, name, "fold", folds, bad, "bad_fold",
                       f"fold in column {name!r} is not in 0 .. {columns.folds - 1} (one per "
                       "model.members entry)")
    return labels, folds


def _flag_unusable(batch: pa.RecordBatch, name: str, what: str, decoded: np.ndarray, bad: list,
                   kind: str, message: str) -> None:
    """Null values as ``null_value``; other values decoded to -1 as ``kind``."""
    null = batch.column(name).is_null().to_numpy(zero_copy_only=False)
    bad.append(("null_value", f"null {what} in column {name!r}", null))
    bad.append((kind, message, (decoded < 0) & ~null))


# ----------------------------------------------------------------------------------- reading


def read_shard(shard: ShardSpec, columns: ShardColumns, batch_size: int,
               storage: Storage | None = None) -> Iterator[RowBatch]:
    """Stream ``shard`` in batches of at most ``batch_size`` rows.

    Raises:
        ShardError: the file is missing, unreadable, or lacks a well-typed column. Rows with null
            ids, null or wrong-length vectors are flagged in ``RowBatch.bad``, not raised.
    """
    if shard.problem is not None:
        raise shard.problem.error()
    names = [columns.id_column, columns.value_column, *columns.carry, *columns.row_columns]
    width = columns.width
    try:
        with open_parquet(shard.uri, storage) as pf:
            check_schema(pf.schema_arrow, columns)
            first_row = shard.first_row
            batches = pf.iter_batches(batch_size=batch_size, columns=names, use_threads=False,
                                      row_groups=list(shard.row_groups) if shard.row_groups
                                      else None)
            for batch in batches:
                ids, null_ids = _ids(batch.column(0))
                if columns.image_kind:
                    matrix, bad = _decode_image_column(batch.column(1), columns, null_ids,
                                                       storage)
                else:
                    matrix, masks, width = decode_values(batch.column(1), width)
                    bad = _row_checks(columns, width, null_ids, masks)
                carry = (pa.Table.from_batches([batch.select(list(columns.carry))])
                         if columns.carry else None)
                labels, folds = _row_values(batch, columns, bad)
                yield RowBatch(first_row, ids, matrix, bad, carry, labels, folds)
                first_row += batch.num_rows
    except ShardError:
        raise
    except FileNotFoundError as exc:
        raise ShardError("missing_object", f"the file is gone: {exc}") from None
    except (OSError, pa.ArrowException) as exc:
        message = str(exc).strip().replace("\n", " ")
        raise ShardError("unreadable", f"cannot read the file: {message}",
                         transient=is_transient(exc) and not is_local(shard.uri)) from None
