"""The active-learning loop on the real engine: ``alray simulate SIM.yaml`` and
:func:`simulate`.

For each repeat (seed) the dataset is split once (a stratified test split, random initial labeled
rows, standardized features) and the train split written as a pool of parquet shards. Then each
strategy, the baseline ``random`` first, runs on its own: round 0..rounds trains the learner on
the labeled rows and measures its test accuracy; rounds before the last then run a real job
(:func:`alray.run`: Ray actors, shards, the run's ledger as ``selection.exclude``) and reveal the
selected rows' labels by appending them to the ledger. The loop checks every selection: exactly
``batch`` rows, none labeled before, none in the test split, so an engine bug shows up as an error
rather than as a flattering curve.

One Ray serves every round: the caller's (``ray.init()`` first), else one started here and stopped
at the end. Folder layout under ``out``::

    curves.parquet  summary.json  learning_curves.png
    runs/repeat-<r>/pool/part-*.parquet      the train split (id, features)
    runs/repeat-<r>/split.parquet            id, label, split (train | test), initial
    runs/repeat-<r>/<strategy>/ledger/       labeled rows, round by round (source: simulate)
    runs/repeat-<r>/<strategy>/models/       the learner of each round
    runs/repeat-<r>/<strategy>/job/          the latest round's job output
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from alray.errors import ConfigError, JobFailed
from alray.simulation.data import (Dataset, Split, check_rows, load_dataset, split_dataset,
                                   write_pool, write_split)
from alray.simulation.jobs import base_job, merge
from alray.simulation.learners import LEARNERS
from alray.simulation.outputs import (Point, curves_table, format_table, summarize,
                                      write_outputs)
from alray.simulation.spec import SimSpec, StrategySpec, load_spec

__all__ = ["SimulationResult", "simulate"]

_MARKER = ".alray-simulate"
_ALREADY = "ids already labeled (in the run's ledger, which the job excludes)"
_SOURCE = "simulate"


@dataclass
class SimulationResult:
    """What a simulation produced.

    Attributes:
        spec: the simulation as run.
        curves: ``curves.parquet``: strategy, repeat, round, labels, accuracy.
        summary: ``summary.json``'s content.
        paths: ``curves``, ``summary``, ``plot`` and ``runs`` (the per-run folders).
        table: the summary as the table ``alray simulate`` prints.
    """

    spec: SimSpec
    curves: pa.Table
    summary: dict
    paths: dict = field(default_factory=dict)
    table: str = ""


@dataclass(frozen=True)
class _Run:
    """One (strategy, repeat): its folder, its repeat's pool and split."""

    strategy: StrategySpec
    repeat: int
    folder: Path
    pool: Path
    split: Split

    @property
    def where(self) -> str:
        return f"simulate: strategy {self.strategy.name!r}, repeat {self.repeat}"


@dataclass
class _RunRecord:
    points: list[Point]
    job_seconds: list[float]
    train_seconds: list[float]


# ----------------------------------------------------------------------------------- folders


