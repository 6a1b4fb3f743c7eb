"""Decoding images: fetch encoded bytes and turn them into normalized ``[C, crop, crop]`` arrays.

Preprocessing follows torchvision's usual evaluation transform: EXIF orientation applied, alpha
dropped (``convert(mode)``), shorter side resized to ``resize`` with an antialiasing bilinear
filter, a center crop of ``crop``, values scaled to [0, 1], then ``(x - mean) / std`` per channel.
Fetching and decoding run in a thread pool (Pillow and the object-store client release the GIL).

A bad image is a bad row, never a crash: ``missing_object`` when the object is gone,
``unreadable`` when the store refuses it or it is no file, ``decode_error`` when Pillow cannot
read it. Both image sources use this: folders of files (:mod:`alray.sources.images`) and image
columns of parquet (:mod:`alray.sources.parquet`).
"""

from __future__ import annotations

import io
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from alray.config import ImageSpec
from alray.sources.files import Storage, is_transient, read_object, retry_transient, url_to_fs

__all__ = ["FETCH_THREADS", "decode_images", "fetch_uri", "image_batch", "loaded_images",
           "preprocess"]

FETCH_THREADS = 8
_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="alray-images")
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


def loaded_images(sources: Iterable, fetch, image: ImageSpec, window: int) -> Iterator[tuple]:
    """:func:`_load`'s ``(array, kind, cause)`` per source, in order, with up to ``window``
    fetches and decodes in flight, so no batch boundary stalls the thread pool."""
    in_flight: deque = deque()
    for source in sources:
        in_flight.append(_threads().submit(_load, fetch, source, image))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def image_batch(results: list[tuple], image: ImageSpec) -> tuple[np.ndarray, list]:
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
    return image_batch(list(loaded_images(sources, fetch, image, window=4 * FETCH_THREADS)), image)


def fetch_uri(storage: Storage | None):
    """A ``fetch`` for :func:`decode_images` over full URIs (an image-URI column)."""

    def fetch(uri: str | None) -> bytes:
        if uri is None:
            raise FileNotFoundError("null image URI")
        fs, path = url_to_fs(uri, storage)
        return read_object(fs, path)

    return fetch
