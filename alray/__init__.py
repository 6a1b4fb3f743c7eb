"""alray: choose which rows of a huge unlabeled pool are worth labeling, on Ray.

>>> import alray
>>> spec = alray.JobSpec.from_yaml("jobs/digits.yaml")   # doctest: +SKIP
>>> result = alray.run(spec)                              # doctest: +SKIP
>>> result.selection.to_pandas().head()                   # doctest: +SKIP
"""

__version__ = "0.1.0"

from alray.config import JobSpec  # noqa: E402
from alray.errors import AlrayError, ConfigError, JobFailed, ModelError, ShardError  # noqa: E402

__all__ = [
    "AlrayError",
    "CartographyResult",
    "ConfigError",
    "JobFailed",
    "JobSpec",
    "ModelError",
    "Result",
    "ShardError",
    "SimulationResult",
    "__version__",
    "cartography",
    "export",
    "import_labels",
    "run",
    "simulate",
]


def __getattr__(name: str):
    # `run` and `Result` live beside Ray; importing them lazily keeps `import alray` (and its pure
    # pieces: scores, sources, reducers) usable and quick where Ray is not needed.
    if name in ("run", "Result"):
        from alray.runtime import driver

        return getattr(driver, name)
    if name in ("simulate", "SimulationResult"):
        from alray.simulation import loop

        return getattr(loop, name)
    if name in ("export", "import_labels"):
        import alray.annotation

        return getattr(alray.annotation, name)
    if name in ("cartography", "CartographyResult"):
        import alray.cartography

        return getattr(alray.cartography, name)
    raise AttributeError(f"module 'alray' has no attribute {name!r}")
