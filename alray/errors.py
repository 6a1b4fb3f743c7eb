"""The errors alray raises.

One root, each subclass also subclassing the builtin it refines, so callers may catch either::

    AlrayError
    ├── ConfigError(AlrayError, ValueError)      the job spec or command line is wrong (exit 2)
    ├── ModelError(AlrayError, ValueError)       the model cannot be loaded or does not fit (exit 2)
    ├── ShardError(AlrayError)                   one shard or row is bad; carries kind, shard, row
    └── JobFailed(AlrayError, RuntimeError)      the job stopped (exit 1)

Messages follow one pattern: ``<where>: <what was wrong>; <what to do>``, where ``<where>`` is a
dotted spec key or ``shard <id> (<uri>)[, row <n>]``.
"""

from __future__ import annotations

__all__ = ["AlrayError", "ConfigError", "ModelError", "ShardError", "JobFailed", "ERROR_KINDS"]

#: Every ``kind`` an ``errors.jsonl`` record may carry (docs/outputs.md, "errors.jsonl").
ERROR_KINDS = frozenset(
    {
        "unreadable",
        "schema",
        "missing_column",
        "bad_type",
        "wrong_length",
        "null_value",
        "non_finite",
        "bad_probabilities",
        "duplicate_id",
        "decode_error",
        "missing_object",
        "retries_exhausted",
        "out_of_memory",
        "bad_label",
        "bad_fold",
    }
)


class AlrayError(Exception):
    """Root of every error alray raises on purpose."""


class ConfigError(AlrayError, ValueError):
    """The job spec or the command line is invalid; nothing has run yet."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")


class ModelError(AlrayError, ValueError):
    """The model cannot be loaded, or its outputs break the model contract."""


class ShardError(AlrayError):
    """A bad shard, or a bad row within one.

    Attributes:
        kind: one of :data:`ERROR_KINDS`.
        row: 0-based row index in the file, or None for a shard-level problem.
        row_id: the row's id where known.
        transient: the cause may pass (throttling, a time-out): worth retrying the shard.
        key: the spec key the problem is about (``pool.feature_column``), where there is one; a
            problem every shard shares is then a configuration error of that key.
    """

    def __init__(self, kind: str, message: str, *, row: int | None = None, row_id=None,
                 transient: bool = False, key: str | None = None):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        self.row = row
        self.row_id = row_id
        self.transient = transient
        self.key = key
        super().__init__(message)


class JobFailed(AlrayError, RuntimeError):
    """The job stopped before finishing (exit status 1)."""
