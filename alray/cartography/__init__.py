"""Which labels are wrong: training dynamics (dataset cartography) and confident learning.

- :func:`cartography` reads a training log (per-epoch files) and writes each row's statistics,
  the data map and the hard-to-learn rows as a selection (``alray cartography``).
- :class:`DynamicsLogger` writes such a log from a PyTorch training loop.
- :mod:`alray.cartography.confident` flags label issues from out-of-sample probabilities in two
  streamed passes; :mod:`alray.cartography.pool` runs it over a job's scores files
  (``pool.label_column``).
"""

__all__ = ["CartographyResult", "DynamicsLogger", "LogColumns", "cartography"]

_HOMES = {"CartographyResult": "run", "cartography": "run", "DynamicsLogger": "hooks",
          "LogColumns": "log"}


def __getattr__(name: str):
    # Lazy: scoring actors import alray.cartography.pool, which needs neither matplotlib (the
    # data map) nor the log readers.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"alray.cartography.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'alray.cartography' has no attribute {name!r}")
