"""Models: turn a ``[B, D]`` feature batch into ``[B, C]`` logits or probabilities.

A registry maps ``model.kind`` to a loader. Every loader returns a :class:`LoadedModel`, which runs
under ``torch.inference_mode()`` on the device it was loaded for. Weights never load through
pickle: safetensors, ``np.load(allow_pickle=False)`` or TorchScript archives only.

==============  ===============================================================================
kind            what ``model.path`` names
==============  ===============================================================================
linear          tensors ``weight [C, D]`` and ``bias [C]`` in a ``.safetensors`` or ``.npz`` file
torchscript     a TorchScript ``.pt`` archive
python          ``package.module:factory``, a callable returning a ``torch.nn.Module``
precomputed     nothing: the pool's ``model.column`` already holds the model's output
==============  ===============================================================================
"""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from alray.config import ModelSpec
from alray.errors import ModelError
from alray.sources.files import Storage, open_file

__all__ = ["LoadedModel", "MODEL_LOADERS", "as_two_classes", "load_members", "load_model"]


@dataclass
class LoadedModel:
    """A model ready to run.

    Attributes:
        module: the torch module, or None for precomputed outputs.
        output: ``"logits"`` or ``"probs"``.
        input_width: D where the model fixes it, else None.
        device: where the module lives.
        features_are_embedding: the input features are the embedding (a linear head's input is
            the last layer's input, as expected_gradient_length and diversity need).
    """

    module: torch.nn.Module | None
    output: str
    input_width: int | None
    device: torch.device
    features_are_embedding: bool = False

    def __call__(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[B, ...]`` -> (``[B, C]`` output, ``[B, E]`` embedding or None).

        A model returns its output, or a pair (output, embedding) such as its penultimate layer.
        A ``[B]`` output (one regression target, or one binary logit) reads as ``[B, 1]``.
        """
        if self.module is None:
            return features, None
        with torch.inference_mode():
            out = self.module(features)
        embedding = features if self.features_are_embedding else None
        if isinstance(out, (tuple, list)):
            out, embedding = out[0], (out[1] if len(out) > 1 else None)
        if isinstance(out, torch.Tensor) and out.ndim == 1:
            out = out[:, None]
        _check_shape(out, len(features), "output [B, C]")
        if embedding is not None:
            _check_shape(embedding, len(features), "embedding [B, E]")
        return out, embedding


def _check_shape(t, rows: int, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] != rows or t.shape[1] < 1:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ModelError(f"model: returned {shape} for {rows} rows; a model returns a {what} "
                         "tensor")


def as_two_classes(output: torch.Tensor, kind: str) -> torch.Tensor:
    """A single-column binary head ``[B, 1]`` -> ``[B, 2]``; wider outputs pass through.

    Logits ``z`` become ``[0, z]`` (the softmax of which is ``[1 - sigmoid(z), sigmoid(z)]``);
    probabilities ``p`` become ``[1 - p, p]``.
    """
    if output.shape[1] != 1:
        return output
    if kind == "logits":
        return torch.cat([torch.zeros_like(output), output], dim=1)
    return torch.cat([1.0 - output, output], dim=1)


# ----------------------------------------------------------------------------------- loaders


def _key(spec: ModelSpec) -> str:
    """The spec key that named the model's files, for messages."""
    return "model.members" if spec.members else "model.path"


def _read_bytes(uri: str, storage: Storage) -> bytes:
    try:
        with open_file(uri, "rb", storage) as f:
            return f.read()
    except FileNotFoundError:
        raise ModelError(f"model.path: no file at {uri!r}") from None


def _linear_tensors(uri: str, blob: bytes) -> dict[str, np.ndarray]:
    if uri.endswith(".safetensors"):
        from safetensors.numpy import load

        try:
            return load(blob)
        except Exception as exc:
            raise ModelError(f"model.path: {uri!r} is not a readable safetensors file ({exc})")
    if uri.endswith(".npz"):
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise ModelError(f"model.path: {uri!r} is not a readable .npz file ({exc})") from None
    raise ModelError(f"model.path: {uri!r}: a linear head is a .safetensors or .npz file")


def _load_linear(source: str, spec: ModelSpec, device: torch.device,
                 storage: Storage) -> LoadedModel:
    tensors = _linear_tensors(source, _read_bytes(source, storage))
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != (weight.shape[0],):
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ModelError(f"{_key(spec)}: {source!r} holds {found}; a linear head needs "
                         "'weight' [C, D] and 'bias' [C]")
    classes, width = weight.shape
    if classes < 1:
        raise ModelError(f"{_key(spec)}: {source!r} has {classes} classes; need at least 2 "
                         "(or 1 logit for a binary head)")
    layer = torch.nn.Linear(width, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
        layer.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))
    return LoadedModel(layer.to(device).eval(), spec.output, width, device,
                       features_are_embedding=True)


def _load_torchscript(source: str, spec: ModelSpec, device: torch.device,
                      storage: Storage) -> LoadedModel:
    blob = _read_bytes(source, storage)
    try:
        module = torch.jit.load(io.BytesIO(blob), map_location=device)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{_key(spec)}: {source!r} is not a TorchScript archive ({message})")
    return LoadedModel(module.eval(), spec.output, None, device)


def _load_python(source: str, spec: ModelSpec, device: torch.device,
                 storage: Storage) -> LoadedModel:
    module_name, _, attr = source.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{_key(spec)}: cannot import {source!r} ({exc}); the module must be "
                         "importable on every Ray worker") from None
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"{_key(spec)}: {source}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{_key(spec)}: {source!r} returned {type(module).__name__}, "
                         "not a torch.nn.Module")
    return LoadedModel(module.to(device).eval(), spec.output, None, device)


def _load_precomputed(source: str | None, spec: ModelSpec, device: torch.device,
                      storage: Storage) -> LoadedModel:
    return LoadedModel(None, spec.output, None, device)


Loader = Callable[[str | None, ModelSpec, torch.device, Storage], LoadedModel]
MODEL_LOADERS: dict[str, Loader] = {
    "linear": _load_linear,
    "torchscript": _load_torchscript,
    "python": _load_python,
    "precomputed": _load_precomputed,
}


def load_model(spec: ModelSpec, device: torch.device | str = "cpu",
               storage: Storage | None = None, source: str | None = None) -> LoadedModel:
    """Load the model ``spec`` names onto ``device``: ``source`` (one of ``spec.sources``), or
    ``spec.path``.

    Raises:
        ModelError: the file is missing or malformed, or the head has no classes.
    """
    return MODEL_LOADERS[spec.kind](source or spec.path, spec, torch.device(device),
                                    storage or {})


def load_members(spec: ModelSpec, device: torch.device | str = "cpu",
                 storage: Storage | None = None) -> list[LoadedModel]:
    """Every model of ``spec`` (its committee's members, or its one model), each loaded once."""
    return [load_model(spec, device, storage, source) for source in spec.sources or (None,)]
