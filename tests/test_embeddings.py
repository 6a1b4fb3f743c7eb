"""Candidates carry the model's embedding, exactly, while the scan holds only about 2M vectors;
and only where the selection method reads it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alray.config import JobSpec
from alray.pipeline.batch import load_scorer
from alray.pipeline.vectors import CandidateVectors, VectorsIncomplete
from alray.pipeline.shard import scan_shard
from alray.sources import list_pool_files, plan_shards
from tests.conftest import write_pool


@pytest.mark.parametrize("seed", range(5))
def test_kept_vectors_cover_the_top_m(seed):
    rng = np.random.default_rng(seed)
    m, kept = 20, CandidateVectors(20)
    all_scores, first = [], 0
    for size in rng.integers(1, 60, size=15):
        scores = rng.choice(np.linspace(0, 1, 30), size=size).astype(np.float32)  # many ties
        rows = np.arange(first, first + size)
        kept.add(rows, pa.array(rows), scores,
                 {"embedding": np.stack([rows, rows * 2], axis=1).astype(np.float32)})
        all_scores.append(scores)
        first += size
    scores = np.concatenate(all_scores)
    top = np.lexsort((np.arange(len(scores)), -scores))[:m]
    column = kept.columns(top)["embedding"].to_numpy(zero_copy_only=False)
    assert np.array_equal(np.stack(column)[:, 0], top)
    assert len(kept._rows) <= 2 * m + 60  # bounded by candidates, not by rows seen


def test_ties_keep_memory_bounded_and_the_top_m_by_id():
    """Scores with few values (variation ratio, a saturated probability) tie by the thousand; the
    held rows stay within 2m plus a batch, and the kept ones are the shard's top m by id."""
    m, batch, kept = 10, 500, CandidateVectors(10)
    ids = np.random.default_rng(0).permutation(10_000)
    for first in range(0, 10_000, batch):
        rows = np.arange(first, first + batch)
        kept.add(rows, pa.array(ids[rows]), np.full(batch, 0.5, np.float32),
                 {"e": rows[:, None].astype(np.float32)})
        assert len(kept._rows) <= 2 * m + batch
    top = np.argsort(ids, kind="stable")[:m]  # rows of the m smallest ids
    column = kept.columns(np.sort(top))["e"].to_numpy(zero_copy_only=False)
    assert np.stack(column)[:, 0].tolist() == np.sort(top).tolist()


def test_a_let_go_row_is_reported():
    kept = CandidateVectors(1)
    kept.add(np.array([0, 1]), pa.array([0, 1]), np.array([0.9, 0.1], np.float32),
             {"e": np.ones((2, 2), np.float32)})
    kept.add(np.array([2]), pa.array([2]), np.array([0.95], np.float32),
             {"e": np.ones((1, 2), np.float32)})
    with pytest.raises(VectorsIncomplete):
        kept.columns(np.array([1]))


def _spec(tmp_path, pool, method="badge"):
    return JobSpec.from_dict({
        "pool": {"uri": str(pool), "feature_column": "embedding"},
        "model": {"kind": "python", "path": "tests.models:linear_with_embedding"},
        "scoring": {"batch_size": 16},
        "selection": {"k": 5, "candidates": 8, "method": method, "prefilter": 1},
        "output": {"uri": str(tmp_path / "out")}, "resources": {"on_error": "skip"}})


def test_topk_candidates_carry_no_vectors(tmp_path):
    """top-k reads the score only: nothing else leaves the device or lands in the commit."""
    write_pool(tmp_path / "pool", [50], dim=8, seed=4)
    spec = _spec(tmp_path, tmp_path / "pool", method="topk")
    shard = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)[0]
    candidates = scan_shard(shard, spec, load_scorer(spec)).candidates
    assert candidates.num_rows == 8
    assert not {"embedding", "probs", "samples"} & set(candidates.column_names)


def test_candidates_carry_the_models_embedding(tmp_path):
    paths = write_pool(tmp_path / "pool", [200], dim=8, seed=4)
    spec = _spec(tmp_path, tmp_path / "pool")
    shard = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)[0]
    outcome = scan_shard(shard, spec, load_scorer(spec))
    candidates = outcome.candidates
    assert candidates.num_rows == 8
    x = pq.read_table(paths[0]).column("embedding").to_numpy(zero_copy_only=False)
    expected = np.stack([x[row][:3] * 2 for row in candidates.column("row").to_pylist()])
    np.testing.assert_allclose(np.stack(candidates.column("embedding").to_numpy(
        zero_copy_only=False)), expected, rtol=1e-6)


def test_repeated_ids_fall_back_to_keeping_every_vector(tmp_path):
    """High-scoring later copies of ids are dropped at the end, so rows whose vectors were let
    go enter the top M: the shard is scanned again, exactly."""
    import pyarrow as pa

    paths = write_pool(tmp_path / "pool", [120], dim=8, seed=5)
    table = pq.read_table(paths[0])
    ids = table.column("id").to_numpy().copy()
    ids[60:] = ids[:60]  # every row of the second half repeats an id of the first
    pq.write_table(table.set_column(0, "id", pa.array(ids)), paths[0])
    spec = _spec(tmp_path, tmp_path / "pool")
    shard = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)[0]
    outcome = scan_shard(shard, spec, load_scorer(spec))
    assert outcome.rows_scored == 60 and outcome.rows_quarantined == 60
    rows = outcome.candidates.column("row").to_pylist()
    assert all(row < 60 for row in rows)
    x = table.column("embedding").to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(np.stack(outcome.candidates.column("embedding").to_numpy(
        zero_copy_only=False)), np.stack([x[r][:3] * 2 for r in rows]), rtol=1e-6)
