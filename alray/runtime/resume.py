"""Resuming a job from its commit records: reuse every shard whose record still matches.

Plain functions over the output folder; the driver calls them before handing out work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from alray.config import JobSpec
from alray.output.commits import (COMMITS_DIR, ShardRecord, candidates_uri, load_records,
                                  read_candidates, record_uri)
from alray.reduce import top_k_rows
from alray.runtime.outcome import (CANDIDATE_COLUMNS, ShardOutcome, label_candidates,
                                   scores_uri)
from alray.sources.files import open_file, open_parquet, url_to_fs
from alray.sources.plan import ShardSpec

__all__ = ["prepare_output", "reuse_committed"]

_READ_THREADS = 16


def _remove(fs, paths: list[str]) -> None:
    if paths:
        fs.rm(paths)


def prepare_output(spec: JobSpec, shards: list[ShardSpec], fresh: bool) -> dict[str, ShardRecord]:
    """Load the commit records to resume from; drop outputs of shards no longer in the pool.

    With ``fresh``, every earlier score and record is removed first and nothing is reused.
    """
    fs, root = url_to_fs(spec.output.uri, spec.fsspec_storage)
    if fresh:
        for folder in ("scores", COMMITS_DIR):
            if fs.isdir(f"{root}/{folder}"):
                fs.rm(f"{root}/{folder}", recursive=True)
        return {}
    records = load_records(spec.output.uri, spec.fsspec_storage)
    planned = {s.shard_id for s in shards}
    stale = [sid for sid in records if sid not in planned]
    if fs.isdir(f"{root}/scores"):
        stale_scores = [p for p in fs.ls(f"{root}/scores", detail=False)
                        if p.rsplit("/", 1)[-1].removesuffix(".parquet") not in planned]
        _remove(fs, stale_scores)
    for sid in stale:
        _remove(fs, [p for p in (record_uri(spec.output.uri, sid),
                                 candidates_uri(spec.output.uri, sid)) if fs.exists(p)])
        del records[sid]
    return records


def _rebuilt_candidates(shard: ShardSpec, spec: JobSpec) -> pa.Table:
    """Top-M again from the committed scores file (when M grew), with carried columns read back
    from the pool file for those rows only."""
    with open_file(scores_uri(spec.output.uri, shard.shard_id), "rb", spec.fsspec_storage) as f:
        scores = pq.read_table(f, columns=["id", "score", "predicted", "row"])
    top = top_k_rows(scores, spec.selection.per_shard).select(CANDIDATE_COLUMNS)
    if spec.pool.carry:
        with open_parquet(shard.uri, spec.fsspec_storage) as pf:
            carried = (pf.read_row_groups(list(shard.row_groups), columns=list(spec.pool.carry))
                       if shard.row_groups else pf.read(columns=list(spec.pool.carry)))
        positions = pa.array(top.column("row").to_numpy() - shard.first_row)
        for name in spec.pool.carry:
            top = top.append_column(name, carried.column(name).take(positions))
    return label_candidates(top, shard)


def _reused(shard: ShardSpec, record: ShardRecord, spec: JobSpec) -> ShardOutcome:
    if record.candidates >= spec.selection.per_shard:
        candidates = top_k_rows(read_candidates(spec.output.uri, shard.shard_id,
                                                spec.fsspec_storage),
                                spec.selection.per_shard)
    else:
        candidates = _rebuilt_candidates(shard, spec)
    return ShardOutcome(shard.shard_id, shard.uri, "done", rows_in=record.rows_in,
                        rows_scored=record.rows_scored, rows_quarantined=record.rows_quarantined,
                        errors=record.errors, candidates=candidates, seconds=0.0)


def reuse_committed(shards: list[ShardSpec], reusable: frozenset[str],
                    records: dict[str, ShardRecord], spec: JobSpec) -> dict[str, ShardOutcome]:
    """Outcomes for the ``reusable`` shards (their commit matches their current key; see
    :func:`alray.planning.plan_job`), read in threads."""
    matching = [s for s in shards if s.shard_id in reusable and s.shard_id in records]
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        outcomes = pool.map(lambda s: _reused(s, records[s.shard_id], spec), matching)
        return {o.shard_id: o for o in outcomes}


