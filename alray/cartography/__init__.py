"""Which labels are wrong: training dynamics (dataset cartography) and confident learning.

- :func:`cartography` reads a training log (per-epoch files) and writes each row's statistics,
  the data map and the hard-to-learn rows as a selection (``alray cartography``).
- :class:`DynamicsLogger` writes such a log from a PyTorch training loop.
- :mod:`alray.cartography.confident` flags label issues from out-of-sample probabilities at pool
  scale (a job with ``pool.label_column``).
"""

from alray.cartography.hooks import DynamicsLogger
from alray.cartography.log import LogColumns
from alray.cartography.run import CartographyResult, cartography

__all__ = ["CartographyResult", "DynamicsLogger", "LogColumns", "cartography"]
