"""Ray for one job: joined or started, watched while the job runs, stopped on the way out.

A Ray this process starts is private to the job: it is shut down with every process it started,
also when its start is interrupted. A Ray the caller started (a notebook, a loop of rounds) is
used and left running.

While the job waits on actors, :class:`ClusterWatch` asks Ray's control store how the nodes are;
a cluster that cannot be reached, or whose node under this driver is gone, ends the job within
about a minute instead of a wait without end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import ray

from alray.errors import JobFailed
from alray.job.progress import Progress

__all__ = ["ClusterLost", "ClusterWatch", "RaySession", "connect", "interrupts_held",
           "ray_session", "run_with_limit", "FETCH_SECONDS"]

#: How long the cluster may stay unreachable, or this driver's node dead, before the job ends.
LOST_AFTER_SECONDS = 45.0
#: How long one question to the control store may take.
_QUESTION_SECONDS = 10.0
#: How long fetching a result that ``ray.wait`` reported ready may take (its object may sit on a
#: node that just went away); past it, the result counts as lost.
FETCH_SECONDS = 60.0


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


@contextlib.contextmanager
def interrupts_held():
    """Hold off a second Ctrl-C while the job cleans up (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_with_limit(fn, seconds: float):
    """``fn()`` in a daemon thread; its result, or raises TimeoutError after ``seconds``."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True, name="alray-ray-question")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


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
    Ray has shut down. A shutdown that hangs (a Ray whose processes died) is given up on.
    """
    import psutil  # Ray ships it (ray/thirdparty_files)

    children = _ray_processes(psutil, before)
    with contextlib.suppress(Exception):
        run_with_limit(ray.shutdown, 15.0)
    _, alive = psutil.wait_procs(children, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass
class RaySession:
    """The Ray a job runs on. ``private``: this job started it (and it can not grow).
    ``kept``: the caller's Ray, which outlives the job (actors may stay warm on it)."""

    private: bool
    kept: bool = False


@contextlib.contextmanager
def ray_session(address: str | None, progress: Progress):
    """Ray for one job (a :class:`RaySession`): joined or started here; a Ray started here is
    stopped on the way out, also when the start itself is interrupted."""
    if ray.is_initialized():
        yield RaySession(private=False, kept=True)
        return
    import psutil  # Ray ships it (ray/thirdparty_files)

    target = address or os.environ.get("RAY_ADDRESS")
    progress.say(f"joining Ray at {target}" if target else "starting a local Ray")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        connect(address)
        yield RaySession(private=target is None)
    finally:
        with interrupts_held():
            if target is None:
                _stop_private_ray(before)
            else:
                with contextlib.suppress(Exception):
                    run_with_limit(ray.shutdown, 15.0)


class ClusterLost(JobFailed):
    """The Ray cluster, or the node this driver runs on, went away while the job ran."""


class ClusterWatch:
    """Notices a Ray that went away while the driver waits on it.

    :meth:`check` is called whenever a wait on actors times out. It asks the control store for
    the nodes (with a limit, as a dead store never answers); when the store stays unreachable,
    or this driver's node is dead, for :data:`LOST_AFTER_SECONDS`, it raises
    :class:`ClusterLost`.
    """

    def __init__(self, lost_after: float = LOST_AFTER_SECONDS):
        self.lost_after = lost_after
        self._node = ray.get_runtime_context().get_node_id()
        self._trouble_since: float | None = None

    def problem(self) -> str:
        """What is wrong with the cluster now ("" when nothing)."""
        try:
            nodes = run_with_limit(ray.nodes, _QUESTION_SECONDS)
        except Exception as exc:
            return f"Ray's control store does not answer ({type(exc).__name__}: {exc})"
        mine = [n for n in nodes if n.get("NodeID") == self._node]
        if mine and not mine[0].get("Alive", False):
            return "the Ray node this driver runs on died (its raylet stopped)"
        if not any(n.get("Alive", False) for n in nodes):
            return "no Ray node is alive"
        return ""

    def check(self) -> None:
        problem = self.problem()
        if not problem:
            self._trouble_since = None
            return
        self._trouble_since = self._trouble_since or time.monotonic()
        if time.monotonic() - self._trouble_since >= self.lost_after:
            raise ClusterLost(f"the Ray cluster went away mid-job: {problem}")
