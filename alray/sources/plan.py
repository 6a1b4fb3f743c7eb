"""Planning: list the pool's files and cut them into shards, reading only listings and footers.

A shard is the unit of work, retry and resume: a whole file, or a run of consecutive row groups of
a file with more than ``pool.shard_rows`` rows. Plans are small frozen objects that travel to the
actors; each actor opens the file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import pyarrow as pa

from alray.errors import ConfigError, ShardError
from alray.sources.files import (Storage, access_refusals, glob_root, is_glob, is_local,
                                 is_transient, open_parquet, retry_transient, url_to_fs)
from alray.sources.rows import ShardColumns, check_schema

__all__ = ["PoolFile", "Problem", "ShardSpec", "list_pool_files", "plan_shards", "shard_id"]

_FOOTER_THREADS = 16


@dataclass(frozen=True)
class PoolFile:
    """One listed file: its full URI, size in bytes and modification time or ETag (as text)."""

    uri: str
    size: int | None
    version: str | None


@dataclass(frozen=True)
class Problem:
    """What planning found wrong with a shard: an ``errors.jsonl`` kind, the message, and the
    spec key it is about where there is one (a problem every shard shares is that key's error)."""

    kind: str
    message: str
    key: str | None = None

    @classmethod
    def of(cls, error: ShardError) -> "Problem":
        return cls(error.kind, str(error), error.key)

    def error(self) -> ShardError:
        return ShardError(self.kind, self.message, key=self.key)


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work.

    Attributes:
        shard_id: ``<stem>-<sha1(uri)[:8]>`` plus ``-rg<first>-<last>`` for part of a file.
        uri: the file's full URI (``file:///...``, ``s3://...``).
        row_groups: the row groups to read, or None for the whole file.
        first_row: index in the file of the shard's first row.
        num_rows: rows the footer promises, or None where the footer could not be read.
        size, version: the file's size and modification time or ETag when planned.
        problem: what planning already found wrong with the shard, or None.
        members: for a shard of an image folder, the image keys under ``uri`` (the row ids).
    """

    shard_id: str
    uri: str
    row_groups: tuple[int, ...] | None
    first_row: int
    num_rows: int | None
    size: int | None
    version: str | None
    problem: Problem | None = None
    members: tuple[str, ...] | None = None

    @property
    def where(self) -> str:
        """How error messages name this shard."""
        return f"shard {self.shard_id} ({self.uri})"


def shard_id(uri: str, row_groups: tuple[int, int] | None = None) -> str:
    """Stable, unique shard id: the file stem, 8 hex of sha1(uri), and the row-group range."""
    stem = posixpath.basename(uri.rstrip("/")).split(".")[0] or "shard"
    digest = hashlib.sha1(uri.encode()).hexdigest()[:8]
    suffix = f"-rg{row_groups[0]}-{row_groups[1]}" if row_groups else ""
    return f"{stem}-{digest}{suffix}"


# ----------------------------------------------------------------------------------- listing


def is_hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def _version(info: dict) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def _pool_file(fs, path: str, info: dict) -> PoolFile:
    return PoolFile(uri=fs.unstrip_protocol(path), size=info.get("size"), version=_version(info))


def _list_one(uri: str, suffix: str, storage: Storage) -> list[PoolFile]:
    with access_refusals("pool.uri", uri):
        return _list_files(uri, suffix, storage)


def _list_files(uri: str, suffix: str, storage: Storage) -> list[PoolFile]:
    fs, path = url_to_fs(uri, storage)
    fs.invalidate_cache()  # object-store listings are cached per process; plan from fresh ones
    if is_glob(path):
        found = fs.glob(path, detail=True)
        root = glob_root(path)
    elif fs.isdir(path):
        found = fs.find(path, detail=True)
        root = path
    elif fs.exists(path):
        return [_pool_file(fs, path, fs.info(path))]
    else:
        raise ConfigError("pool.uri", f"nothing at {uri!r}; give a folder, a glob or a file")
    files = []
    for file_path, info in sorted(found.items()):
        relative = file_path[len(root):].lstrip("/")
        if info.get("type") == "file" and file_path.endswith(suffix) and not is_hidden(relative):
            files.append(_pool_file(fs, file_path, info))
    return files


def list_pool_files(uris: Sequence[str], suffix: str = ".parquet",
                    storage: Storage | None = None) -> list[PoolFile]:
    """Every pool file under ``uris`` (folders recursively, globs, single files), sorted, unique.

    Raises:
        ConfigError: a URI matches nothing, or no file with ``suffix`` is found at all.
    """
    seen: dict[str, PoolFile] = {}
    for uri in uris:
        for f in _list_one(uri, suffix, storage or {}):
            seen.setdefault(f.uri, f)
    if not seen:
        raise ConfigError("pool.uri", f"no {suffix} files under {', '.join(uris)}; "
                                      "check the path (names starting with _ or . are ignored)")
    return sorted(seen.values(), key=lambda f: f.uri)


# ----------------------------------------------------------------------------------- shards


def _row_group_runs(rows_per_group: Sequence[int], shard_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive runs ``(first, last)`` of row groups holding at most ``shard_rows`` rows each
    (a single larger row group forms a run of its own)."""
    first, total = 0, 0
    for i, rows in enumerate(rows_per_group):
        if i > first and total + rows > shard_rows:
            yield first, i - 1
            first, total = i, 0
        total += rows
    if rows_per_group:
        yield first, len(rows_per_group) - 1


class _FooterLater(Exception):
    """A footer read failed for a reason that may pass, after retries: the actor reads it."""


def _read_footer(file: PoolFile, storage: Storage):
    """``(metadata, schema)`` of a parquet file, or raises :class:`ShardError` (a bad file) or
    :class:`_FooterLater` (a store that keeps failing transiently)."""
    if file.size == 0:
        raise ShardError("unreadable", "zero-byte file; it is not parquet", key="pool.uri")

    def read():
        with open_parquet(file.uri, storage) as pf:
            return pf.metadata, pf.schema_arrow

    try:
        return retry_transient(read)
    except Exception as exc:  # any other failure to read a footer makes this one shard bad
        if is_transient(exc) and not is_local(file.uri):
            raise _FooterLater from exc
        if isinstance(exc, FileNotFoundError):
            raise ShardError("missing_object", f"the file is gone: {_one_line(exc)}") from None
        raise ShardError("unreadable", f"not a readable parquet file ({_one_line(exc)})",
                         key="pool.uri") from None


def _shards_of(file: PoolFile, shard_rows: int, storage: Storage,
               columns: ShardColumns | None) -> tuple[list[ShardSpec], pa.Schema | None]:
    whole = dict(uri=file.uri, size=file.size, version=file.version)
    try:
        meta, schema = _read_footer(file, storage)
    except _FooterLater:  # one shard, checked when an actor reads it (with retries of its own)
        return [ShardSpec(shard_id(file.uri), row_groups=None, first_row=0, num_rows=None,
                          **whole)], None
    except ShardError as exc:
        return [ShardSpec(shard_id(file.uri), row_groups=None, first_row=0,
                          num_rows=0 if file.size == 0 else None, problem=Problem.of(exc),
                          **whole)], None
    problem = _schema_problem(schema, columns)
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if meta.num_rows <= shard_rows or len(rows) <= 1:
        return [ShardSpec(shard_id(file.uri), row_groups=None, first_row=0,
                          num_rows=meta.num_rows, problem=problem, **whole)], schema
    shards = []
    for first, last in _row_group_runs(rows, shard_rows):
        shards.append(ShardSpec(shard_id(file.uri, (first, last)),
                                row_groups=tuple(range(first, last + 1)),
                                first_row=sum(rows[:first]),
                                num_rows=sum(rows[first:last + 1]), problem=problem, **whole))
    return shards, schema


def _schema_problem(schema: pa.Schema, columns: ShardColumns | None) -> Problem | None:
    """What the footer already shows is wrong for the job's columns (None: nothing)."""
    if columns is None:
        return None
    try:
        check_schema(schema, columns)
    except ShardError as exc:
        return Problem.of(exc)
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _id_family(t: pa.DataType) -> str:
    return "integer" if pa.types.is_integer(t) else str(t).replace("large_", "")


def _mismatch(schema: pa.Schema, reference: pa.Schema, id_column: str) -> str | None:
    """Ids from every shard meet in one reducer, so their types must agree (int widths may
    differ); every other column is checked shard by shard when it is read."""
    i, j = schema.get_field_index(id_column), reference.get_field_index(id_column)
    if i < 0 or j < 0:
        return None
    here, first = schema.field(i).type, reference.field(j).type
    if _id_family(here) != _id_family(first):
        return (f"id column {id_column!r} is {here} here but {first} in the pool's first file; "
                "every shard's ids must share one type")
    return None


def _with_problem(shards: list[ShardSpec], problem: Problem) -> list[ShardSpec]:
    return [dataclasses.replace(s, problem=s.problem or problem) for s in shards]


def plan_shards(files: Sequence[PoolFile], shard_rows: int, storage: Storage | None = None,
                id_column: str | None = None,
                columns: ShardColumns | None = None) -> list[ShardSpec]:
    """Read every footer (in threads) and cut the files into shards, in file order.

    Args:
        id_column: when given, a file whose ids differ in type from the first readable file's
            (strings against integers) is planned as a bad shard of kind ``schema``.
        columns: when given, each footer is checked for them (present, well typed, a
            ``fixed_size_list`` as wide as the model takes); a file that fails is planned as a bad
            shard, so that no actor has to open it to find out.
    """
    options = storage or {}
    with ThreadPoolExecutor(max_workers=_FOOTER_THREADS) as pool:
        per_file = list(pool.map(lambda f: _shards_of(f, shard_rows, options, columns), files))
    reference = next((schema for _, schema in per_file if schema is not None), None)
    planned = []
    for shards, schema in per_file:
        mismatch = (id_column is not None and schema is not None and reference is not None
                    and _mismatch(schema, reference, id_column))
        planned += (_with_problem(shards, Problem("schema", mismatch, "pool.id_column"))
                    if mismatch else shards)
    return planned
