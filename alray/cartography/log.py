"""Reading a training log: files per epoch, streamed in batches of rows.

A log is a folder (local or any fsspec URL), or a glob, of per-epoch parquet or JSON-lines files;
a folder holding ``training_dynamics/`` (the layout of the reference implementation of dataset
cartography, Swayamdipta et al. 2020) is read from there. A file's epoch is the last number in
its name (``dynamics_epoch_7.jsonl`` is epoch 7). Several files of one epoch are its parts (one
per training process, ``dynamics_rank1_epoch_7.parquet``), read together. Each row names:

==========  ====================================================================================
id          ``id`` or ``guid`` (integers or strings), unique within an epoch
gold        ``gold`` or ``label``: the given label, an integer class index
values      ``logits`` or ``probs``, or ``logits_epoch_N`` / ``probs_epoch_N`` (N the file's
            epoch): a list of C floats, the model's output for the row in that epoch
==========  ====================================================================================

Any of the three may be named instead (:class:`LogColumns`). Nothing here computes statistics:
:func:`epoch_batches` yields the rows of one file batch by batch, so memory is one batch of
logits at a time whatever the log's size.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from alray.errors import ConfigError
from alray.sources.files import Storage, glob_root, is_glob, open_file, open_parquet, url_to_fs

__all__ = ["EpochFile", "LogBatch", "LogColumns", "carried_columns", "epoch_batches", "find_epochs"]

REFERENCE_FOLDER = "training_dynamics"
_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
_ID_NAMES, _GOLD_NAMES = ("id", "guid"), ("gold", "label")
_JSON_BLOCK = 16 * 2**20  # bytes of JSON lines parsed at a time


@dataclass(frozen=True)
class LogColumns:
    """The columns to read, where they differ from the names above (None: look for those)."""

    id: str | None = None
    gold: str | None = None
    logits: str | None = None
    probs: str | None = None

    def __post_init__(self):
        if self.logits and self.probs:
            raise ConfigError("--probs-column", "give the logits column or the probs column, "
                                                "not both")


@dataclass(frozen=True)
class EpochFile:
    """One file of the log: its epoch, URI and format (``parquet`` or ``jsonl``)."""

    epoch: int
    uri: str
    format: str


@dataclass
class LogBatch:
    """Some rows of one epoch file.

    Attributes:
        ids: ``[n]`` int64 or string Arrow array.
        gold: ``[n]`` int64 given labels.
        values: ``[n, C]`` float32 or float64 logits or probabilities.
        output: ``logits`` or ``probs``.
        first_row: the file row of the batch's first row (for error messages).
    """

    ids: pa.Array
    gold: np.ndarray
    values: np.ndarray
    output: str
    first_row: int

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------------- files


def _epoch_of(name: str) -> int | None:
    numbers = re.findall(r"\d+", name.rsplit(".", 1)[0])
    return int(numbers[-1]) if numbers else None


def _format_of(name: str) -> str | None:
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def find_epochs(uri: str, storage: Storage | None = None) -> list[EpochFile]:
    """The files of the log at ``uri``, by epoch (then by name: an epoch's parts are adjacent).

    Raises:
        ConfigError: (naming ``DYNAMICS``) nothing there, or a file whose name has no epoch
            number.
    """
    fs, path = url_to_fs(uri, storage)
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    if is_glob(path):
        paths = fs.glob(path)
        where = glob_root(uri)
    else:
        if not fs.exists(path):
            raise ConfigError("DYNAMICS", f"{uri!r} does not exist; give the folder of the "
                                          "per-epoch files")
        if fs.isdir(f"{path.rstrip('/')}/{REFERENCE_FOLDER}"):
            path = f"{path.rstrip('/')}/{REFERENCE_FOLDER}"
        paths = fs.ls(path, detail=False) if fs.isdir(path) else [path]
        where = uri
    files: list[EpochFile] = []
    for found in sorted(paths):
        name = found.rsplit("/", 1)[-1]
        kind = _format_of(name)
        if kind is None or name.startswith((".", "_")):
            continue
        epoch = _epoch_of(name)
        if epoch is None:
            raise ConfigError("DYNAMICS", f"{name}: no epoch number in the file name; name each "
                                          "epoch's file with its number (dynamics_epoch_3.jsonl)")
        files.append(EpochFile(epoch, protocol + found if protocol else found, kind))
    if not files:
        raise ConfigError("DYNAMICS", f"no .parquet, .jsonl or .json files under {where!r}; give "
                                      "the folder of the per-epoch files")
    return sorted(files, key=lambda f: (f.epoch, f.uri))


# ----------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class _Resolved:
    id: str
    gold: str
    values: str
    output: str


def _pick(names: list[str], given: str | None, candidates: tuple[str, ...], what: str,
          option: str, file: EpochFile) -> str:
    wanted = (given,) if given else candidates
    for name in wanted:
        if name in names:
            return name
    looked = given or " or ".join(candidates)
    raise ConfigError("DYNAMICS", f"{_name(file)}: no {what} column {looked!r} (it has "
                                  f"{', '.join(names)}); name it with {option}")


def _name(file: EpochFile) -> str:
    return file.uri.rsplit("/", 1)[-1]


def _resolve(names: list[str], columns: LogColumns, file: EpochFile) -> _Resolved:
    id_name = _pick(names, columns.id, _ID_NAMES, "id", "--id-column", file)
    gold = _pick(names, columns.gold, _GOLD_NAMES, "gold label", "--label-column", file)
    if columns.logits or columns.probs:
        output = "logits" if columns.logits else "probs"
        values = _pick(names, columns.logits or columns.probs, (), output,
                       f"--{output}-column", file)
        return _Resolved(id_name, gold, values, output)
    for output in ("logits", "probs"):
        for name in (output, f"{output}_epoch_{file.epoch}"):
            if name in names:
                return _Resolved(id_name, gold, name, output)
    raise ConfigError("DYNAMICS", f"{_name(file)}: no logits or probs column (looked for logits, "
                                  f"logits_epoch_{file.epoch}, probs, probs_epoch_{file.epoch}; "
                                  f"it has {', '.join(names)}); name it with --logits-column or "
                                  "--probs-column")


# ----------------------------------------------------------------------------------- batches


def _values(column: pa.ChunkedArray | pa.Array, file: EpochFile, first_row: int,
            name: str) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        row = first_row + int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError("DYNAMICS", f"{_name(file)}, row {row}: {name} is null")
    t = array.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise ConfigError("DYNAMICS", f"{_name(file)}: column {name!r} is {t}; expected a list of "
                                      "floats per row")
    if pa.types.is_fixed_size_list(t):
        flat, width = array.flatten(), t.list_size
    else:
        lengths = array.value_lengths().to_numpy()
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != width).any():
            bad = int(np.flatnonzero(lengths != width)[0])
            raise ConfigError("DYNAMICS", f"{_name(file)}, row {first_row + bad}: {name} has "
                                          f"{lengths[bad]} values and the row before it {width}; "
                                          "every row of an epoch needs one value per class")
        flat = array.flatten()
    if not pa.types.is_floating(flat.type) and not pa.types.is_integer(flat.type):
        raise ConfigError("DYNAMICS", f"{_name(file)}: column {name!r} holds {flat.type}; "
                                      "expected floats")
    values = flat.to_numpy(zero_copy_only=False)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    return values.reshape(len(array), width)


def _gold(column, file: EpochFile, first_row: int, name: str) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_integer(array.type):
        raise ConfigError("DYNAMICS", f"{_name(file)}: gold label column {name!r} is "
                                      f"{array.type}; expected integer class indices")
    if array.null_count:
        row = first_row + int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError("DYNAMICS", f"{_name(file)}, row {row}: {name} is null")
    return array.to_numpy().astype(np.int64)  # a writable copy (torch reads it)


def _ids(column, file: EpochFile, first_row: int, name: str) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    if not (pa.types.is_integer(array.type) or pa.types.is_string(array.type)):
        raise ConfigError("DYNAMICS", f"{_name(file)}: id column {name!r} is {array.type}; ids "
                                      "must be integers or strings")
    if array.null_count:
        row = first_row + int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError("DYNAMICS", f"{_name(file)}, row {row}: {name} is null")
    return array.cast(pa.int64()) if pa.types.is_integer(array.type) else array


def _row_group_runs(metadata, batch_bytes: int) -> Iterator[list[int]]:
    """Consecutive row groups of about ``batch_bytes`` uncompressed (at least one each)."""
    run, size = [], 0
    for index in range(metadata.num_row_groups):
        run.append(index)
        size += metadata.row_group(index).total_byte_size
        if size >= batch_bytes:
            yield run
            run, size = [], 0
    if run:
        yield run


def _record_batches(file: EpochFile, batch_bytes: int,
                    storage: Storage | None) -> Iterator[pa.RecordBatch]:
    """A parquet file's rows in runs of whole row groups of about ``batch_bytes``, each decoded
    by Arrow's threads; a JSON-lines file's in blocks of 16 MiB of text."""
    if file.format == "parquet":
        with open_parquet(file.uri, storage) as pf:
            for run in _row_group_runs(pf.metadata, batch_bytes):
                yield from pf.read_row_groups(run, use_threads=True).combine_chunks().to_batches()
        return
    with open_file(file.uri, "rb", storage) as f:
        try:
            reader = pajson.open_json(f, read_options=pajson.ReadOptions(block_size=_JSON_BLOCK))
        except pa.ArrowInvalid as exc:
            raise ConfigError("DYNAMICS", f"{_name(file)}: not JSON lines ({exc})") from None
        with contextlib.closing(reader):
            try:
                yield from reader
            except pa.ArrowInvalid as exc:
                raise ConfigError("DYNAMICS", f"{_name(file)}: not JSON lines ({exc})") from None


def epoch_batches(file: EpochFile, columns: LogColumns = LogColumns(),
                  batch_bytes: int = 64 * 2**20,
                  storage: Storage | None = None) -> Iterator[LogBatch]:
    """The rows of ``file``, about ``batch_bytes`` of them (uncompressed) at a time: whole
    parquet row groups, or blocks of 16 MiB of JSON lines.

    Raises:
        ConfigError: (naming ``DYNAMICS``, the file and the row) a column is missing, null or
            of the wrong type, or rows hold different numbers of values.
    """
    first_row, resolved = 0, None
    for batch in _record_batches(file, batch_bytes, storage):
        if resolved is None:
            resolved = _resolve(batch.schema.names, columns, file)
        yield LogBatch(_ids(batch.column(resolved.id), file, first_row, resolved.id),
                       _gold(batch.column(resolved.gold), file, first_row, resolved.gold),
                       _values(batch.column(resolved.values), file, first_row, resolved.values),
                       resolved.output, first_row)
        first_row += batch.num_rows


def carried_columns(file: EpochFile, carry: tuple[str, ...], columns: LogColumns = LogColumns(),
                    storage: Storage | None = None) -> Iterator[pa.Table]:
    """``id`` and the ``carry`` columns of ``file``, batch by batch (ids as the statistics hold
    them).

    Raises:
        ConfigError: (naming ``--carry``) the file lacks a carried column.
    """
    first_row = 0
    for batch in _record_batches(file, 64 * 2**20, storage):
        names = batch.schema.names
        absent = [c for c in carry if c not in names]
        if absent:
            raise ConfigError("--carry", f"{_name(file)} has no column {absent[0]!r} (it has "
                                         f"{', '.join(names)})")
        id_name = _resolve(names, columns, file).id
        ids = _ids(batch.column(id_name), file, first_row, id_name)
        yield pa.table([ids, *(batch.column(c) for c in carry)], names=["id", *carry])
        first_row += batch.num_rows
