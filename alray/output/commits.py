"""Per-shard commit records under ``<output>/_shards/``: what makes a job resumable.

A scoring actor commits a finished shard in three atomic writes, in this order:

1. ``scores/<shard>.parquet``              every scored row
2. ``_shards/<shard>.candidates.parquet``  its top-M candidates
3. ``_shards/<shard>.json``                the record: the shard's key, counts and errors

The record is the commit point: a shard without one (or with one whose key differs) is scored again,
so output left half-way by a killed actor or driver never counts. The key holds the shard's
identity (URI, row groups, size, modification time or ETag) and a hash of everything that changes
its scores (the model file's content, the spec's scoring keys), so new weights never reuse stale
scores, while changing ``k`` or ``actors`` rescores nothing.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from alray.config import JobSpec
from alray.sources.files import (Storage, atomic_write, join_uri, open_file, parquet_bytes,
                                 url_to_fs)
from alray.sources.plan import ShardSpec

__all__ = ["ShardRecord", "scoring_hash", "shard_key", "write_commit", "load_records",
           "read_candidates", "record_uri", "candidates_uri", "COMMITS_DIR"]

COMMITS_DIR = "_shards"
# Spec keys whose change alters a shard's stored scores or candidates' columns.
SCORING_KEYS = ("pool.id_column", "pool.feature_column", "pool.carry", "model", "scoring.strategy")
_RECORD_THREADS = 16


def record_uri(output_uri: str, shard_id: str) -> str:
    return join_uri(output_uri, COMMITS_DIR, f"{shard_id}.json")


def candidates_uri(output_uri: str, shard_id: str) -> str:
    return join_uri(output_uri, COMMITS_DIR, f"{shard_id}.candidates.parquet")


def _model_content_hash(spec: JobSpec) -> str:
    """sha256 of the model file (weights change -> hash changes); the factory name for python."""
    if spec.model.kind in ("python", "precomputed"):
        return hashlib.sha256(repr((spec.model.kind, spec.model.path)).encode()).hexdigest()
    digest = hashlib.sha256()
    with open_file(spec.model.path, "rb", spec.fsspec_storage) as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def scoring_hash(spec: JobSpec) -> str:
    """One hash of the model's content and the spec keys that change scores."""
    return hashlib.sha256((spec.digest(SCORING_KEYS) + _model_content_hash(spec)).encode()
                          ).hexdigest()


def shard_key(shard: ShardSpec, scoring: str) -> dict:
    """What a commit must match to be reused."""
    return {"uri": shard.uri, "row_groups": list(shard.row_groups or []), "size": shard.size,
            "version": shard.version, "scoring": scoring}


@dataclass(frozen=True)
class ShardRecord:
    """A committed shard, as read back from ``_shards/<shard>.json``."""

    shard_id: str
    key: dict
    status: str
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    candidates: int
    errors: list
    seconds: float

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, default=str).encode()


def write_commit(output_uri: str, record: ShardRecord, candidates: pa.Table | None,
                 storage: Storage | None = None) -> None:
    """Commit a shard whose scores file is already written: candidates, then the record."""
    if candidates is not None:
        atomic_write(candidates_uri(output_uri, record.shard_id), parquet_bytes(candidates),
                     storage)
    atomic_write(record_uri(output_uri, record.shard_id), record.to_json(), storage)


def _read_record(fs, path: str) -> ShardRecord | None:
    try:
        return ShardRecord(**json.loads(fs.cat_file(path)))
    except (OSError, ValueError, TypeError):  # unreadable or foreign: treat as not committed
        return None


def load_records(output_uri: str, storage: Storage | None = None) -> dict[str, ShardRecord]:
    """Every readable commit record under ``output_uri``, by shard id."""
    fs, root = url_to_fs(join_uri(output_uri, COMMITS_DIR), storage)
    if not fs.isdir(root):
        return {}
    paths = [p for p in fs.find(root) if p.endswith(".json")]
    with ThreadPoolExecutor(_RECORD_THREADS) as pool:
        records = [r for r in pool.map(lambda p: _read_record(fs, p), paths) if r is not None]
    return {r.shard_id: r for r in records}


def read_candidates(output_uri: str, shard_id: str, storage: Storage | None = None) -> pa.Table:
    with open_file(candidates_uri(output_uri, shard_id), "rb", storage) as f:
        return pq.read_table(f)
