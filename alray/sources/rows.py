"""What a shard must hold, and the batches of rows read from it.

:class:`ShardColumns` names the columns a job reads and :func:`check_schema` checks a file's schema
against them (planning does, from the footer, before any work starts); every reader yields
:class:`RowBatch` es.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.errors import ShardError

if TYPE_CHECKING:
    from alray.config import ImageSpec, JobSpec

__all__ = ["RowBatch", "ShardColumns", "check_schema", "decode_folds", "decode_labels"]


@dataclass(frozen=True)
class ShardColumns:
    """What to read from each shard.

    Attributes:
        id_column: int or string ids.
        value_column: the list-of-float column fed to the model (or holding its output).
        value_key: the spec key that named ``value_column``, for error messages.
        carry: extra columns kept for candidates.
        width: the required list length, where the model fixes it (None: the shard's first row).
        label_column: the given labels (``pool.label_column``): integer class indices, or names
            from ``label_names``; None when the job reads none.
        label_names: ``model.classes``, which string labels must be one of.
        fold_column: each row's cross-validation fold (``pool.fold_column``), an integer in
            ``0 .. folds - 1``; None when the job reads none.
        folds: how many folds there are (the committee's members).
    """

    id_column: str
    value_column: str
    carry: tuple[str, ...] = ()
    width: int | None = None
    value_key: str = "pool.feature_column"
    image: "ImageSpec | None" = None
    image_kind: str | None = None  # "bytes" or "uri" when value_column holds images
    label_column: str | None = None
    label_names: tuple[str, ...] | None = None
    fold_column: str | None = None
    folds: int = 0

    @classmethod
    def of(cls, spec: "JobSpec", width: int | None) -> "ShardColumns":
        """The columns every shard of ``spec``'s parquet pool must hold, ``width`` being the
        model's input width D where it is known."""
        pool = spec.pool
        rows = {"label_column": pool.label_column, "label_names": spec.model.classes,
                "fold_column": pool.fold_column,
                "folds": len(spec.model.members or ()) if pool.fold_column else 0}
        if pool.reads_images:
            kind = "bytes" if pool.image_column else "uri"
            key = "pool.image_column" if pool.image_column else "pool.image_uri_column"
            return cls(pool.id_column, pool.image_source_column or "", pool.carry,
                       value_key=key, image=pool.image, image_kind=kind, **rows)
        if spec.model.kind == "precomputed":
            return cls(pool.id_column, spec.model.column, pool.carry, value_key="model.column",
                       **rows)
        return cls(pool.id_column, pool.feature_column, pool.carry, width=width, **rows)

    @property
    def row_columns(self) -> list[str]:
        """The per-row columns read beside the values: the label, then the fold, where named."""
        return [c for c in (self.label_column, self.fold_column) if c is not None]


@dataclass
class RowBatch:
    """A batch of ``n`` rows of one shard.

    Attributes:
        first_row: index in the file of this batch's first row.
        ids: ``[n]`` int64 or string Arrow array.
        values: ``[n, D]`` float16/32/64 matrix; rows flagged in ``bad`` hold arbitrary values.
        bad: ``(kind, message, [n] bool mask)`` for each check that flags rows not to score.
        carry: the carried columns, ``n`` rows, or None.
        labels: ``[n]`` int64 given labels as class indices (-1 where null or not a class
            name), or None when the job reads none.
        folds: ``[n]`` int64 folds (-1 where null or out of range), or None.
    """

    first_row: int
    ids: pa.Array
    values: np.ndarray
    bad: list[tuple[str, str, np.ndarray]] = field(default_factory=list)
    carry: pa.Table | None = None
    labels: np.ndarray | None = None
    folds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------------- schema


def _field(schema: pa.Schema, name: str, key: str) -> pa.Field:
    index = schema.get_field_index(name)
    if index < 0:
        present = ", ".join(schema.names)
        raise ShardError("missing_column", f"no column {name!r} (from {key}); the file has: "
                                           f"{present}", key=key)
    return schema.field(index)


def _check_id_type(f: pa.Field) -> None:
    t = f.type
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise ShardError("bad_type", f"id column {f.name!r} is {t}; ids must be integers or "
                                     "strings", key="pool.id_column")


def _check_value_type(f: pa.Field, width: int | None, key: str) -> None:
    t = f.type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    if not is_list or not pa.types.is_floating(t.value_type):
        raise ShardError("bad_type", f"column {f.name!r} is {t}; expected a fixed_size_list or "
                                     "list of float16, float32 or float64", key=key)
    if pa.types.is_fixed_size_list(t) and width is not None and t.list_size != width:
        raise ShardError("wrong_length", f"column {f.name!r} holds vectors of {t.list_size} "
                                         f"values; the model takes {width}", key=key)


def _check_image_type(f: pa.Field, kind: str, key: str) -> None:
    t = f.type
    ok = (pa.types.is_binary(t) or pa.types.is_large_binary(t) if kind == "bytes"
          else pa.types.is_string(t) or pa.types.is_large_string(t))
    if not ok:
        expected = "binary (encoded image bytes)" if kind == "bytes" else "string (image URIs)"
        raise ShardError("bad_type", f"column {f.name!r} is {t}; expected {expected}", key=key)


def check_schema(schema: pa.Schema, columns: ShardColumns) -> None:
    """Raise :class:`ShardError` unless the shard has the columns the job needs, well typed."""
    _check_id_type(_field(schema, columns.id_column, "pool.id_column"))
    value = _field(schema, columns.value_column, columns.value_key)
    if columns.image_kind:
        _check_image_type(value, columns.image_kind, columns.value_key)
    else:
        _check_value_type(value, columns.width, columns.value_key)
    for name in columns.carry:
        _field(schema, name, "pool.carry")
    if columns.label_column is not None:
        _check_label_type(_field(schema, columns.label_column, "pool.label_column"),
                          columns.label_names)
    if columns.fold_column is not None:
        f = _field(schema, columns.fold_column, "pool.fold_column")
        if not pa.types.is_integer(f.type):
            raise ShardError("bad_type", f"fold column {f.name!r} is {f.type}; folds are integers "
                                         "0 .. members - 1", key="pool.fold_column")


def _check_label_type(f: pa.Field, names: tuple[str, ...] | None) -> None:
    t = f.type
    if pa.types.is_integer(t):
        return
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        if not names:
            raise ShardError("bad_type", f"label column {f.name!r} holds class names and "
                                         "model.classes is unset; list the class names in "
                                         "model.classes (in the model's output order)",
                             key="pool.label_column")
        return
    raise ShardError("bad_type", f"label column {f.name!r} is {t}; labels are integer class "
                                 "indices or class names", key="pool.label_column")


def decode_labels(arr: pa.Array, names: tuple[str, ...] | None) -> np.ndarray:
    """A label column -> ``[n]`` int64 class indices, -1 where null or not one of ``names``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not pa.types.is_integer(arr.type):
        arr = pc.index_in(arr.cast(pa.string()), value_set=pa.array(list(names or ()), pa.string()))
    return arr.cast(pa.int64()).fill_null(-1).to_numpy()


def decode_folds(arr: pa.Array, folds: int) -> np.ndarray:
    """A fold column -> ``[n]`` int64, -1 where null or outside ``0 .. folds - 1``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    values = arr.cast(pa.int64()).fill_null(-1).to_numpy()
    return np.where((values >= 0) & (values < folds), values, -1)
