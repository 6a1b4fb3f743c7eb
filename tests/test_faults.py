"""Faults on a real Ray: killed actors, a lost node, a SIGKILLed driver; and resuming.

Each disturbed run is compared with an undisturbed run of the same model: the same selection, the
same scores files, every pool row scored exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import alray
from tests.conftest import FAULTS, wait_for, write_pool, write_spec

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parent.parent
SHARDS, ROWS = 8, 200
MODEL = {"kind": "python", "path": "tests.models:faulty_head"}


def make_job(tmp_path, out="out", **sections) -> Path:
    if not (tmp_path / "pool").exists():
        write_pool(tmp_path / "pool", [ROWS] * SHARDS, dim=8, seed=11)
    sections = {"model": MODEL, "selection": {"k": 40, "candidates": 60},
                "output": {"uri": f"./{out}"}, **sections}
    return write_spec(tmp_path, **sections)


def scores_by_id(out: Path):
    return pq.read_table(out / "scores").sort_by("id")


def _portable(selection):
    """The selection without its folder-dependent columns, plus each row's file name."""
    names = [uri.rsplit("/", 1)[1] for uri in selection.column("uri").to_pylist()]
    return selection.drop_columns(["shard", "uri"]).append_column("file", [names])


def assert_same_outputs(out: Path, reference: Path) -> None:
    selection = pq.read_table(out / "selection.parquet")
    assert _portable(selection).equals(_portable(pq.read_table(reference / "selection.parquet")))
    scores = scores_by_id(out)
    assert scores.equals(scores_by_id(reference))
    ids = scores.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == SHARDS * ROWS  # every row once, none twice


@pytest.fixture
def undisturbed(tmp_path_factory):
    """The reference run's output folder (no faults)."""
    folder = tmp_path_factory.mktemp("undisturbed")
    alray.run(alray.JobSpec.from_yaml(make_job(folder, scoring={"batch_size": 50})))
    return folder / "out"


def test_actor_killed_mid_shard_twice(tmp_path, faults, undisturbed):
    (faults / "kill-1").touch()
    (faults / "kill-2").touch()
    spec = make_job(tmp_path, scoring={"batch_size": 50}, resources={"max_attempts": 3})
    result = alray.run(alray.JobSpec.from_yaml(spec))
    assert not list(faults.glob("kill-*"))  # both kills happened
    assert result.counts["rows_scored"] == SHARDS * ROWS
    assert_same_outputs(tmp_path / "out", undisturbed)


def test_retries_exhausted_quarantines_the_shard(tmp_path, faults):
    for i in range(3):
        (faults / f"kill-{i}").touch()
    spec = make_job(tmp_path, resources={"max_attempts": 1, "on_error": "skip",
                                         "max_quarantined": 10, "actors": 1})
    result = alray.run(alray.JobSpec.from_yaml(spec))
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").open()]
    exhausted = [e for e in errors if e["kind"] == "retries_exhausted"]
    assert len(exhausted) == result.counts["shards_quarantined"] >= 1
    assert "gave up after 1 attempts" in exhausted[0]["message"]
    counts = result.counts
    assert counts["rows_in"] == counts["rows_scored"] + counts["rows_quarantined"] == SHARDS * ROWS


def test_resume_skips_committed_shards_and_rescores_changed_ones(tmp_path, undisturbed):
    spec = make_job(tmp_path, scoring={"batch_size": 50})
    first = alray.run(alray.JobSpec.from_yaml(spec))
    assert first.job["shards_reused"] == 0
    again = alray.run(alray.JobSpec.from_yaml(spec, overrides={"selection.k": 60}))
    assert again.job["shards_reused"] == SHARDS  # changing k rescores nothing
    assert again.selection.slice(0, 40).equals(first.selection)
    # Rewrite one file (new mtime and size): only that shard is scored again.
    victim = sorted((tmp_path / "pool").iterdir())[3]
    table = pq.read_table(victim)
    pq.write_table(table, victim, compression="snappy")
    third = alray.run(alray.JobSpec.from_yaml(spec))
    assert third.job["shards_reused"] == SHARDS - 1
    assert_same_outputs(tmp_path / "out", undisturbed)
    fresh = alray.run(alray.JobSpec.from_yaml(spec), fresh=True)
    assert fresh.job["shards_reused"] == 0


def test_new_weights_rescore_everything(tmp_path):
    from tests.conftest import write_head

    write_pool(tmp_path / "pool", [50, 50], dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8, seed=1)
    spec = write_spec(tmp_path)
    alray.run(alray.JobSpec.from_yaml(spec))
    write_head(tmp_path / "head.safetensors", classes=3, dim=8, seed=2)
    again = alray.run(alray.JobSpec.from_yaml(spec))
    assert again.job["shards_reused"] == 0
    margin = alray.run(alray.JobSpec.from_yaml(spec, overrides={"scoring.strategy": "margin"}))
    assert margin.job["shards_reused"] == 0


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "alray", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def test_driver_sigkill_then_resume(tmp_path, faults, undisturbed):
    """Three shards pass, then both actors block mid-shard; the driver's process group (its
    private Ray) and the actors are SIGKILLed, as in a machine crash, and the same command
    finishes the job."""
    spec = make_job(tmp_path, scoring={"batch_size": ROWS})  # one batch, so one pass, per shard
    (faults / "gate").touch()
    for i in range(3):
        (faults / f"pass-{i:03d}").touch()
    driver = _cli("run", spec)
    try:
        records = tmp_path / "out" / "_shards"
        wait_for(lambda: len(list(records.glob("*.json"))) >= 3 and
                  len(list(faults.glob("blocked-*"))) >= 2, "three commits and two blocked actors")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        for blocked in faults.glob("blocked-*"):  # Ray starts workers in sessions of their own
            _kill(int(blocked.name.split("-")[1]))
        driver.communicate()
    assert len(list(records.glob("*.json"))) == 3
    (faults / "gate-open").touch()
    status = subprocess.run([sys.executable, "-m", "alray", "status", tmp_path / "out"],
                            capture_output=True, text=True, cwd=ROOT)
    assert "stopped" in status.stdout and "3 done" in status.stdout, status.stdout
    resumed = _cli("run", spec)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert job["shards_reused"] == 3
    assert_same_outputs(tmp_path / "out", undisturbed)


