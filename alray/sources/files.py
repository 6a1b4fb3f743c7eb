"""Opening pool files and writing outputs through fsspec, with a native fast path for local disk.

Nothing here holds a filesystem across processes: each call resolves its URI anew.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import os
import time
import uuid
from typing import Any, Iterator, Mapping

import fsspec
import pyarrow.parquet as pq

from alray.errors import ConfigError

__all__ = ["open_parquet", "atomic_write", "atomic_stream", "retry_transient", "is_transient",
           "is_local", "local_path", "join_uri", "url_to_fs", "open_file", "read_object",
           "access_refusals",
           "iter_objects", "is_glob", "glob_root", "Storage"]

#: fsspec options by protocol (``{"s3": {"endpoint_url": ...}}``), built from the spec's
#: ``storage`` section; never holds credentials.
Storage = Mapping[str, Mapping[str, Any]]

# Remote reads: a large block with read-ahead, so parquet column chunks arrive in few requests.
_REMOTE_BLOCK_SIZE = 8 * 2**20


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, resets and time-outs surface from fsspec clients as OSError or
    TimeoutError; a missing object, a refusal or a malformed request (s3fs maps S3's 4xx
    "invalid" codes to ``EINVAL``) does not get better by asking again."""
    if isinstance(exc, _NOT_TRANSIENT) or getattr(exc, "errno", None) == errno.EINVAL:
        return False
    return isinstance(exc, (OSError, TimeoutError))


def retry_transient(fn, *args, attempts: int = 4, first_wait: float = 0.25):
    """``fn(*args)``, retried with exponential backoff (0.25 s, 0.5 s, 1 s) on transient errors."""
    for attempt in range(attempts):
        try:
            return fn(*args)
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(first_wait * 2 ** attempt)


_CREDENTIALS_HINT = {
    "s3": "alray signs with the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
          "else AWS_PROFILE or storage.s3.profile, else the instance's role; check that they "
          "exist and may use this bucket",
}


@contextlib.contextmanager
def access_refusals(where: str, uri: str):
    """Turn the storage refusing ``uri`` (bad or missing credentials, no permission) into a
    one-line :class:`~alray.errors.ConfigError` that names ``where`` and what to check."""
    try:
        yield
    except PermissionError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "permission denied"
        hint = _CREDENTIALS_HINT.get(protocol_of(uri), "check that the user running alray may "
                                                        "read and write there")
        raise ConfigError(where, f"access to {uri!r} was refused ({reason}); {hint}") from None


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def url_to_fs(uri: str, storage: Storage | None = None):
    """``(filesystem, path)`` for ``uri``, with the options the spec gives for its protocol."""
    options = (storage or {}).get(protocol_of(uri), {})
    return fsspec.core.url_to_fs(uri, **options)


def read_object(fs, path: str) -> bytes:
    """The whole object at ``path``, in one request where the filesystem allows it.

    s3fs's ``cat_file`` asks for the object's size first (a HEAD, or a scan of its listing cache,
    which is linear in the folder's size) so it can split large objects into ranged GETs; for
    images of tens of kilobytes that doubles the requests, so it is told to make a single GET.
    """
    if _splits_large_objects(fs):
        return fs.cat_file(path, max_concurrency=1)
    return fs.cat_file(path)


_SPLITS_LARGE_OBJECTS: dict[type, bool] = {}


def _splits_large_objects(fs) -> bool:
    """Whether ``fs.cat_file`` takes ``max_concurrency`` (asked once per filesystem class; the
    instance is inspected because async filesystems build their sync methods per instance)."""
    kind = type(fs)
    if kind not in _SPLITS_LARGE_OBJECTS:
        parameters = inspect.signature(fs.cat_file).parameters
        _SPLITS_LARGE_OBJECTS[kind] = "max_concurrency" in parameters
    return _SPLITS_LARGE_OBJECTS[kind]


_GLOB_CHARS = "*?["


