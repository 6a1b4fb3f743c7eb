"""The driver: plan shards, hand them to scoring actors, reduce their candidates, write outputs.

Shards are handed out dynamically, at most two per actor at a time (one running, one queued), so
a fast actor takes more and memory stays bounded by shards in flight. Under ``on_error: fail``
the first bad shard or row stops the hand-out; shards already in flight still commit.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from alray import __version__
from alray.config import JobSpec
from alray.errors import JobFailed, ModelError
from alray.models import check_model_source
from alray.output import ErrorLog, write_job_json, write_selection
from alray.output.commits import scoring_hash
from alray.reduce import TopKReducer
from alray.runtime.actor import ScoringActor
from alray.runtime.progress import Progress
from alray.runtime.resume import prepare_output, reuse_committed
from alray.runtime.scan import ShardOutcome, bad_shard_outcome, error_record
from alray.sources.files import Storage, access_refusals, url_to_fs
from alray.sources.images import plan_image_shards
from alray.sources.plan import ShardSpec, list_pool_files, plan_shards

__all__ = ["Result", "run", "connect"]

_PER_ACTOR_IN_FLIGHT = 2


@dataclass
class Result:
    """What a finished job produced.

    Attributes:
        output_uri: the output folder.
        selection: ``selection.parquet`` as a table, in rank order.
        counts: ``shards``, ``shards_done``, ``shards_quarantined``, ``rows_in``, ``rows_scored``,
            ``rows_quarantined``.
        job: the ``job.json`` record.
    """

    output_uri: str
    selection: pa.Table
    counts: dict
    job: dict
    paths: dict = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.job["rows_per_second"]


def connect(address: str | None = None) -> bool:
    """Join or start Ray; returns True when this call started it.

    With no address and no ``RAY_ADDRESS``, starts a Ray of its own on this machine.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        # A private single-machine Ray: keep it on loopback (Ray binds to the external interface
        # unless this is 0), without cluster tokens, and with its workers, which do all of the
        # job's work, at normal priority (Ray runs workers at nice 15, behind every other
        # process); each unless the user says otherwise.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


# ----------------------------------------------------------------------------------- actors


def _actor_plan(spec: JobSpec) -> tuple[int, dict]:
    """How many actors at most, and the Ray options of each."""
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    gpus = spec.resources.gpus_per_actor
    use_gpu = cluster_gpus > 0 if gpus == "auto" else gpus == 1
    if spec.resources.actors is not None:
        count = spec.resources.actors
    else:
        count = cluster_gpus if use_gpu else max(1, int(resources.get("CPU", 1)))
    options = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0}
    return max(1, count), options


class _ActorPool:
    """Scoring actors in slots; a dead actor's slot gets a fresh actor."""

    def __init__(self, spec: JobSpec, count: int, options: dict, scoring: str):
        self._make = lambda: ScoringActor.options(**options).remote(spec, [os.getcwd()], scoring)
        self.actors = [self._make() for _ in range(count)]
        self.load = [0] * count
        self.devices: list[str] = []

    def grow(self, count: int) -> None:
        while len(self.actors) < count:
            self.actors.append(self._make())
            self.load.append(0)

    def wait_ready(self) -> None:
        reports = ray.get([a.ready.remote() for a in self.actors])
        for report in reports:
            if report["error"]:
                raise ModelError(report["error"])
        self.devices = [r["device"] for r in reports]

    def least_loaded(self) -> int | None:
        slot = min(range(len(self.actors)), key=self.load.__getitem__)
        return slot if self.load[slot] < _PER_ACTOR_IN_FLIGHT else None

    def submit(self, slot: int, shard: ShardSpec):
        self.load[slot] += 1
        return self.actors[slot].score.remote(shard)

    def replace(self, slot: int, dead) -> None:
        if self.actors[slot] is dead:
            self.actors[slot] = self._make()

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


# ----------------------------------------------------------------------------------- job state