def _prepare(out: Path, key: str) -> None:
    """An empty output folder: a simulation's own earlier folder is replaced, anything else is
    refused (its ledgers would otherwise carry the old labels into this run)."""
    if out.exists():
        if not out.is_dir() or (not (out / _MARKER).exists() and any(out.iterdir())):
            raise ConfigError(key, f"{str(out)!r} exists and was not made by `alray simulate`; "
                                   "choose another folder or remove it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).touch()


def _out_folder(spec: SimSpec, out: str | os.PathLike | None) -> tuple[Path, str]:
    """The output folder and the key that named it (``--out`` or ``out``)."""
    target, key = (out, "--out") if out is not None else (spec.out, "out")
    if "://" in str(target):
        raise ConfigError(key, f"got {str(target)!r}; a simulation writes to a local folder")
    return Path(target).resolve(), key


# ----------------------------------------------------------------------------------- a round


def _seed(repeat: int, round_: int) -> int:
    """The learner's seed for a (repeat, round): independent streams, stable across runs."""
    return int(np.random.SeedSequence([repeat, round_]).generate_state(1)[0])


def _accuracy(model, dataset: Dataset, split: Split) -> float:
    predicted = model.probabilities(split.x[split.test]).argmax(axis=1)
    return float((predicted == dataset.y[split.test]).mean())


def _check_selection(run: _Run, round_: int, ids: list, rows_of: Mapping[Any, int],
                     labeled: set[int], test: set[int], expected: int) -> list[int]:
    """The selected ids as dataset rows; raises :class:`JobFailed` when the engine broke its
    contract (a row selected twice, already labeled, in the test split or unknown)."""
    where = f"{run.where}, round {round_}"
    problems = []
    if len(ids) != expected:
        problems.append(f"{len(ids)} rows selected, {expected} asked for (selection.k)")
    if len(set(ids)) != len(ids):
        problems.append("an id selected twice in one selection")
    unknown = [i for i in ids if i not in rows_of]
    known = [(i, rows_of[i]) for i in ids if i in rows_of]
    again = [i for i, row in known if row in labeled]
    tested = [i for i, row in known if row in test]
    for found, what in ((unknown, "ids not in the dataset"), (tested, "test-split ids"),
                        (again, _ALREADY)):
        if found:
            problems.append(f"{len(found)} {what}, e.g. {found[:5]}")
    if problems:
        raise JobFailed(f"{where}: the job's selection breaks the simulation's contract: "
                        f"{'; '.join(problems)}; this is a bug in alray's selection: report it "
                        f"with the job's folder {run.folder / 'job'}")
    return [row for _, row in known]


def _select(spec: SimSpec, run: _Run, round_: int, model_section: dict, ledger: str) -> list:
    """Run the round's job; returns the selected ids in rank order.

    The job's actor stays warm for the next round, which only loads its model into it: a
    fraction of a second, where a new actor is a new process importing torch (seconds).
    """
    from alray.config import JobSpec
    from alray.runtime.driver import run as run_job

    name = f"{spec.name}-{run.strategy.name}-repeat{run.repeat}-round{round_}"
    raw = merge(base_job(name=name, pool_uri=str(run.pool), model=model_section, k=spec.batch,
                         ledger=ledger, seed=run.repeat, output_uri=str(run.folder / "job")),
                run.strategy.fragment)
    result = run_job(JobSpec.from_dict(raw), fresh=True, progress=False, keep_actors=True)
    return result.selection.column("id").to_pylist()


def _reveal(ledger: str, dataset: Dataset, rows: list[int], round_: int) -> None:
    """Append the rows' true labels to the ledger (status ``labeled``)."""
    from alray.ledger import append_ledger

    labels = [dataset.classes[c] for c in dataset.y[rows]]
    append_ledger(ledger, dataset.ids.take(pa.array(rows, pa.int64())), "labeled", labels=labels,
                  round=round_, source=_SOURCE)


def _load(path: str):
    """The function ``module:name`` names (a learner's training code: imports torch)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _run(spec: SimSpec, dataset: Dataset, run: _Run,
         rows_of: Mapping[Any, int]) -> _RunRecord:
    """Rounds 0..rounds of one (strategy, repeat)."""
    train_fn = _load(LEARNERS[spec.learner].train)
    ledger = str(run.folder / "ledger")
    labeled = list(run.split.initial)
    labeled_set, test = set(labeled), set(run.split.test.tolist())
    _reveal(ledger, dataset, labeled, 0)
    record = _RunRecord([], [], [])
    for round_ in range(spec.rounds + 1):
        started = time.perf_counter()
        model = train_fn(run.split.x[labeled], dataset.y[labeled], len(dataset.classes),
                         _seed(run.repeat, round_), spec.members)
        record.train_seconds.append(time.perf_counter() - started)
        record.points.append((run.strategy.name, run.repeat, round_, len(labeled),
                              _accuracy(model, dataset, run.split)))
        if round_ == spec.rounds:
            break
        section = model.export(run.folder / "models", f"round-{round_:03d}")
        started = time.perf_counter()
        ids = _select(spec, run, round_, section, ledger)
        record.job_seconds.append(time.perf_counter() - started)
        rows = _check_selection(run, round_, ids, rows_of, labeled_set, test, spec.batch)
        _reveal(ledger, dataset, rows, round_ + 1)
        labeled.extend(rows)
        labeled_set.update(rows)
    return record


# ----------------------------------------------------------------------------------- all runs


def _runs(spec: SimSpec, dataset: Dataset, splits: list[Split], root: Path) -> list[_Run]:
    """Every (strategy, repeat), repeat by repeat; writes each repeat's pool and split."""
    runs = []
    for repeat, split in enumerate(splits):
        folder = root / f"repeat-{repeat}"
        write_pool(folder / "pool", dataset, split, spec.shards)
        write_split(folder / "split.parquet", dataset, split)
        runs += [_Run(s, repeat, folder / s.name, folder / "pool", split)
                 for s in spec.strategies]
    return runs


class _Reporter:
    """One line per finished run on stderr."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def finished(self, run: _Run, record: _RunRecord) -> None:
        self.done += 1
        per_job = np.mean(record.job_seconds) if record.job_seconds else 0.0
        self.progress.say(f"simulate: {self.done}/{self.total} repeat {run.repeat} "
                          f"{run.strategy.name}: accuracy {record.points[0][4]:.3f} -> "
                          f"{record.points[-1][4]:.3f} at {record.points[-1][3]} labels "
                          f"({per_job:.2f} s per job)")


def _run_all(spec: SimSpec, dataset: Dataset, runs: list[_Run],
             reporter: _Reporter) -> list[_RunRecord]:
    """Every run, one after the other, in this thread (so Ctrl-C reaches the job)."""
    rows_of = {value: i for i, value in enumerate(dataset.ids.to_pylist())}
    records = []
    for run in runs:
        records.append(_run(spec, dataset, run, rows_of))
        reporter.finished(run, records[-1])
    return records


def _timing(records: list[_RunRecord], seconds: float) -> dict[str, Any]:
    """Seconds spent: in all (``wall_seconds``, Ray's start and the outputs included), per job
    (``alray.run`` of one round: its model loaded into the warm actor, the pool scored, the
    selection written), per training, and the wall time per round (``wall_seconds / jobs``: what
    a round costs end to end)."""
    jobs = [s for r in records for s in r.job_seconds]
    trains = [s for r in records for s in r.train_seconds]
    return {"wall_seconds": seconds, "jobs": len(jobs),
            "job_seconds_mean": float(np.mean(jobs)) if jobs else None,
            "job_seconds_median": float(np.median(jobs)) if jobs else None,
            "train_seconds_mean": float(np.mean(trains)) if trains else None,
            "wall_seconds_per_round": seconds / len(jobs) if jobs else None}


def simulate(spec: SimSpec | Mapping[str, Any] | str | os.PathLike,
             out: str | os.PathLike | None = None, progress: bool = True) -> SimulationResult:
    """Run an active-learning simulation on the real engine; write and return its results.

    Args:
        spec: a ``SIM.yaml`` path, the parsed mapping, or a :class:`SimSpec`.
        out: the output folder (default: the spec's ``out``, else ``<name>-sim`` beside the
            spec); replaced if an earlier simulation made it, refused if anything else did.
        progress: print a line per finished (strategy, repeat) on stderr.

    Rounds run one after the other on one Ray: the caller's if it is running (``ray.init()``
    first), else one started here and stopped before this returns. The scoring actor stays warm
    between rounds; idle actors are ended when the simulation finishes.

    Raises:
        ConfigError: the spec, the dataset or the output folder is unusable (before Ray starts).
        JobFailed: a round's job failed, or its selection broke the contract (a row selected
            twice, already labeled, or in the test split).
    """
    from alray.job.progress import Progress
    from alray.runtime import warm
    from alray.runtime.session import ray_session

    started = time.perf_counter()
    spec = load_spec(spec)
    folder, key = _out_folder(spec, out)
    dataset = load_dataset(spec)
    splits = [split_dataset(dataset, spec.test_fraction, spec.initial, seed)
              for seed in range(spec.repeats)]
    check_rows(spec, dataset, splits[0])
    _prepare(folder, key)
    runs = _runs(spec, dataset, splits, folder / "runs")
    reporter = Progress(enabled=progress)
    reporter.say(f"simulate: {spec.dataset}, {len(splits[0].train):,} train and "
                 f"{len(splits[0].test):,} test rows, learner {spec.learner}: "
                 f"{len(spec.strategies)} strategies x {spec.repeats} repeats x {spec.rounds} "
                 f"rounds = {len(runs) * spec.rounds} jobs")
    try:
        with ray_session(None, reporter):
            try:
                records = _run_all(spec, dataset, runs, _Reporter(reporter, len(runs)))
            finally:
                warm.release()  # the idle actors hold CPUs of a Ray that may be the caller's
    except KeyboardInterrupt:
        raise KeyboardInterrupt("simulation stopped; a simulation does not resume: the same "
                                "command starts it over") from None
    curves = curves_table([p for r in records for p in r.points],
                          [s.name for s in spec.strategies])
    rows = {"train_rows": len(splits[0].train), "test_rows": len(splits[0].test),
            "classes": len(dataset.classes)}
    summary = summarize(spec, curves, rows, _timing(records, time.perf_counter() - started))
    paths = {**write_outputs(folder, curves, summary), "runs": str(folder / "runs")}
    return SimulationResult(spec, curves, summary, paths, format_table(summary))