def is_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def glob_root(path: str) -> str:
    """The folder a glob is listed from: ``path`` up to the last '/' before its first wildcard."""
    first = min((i for i in map(path.find, _GLOB_CHARS) if i >= 0), default=len(path))
    return path[:first].rsplit("/", 1)[0]


_LIST_PAGE = 1000  # S3's own maximum per ListObjectsV2 call


def object_stamp(info: dict) -> str:
    """What changes when an object changes: its size and ETag (or modification time)."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return f"{info.get('size', info.get('Size'))}:{info[key]}"
    return f"{info.get('size', info.get('Size'))}:"


def iter_objects(fs, root: str, page_size: int = _LIST_PAGE) -> Iterator[tuple[str, str]]:
    """``(path, stamp)`` of every object under the folder ``root``, recursively, in the client's
    order; the stamp is :func:`object_stamp`.

    On S3 the listing is paged (``page_size`` keys per request) and only names and stamps are
    kept, so a prefix of millions of objects never sits in memory as listing dicts; s3fs's own
    ``find`` (and ``isdir``) would build one dict per object and cache them all. Other
    filesystems use ``find``.
    """
    if not hasattr(fs, "call_s3"):
        found = fs.find(root, detail=True) if fs.isdir(root) else {}
        yield from ((path, object_stamp(info)) for path, info in found.items())
        return
    bucket, _, prefix = root.strip("/").partition("/")
    request = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else "", "MaxKeys": page_size}
    while True:
        page = fs.call_s3("list_objects_v2", **request)
        for entry in page.get("Contents", ()):
            yield f"{bucket}/{entry['Key']}", object_stamp(entry)
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


@contextlib.contextmanager
def open_file(uri: str, mode: str = "rb", storage: Storage | None = None):
    fs, path = url_to_fs(uri, storage)
    with fs.open(path, mode) as f:
        yield f


@contextlib.contextmanager
def open_parquet(uri: str, storage: Storage | None = None) -> Iterator[pq.ParquetFile]:
    """Open a parquet file for streaming reads.

    Local files go to Arrow's own reader (no Python in the I/O path); other URLs go through an
    fsspec file with read-ahead caching.
    """
    if is_local(uri):
        pf = pq.ParquetFile(local_path(uri), memory_map=False)
        try:
            yield pf
        finally:
            pf.close()
        return
    fs, path = url_to_fs(uri, storage)
    with fs.open(path, "rb", block_size=_REMOTE_BLOCK_SIZE, cache_type="readahead") as f:
        yield pq.ParquetFile(f)


def atomic_write(uri: str, data: bytes, storage: Storage | None = None) -> None:
    """Write ``data`` so that readers see the whole object or none of it.

    Local files are written to a temporary name beside the target and renamed over it. Object
    stores publish an object only when its upload completes, so one ``pipe`` is atomic there.
    """
    if is_local(uri):
        path = local_path(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = _temporary_beside(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fs, path = url_to_fs(uri, storage)
    fs.pipe_file(path, data)


def _temporary_beside(path: str) -> str:
    """A temporary name in ``path``'s folder (so a rename publishes it), hidden from listings."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")


@contextlib.contextmanager
def atomic_stream(uri: str, storage: Storage | None = None) -> Iterator[Any]:
    """A binary file to write ``uri`` in pieces, published whole when the block ends, and never
    when it raises (the temporary file is removed; an object store's upload is discarded).

    For outputs too large to hold as one ``bytes`` (pseudo-labels over a whole pool).
    """
    if is_local(uri):
        path = local_path(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = _temporary_beside(path)
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, path = url_to_fs(uri, storage)
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        if hasattr(f, "discard"):  # fsspec's buffered files: abort the upload
            f.discard()
        raise
    f.close()


def parquet_bytes(table) -> bytes:
    """Serialize an Arrow table to parquet in memory (outputs are small: scores, selections).

    No dictionary encoding: score columns are near-unique floats, for which trying a dictionary
    costs 4x the write time and gives a larger file.
    """
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False)
    return sink.getvalue()