class _JobState:
    """Counts, per-shard status, the reducer and the error log, updated as outcomes arrive."""

    def __init__(self, spec: JobSpec, shards: list[ShardSpec]):
        self.spec = spec
        self.total_shards = len(shards)
        self.reducer = TopKReducer(spec.selection.k)
        self.errors = ErrorLog()
        self.shards: dict[str, dict] = {}
        self.counts = dict(shards=len(shards), shards_done=0, shards_quarantined=0, rows_in=0,
                           rows_scored=0, rows_quarantined=0)
        self.shards_reused = self.rows_reused = 0
        self.failure: str | None = None
        self.scoring_seconds = 0.0
        self.id_type: pa.DataType = pa.int64()
        self.progress = Progress(len(shards), sum(s.num_rows or 0 for s in shards))

    def record(self, outcome: ShardOutcome) -> None:
        self.errors.add(outcome.errors)
        self.shards[outcome.shard_id] = dict(uri=outcome.uri, status=outcome.status,
                                             rows_in=outcome.rows_in,
                                             rows_scored=outcome.rows_scored,
                                             rows_quarantined=outcome.rows_quarantined,
                                             seconds=round(outcome.seconds, 3))
        if outcome.status == "failed":
            self.failure = self.failure or _describe_first(outcome.errors[0])
            return
        for key in ("rows_in", "rows_scored", "rows_quarantined"):
            self.counts[key] += getattr(outcome, key)
        if outcome.status == "quarantined":
            self.counts["shards_quarantined"] += 1
        else:
            self.counts["shards_done"] += 1
            if outcome.candidates is not None:
                self.id_type = outcome.candidates.schema.field("id").type
                self.reducer.update(outcome.candidates)
        self.progress.update(shards=1, rows=outcome.rows_in)
        self._check_quarantine_limit()

    def _check_quarantine_limit(self) -> None:
        limit = self.spec.resources.max_quarantined
        bad = self.counts["shards_quarantined"]
        allowed = limit * self.total_shards if isinstance(limit, float) else limit
        if self.spec.resources.on_error == "skip" and bad > allowed and not self.failure:
            self.failure = (f"resources.max_quarantined: {bad} of {self.total_shards} shards "
                            f"quarantined, past the limit of {limit}; see errors.jsonl, fix the "
                            "pool or raise resources.max_quarantined")


def _describe_first(record: dict) -> str:
    row = f", row {record['row']}" if record.get("row") is not None else ""
    return (f"shard {record['shard']} ({record['uri']}){row}: {record['message']} "
            f"[{record['kind']}]; fix the input or set resources.on_error: skip")


# ----------------------------------------------------------------------------------- dispatch


def _cause(exc: Exception) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _dispatch(state: _JobState, pool: _ActorPool, shards: list[ShardSpec],
              reused: dict[str, ShardOutcome]) -> None:
    spec = state.spec
    fail_fast = spec.resources.on_error == "fail"
    queue: deque[ShardSpec] = deque()
    for shard in shards:
        if shard.problem is not None:
            state.record(bad_shard_outcome(shard, error_record(shard, *shard.problem),
                                           fail_fast))
        elif shard.shard_id in reused:
            state.record(reused[shard.shard_id])
            state.shards_reused += 1
            state.rows_reused += reused[shard.shard_id].rows_in
        else:
            queue.append(shard)
    attempts: dict[str, int] = {}
    in_flight: dict = {}
    while in_flight or (queue and not state.failure):
        while queue and not state.failure and (slot := pool.least_loaded()) is not None:
            shard = queue.popleft()
            in_flight[pool.submit(slot, shard)] = (slot, pool.actors[slot], shard)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        slot, actor, shard = in_flight.pop(done[0])
        pool.load[slot] -= 1
        try:
            state.record(ray.get(done[0]))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            if isinstance(getattr(exc, "cause", None), ModelError):
                raise exc.cause from None
            if isinstance(exc, ray.exceptions.RayActorError):
                pool.replace(slot, actor)
            attempts[shard.shard_id] = attempts.get(shard.shard_id, 0) + 1
            if attempts[shard.shard_id] < spec.resources.max_attempts:
                queue.appendleft(shard)
            else:
                message = (f"gave up after {attempts[shard.shard_id]} attempts; last error: "
                           f"{_cause(exc)}")
                state.record(bad_shard_outcome(
                    shard, error_record(shard, "retries_exhausted", message), fail_fast))


# ----------------------------------------------------------------------------------- run


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _clear_stale_outputs(output_uri: str, storage: Storage) -> None:
    fs, path = url_to_fs(output_uri, storage)
    for name in ("selection.parquet", "job.json", "errors.jsonl"):
        if fs.exists(f"{path}/{name}"):
            fs.rm(f"{path}/{name}")


def _job_record(spec: JobSpec, state: _JobState, started: str, seconds: float, status: str,
                devices: list[str]) -> dict:
    return {
        "name": spec.name,
        "status": status,
        "alray_version": __version__,
        "spec": spec.to_dict(),
        "spec_hash": spec.digest(),
        "started": started,
        "finished": _now(),
        "seconds": round(seconds, 3),
        "scoring_seconds": round(state.scoring_seconds, 3),
        "rows_per_second": round((state.counts["rows_in"] - state.rows_reused)
                                 / max(state.scoring_seconds, 1e-9), 1),
        "counts": state.counts,
        "shards_reused": state.shards_reused,
        "errors": state.errors.count,
        "actors": devices,
        "error": state.failure,
        "shards": state.shards,
    }


