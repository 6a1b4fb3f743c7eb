"""Bad shards and bad rows: quarantined and counted under `skip`, a one-line failure under `fail`.

Each bad input is a small parquet file (or not) written beside good shards, per DESIGN.md's table.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import alray
from tests.conftest import embedding_array, write_head, write_pool, write_spec

pytestmark = pytest.mark.usefixtures("ray_session")

DIM = 8


def _table(ids, x, fixed=True, **extra) -> pa.Table:
    return pa.table({"id": pa.array(ids), "embedding": embedding_array(np.asarray(x, np.float32),
                                                                       fixed), **extra})


def _good_rows(n, first_id, seed=0):
    return np.arange(first_id, first_id + n), np.random.default_rng(seed).standard_normal((n, DIM))


def _write(path, table):
    pq.write_table(table, path)
    return path


# Each maker writes one bad file under `folder` and returns (kind, rows in it, rows scored).

def zero_byte(folder):
    (folder / "zero.parquet").write_bytes(b"")
    return "unreadable", 0, 0


def truncated(folder):
    ids, x = _good_rows(50, 10_000)
    path = _write(folder / "truncated.parquet", _table(ids, x))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "unreadable", 0, 0


def not_parquet(folder):
    (folder / "notes.parquet").write_text("id,embedding\n1,2\n")
    return "unreadable", 0, 0


def missing_id_column(folder):
    ids, x = _good_rows(20, 20_000)
    _write(folder / "noid.parquet", _table(ids, x).rename_columns(["key", "embedding"]))
    return "missing_column", 20, 0


def missing_feature_column(folder):
    ids, x = _good_rows(20, 21_000)
    _write(folder / "nofeat.parquet", _table(ids, x).rename_columns(["id", "vec"]))
    return "missing_column", 20, 0


def string_features(folder):
    _write(folder / "strings.parquet",
           pa.table({"id": pa.array([1, 2, 3]), "embedding": pa.array(["a", "b", "c"])}))
    return "bad_type", 3, 0


def wrong_width(folder):
    ids = np.arange(22_000, 22_010)
    x = np.ones((10, DIM + 3), np.float32)
    _write(folder / "wide.parquet", _table(ids, x))
    return "wrong_length", 10, 0


def non_finite_rows(folder):
    ids, x = _good_rows(30, 30_000)
    x[3, 1], x[17, 5] = np.nan, np.inf
    _write(folder / "nan.parquet", _table(ids, x))
    return "non_finite", 30, 28


def null_rows(folder):
    ids, x = _good_rows(30, 31_000)
    emb = embedding_array(x.astype(np.float32))
    validity = np.ones(30, bool)
    validity[[4, 9]] = False
    emb = pa.FixedSizeListArray.from_arrays(emb.values, DIM, mask=pa.array(~validity))
    id_arr = pa.array(ids, mask=np.arange(30) == 12)
    _write(folder / "nulls.parquet", pa.table({"id": id_arr, "embedding": emb}))
    return "null_value", 30, 27


def wrong_length_rows(folder):
    ids, x = _good_rows(20, 32_000)
    rows = [list(map(float, r)) for r in x]
    rows[6] = rows[6][:3]
    _write(folder / "ragged.parquet",
           pa.table({"id": ids, "embedding": pa.array(rows, pa.list_(pa.float32()))}))
    return "wrong_length", 20, 19


def repeated_ids(folder):
    ids, x = _good_rows(25, 33_000)
    ids[10] = ids[2]
    ids[20] = ids[2]
    _write(folder / "dups.parquet", _table(ids, x))
    return "duplicate_id", 25, 23


BAD_SHARDS = [zero_byte, truncated, not_parquet, missing_id_column, missing_feature_column,
              string_features, wrong_width]
BAD_ROWS = [non_finite_rows, null_rows, wrong_length_rows, repeated_ids]


def _errors(out) -> list[dict]:
    text = (out / "errors.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _pool_with(tmp_path, makers):
    pool = tmp_path / "pool"
    write_pool(pool, [100, 60], dim=DIM, seed=1)
    write_head(tmp_path / "head.safetensors", classes=4, dim=DIM)
    return pool, [maker(pool) for maker in makers]


def test_skip_quarantines_every_bad_input_and_counts_reconcile(tmp_path):
    _, expected = _pool_with(tmp_path, BAD_SHARDS + BAD_ROWS)
    spec = write_spec(tmp_path, resources={"on_error": "skip", "max_quarantined": 100},
                      selection={"k": 50})
    result = alray.run(alray.JobSpec.from_yaml(spec))
    counts = result.counts
    assert counts["rows_in"] == counts["rows_scored"] + counts["rows_quarantined"]
    assert counts["rows_in"] == 160 + sum(rows for _, rows, _ in expected)
    assert counts["rows_scored"] == 160 + sum(scored for _, _, scored in expected)
    assert counts["shards_quarantined"] == len(BAD_SHARDS)
    assert counts["shards_done"] == 2 + len(BAD_ROWS)
    errors = _errors(tmp_path / "out")
    assert sorted({e["kind"] for e in errors}) == sorted({kind for kind, _, _ in expected})
    for error in errors:
        assert error["shard"] and error["uri"].startswith("file://") and error["message"]
    row_errors = [e for e in errors if e["row"] is not None]
    assert len(row_errors) == counts["rows_quarantined"] - sum(
        rows for kind, rows, scored in expected if scored == 0)
    scores = pq.read_table(tmp_path / "out" / "scores")
    assert scores.num_rows == counts["rows_scored"]
    assert not np.isnan(scores.column("score").to_numpy()).any()
    ids = result.selection.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 50


def test_row_errors_name_the_row_and_id(tmp_path):
    _pool_with(tmp_path, [non_finite_rows, repeated_ids])
    spec = write_spec(tmp_path, resources={"on_error": "skip"})
    alray.run(alray.JobSpec.from_yaml(spec))
    errors = {(e["kind"], e["row"]): e for e in _errors(tmp_path / "out")}
    assert set(errors) == {("non_finite", 3), ("non_finite", 17), ("duplicate_id", 10),
                           ("duplicate_id", 20)}
    assert errors[("non_finite", 3)]["id"] == 30_003
    assert errors[("duplicate_id", 20)]["id"] == 33_002
    assert "'embedding'" in errors[("non_finite", 17)]["message"]


@pytest.mark.parametrize("maker", BAD_SHARDS + BAD_ROWS, ids=lambda m: m.__name__)
def test_fail_stops_with_a_message_naming_shard_row_and_cause(tmp_path, maker):
    pool = tmp_path / "pool"
    pool.mkdir()
    kind, _, _ = maker(pool)
    write_pool(tmp_path / "good", [40], dim=DIM)
    write_head(tmp_path / "head.safetensors", classes=4, dim=DIM)
    spec = write_spec(tmp_path, pool={"uri": ["./pool", "./good"]})
    with pytest.raises(alray.JobFailed) as failure:
        alray.run(alray.JobSpec.from_yaml(spec))
    message = str(failure.value)
    assert message.startswith("shard ") and "file://" in message and f"[{kind}]" in message
    assert "\n" not in message
    if maker in BAD_ROWS:
        assert ", row " in message
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert job["status"] == "failed" and job["error"] == message
    assert not (tmp_path / "out" / "selection.parquet").exists()


def test_ids_repeated_across_shards_are_never_selected_twice(tmp_path):
    pool = tmp_path / "pool"
    write_pool(pool, [80], dim=DIM, seed=3)
    write_pool(tmp_path / "copy", [80], dim=DIM, seed=4)  # same ids 0..79, other features
    (tmp_path / "copy" / "part-000.parquet").rename(pool / "again.parquet")
    write_head(tmp_path / "head.safetensors", classes=4, dim=DIM)
    result = alray.run(alray.JobSpec.from_yaml(write_spec(tmp_path, selection={"k": 60})))
    ids = result.selection.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 60
    scores = pq.read_table(tmp_path / "out" / "scores")
    best = (scores.sort_by([("score", "descending"), ("id", "ascending")])
            .to_pylist())
    seen, expected = set(), []
    for row in best:
        if row["id"] not in seen:
            seen.add(row["id"])
            expected.append(row["id"])
    assert ids == expected[:60]
    duplicates = [e for e in _errors(tmp_path / "out") if e["kind"] == "duplicate_id"]
    assert duplicates and all(e["id"] in range(80) for e in duplicates)
    assert result.counts["rows_scored"] == 160


def test_bad_model_outputs_are_row_errors(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    probs = np.full((6, 3), 1 / 3, np.float32)
    probs[1] = [0.5, 0.6, -0.1]      # negative
    probs[2] = [0.5, 0.5, 0.5]       # sums to 1.5
    probs[4] = [np.nan, 0.5, 0.5]
    pq.write_table(pa.table({"id": np.arange(6), "probs": embedding_array(probs)}),
                   pool / "probs.parquet")
    spec = write_spec(tmp_path, pool={"feature_column": None},
                      model={"kind": "precomputed", "column": "probs", "output": "probs",
                             "path": None},
                      resources={"on_error": "skip"}, selection={"k": 2})
    result = alray.run(alray.JobSpec.from_yaml(spec))
    kinds = {e["row"]: e["kind"] for e in _errors(tmp_path / "out")}
    assert kinds == {1: "bad_probabilities", 2: "bad_probabilities", 4: "non_finite"}
    assert result.counts["rows_scored"] == 3


def test_too_many_quarantined_shards_fail_the_job(tmp_path):
    _pool_with(tmp_path, [zero_byte, not_parquet])
    at_limit = write_spec(tmp_path, resources={"on_error": "skip", "max_quarantined": 0.5})
    assert alray.run(alray.JobSpec.from_yaml(at_limit)).counts["shards_quarantined"] == 2
    past_limit = write_spec(tmp_path, resources={"on_error": "skip", "max_quarantined": 1})
    with pytest.raises(alray.JobFailed, match="resources.max_quarantined: 2 of 4 shards"):
        alray.run(alray.JobSpec.from_yaml(past_limit))


def test_shard_whose_id_type_differs_from_the_first_shards(tmp_path):
    pool, _ = _pool_with(tmp_path, [])
    ids, x = _good_rows(10, 0)
    _write(pool / "zz-strings.parquet", _table([f"s{i}" for i in ids], x))
    spec = write_spec(tmp_path, resources={"on_error": "skip", "max_quarantined": 5})
    result = alray.run(alray.JobSpec.from_yaml(spec))
    errors = _errors(tmp_path / "out")
    assert [(e["kind"], e["uri"].rsplit("/", 1)[1]) for e in errors] == [
        ("schema", "zz-strings.parquet")]
    assert "id column 'id' is string here but int64" in errors[0]["message"]
    assert result.counts["rows_quarantined"] == 10 and result.counts["rows_scored"] == 160


@pytest.mark.parametrize("change, kind", [("delete", "missing_object"),
                                          ("directory", "unreadable")])
def test_file_changed_between_planning_and_reading(tmp_path, change, kind):
    """The actor's own code path, without Ray: plan, then delete the file (or put a directory in
    its place: unreadable even for root), then scan the shard."""
    from alray.pipeline.batch import load_scorer
    from alray.pipeline.shard import scan_shard
    from alray.sources import list_pool_files, plan_shards

    pool, _ = _pool_with(tmp_path, [])
    spec = alray.JobSpec.from_yaml(write_spec(tmp_path, resources={"on_error": "skip"}))
    shards = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)
    (pool / "part-001.parquet").unlink()
    if change == "directory":
        (pool / "part-001.parquet").mkdir()
    outcome = scan_shard(shards[1], spec, load_scorer(spec))
    assert outcome.status == "quarantined"
    assert outcome.errors[0]["kind"] == kind
    assert outcome.rows_in == outcome.rows_quarantined == 60


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; the "
                    "unreadable-file path is the same OSError branch the truncated test covers")
def test_file_the_process_cannot_read(tmp_path):
    pool, _ = _pool_with(tmp_path, [])
    (pool / "part-001.parquet").chmod(0)
    spec = write_spec(tmp_path, resources={"on_error": "skip", "max_quarantined": 5})
    result = alray.run(alray.JobSpec.from_yaml(spec))
    assert [e["kind"] for e in _errors(tmp_path / "out")] == ["unreadable"]
    assert result.counts["rows_scored"] == 100


def test_out_of_gpu_memory_is_said_as_such(tmp_path):
    """A model that runs out of GPU memory is not a schema problem: the shard says what happened
    and which key to lower."""
    from alray.pipeline.batch import load_scorer
    from alray.pipeline.shard import scan_shard
    from alray.sources import list_pool_files, plan_shards

    _pool_with(tmp_path, [])
    spec = alray.JobSpec.from_yaml(write_spec(
        tmp_path, model={"kind": "python", "path": "tests.models:out_of_memory"},
        resources={"on_error": "skip"}))
    shard = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)[0]
    outcome = scan_shard(shard, spec, load_scorer(spec))
    assert outcome.status == "quarantined"
    assert outcome.errors[0]["kind"] == "out_of_memory"
    assert "lower scoring.batch_size" in outcome.errors[0]["message"]
