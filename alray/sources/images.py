"""Image pools: folders (or globs) of JPEG, PNG and WebP files, or image bytes / URIs in parquet.

Preprocessing follows torchvision's usual evaluation transform: EXIF orientation applied, alpha
dropped (``convert(mode)``), shorter side resized to ``resize`` with an antialiasing bilinear
filter, a center crop of ``crop``, values scaled to [0, 1], then ``(x - mean) / std`` per channel.
Output per image: ``[C, crop, crop]`` float32. Fetching and decoding run in a thread pool
(Pillow and the object-store client release the GIL).

A bad image is a bad row, never a crash: ``missing_object`` when the object is gone,
``unreadable`` when the store refuses it or it is no file, ``decode_error`` when Pillow cannot
read it.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from fsspec.utils import glob_translate

from alray.config import ImageSpec
from alray.errors import ConfigError
from alray.sources.files import (Storage, access_refusals, glob_root, is_glob, is_transient,
                                 iter_names, read_object, retry_transient, url_to_fs)
from alray.sources.parquet import RowBatch
from alray.sources.plan import ShardSpec, is_hidden

__all__ = ["IMAGE_SUFFIXES", "preprocess", "plan_image_shards", "read_image_shard",
           "decode_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_FETCH_THREADS = 8
_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="alray-images")
    return _pool


def preprocess(data: bytes, image: ImageSpec) -> np.ndarray:
    """Encoded image bytes -> ``[C, crop, crop]`` float32, normalized.

    Raises:
        OSError / ValueError from Pillow when the bytes are not a readable image.
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img).convert(image.mode)
    width, height = img.size
    if width <= height:  # the shorter side becomes `resize`, as torchvision's Resize(int)
        size = (image.resize, int(image.resize * height / width))
    else:
        size = (int(image.resize * width / height), image.resize)
    img = img.resize(size, Image.BILINEAR)  # Pillow's filters antialias when shrinking
    left = int(round((size[0] - image.crop) / 2.0))
    top = int(round((size[1] - image.crop) / 2.0))
    img = img.crop((left, top, left + image.crop, top + image.crop))
    pixels = np.asarray(img)  # uint8 [H, W] or [H, W, C]
    channels_first = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    # (x / 255 - mean) / std as x * scale - shift: two passes, the second in place, and the
    # first writes channels-first directly (no float copy in [H, W, C], no transposed copy).
    scale, shift = _normalization(image)
    out = np.empty(channels_first.shape, np.float32)
    np.multiply(channels_first, scale, out=out)
    return np.subtract(out, shift, out=out)


