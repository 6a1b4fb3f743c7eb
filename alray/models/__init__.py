"""Models: turn a ``[B, D]`` feature batch into ``[B, C]`` logits or probabilities.

:mod:`alray.models.loaders` loads them (with torch); :mod:`alray.models.files` is what the driver
learns of a model's files without torch: that they exist, and a linear head's shape.
"""

from alray.models.files import check_model_source, linear_head_shape, model_input_width

__all__ = ["LoadedModel", "MODEL_LOADERS", "as_two_classes", "check_model_source",
           "linear_head_shape", "load_model", "model_input_width"]


def __getattr__(name: str):
    if name in ("LoadedModel", "MODEL_LOADERS", "as_two_classes", "load_model"):
        from alray.models import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'alray.models' has no attribute {name!r}")
