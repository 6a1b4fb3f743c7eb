"""The driver: plan, lock the output folder, hand shards to scoring actors, reduce, write outputs.

Everything that can be known without Ray is found first (:func:`alray.job.plan.plan_job`), and Ray
starts only when some shard needs scoring. Shards are handed out dynamically, at most two per
actor at a time (one running, one queued), so a fast actor takes more and memory stays bounded by
shards in flight. Under ``on_error: fail`` the first bad shard or row stops the hand-out; shards
already in flight still commit. An interrupt (Ctrl-C) records the job as ``stopped``, stops the
actors and the Ray this run started, and leaves the folder ready to resume.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from alray.cartography.pool import write_label_issues
from alray.config import JobSpec
from alray.errors import JobFailed, ModelError
from alray.job.plan import JobPlan, plan_job
from alray.job.progress import Progress
from alray.job.resume import prepare_output, rebuild_committed, remove_leftovers, reuse_committed
from alray.job.state import JobState, now, running_record
from alray.ledger import append_ledger, next_round
from alray.output import OutputFolder, write_job_json, write_selection
from alray.output.lock import OutputLock
from alray.pipeline.outcome import bad_shard_outcome, error_record
from alray.runtime.actors import ActorPool, actor_options
from alray.selection.stage import select
from alray.runtime.session import (FETCH_SECONDS, ClusterLost, ClusterWatch, interrupts_held,
                                   ray_session)
from alray.sources.files import access_refusals
from alray.sources.plan import ShardSpec

__all__ = ["Result", "run"]

#: How often a wait on actors stops to look at the cluster and the actors' start.
_POLL_SECONDS = 5.0


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


# ----------------------------------------------------------------------------------- dispatch


def _cause(exc: Exception) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _dispatch(state: JobState, pool: ActorPool, shards: list[ShardSpec]) -> None:
    """Hand ``shards`` to ready actors until all are recorded, or the job is stopping."""
    fail_fast = state.spec.resources.on_error == "fail"
    queue: deque[ShardSpec] = deque(shards)
    attempts: dict[str, int] = {}
    in_flight: dict = {}
    while in_flight or (queue and not state.stopping):
        while queue and not state.stopping and (slot := pool.least_loaded()) is not None:
            shard = queue.popleft()
            in_flight[pool.submit(slot, shard)] = (slot, pool.actors[slot], shard)
        done, _ = ray.wait([*in_flight, *pool.starting], num_returns=1, timeout=_POLL_SECONDS)
        if not done:
            pool.watch.check()
            pool.check_start()
            continue
        if pool.started(done[0]):
            continue
        slot, actor, shard = in_flight.pop(done[0])
        pool.load[slot] -= 1
        try:
            state.record(ray.get(done[0], timeout=FETCH_SECONDS))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError,
                ray.exceptions.GetTimeoutError, ray.exceptions.ObjectLostError) as exc:
            if isinstance(getattr(exc, "cause", None), ModelError):
                raise exc.cause from None
            if not isinstance(exc, ray.exceptions.RayTaskError):  # the actor, or its result, is gone
                pool.replace(slot, actor)
            attempts[shard.shard_id] = attempts.get(shard.shard_id, 0) + 1
            if attempts[shard.shard_id] < state.spec.resources.max_attempts:
                queue.appendleft(shard)
            else:
                message = (f"gave up after {attempts[shard.shard_id]} attempts; last error: "
                           f"{_cause(exc)}")
                state.record(bad_shard_outcome(
                    shard, error_record(shard, "retries_exhausted", message), fail_fast))


def _score(state: JobState, plan: JobPlan, address: str | None,
           keep_actors: bool = False) -> list[str]:
    """Score the shards that need it on Ray actors; returns the actors' devices."""
    shards = plan.to_score
    progress = state.progress
    completed = False
    with ray_session(address, progress) as session:
        count, options = actor_options(plan.spec, session)
        pool = ActorPool(plan.spec, min(count, len(shards)), options, plan.scoring,
                         ClusterWatch(), plan.exclusion, keep_warm=keep_actors and session.kept)
        try:
            progress.say(f"starting {len(pool.actors)} scoring actor(s) and loading the model")
            pool.wait_first()
            progress.say(f"scoring {len(shards):,} shard(s) on {pool.devices[min(pool.devices)]}"
                         + (f" ({len(pool.actors) - pool.ready_count} more actor(s) loading)"
                            if pool.ready_count < len(pool.actors) else ""))
            progress.start(len(shards), plan.rows_of(shards))
            started = time.perf_counter()
            try:
                _dispatch(state, pool, shards)
                completed = True
            finally:
                state.scoring_seconds = time.perf_counter() - started
                progress.close()
        finally:
            with interrupts_held():
                pool.shutdown(completed)
    return [pool.devices[slot] for slot in sorted(pool.devices)]


# ----------------------------------------------------------------------------------- run


def _earlier_runs(folder: OutputFolder, fresh: bool) -> list[dict]:
    """The ``runs`` of the job.json an earlier run left (none with ``fresh``)."""
    job = None if fresh else folder.read_json(folder.JOB)
    return list(job.get("runs", [])) if isinstance(job, dict) else []


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
        reused.update(rebuild_committed(list(plan.shards), plan.rebuild, records, spec,
                                        plan.exclusion, plan.candidates_key))
    for shard in plan.shards:
        if shard.shard_id in reused:
            state.record(reused[shard.shard_id], reused=True)


