"""``alray status OUT|SPEC``: progress of a running or stopped job, from its output folder alone
(given directly, or as the job spec that names it and its storage options)."""

from __future__ import annotations

import datetime as dt
import os
import socket

from alray.errors import ConfigError
from alray.output.commits import load_records
from alray.output.folder import OutputFolder
from alray.sources.files import Storage, access_refusals

__all__ = ["job_status", "format_status"]


def _driver_alive(job: dict) -> bool | None:
    """Whether the driver that wrote ``job`` still runs (None: on another host, unknown)."""
    if job.get("host") != socket.gethostname() or not job.get("pid"):
        return None
    try:
        os.kill(job["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_status(output_uri: str, storage: Storage | None = None) -> dict:
    """The job's state: ``status``, shard and row counts, rows per second, from ``job.json`` and
    the commit records; ``storage`` holds the spec's fsspec options (an S3 endpoint, say)."""
    folder = OutputFolder(output_uri, storage or {})
    with access_refusals("OUT", output_uri):
        job = folder.read_json(folder.JOB)
    if not isinstance(job, dict):
        raise ConfigError("OUT", f"no job.json under {output_uri!r}; give a job's output folder "
                                 "or its spec")
    if job["status"] != "running":
        runs = job.get("runs") or [{}]
        return {"shards_left": 0, "shards_reused": job.get("shards_reused", 0), **job["counts"],
                "name": job["name"], "status": job["status"],
                "rows_per_second": job["rows_per_second"], "last_run": runs[-1],
                "error": job.get("error")}
    records = [r for r in load_records(folder).values() if r.status == "done"]
    started = dt.datetime.fromisoformat(job["started"])
    elapsed = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    rows_done = sum(r.rows_in for r in records)
    alive = _driver_alive(job)
    status = {True: "running", False: "stopped", None: "running (on another host)"}[alive]
    return {"name": job["name"], "status": status, "shards": job["shards_planned"],
            "shards_done": len(records), "shards_reused": job["shards_reused"],
            "shards_left": job["shards_planned"] - len(records), "rows_in": rows_done,
            "rows_scored": sum(r.rows_scored for r in records),
            "rows_quarantined": sum(r.rows_quarantined for r in records),
            "rows_planned": job.get("rows_planned"),
            "rows_per_second": max(rows_done - job.get("rows_reused", 0), 0) / max(elapsed, 1e-9),
            "error": None}


def format_status(state: dict, output_uri: str) -> str:
    lines = [
        f"{state['name']}: {state['status']} ({output_uri})",
        f"  shards: {state['shards_done']} done ({state['shards_reused']} reused), "
        f"{state.get('shards_quarantined', 0)} quarantined, {state['shards_left']} left "
        f"of {state['shards']}",
        f"  rows:   {state['rows_scored']:,} scored, {state['rows_quarantined']:,} quarantined"
        + (f", of {state['rows_planned']:,}" if state.get("rows_planned") else ""),
        "  speed:  " + (f"{state['rows_per_second']:,.0f} rows/s" if state["rows_per_second"]
                         else "not measured (no run has scored rows yet)"),
    ]
    last = state.get("last_run")
    if last:
        lines.append(f"  last run: scored {last.get('rows_scored', 0):,} rows in "
                     f"{last.get('shards_scored', 0)} shards, reused "
                     f"{last.get('shards_reused', 0)} shards ({last.get('status')}, "
                     f"finished {last.get('finished')})")
    if state["status"] == "stopped":
        lines.append("  the job stopped before it finished: run the same command again to "
                     "resume")
    if state.get("error"):
        lines.append(f"  error:  {state['error']}")
    return "\n".join(lines)


