"""A job on a Ray cluster through Ray's Jobs API: what ``alray submit`` says to the head.

:func:`connect` makes a client for the head's dashboard (``http://HEAD:8265``), :func:`submit_job`
hands it a working directory already staged (:mod:`alray.submit` builds it: the spec and the
files it names) and the entrypoint to run there, and :func:`follow` streams the job's logs until
it ends in one of the :data:`TERMINAL` statuses, with the error line a job that did not succeed
leaves (its last ``alray: error:`` line, else Ray's message).

The Jobs API is HTTP; its client sets no time limits, so every question to the head here has one,
and following a job ends when the head has not answered for ``timeout`` seconds (the job goes
on). Nothing else here runs the job: it runs on the cluster, under ``alray run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, TextIO

from ray.job_submission import JobSubmissionClient  # sets Ray's log levels: see quiet_ray_logs

from alray import __version__
from alray.errors import ConfigError, JobFailed
from alray.runtime.session import run_with_limit

if TYPE_CHECKING:
    from alray.submit import Submission

__all__ = ["TERMINAL", "connect", "follow", "new_id", "quiet_ray_logs", "submit_job"]

#: The statuses a job ends in.
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

_QUESTION_SECONDS = 15.0  # one question to the head
_UPLOAD_SECONDS = 300.0  # submit_job, which uploads the working directory first
_AGENT_SECONDS = 60.0  # a head just started answers before its job agent is up
_POLL_SECONDS = 1.0
_LOG_GRACE_SECONDS = 10.0  # the log stream's last lines, after the job ended
_ERROR_PREFIX = "alray: error: "


@contextlib.contextmanager
def quiet_ray_logs():
    """Ray's Jobs client logs each upload and websocket at INFO on stderr (its modules set that
    level when imported, which this module's import has done); keep its warnings only."""
    names = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
             "ray._private.runtime_env.packaging")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def connect(url: str) -> JobSubmissionClient:
    """A Jobs API client for ``url``; an address that does not answer as a Ray head is a
    :class:`ConfigError` naming ``--address``."""
    try:
        return run_with_limit(lambda: JobSubmissionClient(url), _QUESTION_SECONDS)
    except TimeoutError:
        detail = f"no answer within {_QUESTION_SECONDS:g} s"
    except Exception as exc:
        detail = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    raise ConfigError("--address", f"{url} does not answer as a Ray head ({detail}); start the "
                                   "cluster, or give its dashboard's address (ray start --head "
                                   "prints it; the port is 8265 unless --dashboard-port says "
                                   "otherwise)")


def new_id(name: str) -> str:
    """A submission id from the job's name: ``alray-<name>-<8 hex digits>``."""
    return f"alray-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)[:40]}-{uuid.uuid4().hex[:8]}"


def submit_job(client: JobSubmissionClient, submission_id: str, entrypoint: str,
               runtime_env: dict[str, Any], name: str) -> None:
    """Submit, retrying while a head just started has no job agent yet, and after a time-out
    (an id already taken by then is this submission, accepted)."""
    deadline = time.monotonic() + _AGENT_SECONDS
    tried = False
    while True:
        try:
            run_with_limit(lambda: client.submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                metadata={"alray_job": name, "alray_version": __version__}), _UPLOAD_SECONDS)
            return
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted while submitting {submission_id}, which may "
                                    f"have reached the head: ray job status --address "
                                    f"{client.get_address()} {submission_id}") from None
        except Exception as exc:
            text = " ".join(str(exc).split())
            if tried and "already exists" in text:
                return
            if not isinstance(exc, TimeoutError) and "No available agent" not in text:
                raise ConfigError("--address", f"the head refused the job ({text})") from None
            if time.monotonic() > deadline:
                raise ConfigError("--address", f"the head did not take the job within "
                                               f"{_AGENT_SECONDS:g} s ({text}); try again, or "
                                               "check the head's dashboard agent") from None
            tried = True
            time.sleep(0.5)