def _normalization(image: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """``scale [C, 1, 1]`` and ``shift [C, 1, 1]`` with ``(x / 255 - mean) / std ==
    x * scale - shift``."""
    mean, std = (np.asarray(v, np.float64).reshape(-1, 1, 1) for v in image.stats())
    return (1.0 / (255.0 * std)).astype(np.float32), (mean / std).astype(np.float32)


# ----------------------------------------------------------------------------------- planning


def _root_and_keys(uri: str, storage: Storage | None) -> tuple[str, list[str]]:
    """The listing root's URI and the sorted image keys under it, relative to the root."""
    fs, path = url_to_fs(uri, storage)
    fs.invalidate_cache()
    root = (glob_root(path) if is_glob(path) else path).rstrip("/")
    names = iter_names(fs, root)
    if is_glob(path):
        names = filter(re.compile(glob_translate(path)).match, names)
    keys, found_any = [], False
    try:
        for name in names:
            found_any = True
            key = name[len(root):].lstrip("/")
            if key.lower().endswith(IMAGE_SUFFIXES) and not is_hidden(key):
                keys.append(key)
    except FileNotFoundError:  # no such bucket
        found_any = False
    if not found_any:
        raise ConfigError("pool.uri", f"nothing at {uri!r}; give a folder or glob of images")
    keys.sort()
    return fs.unstrip_protocol(root), keys


def plan_image_shards(uris: Sequence[str], images_per_shard: int,
                      storage: Storage | None = None) -> list[ShardSpec]:
    """Cut each folder's sorted image keys into shards of ``images_per_shard``.

    A row's id is the image's path under its folder, '/'-separated. A shard's ``version`` hashes
    its keys, so a resumed job rescores a shard whose images were added or removed.
    """
    shards = []
    for uri in uris:
        with access_refusals("pool.uri", uri):
            root, keys = _root_and_keys(uri, storage)
        stem = posixpath.basename(root.rstrip("/")) or "images"
        digest = hashlib.sha1(root.encode()).hexdigest()[:8]
        for first in range(0, len(keys), images_per_shard):
            chunk = tuple(keys[first:first + images_per_shard])
            last = first + len(chunk) - 1
            shards.append(ShardSpec(
                f"{stem}-{digest}-img{first}-{last}", root, row_groups=None, first_row=first,
                num_rows=len(chunk), size=None,
                version=hashlib.sha1("\n".join(chunk).encode()).hexdigest(), members=chunk))
    if not shards:
        raise ConfigError("pool.uri", f"no {', '.join(IMAGE_SUFFIXES)} files under "
                                      f"{', '.join(uris)}")
    return shards


# ----------------------------------------------------------------------------------- reading


def _load(fetch, source, image: ImageSpec) -> tuple[np.ndarray | None, str | None, str | None]:
    """``(array, None, None)``, or ``(None, error kind, cause)`` for a bad image."""
    try:
        data = retry_transient(fetch, source)
    except FileNotFoundError:
        return None, "missing_object", None
    except Exception as exc:
        if is_transient(exc):  # still failing after retries: the shard is tried again
            raise
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, "unreadable", cause  # refused, a folder, a URI no filesystem takes, ...
    try:
        return preprocess(data, image), None, None
    except Exception:  # Pillow raises many types for bad bytes; any of them is a bad row
        return None, "decode_error", None


def _loaded(sources: Iterable, fetch, image: ImageSpec, window: int) -> Iterator[tuple]:
    """:func:`_load`'s ``(array, kind, cause)`` per source, in order, with up to ``window``
    fetches and decodes in flight, so no batch boundary stalls the thread pool."""
    in_flight: deque = deque()
    for source in sources:
        in_flight.append(_threads().submit(_load, fetch, source, image))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _assemble(results: list[tuple], image: ImageSpec) -> tuple[np.ndarray, list]:
    batch = np.zeros((len(results), image.channels, image.crop, image.crop), np.float32)
    kinds = np.array([kind or "" for _, kind, _ in results])
    for i, (array, _, _) in enumerate(results):
        if array is not None:
            batch[i] = array
    cause = next((cause for _, kind, cause in results if kind == "unreadable"), None)
    unreadable = ("cannot read the image object (access refused, not a file, or not a URI alray "
                  f"can open; first cause in its batch: {cause})")
    checks = [("missing_object", "the image object is missing", kinds == "missing_object"),
              ("unreadable", unreadable, kinds == "unreadable"),
              ("decode_error", "cannot decode the image (not a readable JPEG, PNG or WebP)",
               kinds == "decode_error")]
    return batch, checks


def decode_images(sources: list, fetch, image: ImageSpec) -> tuple[np.ndarray,
                                                                     list[tuple[str, str,
                                                                                np.ndarray]]]:
    """Fetch and preprocess ``sources`` in threads -> (``[n, C, crop, crop]``, bad-row checks).

    ``fetch(source) -> bytes`` reads one image (``None`` sources are missing objects).
    """
    return _assemble(list(_loaded(sources, fetch, image, window=4 * _FETCH_THREADS)), image)


def read_image_shard(shard: ShardSpec, image: ImageSpec, batch_size: int,
                     storage: Storage | None = None) -> Iterator[RowBatch]:
    """Stream a folder shard's images as batches of ``[n, C, crop, crop]``; ids are the keys."""
    if shard.problem is not None:
        raise shard.problem.error()
    fs, root = url_to_fs(shard.uri, storage)

    def fetch(key: str) -> bytes:
        return read_object(fs, f"{root}/{key}")

    loaded = _loaded(shard.members, fetch, image, window=max(batch_size, 4 * _FETCH_THREADS))
    for start in range(0, len(shard.members), batch_size):
        keys = list(shard.members[start:start + batch_size])
        values, checks = _assemble([next(loaded) for _ in keys], image)
        yield RowBatch(shard.first_row + start, pa.array(keys, pa.string()), values, checks)


def fetch_uri(storage: Storage | None):
    """A ``fetch`` for :func:`decode_images` over full URIs (an image-URI column)."""

    def fetch(uri: str | None) -> bytes:
        if uri is None:
            raise FileNotFoundError("null image URI")
        fs, path = url_to_fs(uri, storage)
        return read_object(fs, path)

    return fetch
