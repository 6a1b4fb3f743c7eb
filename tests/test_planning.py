"""Mistakes found before Ray starts: `alray plan`, problems every shard shares (exit 2), problems of
some shards (planned bad), and failure messages whose counts agree with the files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import alray
from alray.job.plan import format_plan, plan_job
from tests.conftest import embedding_array, write_head, write_pool, write_spec

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "alray", *map(str, args)], capture_output=True,
                          text=True, timeout=240, cwd=ROOT, env=env)


def _job(tmp_path, shards=(40, 30, 20), dim=8, head_dim=8, **sections) -> Path:
    write_pool(tmp_path / "pool", list(shards), dim=dim)
    write_head(tmp_path / "head.safetensors", classes=3, dim=head_dim)
    return write_spec(tmp_path, **sections)


def _plan(spec_path, **kwargs):
    return plan_job(alray.JobSpec.from_yaml(spec_path, **kwargs))


def test_a_column_no_file_has_is_an_error_of_its_key(tmp_path):
    spec = _job(tmp_path, pool={"feature_column": "vector"})
    with pytest.raises(alray.ConfigError) as caught:
        _plan(spec)
    message = str(caught.value)
    assert message.startswith("pool.feature_column: no column 'vector'")
    assert "the file has: id, embedding, tag" in message and "every pool file (3)" in message


def test_vectors_narrower_than_the_head_are_an_error_read_from_its_header(tmp_path):
    spec = _job(tmp_path, dim=8, head_dim=16)
    with pytest.raises(alray.ConfigError) as caught:
        _plan(spec)
    assert str(caught.value).startswith("pool.feature_column: column 'embedding' holds vectors "
                                        "of 8 values; the model takes 16 [wrong_length]")


def test_files_that_are_not_parquet_are_an_error_of_the_pool(tmp_path):
    (tmp_path / "pool").mkdir()
    for name in ("a", "b"):
        (tmp_path / "pool" / f"{name}.parquet").write_text("id,embedding\n1,2\n")
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    with pytest.raises(alray.ConfigError) as caught:
        _plan(write_spec(tmp_path))
    assert str(caught.value).startswith("pool.uri: not a readable parquet file")


def test_the_cli_reports_a_shared_problem_with_exit_2_before_ray(tmp_path):
    spec = _job(tmp_path, pool={"feature_column": "vector"})
    for command in (("run", spec), ("plan", spec), ("run", spec, "--dry-run")):
        done = run_cli(*command)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(
            "alray: error: pool.feature_column: no column 'vector'")
        assert "starting a local Ray" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was written


def _add_bad_files(pool: Path) -> None:
    """Two files whose problems planning sees: no embedding column, and not parquet at all."""
    pq.write_table(pa.table({"id": np.arange(1000, 1010), "other": np.zeros(10)}),
                   pool / "x-nofeat.parquet")
    (pool / "y-text.parquet").write_text("not parquet")


def test_plan_lists_bad_shards_reuse_and_what_a_run_would_do(tmp_path):
    spec = _job(tmp_path, resources={"on_error": "skip", "max_quarantined": 2})
    _add_bad_files(tmp_path / "pool")
    plan = _plan(spec)
    assert [s.problem.kind for s in plan.bad] == ["missing_column", "unreadable"]
    assert len(plan.to_score) == 3 and plan.rows_of(plan.to_score) == 90
    text, would_fail = format_plan(plan)
    assert not would_fail
    assert "to score: 3 shard(s), 90 rows" in text and "bad:      2 shard(s)" in text
    assert "no column 'embedding'" in text and "[unreadable]" in text
    strict = _plan(spec, overrides={"resources.max_quarantined": 1})
    text, would_fail = format_plan(strict)
    assert would_fail and "set resources.max_quarantined: 2" in text


def test_plan_shows_what_a_run_would_reuse(tmp_path, ray_session):
    spec = _job(tmp_path)
    alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    (tmp_path / "pool" / "part-001.parquet").unlink()
    write_pool(tmp_path / "extra", [15], dim=8, first_id=5000)
    (tmp_path / "extra" / "part-000.parquet").rename(tmp_path / "pool" / "part-009.parquet")
    plan = _plan(spec)
    assert sorted(s.uri.rsplit("/", 1)[1] for s in plan.to_score) == ["part-009.parquet"]
    assert len(plan.reusable) == 2
    done = run_cli("plan", spec)
    assert done.returncode == 0, done.stderr
    assert "reused:   2 shard(s), 60 rows" in done.stdout


def _numbers(message: str) -> dict:
    found = re.search(r"errors\.jsonl lists ([\d,]+) problems? \(([\d,]+) shards? and ([\d,]+) "
                      r"rows? quarantined\)", message)
    assert found, message
    return dict(zip(("errors", "shards", "rows"), (int(g.replace(",", "")) for g in found.groups())))


def test_bad_shards_under_fail_stop_before_ray_with_advice_that_works(tmp_path):
    spec = _job(tmp_path, resources={"max_quarantined": 1})
    _add_bad_files(tmp_path / "pool")
    done = run_cli("run", spec)
    assert done.returncode == 1, done.stderr
    assert "starting a local Ray" not in done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert "[missing_column]" in message
    # One step gets the pool running: skip, with a limit the bad shards fit under.
    assert ("set resources.on_error: skip to quarantine bad shards and rows and score the rest, "
            "with resources.max_quarantined: 2 (or more)") in message
    numbers = _numbers(message)
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    errors = (tmp_path / "out" / "errors.jsonl").read_text().splitlines()
    assert numbers == {"errors": len(errors), "shards": job["counts"]["shards_quarantined"],
                       "rows": job["counts"]["rows_quarantined"]} == {"errors": 2, "shards": 2,
                                                                      "rows": 10}
    assert job["status"] == "failed" and job["error"] == message.removeprefix("alray: error: ")
    again = run_cli("run", spec, "--set", "resources.on_error=skip",
                    "--set", "resources.max_quarantined=2")
    assert again.returncode == 0, again.stderr


def test_past_max_quarantined_the_message_counts_every_quarantined_shard(tmp_path):
    spec = _job(tmp_path, resources={"on_error": "skip", "max_quarantined": 0})
    _add_bad_files(tmp_path / "pool")
    done = run_cli("run", spec)
    assert done.returncode == 1, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("alray: error: resources.max_quarantined: 2 of 5 shards "
                              "quarantined, past the limit of 0 (0 shards)")
    assert "set resources.max_quarantined: 2 to accept them" in message
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    errors = (tmp_path / "out" / "errors.jsonl").read_text().splitlines()
    assert _numbers(message) == {"errors": len(errors),
                                 "shards": job["counts"]["shards_quarantined"],
                                 "rows": job["counts"]["rows_quarantined"]}


def test_a_wrong_width_in_some_files_is_a_planned_bad_shard(tmp_path):
    spec = _job(tmp_path, resources={"on_error": "skip", "max_quarantined": 1})
    x = np.ones((5, 12), np.float32)
    pq.write_table(pa.table({"id": np.arange(900, 905), "embedding": embedding_array(x),
                             "tag": ["t"] * 5}), tmp_path / "pool" / "wide.parquet")
    plan = _plan(spec)
    assert [(s.problem.kind, s.problem.key) for s in plan.bad] == [("wrong_length",
                                                                   "pool.feature_column")]
