"""Resuming a job from its commit records: reuse every shard whose record still matches.

Plain functions over the output folder; the driver calls them before handing out work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dataclasses

import pyarrow.parquet as pq

from alray.config import JobSpec
from alray.ledger import Exclusion
from alray.output.commits import ShardRecord, load_records, read_candidates, write_commit
from alray.output.folder import OutputFolder
from alray.pipeline.candidates import take_candidates
from alray.pipeline.outcome import ShardOutcome, label_candidates
from alray.sources.plan import ShardSpec

__all__ = ["prepare_output", "rebuild_committed", "remove_leftovers", "reuse_committed"]

_READ_THREADS = 16


def remove_leftovers(folder: OutputFolder, planned: set[str]) -> None:
    """Remove from ``scores/`` and ``_shards/`` what no planned shard owns: files of shards no
    longer in the pool, and temporary files of writes that never finished (an actor killed
    mid-commit). Called with no actor running."""
    fs, _ = folder.fs()
    leftovers = [path for name in (folder.SCORES, folder.COMMITS)
                 for path in folder.listing(name) if folder.shard_of(path) not in planned]
    if leftovers:
        fs.rm(leftovers)


def prepare_output(spec: JobSpec, shards: list[ShardSpec], fresh: bool) -> dict[str, ShardRecord]:
    """Load the commit records to resume from; drop outputs of shards no longer in the pool.

    With ``fresh``, every earlier score and record is removed first and nothing is reused.
    """
    folder = OutputFolder.of(spec)
    if fresh:
        folder.remove(folder.SCORES, folder.COMMITS)
        return {}
    planned = {s.shard_id for s in shards}
    remove_leftovers(folder, planned)
    return {sid: record for sid, record in load_records(folder).items() if sid in planned}


def _reused(shard: ShardSpec, record: ShardRecord, spec: JobSpec) -> ShardOutcome:
    candidates = read_candidates(OutputFolder.of(spec), shard.shard_id)
    return _outcome(shard, record, candidates)


def _outcome(shard: ShardSpec, record: ShardRecord, candidates) -> ShardOutcome:
    return ShardOutcome(shard.shard_id, shard.uri, "done", rows_in=record.rows_in,
                        rows_scored=record.rows_scored, rows_quarantined=record.rows_quarantined,
                        errors=record.errors, candidates=candidates, seconds=0.0,
                        class_totals=record.class_totals)


def reuse_committed(shards: list[ShardSpec], reusable: frozenset[str],
                    records: dict[str, ShardRecord], spec: JobSpec) -> dict[str, ShardOutcome]:
    """Outcomes for the ``reusable`` shards (their commit matches their current key; see
    :func:`alray.job.plan.plan_job`), read in threads."""
    matching = [s for s in shards if s.shard_id in reusable and s.shard_id in records]
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        outcomes = pool.map(lambda s: _reused(s, records[s.shard_id], spec), matching)
        return {o.shard_id: o for o in outcomes}




def _rebuilt(shard: ShardSpec, record: ShardRecord, spec: JobSpec, exclusion: Exclusion,
             candidates_key: str) -> ShardOutcome:
    """Take the shard's candidates again from its scores file, and commit them."""
    folder = OutputFolder.of(spec)
    with folder.open(folder.scores(shard.shard_id)) as f:
        scored = pq.read_table(f)
    candidates = label_candidates(take_candidates(scored, spec, exclusion), shard)
    record = dataclasses.replace(record, candidates=spec.selection.per_shard,
                                 candidates_key=candidates_key)
    write_commit(folder, record, candidates)
    return _outcome(shard, record, candidates)


def rebuild_committed(shards: list[ShardSpec], rebuild: frozenset[str],
                      records: dict[str, ShardRecord], spec: JobSpec, exclusion: Exclusion,
                      candidates_key: str) -> dict[str, ShardOutcome]:
    """Outcomes for the shards to ``rebuild`` (their scores still hold; their candidates do
    not: the ledgers, ``k`` or the selection changed), each rebuilt from its scores file, in
    threads; no model and no Ray."""
    matching = [s for s in shards if s.shard_id in rebuild and s.shard_id in records]
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        outcomes = pool.map(lambda s: _rebuilt(s, records[s.shard_id], spec, exclusion,
                                               candidates_key), matching)
        return {o.shard_id: o for o in outcomes}
