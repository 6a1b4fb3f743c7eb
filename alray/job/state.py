"""A job's counts, per-shard status, reducer and error log, and the ``job.json`` it leaves.

Plain Python, no Ray: the driver feeds it one :class:`ShardOutcome` at a time. Counts, the error
log and the failure message are all derived from the same outcomes, so the numbers in the message
on stderr, in ``errors.jsonl`` and in ``job.json`` agree by construction.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket

import pyarrow as pa

from alray import __version__
from alray.config import JobSpec
from alray.output import ErrorLog
from alray.reduce.parts import CandidateReducer
from alray.job.progress import Progress
from alray.pipeline.outcome import ShardOutcome
from alray.sources.plan import ShardSpec

__all__ = ["JobState", "now", "running_record", "MAX_RUNS_KEPT"]

#: ``job.json`` keeps this many earlier runs (each a few hundred bytes).
MAX_RUNS_KEPT = 50


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


class JobState:
    """Everything the driver learns as outcomes arrive.

    Attributes:
        counts: ``shards``, ``shards_done``, ``shards_quarantined``, ``shards_left``,
            ``shards_reused``, ``rows_in``, ``rows_scored``, ``rows_quarantined``,
            ``rows_reused``; a shard that failed under ``on_error: fail`` counts as quarantined,
            with every row it holds.
    """

    def __init__(self, spec: JobSpec, shards: list[ShardSpec], progress: Progress):
        self.spec = spec
        self.total_shards = len(shards)
        self.reducer = CandidateReducer(spec)
        self.errors = ErrorLog()
        self.shards: dict[str, dict] = {}
        self.counts = dict(shards=len(shards), shards_done=0, shards_quarantined=0,
                           shards_left=len(shards), shards_reused=0, rows_in=0, rows_scored=0,
                           rows_quarantined=0, rows_reused=0)
        self.scored_now = dict(shards=0, rows=0)
        self.first_failure: dict | None = None
        self.over_limit = False
        self.scoring_seconds = 0.0
        self.id_type: pa.DataType = pa.int64()
        self.progress = progress
        #: With ``pool.label_column``: each done shard's class totals (confident learning).
        self.class_totals: dict[str, dict] = {}

    # -- feeding -------------------------------------------------------------------------------

    def done_ids(self) -> set[str]:
        """Shards recorded as done (scored now or reused): the only ones whose files stay."""
        return {sid for sid, shard in self.shards.items() if shard["status"] == "done"}

    def record(self, outcome: ShardOutcome, reused: bool = False) -> None:
        self.errors.add(outcome.errors)
        self.shards[outcome.shard_id] = dict(uri=outcome.uri, status=outcome.status,
                                             rows_in=outcome.rows_in,
                                             rows_scored=outcome.rows_scored,
                                             rows_quarantined=outcome.rows_quarantined,
                                             seconds=round(outcome.seconds, 3), reused=reused)
        for key in ("rows_in", "rows_scored", "rows_quarantined"):
            self.counts[key] += getattr(outcome, key)
        self.counts["shards_left"] -= 1
        if outcome.status == "done":
            self.counts["shards_done"] += 1
            if outcome.candidates is not None:
                self.id_type = outcome.candidates.schema.field("id").type
                self.reducer.update(outcome.candidates)
            if outcome.class_totals:
                self.class_totals[outcome.shard_id] = outcome.class_totals
        else:
            self.counts["shards_quarantined"] += 1
        if outcome.status == "failed" and self.first_failure is None:
            self.first_failure = outcome.errors[0]
        if reused:
            self.counts["shards_reused"] += 1
            self.counts["rows_reused"] += outcome.rows_in
        elif outcome.seconds > 0 or outcome.status == "done":
            self.scored_now["shards"] += 1
            self.scored_now["rows"] += outcome.rows_in
            self.progress.update(shards=1, rows=outcome.rows_in)
        self._check_quarantine_limit()

    @property
    def stopping(self) -> bool:
        """No new shard should be handed out."""
        return self.first_failure is not None or self.over_limit

    def _allowed_quarantined(self) -> float:
        limit = self.spec.resources.max_quarantined
        return limit * self.total_shards if isinstance(limit, float) else limit

    def _check_quarantine_limit(self) -> None:
        if self.spec.resources.on_error == "skip":
            self.over_limit = self.counts["shards_quarantined"] > self._allowed_quarantined()

    # -- the failure, from the final counts ------------------------------------------------------

    def _tally(self) -> str:
        c = self.counts
        return (f"errors.jsonl lists {_plural(self.errors.count, 'problem')} "
                f"({_plural(c['shards_quarantined'], 'shard')} and "
                f"{_plural(c['rows_quarantined'], 'row')} quarantined)")

    def _skip_advice(self) -> str:
        """What to set so that the same pool would run under ``skip`` (never a circle)."""
        bad = self.counts["shards_quarantined"]
        advice = "set resources.on_error: skip to quarantine bad shards and rows and score the rest"
        if bad > self._allowed_quarantined():
            advice += f", with resources.max_quarantined: {bad} (or more)"
        return advice

    def failure(self) -> str | None:
        """The one-line reason the job failed, or None; built from the final counts."""
        c = self.counts
        if self.first_failure is not None:
            r = self.first_failure
            row = f", row {r['row']}" if r.get("row") is not None else ""
            return (f"shard {r['shard']} ({r['uri']}){row}: {r['message']} [{r['kind']}]; "
                    f"{self._tally()}; fix the input, or {self._skip_advice()}")
        if self.over_limit:
            limit = self.spec.resources.max_quarantined
            allowed = math.floor(self._allowed_quarantined())
            return (f"resources.max_quarantined: {c['shards_quarantined']} of "
                    f"{self.total_shards} shards quarantined, past the limit of {limit} "
                    f"({allowed} shards); {self._tally()}; fix those files, or set "
                    f"resources.max_quarantined: {c['shards_quarantined']} to accept them")
        if c["rows_scored"] == 0 and c["shards_left"] == 0:
            return f"pool: no row could be scored; {self._tally()}"
        return None

    # -- job.json --------------------------------------------------------------------------------

    def this_run(self, started: str, status: str) -> dict:
        """This invocation's own figures: what it scored, what it reused, how fast."""
        rows = self.scored_now["rows"]
        rate = round(rows / self.scoring_seconds, 1) if rows and self.scoring_seconds else None
        return {"started": started, "finished": now(), "status": status,
                "shards_scored": self.scored_now["shards"], "rows_scored": rows,
                "shards_reused": self.counts["shards_reused"],
                "rows_reused": self.counts["rows_reused"],
                "scoring_seconds": round(self.scoring_seconds, 3), "rows_per_second": rate}

    def job_record(self, started: str, seconds: float, status: str, devices: list[str],
                   earlier_runs: list[dict], error: str | None) -> dict:
        """``job.json``: the whole job's counts, and this run added to the earlier ones.

        ``rows_per_second`` and ``scoring_seconds`` are those of the latest run that scored any
        rows, so a rerun that reuses every shard keeps the figures of the run that did the work.
        """
        runs = (earlier_runs + [self.this_run(started, status)])[-MAX_RUNS_KEPT:]
        measured = next((r for r in reversed(runs) if r.get("rows_per_second")), None)
        return {
            "name": self.spec.name,
            "status": status,
            "alray_version": __version__,
            "spec": self.spec.to_dict(),
            "spec_hash": self.spec.digest(),
            "started": started,
            "finished": now(),
            "seconds": round(seconds, 3),
            "scoring_seconds": measured["scoring_seconds"] if measured else 0.0,
            "rows_per_second": measured["rows_per_second"] if measured else None,
            "counts": self.counts,
            "shards_reused": self.counts["shards_reused"],
            "errors": self.errors.count,
            "actors": devices,
            "error": error,
            "runs": runs,
            "shards": self.shards,
        }


def running_record(spec: JobSpec, state: JobState, started: str, reusable: int,
                   rows_reused: int, rows_planned: int, earlier_runs: list[dict]) -> dict:
    """``job.json`` while the job runs: what ``alray status`` reads beside the commit records."""
    return {"name": spec.name, "status": "running", "alray_version": __version__,
            "spec": spec.to_dict(), "spec_hash": spec.digest(), "started": started,
            "host": socket.gethostname(), "pid": os.getpid(), "shards_planned": state.total_shards,
            "shards_reused": reusable, "rows_reused": rows_reused, "rows_planned": rows_planned,
            "runs": earlier_runs}
