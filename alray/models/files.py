"""What the driver learns of a model's files without loading the model (no torch here).

Before Ray starts, the driver checks that the model's file exists and, for a ``linear`` head, reads
its shape ``[C, D]`` from the file's header, so that a pool whose vectors do not fit the head is a
configuration error found in seconds rather than a failure inside every actor.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import struct
import sys
import zipfile

import numpy as np

from alray.config import ModelSpec
from alray.errors import ConfigError, ModelError
from alray.sources.files import Storage, access_refusals, open_file, url_to_fs

__all__ = ["check_model_source", "find_module", "linear_head_shape", "model_input_width"]

_SAFETENSORS_MAX_HEADER = 100 * 2**20  # the format's own limit


def find_module(name: str) -> importlib.machinery.ModuleSpec | None:
    """Where module ``name`` is, found as the actors import a ``python`` model or a custom score
    (the current folder first on the path), without importing it; None when nowhere."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    finally:
        if added:
            sys.path.remove(cwd)


def _key(spec: ModelSpec) -> str:
    return "model.members" if spec.members else "model.path"


def check_model_source(spec: ModelSpec, storage: Storage | None = None) -> None:
    """Driver-side check that every model file exists (each member's), before any work starts."""
    if spec.kind in ("python", "precomputed"):
        return
    key = _key(spec)
    for source in spec.sources:
        fs, path = url_to_fs(source, storage)
        with access_refusals(key, source):
            try:
                is_file = fs.info(path)["type"] == "file"
            except FileNotFoundError:
                is_file = False
        if not is_file:
            raise ConfigError(key, f"no file at {source!r}; give the path of the {spec.kind} "
                                   "model's weights")


def _safetensors_shapes(f) -> dict[str, tuple[int, ...]]:
    (length,) = struct.unpack("<Q", f.read(8))
    if not 0 < length <= _SAFETENSORS_MAX_HEADER:
        raise ValueError(f"header length {length} is out of range")
    header = json.loads(f.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items()
            if name != "__metadata__"}


def _npz_shapes(f) -> dict[str, tuple[int, ...]]:
    shapes = {}
    with zipfile.ZipFile(f) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as member:
                major, _ = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(member)
            shapes[name[:-len(".npy")]] = tuple(shape)
    return shapes


def linear_head_shape(uri: str, storage: Storage | None = None) -> tuple[int, int]:
    """``(C, D)`` of a linear head's ``weight``, read from the file's header only.

    Raises:
        ModelError: the file is not a readable .safetensors or .npz head with a 2-d ``weight``.
    """
    if not uri.endswith((".safetensors", ".npz")):
        raise ModelError(f"model.path: {uri!r}: a linear head is a .safetensors or .npz file")
    reader = _safetensors_shapes if uri.endswith(".safetensors") else _npz_shapes
    with access_refusals("model.path", uri):
        try:
            with open_file(uri, "rb", storage) as f:
                shapes = reader(f)
        except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile) as exc:
            raise ModelError(f"model.path: {uri!r} is not a readable {uri.rsplit('.', 1)[-1]} "
                             f"file ({exc})") from None
    weight = shapes.get("weight")
    if weight is None or len(weight) != 2 or shapes.get("bias") != (weight[0],):
        raise ModelError(f"model.path: {uri!r} holds {shapes}; a linear head needs 'weight' "
                         "[C, D] and 'bias' [C]")
    return weight[0], weight[1]


def model_input_width(spec: ModelSpec, storage: Storage | None = None) -> int | None:
    """D, where the model's files fix it without loading (``linear`` heads), else None.

    Raises:
        ConfigError: a committee's heads differ in shape.
    """
    if spec.kind != "linear":
        return None
    shapes = {source: linear_head_shape(source, storage) for source in spec.sources}
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{source} [{c}, {d}]" for source, (c, d) in shapes.items())
        raise ConfigError("model.members", f"the heads differ in shape ({found}); a committee's "
                                           "members share their classes and input width")
    return next(iter(shapes.values()))[1]
