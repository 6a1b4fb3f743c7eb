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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from alray.config import JobSpec
from alray.errors import ConfigError
from alray.models.files import find_module
from alray.output.folder import OutputFolder
from alray.scoring.registry import SCORES, is_custom
from alray.sources.files import open_file, parquet_bytes
from alray.sources.plan import ShardSpec

__all__ = ["SCORING_KEYS", "ShardRecord", "load_records", "model_content_hash", "read_candidates",
           "scoring_hash", "scoring_keys", "shard_key", "write_commit"]

#: Spec keys whose change alters a shard's stored scores or its candidates' columns: what is read
#: (columns, image preprocessing), the model (kind, members, output, task, classes) and the
#: score. With MC dropout the masks follow the seed, the batches and the device's generator, so
#: ``scoring.seed``, ``scoring.batch_size`` and ``resources.gpus_per_actor`` count too
#: (:func:`scoring_keys`).
SCORING_KEYS = ("pool.format", "pool.id_column", "pool.feature_column", "pool.image_column",
                "pool.image_uri_column", "pool.image", "pool.carry", "pool.label_column",
                "pool.fold_column", "model", "scoring.strategy",
                "scoring.mc_samples")
_MC_KEYS = ("scoring.seed", "scoring.batch_size", "resources.gpus_per_actor")
_RECORD_THREADS = 16
#: The layout of scores files; a commit of another layout is scored again. 2: scores files keep
#: the carried columns, so candidates can be rebuilt from them without reading the pool.
SCORES_LAYOUT = 2


def scoring_keys(spec: JobSpec) -> tuple[str, ...]:
    """The spec keys whose change rescores a shard (see :data:`SCORING_KEYS`); the target class
    only for a score that reads it."""
    strategy = spec.scoring.strategy
    target = () if is_custom(strategy) or not SCORES[strategy].needs_target \
        else ("scoring.target_class",)
    return SCORING_KEYS + target + (_MC_KEYS if spec.scoring.mc_samples else ())


def _python_source(source: str, key: str = "model.path") -> str:
    """The file of a ``package.module:name`` module (found without importing it)."""
    found = find_module(source.partition(":")[0])
    if found is None or not found.origin or not os.path.isfile(found.origin):
        raise ConfigError(key, f"cannot find the module of {source!r} on this machine; it must "
                               "be importable where `alray run` runs and on every Ray worker")
    return found.origin


def _file_hash(uri: str, storage) -> str:
    digest = hashlib.sha256()
    with open_file(uri, "rb", storage) as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_content_hash(spec: JobSpec) -> str:
    """sha256 over the content of every model file (new weights, or an edited ``python`` model's
    module, change it); a precomputed output has none."""
    model = spec.model
    key = "model.members" if model.members else "model.path"
    files = ([] if model.kind == "precomputed"
             else [_python_source(s, key) for s in model.sources] if model.kind == "python"
             else list(model.sources))
    if is_custom(spec.scoring.strategy):  # a user's own score: its module's code counts too
        files.append(_python_source(spec.scoring.strategy, "scoring.strategy"))
    hashes = [_file_hash(f, spec.fsspec_storage) for f in files]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest() if hashes else ""


def scoring_hash(spec: JobSpec) -> str:
    """One hash of the model's content and the spec keys that change scores."""
    text = f"{spec.digest(scoring_keys(spec))}{model_content_hash(spec)}layout{SCORES_LAYOUT}"
    return hashlib.sha256(text.encode()).hexdigest()


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
    #: :meth:`alray.selection.parts.CandidatePlan.key` of the candidates file, with the
    #: ledgers' digest: a record whose candidates were taken otherwise rebuilds them.
    candidates_key: str = ""
    #: With ``pool.label_column``: the shard's per-class totals for confident learning's
    #: thresholds (taken in the scan, so a resumed job needs no second look at its scores).
    class_totals: dict | None = None

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, default=str).encode()


def write_commit(folder: OutputFolder, record: ShardRecord, candidates: pa.Table | None) -> None:
    """Commit a shard whose scores file is already written: candidates, then the record."""
    if candidates is not None:
        folder.write(folder.candidates(record.shard_id), parquet_bytes(candidates))
    folder.write(folder.record(record.shard_id), record.to_json())


def _read_record(fs, path: str) -> ShardRecord | None:
    try:
        return ShardRecord(**json.loads(fs.cat_file(path)))
    except (OSError, ValueError, TypeError):  # unreadable or foreign: treat as not committed
        return None


def load_records(folder: OutputFolder) -> dict[str, ShardRecord]:
    """Every readable commit record in ``folder``, by shard id."""
    fs, _ = folder.fs()
    paths = [p for p in folder.listing(folder.COMMITS) if p.endswith(".json")
             and folder.shard_of(p) is not None]
    with ThreadPoolExecutor(_RECORD_THREADS) as pool:
        records = [r for r in pool.map(lambda p: _read_record(fs, p), paths) if r is not None]
    return {r.shard_id: r for r in records}


def read_candidates(folder: OutputFolder, shard_id: str) -> pa.Table:
    with folder.open(folder.candidates(shard_id)) as f:
        return pq.read_table(f)
