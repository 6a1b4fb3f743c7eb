"""Shared fixtures: one local Ray per session, pools and heads written into tmp folders."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

# Keep every Ray of the suite on loopback and without cluster tokens (see shared/RUNBOOK.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Credentials for the S3 server the tests start (moto accepts any); set before Ray starts so the
# actors inherit them, as they would inherit a real job's environment.
S3_KEY, S3_SECRET = "alray-test-key", "alray-test-secret-d41d8cd98f"
os.environ["AWS_ACCESS_KEY_ID"] = S3_KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)

# The folder whose files steer tests.models:faulty_head; set before Ray starts so workers see it.
FAULTS = Path(tempfile.mkdtemp(prefix="alray-faults-"))
os.environ["ALRAY_TEST_FAULTS"] = str(FAULTS)


@pytest.fixture
def faults():
    """The fault-control folder, emptied before and after each test that uses it."""
    for path in FAULTS.iterdir():
        path.unlink()
    yield FAULTS
    for path in FAULTS.iterdir():
        path.unlink()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray with 2 CPUs for the whole session (Ray's ray_start_regular_shared idiom)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` (for a state another process reaches) until true; fail after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write_head(path: Path, classes: int, dim: int, seed: int = 0, scale: float = 1.0) -> Path:
    """A linear head ``weight [C, D]``, ``bias [C]`` as .safetensors or .npz (by suffix)."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((classes, dim)) * scale).astype(np.float32)
    bias = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    if path.suffix == ".npz":
        np.savez(path, weight=weight, bias=bias)
    else:
        from safetensors.numpy import save_file

        save_file({"weight": weight, "bias": bias}, str(path))
    return path


def embedding_array(x: np.ndarray, fixed: bool = True) -> pa.Array:
    """``[n, D]`` -> fixed_size_list<float> (or list<float>) Arrow array."""
    flat = pa.array(x.ravel())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def write_pool(folder: Path, rows_per_shard: list[int], dim: int = 8, seed: int = 0,
               fixed: bool = True, dtype=np.float32, first_id: int = 0,
               row_group_size: int | None = None, extra: dict | None = None) -> list[Path]:
    """Write one parquet file per entry of ``rows_per_shard``: ``id`` (int64, unique across the
    pool), ``embedding``, ``tag`` (a string to carry). Returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, next_id = [], first_id
    for i, rows in enumerate(rows_per_shard):
        x = rng.standard_normal((rows, dim)).astype(dtype)
        ids = np.arange(next_id, next_id + rows, dtype=np.int64)
        next_id += rows
        table = pa.table({"id": ids, "embedding": embedding_array(x, fixed),
                          "tag": pa.array([f"row-{j}" for j in ids], pa.string())})
        for name, values in (extra or {}).items():
            table = table.append_column(name, values)
        path = folder / f"part-{i:03d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_spec(folder: Path, **sections) -> Path:
    """A job spec over ``folder/pool`` and ``folder/head.safetensors``; keyword sections merge
    over the defaults (``selection={"k": 5}``)."""
    spec = {
        "name": "test-job",
        "pool": {"uri": "./pool", "feature_column": "embedding"},
        "model": {"kind": "linear", "path": "./head.safetensors"},
        "selection": {"k": 10},
        "output": {"uri": "./out"},
        "resources": {"actors": 2},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _moto_server(**env: str):
    """moto's S3 server on 127.0.0.1 (as s3fs's own tests run it); yields its endpoint URL."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """An S3 server that accepts any credentials."""
    with _moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_strict_server():
    """An S3 server that checks credentials (moto's IAM checks on from the first request): it
    knows no access key, so it refuses the tests' credentials."""
    with _moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_server):
    """An s3fs filesystem on the test server, emptied after each test."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    yield fs
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST"))
    fs.invalidate_cache()
