"""Image folders: JPEG, PNG and WebP files under a folder, a glob or an object-store prefix.

A row's id is the image's path under its folder, '/'-separated. Each image becomes a
``[C, crop, crop]`` float32 array (:mod:`alray.sources.decode`); a bad image is a bad row.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Iterator, Sequence

import pyarrow as pa
from fsspec.utils import glob_translate

from alray.config import ImageSpec
from alray.errors import ConfigError
from alray.sources.decode import FETCH_THREADS, image_batch, loaded_images
from alray.sources.files import (Storage, access_refusals, glob_root, is_glob, iter_objects,
                                 read_object, url_to_fs)
from alray.sources.plan import ShardSpec, is_hidden
from alray.sources.rows import RowBatch

__all__ = ["IMAGE_SUFFIXES", "plan_image_shards", "read_image_shard"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# ----------------------------------------------------------------------------------- planning


def _root_and_keys(uri: str, storage: Storage | None) -> tuple[str, list[tuple[str, str]]]:
    """The listing root's URI and the sorted ``(key, stamp)`` of each image under it, keys
    relative to the root (stamps: size and ETag or modification time)."""
    fs, path = url_to_fs(uri, storage)
    fs.invalidate_cache()
    root = (glob_root(path) if is_glob(path) else path).rstrip("/")
    objects = iter_objects(fs, root)
    if is_glob(path):
        match = re.compile(glob_translate(path)).match
        objects = (entry for entry in objects if match(entry[0]))
    keys, found_any = [], False
    try:
        for name, stamp in objects:
            found_any = True
            key = name[len(root):].lstrip("/")
            if key.lower().endswith(IMAGE_SUFFIXES) and not is_hidden(key):
                keys.append((key, stamp))
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
    its keys with each image's size and ETag (or modification time), so a resumed job rescores a
    shard whose images were added, removed or replaced.
    """
    shards = []
    for uri in uris:
        with access_refusals("pool.uri", uri):
            root, keys = _root_and_keys(uri, storage)
        stem = posixpath.basename(root.rstrip("/")) or "images"
        digest = hashlib.sha1(root.encode()).hexdigest()[:8]
        for first in range(0, len(keys), images_per_shard):
            chunk = keys[first:first + images_per_shard]
            last = first + len(chunk) - 1
            version = hashlib.sha1("\n".join(f"{k}\t{s}" for k, s in chunk).encode()).hexdigest()
            shards.append(ShardSpec(
                f"{stem}-{digest}-img{first}-{last}", root, row_groups=None, first_row=first,
                num_rows=len(chunk), size=None, version=version,
                members=tuple(key for key, _ in chunk)))
    if not shards:
        raise ConfigError("pool.uri", f"no {', '.join(IMAGE_SUFFIXES)} files under "
                                      f"{', '.join(uris)}")
    return shards


# ----------------------------------------------------------------------------------- reading


def read_image_shard(shard: ShardSpec, image: ImageSpec, batch_size: int,
                     storage: Storage | None = None) -> Iterator[RowBatch]:
    """Stream a folder shard's images as batches of ``[n, C, crop, crop]``; ids are the keys."""
    if shard.problem is not None:
        raise shard.problem.error()
    fs, root = url_to_fs(shard.uri, storage)

    def fetch(key: str) -> bytes:
        return read_object(fs, f"{root}/{key}")

    loaded = loaded_images(shard.members, fetch, image, window=max(batch_size, 4 * FETCH_THREADS))
    for start in range(0, len(shard.members), batch_size):
        keys = list(shard.members[start:start + batch_size])
        values, checks = image_batch([next(loaded) for _ in keys], image)
        yield RowBatch(shard.first_row + start, pa.array(keys, pa.string()), values, checks)
