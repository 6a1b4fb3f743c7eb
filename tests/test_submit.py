"""`alray submit`: a job spec and its local files travel to a Ray head through the Jobs API.

The head is a real `ray start --head` of its own (not the suite's session Ray), on 127.0.0.1, in
its own process group and temp folder, ended through its `ray start` process (then its group,
after a limit). The checks that need no Ray come first and use addresses nothing answers at.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray  # noqa: F401 - puts Ray's thirdparty_files on the path: psutil, used below
import yaml

from alray.config import JobSpec
from alray.errors import ConfigError, JobFailed, ModelError
from alray.submit import ENTRYPOINT, FILES_FOLDER, submit
from tests.conftest import write_head, write_pool, write_spec

HEAD_START_SECONDS = 120.0
JOB_SECONDS = 180.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _nothing_answers() -> str:
    """An address on this machine where nothing listens."""
    return f"http://127.0.0.1:{_free_ports(1)[0]}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _end_head(process: subprocess.Popen, descendants: list) -> None:
    """SIGTERM the `ray start` process, which stops its children (2 s here; a SIGTERM to the
    whole group instead left `ray start` running past 30 s); after a limit SIGKILL the group;
    then end by pid any of its processes still running (one that left the group)."""
    import psutil

    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass(frozen=True)
class Head:
    address: str  # the Jobs API
    pid: int  # of `ray start`


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs and its Jobs API; yields its dashboard address."""
    import importlib.util

    import psutil

    if not all(importlib.util.find_spec(m) for m in ("aiohttp_cors", "grpc", "opencensus")):
        pytest.fail("a Ray head serves the Jobs API only with ray[default] installed (without "
                    "it the dashboard starts in minimal mode, with no HTTP server): pip install "
                    "'ray[default]'")

    port, dashboard, agent = _free_ports(3)
    temp = Path(tempfile.mkdtemp(prefix="alray-head-"))  # short: Ray's socket paths must fit
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    command = [f"{venv_bin}/ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--dashboard-agent-listen-port={agent}",
               f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(temp / "head.log", "wb")  # noqa: SIM115 - closed on teardown
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    descendants: list = []
    try:
        while not _answers(f"{address}/api/version"):
            if process.poll() is not None or time.monotonic() - started > HEAD_START_SECONDS:
                tail = (temp / "head.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"the Ray head did not answer within {HEAD_START_SECONDS:g} s:\n"
                            f"{tail}")
            time.sleep(0.2)
        ready = time.monotonic() - started
        print(f"\nray head: Jobs API answering after {ready:.1f} s", file=sys.stderr)
        descendants = psutil.Process(process.pid).children(recursive=True)
        yield Head(address, process.pid)
    finally:
        descendants = list({p.pid: p for p in descendants + _children(process.pid)}.values())
        ending = time.monotonic()
        _end_head(process, descendants)
        print(f"\nray head: ended in {time.monotonic() - ending:.1f} s", file=sys.stderr)
        log.close()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _job(folder: Path, **sections) -> Path:
    """A small parquet pool (two shards, 100 rows of 8-d vectors), a 3-class head, a spec."""
    write_pool(folder / "pool", [60, 40], dim=8)
    write_head(folder / "head.safetensors", classes=3, dim=8)
    sections.setdefault("selection", {"k": 7})
    sections.setdefault("resources", {"actors": 1})
    return write_spec(folder, **sections)


def _wait_for_end(address: str, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + JOB_SECONDS
    while True:
        status = str(client.get_job_status(submission_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{submission_id} still {status} after {JOB_SECONDS:g} s")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- no Ray needed


@pytest.mark.parametrize("key, value, where", [
    ("pool.uri", "POOL", "pool.uri"),
    ("output.uri", "OUT", "output.uri"),
    ("selection.exclude", ["LEDGER"], "selection.exclude"),
])
def test_local_paths_are_refused_for_a_remote_head(tmp_path, key, value, where):
    spec = _job(tmp_path, pool={"uri": "s3://bucket/pool"}, output={"uri": "s3://bucket/out"})
    value = [str(tmp_path / v) for v in value] if isinstance(value, list) \
        else str(tmp_path / value)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="is a local path; a cluster") as caught:
        submit(spec, "http://10.255.255.1:8265", overrides={key: value})
    assert caught.value.where == where
    assert time.monotonic() - started < 5  # refused before any connection is tried


def test_memory_uris_are_refused_even_for_a_head_on_this_machine(tmp_path):
    spec = _job(tmp_path)
    with pytest.raises(ConfigError, match="memory") as caught:
        submit(spec, "127.0.0.1:8265", overrides={"output.uri": "memory://out"})
    assert caught.value.where == "output.uri"


def test_an_address_where_nothing_answers_is_one_config_error(tmp_path):
    spec = _job(tmp_path)
    address = _nothing_answers()
    with pytest.raises(ConfigError) as caught:
        submit(spec, address)
    assert caught.value.where == "--address"
    message = str(caught.value)
    assert "\n" not in message and address in message and "ray start --head" in message


def test_shared_paths_pass_local_paths_to_a_remote_head(tmp_path):
    spec = _job(tmp_path)
    address = _nothing_answers().replace("127.0.0.1", "localhost.invalid")
    with pytest.raises(ConfigError) as caught:  # past the path checks, to the connection
        submit(spec, address, shared_paths=True)
    assert caught.value.where == "--address"


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", "grpc://head:6379"])
def test_an_address_that_is_not_the_jobs_api_is_refused(tmp_path, address):
    with pytest.raises(ConfigError, match="http://HEAD:8265") as caught:
        submit(_job(tmp_path), address)
    assert caught.value.where == "--address"


def test_a_model_too_big_to_ship_names_the_key_and_shared_storage(tmp_path):
    spec = _job(tmp_path)
    with pytest.raises(ConfigError, match=r"s3://") as caught:
        submit(spec, _nothing_answers(), max_shipped_bytes=100)
    assert caught.value.where == "model.path"


def test_a_broken_head_is_found_before_submitting(tmp_path):
    spec = _job(tmp_path)
    (tmp_path / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="model.path"):
        submit(spec, _nothing_answers())


def test_the_working_dir_holds_the_spec_and_its_files(tmp_path):
    spec = _job(tmp_path, model={"path": None, "members": ["./head.safetensors", "./b/h.npz"]},
                scoring={"strategy": "vote_entropy"})
    (tmp_path / "b").mkdir()
    write_head(tmp_path / "b" / "h.npz", classes=3, dim=8, seed=1)
    staging = tmp_path / "staging"
    with pytest.raises(ConfigError, match="--address"):
        submit(spec, _nothing_answers(), staging_dir=staging, overrides={"selection.k": 3})
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert files == ["job.yaml", f"{FILES_FOLDER}/0/head.safetensors", f"{FILES_FOLDER}/1/h.npz"]
    raw = yaml.safe_load((staging / "job.yaml").read_text())
    assert raw["model"]["members"] == [f"{FILES_FOLDER}/0/head.safetensors",
                                       f"{FILES_FOLDER}/1/h.npz"]
    assert raw["selection"] == {"k": 3}  # --set applied here; only the keys given
    assert raw["pool"]["uri"] == [str(tmp_path / "pool")]
    staged = JobSpec.from_yaml(staging / "job.yaml")
    assert staged.model.members == (str(staging / FILES_FOLDER / "0" / "head.safetensors"),
                                    str(staging / FILES_FOLDER / "1" / "h.npz"))


def test_pip_ships_alray_and_asks_for_its_dependencies(tmp_path):
    from alray.submit import _requirements, _runtime_env

    spec_path = _job(tmp_path)
    spec = JobSpec.from_yaml(spec_path)
    staging = tmp_path / "staging"
    with pytest.raises(ConfigError, match="--address"):
        submit(spec_path, _nothing_answers(), pip=True, staging_dir=staging)
    assert (staging / "alray" / "submit.py").is_file()
    assert not list(staging.rglob("__pycache__"))
    env = _runtime_env(staging, spec, pip=True)
    names = [r.split(">")[0].split("=")[0] for r in env["pip"]]
    assert "torch" in names and "pyarrow" in names and "ray" not in names
    assert not any(";" in r for r in env["pip"])  # markers resolved here
    assert "s3fs" not in names
    on_s3 = spec.replace(output=spec.output.__class__(uri="s3://bucket/out"))
    assert "s3fs" in [r.split(">")[0] for r in _requirements(on_s3)]


# ----------------------------------------------------------------------------- on a Ray head


def test_submit_and_wait_runs_the_job_on_the_cluster(tmp_path, ray_head):
    spec = _job(tmp_path)
    echo = io.StringIO()
    started = time.monotonic()
    submission = submit(spec, ray_head.address, wait=True, echo=echo)
    print(f"\nsubmit --wait to SUCCEEDED: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert submission.status == "SUCCEEDED", submission.logs
    assert submission.error is None
    assert submission.entrypoint == ENTRYPOINT
    assert set(submission.shipped) == {"job.yaml", f"{FILES_FOLDER}/head.safetensors"}
    assert pq.read_table(tmp_path / "out" / "selection.parquet").num_rows == 7
    # The model the cluster loaded is the shipped copy, not the file on this machine.
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    model_path = job["spec"]["model"]["path"]
    assert model_path.endswith(f"{FILES_FOLDER}/head.safetensors")
    assert model_path != str(tmp_path / "head.safetensors")
    text = echo.getvalue()
    assert text.startswith(f"alray: submitted {submission.submission_id} to {ray_head.address}")
    assert submission.follow_command in text and submission.stop_command in text
    assert "selected 7" in text  # the job's own summary line, streamed
    assert "selected 7" in submission.logs


def test_a_job_that_fails_on_the_cluster_reports_its_error_line(tmp_path, ray_head):
    spec = _job(tmp_path)
    missing = tmp_path / "no-such-pool"
    started = time.monotonic()
    submission = submit(spec, ray_head.address, wait=True, overrides={"pool.uri": str(missing)})
    print(f"\nsubmit --wait to FAILED: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert submission.status == "FAILED"
    assert submission.error.startswith("pool.uri: "), submission.logs
    assert str(missing) in submission.error
    assert f"alray: error: {submission.error}" in submission.logs


def test_submit_without_wait_returns_the_id_at_once(tmp_path, ray_head, monkeypatch):
    # A python model whose package lies in the current folder: its code travels too.
    package = tmp_path / "tinyhead"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\n\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Linear(8, 3)\n")
    monkeypatch.chdir(tmp_path)
    spec = _job(tmp_path, model={"kind": "python", "path": "tinyhead:make"})
    started = time.monotonic()
    submission = submit(spec, ray_head.address, fresh=True)
    took = time.monotonic() - started
    print(f"\nsubmit without --wait returned in {took:.1f} s", file=sys.stderr)
    assert submission.status == "PENDING" and submission.logs is None
    assert submission.submission_id.startswith("alray-test-job-")
    assert set(submission.shipped) == {"job.yaml", "tinyhead/__init__.py"}
    assert submission.entrypoint == f"{ENTRYPOINT} --fresh"
    assert _wait_for_end(ray_head.address, submission.submission_id) == "SUCCEEDED"
    print(f"then to SUCCEEDED: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert pq.read_table(tmp_path / "out" / "selection.parquet").num_rows == 7


def _dashboard_process(head_pid: int):
    """The head's dashboard (its HTTP server, the Jobs API) among the head's processes."""
    import psutil

    found = []
    for process in psutil.Process(head_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just ended
            if "dashboard/dashboard.py" in " ".join(process.cmdline()):
                found.append(process)
    assert len(found) == 1, found
    return found[0]


class _Notice(io.StringIO):
    """An echo stream that tells when the submission's notice has been written."""

    def __init__(self):
        super().__init__()
        self.submitted = threading.Event()

    def write(self, text: str) -> int:
        if "alray: stop:" in text:
            self.submitted.set()
        return super().write(text)


def test_a_wait_ends_when_the_head_stops_answering(tmp_path, ray_head):
    dashboard = _dashboard_process(ray_head.pid)
    echo = _Notice()

    def freeze_the_head():
        if echo.submitted.wait(60):
            dashboard.suspend()  # SIGSTOP: the head's HTTP server stops answering

    freezer = threading.Thread(target=freeze_the_head, daemon=True)
    freezer.start()
    started = time.monotonic()
    try:
        with pytest.raises(JobFailed, match="has not answered for 3 s") as caught:
            submit(_job(tmp_path), ray_head.address, wait=True, timeout=3, echo=echo)
        took = time.monotonic() - started
    finally:
        freezer.join(60)
        dashboard.resume()
    print(f"\nthe wait ended {took:.1f} s after submitting, the head frozen", file=sys.stderr)
    assert took < 30
    message = str(caught.value)
    assert "\n" not in message and "ray job logs --address" in message
    submission_id = message.split(" may still run")[0].rsplit(" ", 1)[-1]
    assert _wait_for_end(ray_head.address, submission_id) == "SUCCEEDED"  # the job went on