def test_node_lost_mid_job(tmp_path, faults, undisturbed):
    """A 3-node Ray (ray.cluster_utils.Cluster) in a subprocess: a node holding a busy actor is
    removed, its shards go elsewhere, and the outputs match the undisturbed run."""
    spec = make_job(tmp_path, scoring={"batch_size": ROWS})  # one batch, so one pass, per shard
    (faults / "gate").touch()
    for i in range(2):
        (faults / f"pass-{i:03d}").touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "cluster_job.py"), str(spec),
                           str(FAULTS)], capture_output=True, text=True, timeout=400, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["removed_node_held_actor"]
    assert_same_outputs(tmp_path / "out", undisturbed)


# ----------------------------------------------------------------------------------- defects


@contextlib.contextmanager
def _blocked_run(spec, faults):
    """`alray run` in a subprocess (its own private Ray) with both actors blocked mid-shard;
    on the way out the gate opens and every process of the run is ended."""
    (faults / "gate").touch()
    driver = _cli("run", spec)
    try:
        wait_for(lambda: len(list(faults.glob("blocked-*"))) >= 2, "two blocked actors")
        yield driver
    finally:
        (faults / "gate-open").touch()
        for blocked in faults.glob("blocked-*"):
            _kill(int(blocked.name.split("-")[1]))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


def test_a_job_whose_ray_dies_ends_with_a_message(tmp_path, faults):
    """The private Ray's raylet is killed while both actors are mid-shard: the driver ends
    within a minute or so, exit 1, saying what happened and that the same command resumes."""
    import psutil  # Ray ships it

    with _blocked_run(make_job(tmp_path, scoring={"batch_size": ROWS}), faults) as driver:
        raylets = [p for p in psutil.Process(driver.pid).children(recursive=True)
                   if p.name() == "raylet"]
        assert len(raylets) == 1
        raylets[0].kill()
        killed = time.monotonic()
        _, stderr = driver.communicate(timeout=240)
        waited = time.monotonic() - killed
    assert driver.returncode == 1, stderr
    assert "the Ray cluster went away mid-job" in stderr, stderr
    assert "run the same command again to resume" in stderr, stderr
    assert waited < 150, f"the driver took {waited:.0f} s to notice"
    assert json.loads((tmp_path / "out" / "job.json").read_text())["status"] == "failed"


def test_a_gpu_on_a_ray_without_gpus_is_a_configuration_error(tmp_path):
    spec = make_job(tmp_path, resources={"gpus_per_actor": 1})
    driver = _cli("run", spec)
    _, stderr = driver.communicate(timeout=240)
    assert driver.returncode == 2, stderr
    assert "resources.gpus_per_actor: got 1; this machine's Ray has no GPU" in stderr, stderr


def test_actors_a_cluster_cannot_place_end_the_job_naming_the_resources(tmp_path):
    """On a Ray the job joined (which might grow), actors wait for resources up to
    ``resources.actor_start_timeout``, then the job ends naming what they ask for."""
    spec = make_job(tmp_path, resources={"gpus_per_actor": 1, "actor_start_timeout": 2})
    with pytest.raises(alray.JobFailed, match=r"no scoring actor started within 2 s .*GPU 1"):
        alray.run(alray.JobSpec.from_yaml(spec), progress=False)


def test_a_replacement_actor_whose_model_fails_to_load_fails_the_job(tmp_path, faults):
    """Both actors load and block mid-shard; the model's weights then break and one actor is
    killed: its replacement cannot load the model, and the job ends with that cause (exit 2)
    instead of scoring with no model."""
    with _blocked_run(make_job(tmp_path, scoring={"batch_size": ROWS}), faults) as driver:
        (faults / "broken-load").touch()
        _kill(int(sorted(faults.glob("blocked-*"))[0].name.split("-")[1]))
        _, stderr = driver.communicate(timeout=240)
    assert driver.returncode == 2, stderr
    assert "broken on purpose" in stderr, stderr


def test_actors_that_die_while_loading_end_the_job(tmp_path, faults):
    """An actor killed while it loads the model is started again; one that dies max_attempts
    times in a row ends the job with that cause, instead of a restart without end."""
    (faults / "die-load").touch()
    spec = make_job(tmp_path, resources={"max_attempts": 2, "actors": 1})
    with pytest.raises(alray.JobFailed, match="died 2 times in a row while loading the model"):
        alray.run(alray.JobSpec.from_yaml(spec), progress=False)


def test_a_dead_attempts_temporary_file_is_gone_when_the_job_ends(tmp_path, faults, undisturbed):
    """An actor dies right after writing a complete temporary scores file (as a kill between an
    atomic write and its rename leaves); the finished job's folder holds no trace of it."""
    spec = make_job(tmp_path, scoring={"batch_size": 50})
    (faults / "litter-000").write_text(str(tmp_path / "out" / "scores"))
    alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    assert not (faults / "litter-000").exists()  # the fault happened
    out = tmp_path / "out"
    assert not [p.name for p in out.rglob(".*")], "temporary or hidden files were left"
    assert not (out / "_lock.json").exists()
    assert_same_outputs(out, undisturbed)