def _finish(state: JobState, started: str, clock: float, devices: list[str],
            earlier_runs: list[dict]) -> Result:
    spec = state.spec
    folder = OutputFolder.of(spec)
    remove_leftovers(folder, state.done_ids())
    _record_duplicates(state)
    failure = state.failure()
    errors_uri = state.errors.commit(folder)
    status = "failed" if failure else "succeeded"
    record = state.job_record(started, time.perf_counter() - clock, status, devices,
                              earlier_runs, failure)
    paths = {"errors": errors_uri}
    selection = None
    if not failure:
        paths["selection"], selection = write_selection(
            folder, select(state.reducer.result(), spec), spec.pool.carry, state.id_type)
        if spec.pool.label_column is not None:
            done = sorted(state.done_ids())
            paths["label_issues"], record["counts"]["label_issues"] = write_label_issues(
                folder, done, [state.class_totals[s] for s in done if s in state.class_totals])
    paths["job"] = write_job_json(folder, record)
    if failure:
        raise JobFailed(failure)
    return Result(spec.output.uri, selection, state.counts, record, paths)


def _stopped(state: JobState, started: str, clock: float, earlier_runs: list[dict],
             reason: str, status: str = "stopped") -> str:
    """Record the job as ``status`` in ``job.json``; returns the line to show the user: why it
    stopped, what is kept, and that the same command resumes."""
    spec = state.spec
    record = state.job_record(started, time.perf_counter() - clock, status, [],
                              earlier_runs, reason)
    folder = OutputFolder.of(spec)
    with contextlib.suppress(Exception):
        state.errors.commit(folder)
    write_job_json(folder, record)
    c = state.counts
    return (f"{reason}: {c['shards_done'] + c['shards_quarantined']} of {c['shards']} shards "
            "committed and kept; run the same command again to resume")


def _send_to_ledger(result: Result, spec: JobSpec, ledger: str, reporter: Progress) -> None:
    """Append the selection to ``ledger`` as ``sent``, in the ledger's next round."""
    with access_refusals("--ledger", ledger):
        round_ = next_round(ledger, spec.fsspec_storage)
        path = append_ledger(ledger, result.selection.column("id"), "sent", round=round_,
                             source=f"alray run {spec.name}", storage=spec.fsspec_storage)
    result.paths["ledger"] = path
    excluded = ledger in spec.selection.exclude
    reporter.say(f"ledger: {result.selection.num_rows:,} id(s) recorded as sent (round {round_}) "
                 f"in {ledger}" + ("" if excluded else "; add it to selection.exclude so the "
                                                       "next run does not select them again"))


def run(spec: JobSpec, out: str | None = None, *, address: str | None = None,
        fresh: bool = False, progress: bool = True, ledger: str | None = None,
        keep_actors: bool = False) -> Result:
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
        ledger: a ledger URI (:mod:`alray.ledger`) to which the selection is appended as
            ``sent`` once the job has succeeded, in the ledger's next round.
        keep_actors: on a Ray the caller started (``ray.init()`` before this call), keep the
            scoring actors alive when the job ends, so that the next ``run`` with the same
            actor options loads its model into them instead of starting new processes (a loop
            of rounds). They hold their CPUs or GPUs meanwhile;
            ``alray.runtime.warm.release()`` ends them, as does ``ray.shutdown()``.

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
    folder = OutputFolder.of(spec)
    with OutputLock.acquire(folder.uri, folder.storage) as lock:
        if lock.advisory:
            reporter.say(f"{spec.output.uri}: this store has no conditional writes, so the "
                         "output folder's lock is advisory there")
        earlier_runs = _earlier_runs(folder, fresh)
        with access_refusals("output.uri", spec.output.uri):
            folder.remove(*folder.SUMMARIES)
        state = JobState(spec, list(plan.shards), reporter)
        try:
            _record_known(state, plan, fresh)
            to_score = plan.to_score
            reporter.say(f"{len(plan.shards):,} shard(s): {len(to_score):,} to score, "
                         f"{state.counts['shards_reused']:,} reused, {len(plan.bad):,} bad")
            write_job_json(folder, running_record(
                spec, state, started, state.counts["shards_reused"], state.counts["rows_reused"],
                plan.rows, earlier_runs))
            devices = [] if state.stopping or not to_score else _score(state, plan, address,
                                                                       keep_actors)
        except KeyboardInterrupt:
            with interrupts_held():
                message = _stopped(state, started, clock, earlier_runs, "interrupted")
            raise KeyboardInterrupt(message) from None
        except ClusterLost as exc:
            raise ClusterLost(_stopped(state, started, clock, earlier_runs, str(exc),
                                       status="failed")) from None
        except BaseException as exc:
            state.errors.close()
            if isinstance(exc, Exception):
                with contextlib.suppress(Exception):
                    write_job_json(folder, state.job_record(
                        started, time.perf_counter() - clock, "failed", [], earlier_runs,
                        str(exc)))
            raise
        result = _finish(state, started, clock, devices, earlier_runs)
    if ledger is not None:
        _send_to_ledger(result, spec, ledger, reporter)
    return result
