"""Scoring actors in slots: how many, with what resources, and which are ready for work.

An actor is given work only once it has reported ready (its model loaded); a load failure is the
job's :class:`~alray.errors.ModelError`, for a first actor and for a replacement alike. Actors the
cluster has no room for stay starting and get no work; when no actor is ready after
``resources.actor_start_timeout``, the job ends with a message naming what the actors ask for
and what the cluster has, as Ray Data's actor pool does. A Ray this job started cannot grow, so
an actor it can never place is a configuration error before any actor is made.
"""

from __future__ import annotations

import contextlib
import os
import time

import ray

from alray.config import JobSpec
from alray.errors import ConfigError, JobFailed, ModelError
from alray.runtime import warm
from alray.runtime.actor import ScoringActor
from alray.runtime.session import (FETCH_SECONDS, ClusterLost, ClusterWatch, RaySession,
                                   run_with_limit)
from alray.sources.plan import ShardSpec

__all__ = ["ActorPool", "actor_options"]

_PER_ACTOR_IN_FLIGHT = 2


def _describe(resources: dict) -> str:
    return ", ".join(f"{name} {resources.get(name, 0):g}" for name in ("CPU", "GPU"))


def actor_options(spec: JobSpec, session: RaySession) -> tuple[int, dict]:
    """How many actors, and the Ray options of each.

    Raises:
        ConfigError: this job's own Ray (which cannot grow) has no room for even one actor.
    """
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    gpus = spec.resources.gpus_per_actor
    use_gpu = cluster_gpus > 0 if gpus == "auto" else gpus == 1
    if session.private and use_gpu and cluster_gpus == 0:
        raise ConfigError("resources.gpus_per_actor",
                          f"got {gpus}; this machine's Ray has no GPU ({_describe(resources)}); "
                          "set 0 or auto to score on the CPU, or run where there is a GPU")
    if spec.resources.actors is not None:
        count = spec.resources.actors
    else:
        count = cluster_gpus if use_gpu else max(1, int(resources.get("CPU", 1)))
    return max(1, count), {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0}


class ActorPool:
    """Scoring actors in slots; a dead actor's slot gets a fresh actor, which must report ready
    before it gets work."""

    def __init__(self, spec: JobSpec, count: int, options: dict, scoring: str,
                 watch: ClusterWatch, exclusion=None, keep_warm: bool = False):
        # the ledgers' ids go to Ray's object store once; every actor (and a replacement) reads
        # the same copy
        exclusion_ref = ray.put(exclusion) if exclusion is not None and len(exclusion) else None
        job = (spec, [os.getcwd()], scoring, exclusion_ref)
        self._make = lambda: ScoringActor.options(**options).remote(*job)
        self._reload = lambda actor: actor.load.remote(*job)
        self.keep_warm = keep_warm
        self._warm = warm.take(options, [os.getcwd()], count) if keep_warm else []
        self.options = options
        self.start_limit = spec.resources.actor_start_timeout
        self.actors: list = []
        self.load: list[int] = []
        self.devices: dict[int, str] = {}
        self._starting: dict = {}  # ready() ref -> slot
        self._since = time.monotonic()
        self.watch = watch
        self._start_deaths: dict[int, int] = {}  # slot -> deaths while loading, since it last was
        self._max_start_deaths = spec.resources.max_attempts  # ready
        for _ in range(count):
            self._add()

    def _add(self) -> None:
        self.actors.append(None)
        self.load.append(0)
        slot = len(self.actors) - 1
        if self._warm:  # an idle actor of an earlier job: it loads this job's model
            self.actors[slot] = self._warm.pop()
            self._starting[self._reload(self.actors[slot])] = slot
        else:
            self._start(slot)

    def _start(self, slot: int) -> None:
        """A fresh actor in ``slot``; one still there (hung, or its result lost) is killed."""
        if self.actors[slot] is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.actors[slot])
        self.actors[slot] = self._make()
        self.devices.pop(slot, None)
        self._starting[self.actors[slot].ready.remote()] = slot

    # -- readiness ----------------------------------------------------------------------------

    @property
    def starting(self) -> list:
        """The ``ready()`` refs of actors not yet ready (include them in a wait)."""
        return list(self._starting)

    @property
    def ready_count(self) -> int:
        return len(self.devices)

    def started(self, ref) -> bool:
        """Take one finished ``ready()``; True if it was one. A load failure raises
        :class:`ModelError`; an actor that died while starting is started again."""
        slot = self._starting.pop(ref, None)
        if slot is None:
            return False
        try:
            report = ray.get(ref, timeout=FETCH_SECONDS)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                ray.exceptions.ObjectLostError) as exc:
            deaths = self._start_deaths[slot] = self._start_deaths.get(slot, 0) + 1
            if deaths >= self._max_start_deaths:
                lost = self.watch.problem()  # actors die at once on a node that is gone
                if lost:
                    raise ClusterLost(f"the Ray cluster went away mid-job: {lost}") from None
                raise JobFailed(f"resources: a scoring actor died {deaths} times in a row while "
                                f"loading the model (last: {str(exc).strip().splitlines()[-1]}); "
                                "check the model's memory needs and the nodes' logs") from None
            self._start(slot)
            return True
        if report["error"]:
            raise ModelError(report["error"])
        self.devices[slot] = report["device"]
        self._start_deaths.pop(slot, None)
        return True

    def check_start(self) -> None:
        """Raise when no actor has become ready within the start limit."""
        if self.devices or time.monotonic() - self._since < self.start_limit:
            return
        available = _describe(ray.available_resources())
        raise JobFailed(
            f"resources: no scoring actor started within {self.start_limit:g} s "
            f"(resources.actor_start_timeout); each asks for CPU {self.options['num_cpus']}, "
            f"GPU {self.options['num_gpus']} and the cluster has {available} free of "
            f"{_describe(ray.cluster_resources())}; lower resources.gpus_per_actor or "
            "resources.actors, or add nodes")

    def wait_first(self) -> None:
        """Block until one actor is ready (the others join as they load)."""
        while not self.devices:
            done, _ = ray.wait(self.starting, num_returns=1, timeout=5.0)
            if done:
                self.started(done[0])
            else:
                self.watch.check()
                self.check_start()

    # -- work ---------------------------------------------------------------------------------

    def least_loaded(self) -> int | None:
        """The ready slot with the least work, if it can take more."""
        if not self.devices:
            return None
        slot = min(self.devices, key=self.load.__getitem__)
        return slot if self.load[slot] < _PER_ACTOR_IN_FLIGHT else None

    def submit(self, slot: int, shard: ShardSpec):
        self.load[slot] += 1
        return self.actors[slot].score.remote(shard)

    def replace(self, slot: int, dead) -> None:
        """Start a fresh actor in ``slot`` if ``dead`` still holds it."""
        if self.actors[slot] is dead:
            self._start(slot)
            if not self.devices:  # the limit counts from when the pool had no ready actor
                self._since = time.monotonic()

    def shutdown(self, completed: bool = False) -> None:
        """Kill every actor; a cluster that is gone does not hold the job up or hide its error.
        With ``keep_warm``, a job that ``completed`` keeps its ready, idle actors for the next."""
        kept = [self.actors[slot] for slot in self.devices if self.load[slot] == 0] \
            if self.keep_warm and completed else []
        if kept:
            warm.park(self.options, [os.getcwd()], kept)

        def kill_all():
            for actor in self.actors:
                if not any(actor is k for k in kept):
                    with contextlib.suppress(Exception):
                        ray.kill(actor)

        with contextlib.suppress(Exception):
            run_with_limit(kill_all, 10.0)
