"""The driver: plan, lock the output folder, hand shards to scoring actors, reduce, write outputs.

Everything that can be known without Ray is found first (:func:`alray.planning.plan_job`), and Ray
starts only when some shard needs scoring. Shards are handed out dynamically, at most two per
actor at a time (one running, one queued), so a fast actor takes more and memory stays bounded by
shards in flight. Under ``on_error: fail`` the first bad shard or row stops the hand-out; shards
already in flight still commit. An interrupt (Ctrl-C) records the job as ``stopped``, stops the
actors and the Ray this run started, and leaves the folder ready to resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from alray.config import JobSpec
from alray.errors import JobFailed, ModelError
from alray.output import write_job_json, write_selection
from alray.output.lock import OutputLock
from alray.planning import JobPlan, plan_job
from alray.runtime.actor import ScoringActor
from alray.runtime.jobstate import JobState, now, running_record
from alray.runtime.progress import Progress
from alray.runtime.resume import prepare_output, reuse_committed
from alray.runtime.outcome import bad_shard_outcome, error_record
from alray.sources.files import Storage, access_refusals, url_to_fs
from alray.sources.plan import ShardSpec

__all__ = ["Result", "run", "connect"]

_PER_ACTOR_IN_FLIGHT = 2


@dataclass
class Result:
    """What a finished job produced.

    Attributes:
        output_uri: the output folder.
        selection: ``selection.parquet`` as a table, in rank order.
        counts: ``shards``, ``shards_done``, ``shards_quarantined``, ``shards_left``,
            ``shards_reused``, ``rows_in``, ``rows_scored``, ``rows_quarantined``,
            ``rows_reused`` (for the whole job: reused shards count as done).
        job: the ``job.json`` record; ``job["runs"][-1]`` is this run's own figures.
    """

    output_uri: str
    selection: pa.Table
    counts: dict
    job: dict
    paths: dict = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float | None:
        """Rows per second of the latest run that scored rows (None if none ever did)."""
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


# ----------------------------------------------------------------------------------- dispatch


def _cause(exc: Exception) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _dispatch(state: JobState, pool: _ActorPool, shards: list[ShardSpec]) -> None:
    """Hand ``shards`` to the actors until all are recorded, or the job is stopping."""
    fail_fast = state.spec.resources.on_error == "fail"
    queue: deque[ShardSpec] = deque(shards)
    attempts: dict[str, int] = {}
    in_flight: dict = {}
    while in_flight or (queue and not state.stopping):
        while queue and not state.stopping and (slot := pool.least_loaded()) is not None:
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
            if attempts[shard.shard_id] < state.spec.resources.max_attempts:
                queue.appendleft(shard)
            else:
                message = (f"gave up after {attempts[shard.shard_id]} attempts; last error: "
                           f"{_cause(exc)}")
                state.record(bad_shard_outcome(
                    shard, error_record(shard, "retries_exhausted", message), fail_fast))


# ----------------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def _interrupts_held():
    """Hold off a second Ctrl-C while the job cleans up (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ray_processes(psutil, before: set[int]) -> list:
    """This process's descendants started since ``before`` whose command line names Ray."""
    found = []
    for process in psutil.Process().children(recursive=True):
        if process.pid in before:
            continue
        with contextlib.suppress(psutil.Error):
            if "ray" in " ".join(process.cmdline()):
                found.append(process)
    return found


def _stop_private_ray(before: set[int]) -> None:
    """Shut down the Ray this process started, and every Ray process it left behind.

    Ray's own shutdown stops the processes the driver started (GCS, raylet); the agents the
    raylet started exit only when they notice, up to a minute later, and an interrupt during
    ``ray.init`` leaves whatever had started so far. So the Ray processes that descend from this
    one (and did not before Ray started) are collected first, and ended if still running once
    Ray has shut down.
    """
    import psutil  # Ray ships it (ray/thirdparty_files)

    children = _ray_processes(psutil, before)
    ray.shutdown()
    _, alive = psutil.wait_procs(children, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def _ray(address: str | None, progress: Progress):
    """Ray for one job: joined or started here; a Ray started here is stopped on the way out,
    also when the start itself is interrupted."""
    if ray.is_initialized():
        yield
        return
    import psutil  # Ray ships it (ray/thirdparty_files)

    target = address or os.environ.get("RAY_ADDRESS")
    progress.say(f"joining Ray at {target}" if target else "starting a local Ray")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        connect(address)
        yield
    finally:
        with _interrupts_held():
            if target is None:
                _stop_private_ray(before)
            else:
                ray.shutdown()


def _score(state: JobState, plan: JobPlan, address: str | None) -> list[str]:
    """Score the shards that need it on Ray actors; returns the actors' devices."""
    shards = plan.to_score
    progress = state.progress
    with _ray(address, progress):
        count, options = _actor_plan(plan.spec)
        pool = _ActorPool(plan.spec, min(count, len(shards)), options, plan.scoring)
        try:
            progress.say(f"starting {len(pool.actors)} scoring actor(s) and loading the model")
            pool.wait_ready()
            progress.say(f"scoring {len(shards):,} shard(s) on {', '.join(pool.devices)}")
            progress.start(len(shards), plan.rows_of(shards))
            started = time.perf_counter()
            try:
                _dispatch(state, pool, shards)
            finally:
                state.scoring_seconds = time.perf_counter() - started
                progress.close()
        finally:
            with _interrupts_held():
                pool.shutdown()
    return pool.devices


# ----------------------------------------------------------------------------------- run


def _earlier_runs(output_uri: str, storage: Storage, fresh: bool) -> list[dict]:
    """The ``runs`` of the job.json an earlier run left (none with ``fresh``)."""
    if fresh:
        return []
    fs, root = url_to_fs(output_uri, storage)
    try:
        job = json.loads(fs.cat_file(f"{root}/job.json"))
    except (FileNotFoundError, ValueError):
        return []
    return list(job.get("runs", [])) if isinstance(job, dict) else []


def _clear_stale_outputs(output_uri: str, storage: Storage) -> None:
    fs, path = url_to_fs(output_uri, storage)
    for name in ("selection.parquet", "job.json", "errors.jsonl"):
        if fs.exists(f"{path}/{name}"):
            fs.rm(f"{path}/{name}")


def _record_duplicates(state: JobState) -> None:
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


def _record_known(state: JobState, plan: JobPlan, fresh: bool) -> None:
    """Record what needs no actor: the shards planning found bad, and the reusable commits."""
    spec = plan.spec
    fail_fast = spec.resources.on_error == "fail"
    for shard in plan.bad:
        problem = shard.problem
        state.record(bad_shard_outcome(shard, error_record(shard, problem.kind, problem.message),
                                       fail_fast))
    with access_refusals("output.uri", spec.output.uri):
        records = prepare_output(spec, list(plan.shards), fresh)
        reused = reuse_committed(list(plan.shards), plan.reusable, records, spec)
    for shard in plan.shards:
        if shard.shard_id in reused:
            state.record(reused[shard.shard_id], reused=True)


def _finish(state: JobState, started: str, clock: float, devices: list[str],
            earlier_runs: list[dict]) -> Result:
    spec = state.spec
    storage = spec.fsspec_storage
    _record_duplicates(state)
    failure = state.failure()
    errors_uri = state.errors.commit(spec.output.uri, storage)
    status = "failed" if failure else "succeeded"
    record = state.job_record(started, time.perf_counter() - clock, status, devices,
                              earlier_runs, failure)
    paths = {"errors": errors_uri}
    selection = None
    if not failure:
        paths["selection"], selection = write_selection(
            spec.output.uri, state.reducer.result(), spec.pool.carry, state.id_type, storage)
    paths["job"] = write_job_json(spec.output.uri, record, storage)
    if failure:
        raise JobFailed(failure)
    return Result(spec.output.uri, selection, state.counts, record, paths)


def _stopped(state: JobState, started: str, clock: float, earlier_runs: list[dict],
             reason: str) -> str:
    """Record the job as stopped in ``job.json``; returns the line to show the user."""
    spec = state.spec
    record = state.job_record(started, time.perf_counter() - clock, "stopped", [],
                              earlier_runs, reason)
    with contextlib.suppress(Exception):
        state.errors.commit(spec.output.uri, spec.fsspec_storage)
    write_job_json(spec.output.uri, record, spec.fsspec_storage)
    c = state.counts
    return (f"{reason}: {c['shards_done'] + c['shards_quarantined']} of {c['shards']} shards "
            "committed and kept; run the same command again to resume")


def run(spec: JobSpec, out: str | None = None, *, address: str | None = None,
        fresh: bool = False, progress: bool = True) -> Result:
    """Run a job: score every row of the pool and write the selection.

    Ray starts only when some shard needs scoring; a Ray that this call starts is shut down before
    it returns. To keep one Ray for several jobs (a notebook, a loop of rounds), call
    ``ray.init()`` first: a Ray already running is used and left running.

    Args:
        spec: a validated job spec.
        out: replaces ``output.uri``.
        address: a Ray address to join (default: ``RAY_ADDRESS``, else a local Ray).
        fresh: ignore earlier outputs under ``output.uri`` and score every shard again. Otherwise
            the job resumes: shards committed under the same key are not scored again.
        progress: print what the job is doing, and a progress bar on a terminal, to stderr.

    Raises:
        ConfigError: the spec does not fit the pool or the model (a problem every shard shares),
            the pool or model file is missing, or another run holds the output folder. Nothing
            has run.
        ModelError: the model cannot be loaded or returns the wrong shape.
        JobFailed: a bad shard or row under ``on_error: fail``, too many quarantined shards, or
            nothing could be scored.
        KeyboardInterrupt: the run was interrupted; ``job.json`` says ``stopped`` and the same
            call resumes.
    """
    if out is not None:
        spec = spec.replace(output=type(spec.output)(uri=out))
    started, clock = now(), time.perf_counter()
    reporter = Progress(enabled=progress)
    plan = plan_job(spec, fresh=fresh)
    storage = spec.fsspec_storage
    with OutputLock.acquire(spec.output.uri, storage) as lock:
        if lock.advisory:
            reporter.say(f"{spec.output.uri}: this store has no conditional writes, so the "
                         "output folder's lock is advisory there")
        earlier_runs = _earlier_runs(spec.output.uri, storage, fresh)
        with access_refusals("output.uri", spec.output.uri):
            _clear_stale_outputs(spec.output.uri, storage)
        state = JobState(spec, list(plan.shards), reporter)
        try:
            _record_known(state, plan, fresh)
            to_score = plan.to_score
            reporter.say(f"{len(plan.shards):,} shard(s): {len(to_score):,} to score, "
                         f"{state.counts['shards_reused']:,} reused, {len(plan.bad):,} bad")
            write_job_json(spec.output.uri, running_record(
                spec, state, started, state.counts["shards_reused"], state.counts["rows_reused"],
                plan.rows, earlier_runs), storage)
            devices = [] if state.stopping or not to_score else _score(state, plan, address)
        except KeyboardInterrupt:
            with _interrupts_held():
                message = _stopped(state, started, clock, earlier_runs, "interrupted")
            raise KeyboardInterrupt(message) from None
        except BaseException as exc:
            state.errors.close()
            if isinstance(exc, Exception):
                with contextlib.suppress(Exception):
                    write_job_json(spec.output.uri, state.job_record(
                        started, time.perf_counter() - clock, "failed", [], earlier_runs,
                        str(exc)), storage)
            raise
        return _finish(state, started, clock, devices, earlier_runs)
