"""alray: choose which rows of a huge unlabeled pool are worth labeling, on Ray.

>>> import alray
>>> spec = alray.JobSpec.from_yaml("jobs/digits.yaml")   # doctest: +SKIP
>>> result = alray.run(spec)                              # doctest: +SKIP
>>> result.selection.to_pandas().head()                   # doctest: +SKIP
"""

__version__ = "0.1.0"

from alray.config import JobSpec  # noqa: E402
from alray.errors import AlrayError, ConfigError, JobFailed, ModelError, ShardError  # noqa: E402
from alray.runtime.driver import Result, run  # noqa: E402

__all__ = [
    "AlrayError",
    "ConfigError",
    "JobFailed",
    "JobSpec",
    "ModelError",
    "Result",
    "ShardError",
    "__version__",
    "run",
]
