"""A run's life as its user sees it: reruns that reuse everything, a second run on a busy output
folder, Ctrl-C, the private Ray shut down after `alray.run`, progress, and a quick `--help`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


import alray
from tests.conftest import wait_for, write_head, write_pool, write_spec

ROOT = Path(__file__).resolve().parent.parent
GATED = {"kind": "python", "path": "tests.models:faulty_head"}


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def run_cli(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alray", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=_env())


def start_cli(*args) -> subprocess.Popen:
    """`alray` in a session of its own, as a terminal would run it (Ctrl-C reaches the group)."""
    return subprocess.Popen([sys.executable, "-m", "alray", *map(str, args)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _job(tmp_path, model=None, shards=(60, 50, 40), **sections) -> Path:
    write_pool(tmp_path / "pool", list(shards), dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    if model:
        sections["model"] = model
    return write_spec(tmp_path, **sections)


def _job_json(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "job.json").read_text())


def _ray_processes_of(session: int) -> list[int]:
    """Processes whose command line names Ray and that belong to ``session`` or descend from a
    process that did: what a job started and must have ended."""
    import ray  # noqa: F401  (puts Ray's bundled psutil on the path)
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if "ray" in cmdline and (os.getsid(process.pid) == session or any(
                    os.getsid(p.pid) == session for p in process.parents())):
                found.append(process.pid)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def test_a_rerun_reuses_every_shard_without_ray_and_keeps_the_measured_speed(tmp_path):
    spec = _job(tmp_path)
    first = run_cli("run", spec)
    assert first.returncode == 0, first.stderr
    assert "starting a local Ray" in first.stderr
    measured = _job_json(tmp_path)["rows_per_second"]
    assert measured > 0
    again = run_cli("run", spec)
    assert again.returncode == 0, again.stderr
    assert "starting a local Ray" not in again.stderr  # nothing to score: no Ray
    assert "this run scored 0 rows in 0 shards and reused 3 committed shards (150 rows)" \
        in again.stdout
    job = _job_json(tmp_path)
    assert job["rows_per_second"] == measured
    assert [r["shards_scored"] for r in job["runs"]] == [3, 0]
    assert [r["shards_reused"] for r in job["runs"]] == [0, 3]
    assert job["counts"]["shards_reused"] == 3 and job["counts"]["rows_reused"] == 150
    status = run_cli("status", tmp_path / "out")
    assert f"{measured:,.0f} rows/s" in status.stdout


def test_result_counts_reused_rows(tmp_path, ray_session):
    spec = alray.JobSpec.from_yaml(_job(tmp_path))
    assert alray.run(spec, progress=False).counts["rows_reused"] == 0
    again = alray.run(spec, progress=False)
    assert again.counts["rows_reused"] == 150 and again.counts["shards_reused"] == 3
    assert again.counts["rows_scored"] == 150


def test_progress_false_prints_nothing(tmp_path, ray_session, capfd):
    alray.run(alray.JobSpec.from_yaml(_job(tmp_path)), progress=False)
    captured = capfd.readouterr()
    assert "alray:" not in captured.err and "alray:" not in captured.out


def test_a_second_run_on_a_busy_output_folder_refuses_naming_the_first(tmp_path, faults):
    spec = _job(tmp_path, model=GATED, scoring={"batch_size": 1000})
    (faults / "gate").touch()  # the first run's actors block in their first forward pass
    first = start_cli("run", spec)
    try:
        wait_for(lambda: len(list(faults.glob("blocked-*"))) >= 1, "the first run to score")
        second = run_cli("run", spec)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith("alray: error: output.uri: ")
        assert f"pid {first.pid} on host {os.uname().nodename}" in line
        assert "starting a local Ray" not in second.stderr
    finally:
        (faults / "gate-open").touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert not (tmp_path / "out" / "_lock.json").exists()


def test_ctrl_c_records_stopped_says_how_to_resume_and_leaves_no_process(tmp_path, faults):
    spec = _job(tmp_path, model=GATED, shards=(50,) * 6, scoring={"batch_size": 1000})
    (faults / "gate").touch()
    (faults / "pass-000").touch()  # one shard gets through, then both actors block
    driver = start_cli("run", spec)
    records = tmp_path / "out" / "_shards"
    wait_for(lambda: len(list(records.glob("*.json"))) >= 1
             and len(list(faults.glob("blocked-*"))) >= 2, "one commit and two blocked actors")
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == ("alray: interrupted: 1 of 6 shards committed and kept; run the same command "
                    "again to resume")
    job = _job_json(tmp_path)
    assert job["status"] == "stopped" and job["counts"]["shards_done"] == 1
    assert not (tmp_path / "out" / "_lock.json").exists()
    assert _ray_processes_of(driver.pid) == []  # checked at once: ended, not left to time out
    (faults / "gate").unlink()
    resumed = run_cli("run", spec)
    assert resumed.returncode == 0, resumed.stderr
    assert "reused 1 committed shards" in resumed.stdout


def test_ctrl_c_while_ray_starts_leaves_no_process(tmp_path):
    spec = _job(tmp_path)
    driver = start_cli("run", spec)
    lines = []
    for line in driver.stderr:  # interrupt as soon as Ray begins to start
        lines.append(line)
        if "starting a local Ray" in line:
            time.sleep(1.0)  # into ray.init's start-up, where agents are being spawned
            os.killpg(driver.pid, signal.SIGINT)
            break
    _, rest = driver.communicate(timeout=120)
    stderr = "".join(lines) + rest
    assert driver.returncode == 130, stderr
    assert "run the same command again to resume" in stderr.strip().splitlines()[-1]
    assert _ray_processes_of(driver.pid) == []
    assert _job_json(tmp_path)["status"] == "stopped"


def test_alray_run_shuts_down_the_ray_it_started(tmp_path):
    spec = _job(tmp_path)
    script = (
        "import sys, ray, psutil, alray\n"
        f"alray.run(alray.JobSpec.from_yaml({str(spec)!r}), progress=False)\n"
        "left = [p.pid for p in psutil.Process().children(recursive=True)]\n"
        "print(ray.is_initialized(), left)\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False)\n"
        f"alray.run(alray.JobSpec.from_yaml({str(spec)!r}), progress=False, fresh=True)\n"
        "print(ray.is_initialized())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["False []", "True"]  # a caller's own Ray is kept


def test_help_and_spec_checks_import_neither_torch_nor_ray(tmp_path):
    spec = _job(tmp_path)
    script = ("import sys, alray, alray.cli\n"
              f"alray.JobSpec.from_yaml({str(spec)!r})\n"
              "from alray.job.plan import plan_job\n"
              f"plan_job(alray.JobSpec.from_yaml({str(spec)!r}))\n"
              "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"alray {alray.__version__}"


def test_progress_rate_counts_scoring_only_and_gives_an_eta():
    import io

    from alray.job.progress import Progress, format_seconds

    stream = io.StringIO()
    progress = Progress(stream=stream, bar=True)
    progress.say("starting a local Ray")
    progress.start(shards=4, rows=400)
    progress.started -= 10.0  # as if scoring began 10 s ago
    progress.update(shards=1, rows=100)
    line = progress.line()
    assert "shards 1/4" in line and "rows 100/400" in line
    rate = float(line.split("  ")[-2].split()[0].replace(",", ""))
    assert 9.0 <= rate <= 10.0  # 100 rows over the ~10 s of scoring, not of start-up
    assert line.endswith(f"ETA {format_seconds(300 / rate)}")
    progress.close()
    assert stream.getvalue().startswith("alray: starting a local Ray\n")
    assert format_seconds(75) == "1m15s" and format_seconds(3725) == "1h02m"
    quiet = io.StringIO()
    silent = Progress(enabled=False, stream=quiet, bar=True)
    silent.say("x")
    silent.start(1, 1)
    silent.close()
    assert quiet.getvalue() == ""