def follow(client: JobSubmissionClient, submission: Submission, echo: TextIO | None,
           timeout: float) -> tuple[str, str, str | None]:
    """Stream the job's logs to ``echo`` until it ends; ``(status, whole log, error line or
    None)``.

    Raises:
        JobFailed: the head has not answered for ``timeout`` seconds (the job goes on).
        KeyboardInterrupt: with how to follow and stop the job, which goes on.
    """
    tail = _LogTail(client, submission.submission_id, echo)
    tail.start()
    try:
        info = _poll_until_done(client, submission, timeout)
    except KeyboardInterrupt:
        tail.close()
        raise KeyboardInterrupt(f"stopped following {submission.submission_id}; the job goes "
                                f"on: {submission.follow_command}; to stop it: "
                                f"{submission.stop_command}") from None
    except JobFailed:
        tail.close()
        raise
    tail.join(_LOG_GRACE_SECONDS)
    streamed = tail.close()
    try:
        logs = run_with_limit(lambda: client.get_job_logs(submission.submission_id),
                              _QUESTION_SECONDS)
    except Exception:
        logs = streamed
    if echo is not None and logs.startswith(streamed) and len(logs) > len(streamed):
        echo.write(logs[len(streamed):])  # what the stream had not delivered
        echo.flush()
    status = _status(info)
    error = None if status == "SUCCEEDED" else _error_line(logs, info.message, status)
    return status, logs, error


class _LogTail(threading.Thread):
    """Streams a job's logs (Ray's websocket tail) to ``echo`` and keeps them; a daemon, so a
    head that stops answering never holds up the process."""

    def __init__(self, client: JobSubmissionClient, submission_id: str, echo: TextIO | None):
        super().__init__(daemon=True, name="alray-log-tail")
        self.client, self.submission_id, self.echo = client, submission_id, echo
        self.lock = threading.Lock()
        self.chunks: list[str] = []
        self.error: BaseException | None = None
        self.closed = False

    def run(self) -> None:
        try:
            asyncio.run(self._tail())
        except BaseException as exc:  # kept for the caller, who falls back on the whole log
            self.error = exc

    async def _tail(self) -> None:
        async for chunk in self.client.tail_job_logs(self.submission_id):
            with self.lock:
                if self.closed:
                    return
                self.chunks.append(chunk)
                if self.echo is not None:
                    self.echo.write(chunk)
                    self.echo.flush()

    def close(self) -> str:
        """Stop writing; what was streamed."""
        with self.lock:
            self.closed = True
            return "".join(self.chunks)


def _poll_until_done(client: JobSubmissionClient, submission: Submission, timeout: float):
    """The job's info once it has ended; :class:`JobFailed` when the head has not answered for
    ``timeout`` seconds."""
    trouble_since = None
    while True:
        try:
            info = run_with_limit(lambda: client.get_job_info(submission.submission_id),
                                  min(_QUESTION_SECONDS, timeout))
        except Exception as exc:
            now = time.monotonic()
            trouble_since = trouble_since or now
            if now - trouble_since >= timeout:
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise JobFailed(f"--address: {submission.address} has not answered for "
                                f"{timeout:g} s ({detail}); {submission.submission_id} may "
                                f"still run: {submission.follow_command}") from None
        else:
            trouble_since = None
            if _status(info) in TERMINAL:
                return info
        time.sleep(_POLL_SECONDS)


def _status(info) -> str:
    """A job info's status as text (``SUCCEEDED``): Ray gives an enum."""
    return str(getattr(info.status, "value", info.status))


def _error_line(logs: str, message: str | None, status: str) -> str:
    """The job's last ``alray: error:`` line, else Ray's message (its first line)."""
    for line in reversed(logs.splitlines()):
        if line.startswith(_ERROR_PREFIX):
            return line[len(_ERROR_PREFIX):].strip()
    if "No module named alray" in logs:
        return ("the cluster has no alray: install it there (cluster.yaml's setup_commands), "
                "or submit with --pip")
    first = (message or "").strip().splitlines()
    return first[0] if first else f"the job ended {status}"