def _running_record(spec: JobSpec, state: _JobState, started: str,
                    reused: dict[str, ShardOutcome]) -> dict:
    """``job.json`` while the job runs: what ``alray status`` reads beside the commit records."""
    return {"name": spec.name, "status": "running", "alray_version": __version__,
            "spec": spec.to_dict(), "spec_hash": spec.digest(), "started": started,
            "host": socket.gethostname(), "pid": os.getpid(), "shards_planned": state.total_shards,
            "shards_reused": len(reused), "rows_reused": sum(o.rows_in for o in reused.values()),
            "rows_planned": state.progress.rows}


def _record_duplicates(state: _JobState) -> None:
    duplicates = state.reducer.duplicates()
    if duplicates is None:
        return
    state.errors.add([
        {"shard": row["shard"], "uri": row["uri"], "row": row["row"], "id": row["id"],
         "kind": "duplicate_id",
         "message": f"id also in shard {row['kept_in']}, whose copy ranks higher; this copy is "
                    "never selected"}
        for row in duplicates.select(["shard", "uri", "row", "id", "kept_in"]).to_pylist()
    ])


def run(spec: JobSpec, out: str | None = None, *, address: str | None = None,
        fresh: bool = False) -> Result:
    """Run a job: score every row of the pool and write the selection.

    Args:
        spec: a validated job spec.
        out: replaces ``output.uri``.
        address: a Ray address to join (default: ``RAY_ADDRESS``, else a local Ray).
        fresh: ignore earlier outputs under ``output.uri`` and score every shard again. Otherwise
            the job resumes: shards committed under the same key are not scored again.

    Raises:
        ConfigError: the pool or model file is missing (nothing has run).
        ModelError: the model cannot be loaded or returns the wrong shape.
        JobFailed: a bad shard or row under ``on_error: fail``, too many quarantined shards, or
            nothing could be scored.
    """
    if out is not None:
        spec = spec.replace(output=type(spec.output)(uri=out))
    started, clock = _now(), time.perf_counter()
    storage = spec.fsspec_storage
    check_model_source(spec.model, storage)
    images = spec.pool.reads_images and spec.pool.image_source_column is None
    files = [] if images else list_pool_files(spec.pool.uri, storage=storage)
    image_shards = (plan_image_shards(spec.pool.uri, spec.pool.rows_per_shard, storage)
                    if images else None)
    scoring = scoring_hash(spec)
    with access_refusals("output.uri", spec.output.uri):
        _clear_stale_outputs(spec.output.uri, storage)
    connect(address)
    count, options = _actor_plan(spec)
    # Actors load the model while the driver reads footers; more come if files split into shards.
    pool = _ActorPool(spec, min(count, len(files) or len(image_shards)), options, scoring)
    state = None
    try:
        shards = image_shards or plan_shards(files, spec.pool.rows_per_shard, storage,
                                             id_column=spec.pool.id_column)
        state = _JobState(spec, shards)
        with access_refusals("output.uri", spec.output.uri):
            reused = reuse_committed(shards, prepare_output(spec, shards, fresh), spec, scoring)
            write_job_json(spec.output.uri, _running_record(spec, state, started, reused),
                           storage)
        pool.grow(min(count, len(shards) - len(reused)))
        pool.wait_ready()
        scoring_started = time.perf_counter()
        _dispatch(state, pool, shards, reused)
        state.scoring_seconds = time.perf_counter() - scoring_started
    except BaseException:
        if state is not None:
            state.errors.close()
        raise
    finally:
        pool.shutdown()
    state.progress.close()
    _record_duplicates(state)
    if not state.failure and state.counts["rows_scored"] == 0:
        state.failure = "pool: no row could be scored; see errors.jsonl"
    seconds = time.perf_counter() - clock
    errors_uri = state.errors.commit(spec.output.uri, storage)
    status = "failed" if state.failure else "succeeded"
    record = _job_record(spec, state, started, seconds, status, pool.devices)
    paths = {"errors": errors_uri}
    if not state.failure:
        paths["selection"], selection = write_selection(
            spec.output.uri, state.reducer.result(), spec.pool.carry, state.id_type, storage)
    paths["job"] = write_job_json(spec.output.uri, record, storage)
    if state.failure:
        raise JobFailed(state.failure)
    return Result(spec.output.uri, selection, state.counts, record, paths)
