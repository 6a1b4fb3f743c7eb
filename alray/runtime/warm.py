"""Scoring actors kept alive between jobs, for a loop of rounds on one Ray (``alray simulate``, a
notebook): a next job with the same actor options reloads its model in them instead of starting
new processes (each costs seconds: a Python, torch and alray imported again).

Only on a Ray the caller keeps (started before the job), and only when the caller asks
(``alray.run(..., keep_actors=True)``); idle actors hold their CPUs (or GPUs), so a job that wants
actors of other options first ends the idle ones, and :func:`release` ends them all.
"""

from __future__ import annotations

import contextlib
import json
import threading

import ray

__all__ = ["park", "release", "take"]

#: (the Ray connection, the actors' options) -> idle actors.
_IDLE: dict[tuple[str, str], list] = {}
#: Jobs run from several threads never take the same idle actor.
_LOCK = threading.Lock()


def _connection() -> str:
    """This driver's connection to Ray: actors of an earlier connection are gone."""
    context = ray.get_runtime_context()
    return f"{context.gcs_address}/{context.get_job_id()}"


def _key(options: dict, import_paths: list[str]) -> tuple[str, str]:
    return _connection(), json.dumps([options, import_paths], sort_keys=True)


def take(options: dict, import_paths: list[str], count: int) -> list:
    """Up to ``count`` idle actors started with these options; idle actors of any other options
    (or of an earlier Ray) are ended, to free what they hold."""
    key = _key(options, import_paths)
    with _LOCK:
        others = [_IDLE.pop(k) for k in [k for k in _IDLE if k != key]]
        idle = _IDLE.get(key, [])
        taken, _IDLE[key] = idle[:count], idle[count:]
    for actors in others:
        _end(actors)
    return taken


def park(options: dict, import_paths: list[str], actors: list) -> None:
    """Keep ``actors`` (idle, alive) for the next job with the same options."""
    key = _key(options, import_paths)
    with _LOCK:
        _IDLE.setdefault(key, []).extend(actors)


def release() -> None:
    """End every idle actor."""
    with _LOCK:
        idle = list(_IDLE.values())
        _IDLE.clear()
    for actors in idle:
        _end(actors)


def _end(actors: list) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
