"""Pools, models and outputs on s3:// against an S3 server on 127.0.0.1 (moto), through s3fs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import alray
from tests.conftest import S3_KEY, S3_SECRET, write_head, write_pool, write_spec
from tests.test_cli import run_cli

pytestmark = pytest.mark.usefixtures("ray_session")


def upload(s3, local, remote: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.put_file(str(path), f"{remote}/{path.relative_to(local)}")


def s3_spec(tmp_path, endpoint: str, **pool):
    return write_spec(tmp_path, pool={"uri": "s3://pools/digits/", "carry": ["tag"], **pool},
                      model={"path": "s3://models/head.safetensors"},
                      output={"uri": "s3://results/run-1"},
                      storage={"s3": {"endpoint_url": endpoint, "region": "us-east-1"}},
                      selection={"k": 25})


def test_pool_model_and_outputs_on_s3_match_local(tmp_path, s3, s3_server):
    write_pool(tmp_path / "pool", [300, 0, 180, 220], dim=8, seed=21, row_group_size=100)
    write_head(tmp_path / "head.safetensors", classes=5, dim=8)
    local = alray.run(alray.JobSpec.from_yaml(write_spec(
        tmp_path, pool={"carry": ["tag"]}, selection={"k": 25})))
    for bucket in ("pools", "models", "results"):
        s3.mkdir(bucket)
    upload(s3, tmp_path / "pool", "pools/digits")
    s3.put_file(str(tmp_path / "head.safetensors"), "models/head.safetensors")
    spec = alray.JobSpec.from_yaml(s3_spec(tmp_path, s3_server, shard_rows=200))
    remote = alray.run(spec)
    s3.invalidate_cache()
    for column in ("rank", "id", "score", "predicted", "tag"):
        assert remote.selection.column(column).equals(local.selection.column(column))
    assert all(u.startswith("s3://pools/digits/") for u in remote.selection["uri"].to_pylist())
    with s3.open("results/run-1/selection.parquet", "rb") as f:
        assert pq.read_table(f).equals(remote.selection)
    scores = pq.read_table("results/run-1/scores", filesystem=s3)
    assert scores.num_rows == 700
    records = s3.ls("results/run-1/_shards")
    assert len([r for r in records if r.endswith(".json")]) == remote.counts["shards"] - 0
    assert not [p for p in s3.find("results") if ".tmp-" in p]  # no temporary objects left


def test_credentials_never_reach_outputs(tmp_path, s3, s3_server):
    write_pool(tmp_path / "pool", [50], dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    for bucket in ("pools", "models", "results"):
        s3.mkdir(bucket)
    upload(s3, tmp_path / "pool", "pools/digits")
    s3.put_file(str(tmp_path / "head.safetensors"), "models/head.safetensors")
    alray.run(alray.JobSpec.from_yaml(s3_spec(tmp_path, s3_server)))
    s3.invalidate_cache()
    for path in s3.find("results"):
        blob = s3.cat_file(path)
        assert S3_SECRET.encode() not in blob and S3_KEY.encode() not in blob, path
    job = json.loads(s3.cat_file("results/run-1/job.json"))
    assert job["spec"]["storage"]["s3"]["endpoint_url"] == s3_server


def test_status_of_a_job_on_s3_from_its_spec(tmp_path, s3, s3_server):
    """`alray status SPEC` reads output.uri with the spec's storage options (the server's
    endpoint), which a bare s3:// folder would lack."""
    write_pool(tmp_path / "pool", [30, 20], dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    for bucket in ("pools", "models", "results"):
        s3.mkdir(bucket)
    upload(s3, tmp_path / "pool", "pools/digits")
    s3.put_file(str(tmp_path / "head.safetensors"), "models/head.safetensors")
    spec_path = s3_spec(tmp_path, s3_server)
    alray.run(alray.JobSpec.from_yaml(spec_path))
    done = run_cli("status", spec_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "test-job: succeeded (s3://results/run-1)"
    assert "2 done (0 reused), 0 quarantined, 0 left of 2" in done.stdout
    assert "50 scored, 0 quarantined" in done.stdout


def test_missing_bucket_is_a_clear_error(tmp_path, s3, s3_server):
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    s3.mkdir("models")
    s3.put_file(str(tmp_path / "head.safetensors"), "models/head.safetensors")
    spec = alray.JobSpec.from_yaml(s3_spec(tmp_path, s3_server))
    with pytest.raises(alray.ConfigError, match=r"^pool\.uri: nothing at 's3://pools/digits/'"):
        alray.run(spec)


def test_credentials_in_the_spec_are_refused(tmp_path):
    with pytest.raises(alray.ConfigError, match="storage.s3.secret: credentials are refused"):
        alray.JobSpec.from_yaml(write_spec(tmp_path, storage={"s3": {"secret": "x"}}))


@pytest.mark.parametrize("where", ["model.path", "pool.uri", "output.uri"])
def test_refused_credentials_are_a_clear_error(tmp_path, s3_strict_server, where):
    """The server checks credentials and knows none: whichever path is on it, the job stops
    before any work with one line naming the field, the server's reason and what to check."""
    write_pool(tmp_path / "pool", [40], dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    remote = {"model.path": {"model": {"path": "s3://models/head.safetensors"}},
              "pool.uri": {"pool": {"uri": "s3://pools/digits/"}},
              "output.uri": {"output": {"uri": "s3://results/run-1"}}}[where]
    spec = alray.JobSpec.from_yaml(write_spec(
        tmp_path, storage={"s3": {"endpoint_url": s3_strict_server}}, **remote))
    uri = next(iter(next(iter(remote.values())).values()))
    with pytest.raises(alray.ConfigError) as refused:
        alray.run(spec)
    message = str(refused.value)
    assert message.startswith(f"{where}: access to {uri!r} was refused (")
    assert "AWS_ACCESS_KEY_ID" in message and "\n" not in message
    assert S3_SECRET not in message and S3_KEY not in message
    assert not (tmp_path / "out").exists()  # nothing ran


def test_refused_credentials_on_an_image_pool(tmp_path, s3_strict_server):
    spec = alray.JobSpec.from_yaml(write_spec(
        tmp_path, pool={"uri": "s3://pools/photos/", "format": "images", "feature_column": None},
        model={"kind": "python", "path": "tests.models:cnn_rgb"},
        storage={"s3": {"endpoint_url": s3_strict_server}}))
    with pytest.raises(alray.ConfigError,
                       match=r"^pool\.uri: access to 's3://pools/photos/' was refused \(The AWS "
                             r"Access Key Id you provided does not exist"):
        alray.run(spec)
