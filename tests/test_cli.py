"""The command line as a user runs it: `alray run`, `alray demo`, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

import alray
from tests.conftest import write_head, write_pool, write_spec

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "alray", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT, env=env)


def test_public_api_is_explicit():
    assert sorted(alray.__all__) == sorted(
        ["AlrayError", "CartographyResult", "ConfigError", "JobFailed", "JobSpec", "ModelError",
         "Result", "ShardError", "SimulationResult", "__version__", "cartography", "export",
         "import_labels", "run", "simulate"])
    for name in alray.__all__:
        assert hasattr(alray, name)
    assert issubclass(alray.ConfigError, ValueError) and issubclass(alray.JobFailed, RuntimeError)


def test_run_with_set_and_out(tmp_path):
    write_pool(tmp_path / "pool", [120, 80], dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    spec = write_spec(tmp_path)
    done = run_cli("run", spec, "--set", "scoring.strategy=ratio", "--set", "selection.k=7",
                   "--out", tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr
    assert "200 of 200 rows scored" in done.stdout
    out = tmp_path / "elsewhere"
    job = json.loads((out / "job.json").read_text())
    assert job["spec"]["scoring"]["strategy"] == "ratio"
    selection = pq.read_table(out / "selection.parquet")
    assert selection.num_rows == 7
    scores = pq.read_table(out / "scores")
    assert scores.column("score").equals(scores.column("ratio"))
    assert not (tmp_path / "out").exists()


def test_bad_row_under_fail_exits_1_with_one_line(tmp_path):
    import numpy as np
    import pyarrow as pa

    from tests.conftest import embedding_array

    x = np.zeros((5, 8), np.float32)
    x[2, 0] = np.nan
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"id": np.arange(5), "embedding": embedding_array(x)}),
                   tmp_path / "pool" / "bad.parquet")
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    done = run_cli("run", write_spec(tmp_path))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("alray: error: shard bad-")
    assert ", row 2: NaN or Inf in column 'embedding' [non_finite]" in lines[-1]
    assert "Traceback" not in done.stderr


def test_demo_prints_its_summary(tmp_path):
    done = run_cli("demo", "--out", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "scored 1,767 rows in 4 shards" in out
    assert "class mix" in out and "head accuracy" in out
    selection = pq.read_table(tmp_path / "demo" / "output" / "selection.parquet")
    assert selection.num_rows == 50
    pool_acc, sel_acc = [float(s.split("%")[0]) for s in out.split("head accuracy: ")[1]
                         .split(" on the pool, ")]
    assert sel_acc < pool_acc  # uncertain rows are where the head is wrong
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("  topk ", "  badge "))}
    topk_copies, badge_copies = int(rows["topk"][-2]), int(rows["badge"][-2])
    assert badge_copies < topk_copies  # the diversity batch holds fewer near-copies
    diverse = pq.read_table(tmp_path / "demo" / "output-badge" / "selection.parquet")
    assert diverse.num_rows == 50 and set(diverse.column("reason").to_pylist()) == {"diversity"}
    assert "alray simulate" in out and (tmp_path / "demo" / "digits.sim.yaml").exists()
    again = run_cli("demo", "--out", tmp_path / "demo")  # overwritten, same selection
    assert again.returncode == 0
    assert pq.read_table(tmp_path / "demo" / "output" / "selection.parquet").equals(selection)


def test_report_submit_export_errors_are_one_line_with_exit_2(tmp_path):
    """The newer commands report bad input as every command does: one line, exit 2, and
    nothing started (submit to a port nobody listens on does not hang)."""
    write_pool(tmp_path / "pool", [20], dim=8)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    spec = write_spec(tmp_path)
    cases = [(("report", tmp_path / "nothing"), "alray: error: OUT: no job.json under"),
             (("export", tmp_path / "nothing", "--format", "csv"),
              "alray: error: OUT: no job.json under"),
             (("submit", spec, "--address", "http://127.0.0.1:9"), "alray: error: --address")]
    for args, start in cases:
        done = run_cli(*args, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(start) and done.stderr.count("\n") == 1, done.stderr
