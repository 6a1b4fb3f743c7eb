"""End to end on a local Ray: the selection equals a full sort of every stored score."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import alray
from tests.conftest import embedding_array, write_head, write_pool, write_spec

pytestmark = pytest.mark.usefixtures("ray_session")


def all_scores(out) -> pa.Table:
    return pq.read_table(out / "scores")


def full_sort_ids(scores: pa.Table, k: int) -> list:
    order = scores.sort_by([("score", "descending"), ("id", "ascending")])
    return order.column("id").to_pylist()[:k]


def reference_entropy(x: np.ndarray, head_path) -> np.ndarray:
    """float64 softmax entropy / ln C of a linear head, independent of alray's kernels."""
    from safetensors.numpy import load_file

    head = load_file(str(head_path))
    logits = x.astype(np.float64) @ head["weight"].T.astype(np.float64) + head["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1))).sum(axis=1) / np.log(p.shape[1])


def run_spec(path, **kwargs) -> alray.Result:
    return alray.run(alray.JobSpec.from_yaml(path, **kwargs))


@pytest.mark.parametrize(
    "rows, actors, k, candidates",
    [
        ([50], 1, 1, None),
        ([40, 0, 75, 13], 2, 10, None),
        ([200, 200, 200], 2, 150, 150),
        ([7, 3, 11, 5, 9, 2], 2, 60, 100),  # k above the pool's size: every row, sorted
    ],
)
def test_selection_is_a_full_sort(tmp_path, rows, actors, k, candidates):
    write_pool(tmp_path / "pool", rows, dim=16, seed=len(rows))
    write_head(tmp_path / "head.safetensors", classes=5, dim=16)
    spec = write_spec(tmp_path, selection={"k": k, "candidates": candidates},
                      resources={"actors": actors})
    result = run_spec(spec)
    scores = all_scores(tmp_path / "out")
    assert scores.num_rows == sum(rows)
    assert result.selection.column("id").to_pylist() == full_sort_ids(scores, k)
    assert result.selection.column("rank").to_pylist() == list(range(min(k, sum(rows))))
    assert result.counts["rows_in"] == result.counts["rows_scored"] == sum(rows)
    assert result.counts["shards_done"] == len(rows)


def test_scores_match_an_independent_reference(tmp_path):
    paths = write_pool(tmp_path / "pool", [300, 120], dim=12, seed=3)
    head = write_head(tmp_path / "head.safetensors", classes=7, dim=12, scale=0.7)
    run_spec(write_spec(tmp_path))
    pool = pq.read_table(paths).sort_by("id")
    x = np.stack(pool.column("embedding").to_numpy(zero_copy_only=False))
    scores = all_scores(tmp_path / "out").sort_by("id")
    assert scores.column("id").to_pylist() == pool.column("id").to_pylist()
    np.testing.assert_allclose(scores.column("entropy").to_numpy(), reference_entropy(x, head),
                               atol=2e-6)
    assert scores.column("score").equals(scores.column("entropy"))
    assert scores.schema.field("predicted").type == pa.int32()


def test_ties_and_string_ids_follow_id_order(tmp_path):
    """Precomputed logits from 3 distinct rows: thousands of exact ties, broken by id."""
    rng = np.random.default_rng(7)
    patterns = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, -3.0]], np.float32)
    for i in range(3):
        choice = rng.integers(0, 3, size=400)
        ids = [f"item-{rng.integers(0, 10**9):09d}-{i}-{j}" for j in range(400)]
        table = pa.table({"key": ids, "logits": embedding_array(patterns[choice])})
        (tmp_path / "pool").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "pool" / f"p{i}.parquet")
    spec = write_spec(tmp_path, pool={"id_column": "key", "feature_column": None},
                      model={"kind": "precomputed", "column": "logits", "path": None},
                      selection={"k": 500})
    result = run_spec(spec)
    scores = all_scores(tmp_path / "out")
    assert result.selection.column("id").to_pylist() == full_sort_ids(scores, 500)
    assert len(set(scores.column("score").to_pylist())) == 3


def test_row_group_shards_give_the_same_selection(tmp_path):
    write_pool(tmp_path / "pool", [1000, 640], dim=8, seed=5, row_group_size=100)
    write_head(tmp_path / "head.safetensors", classes=4, dim=8)
    whole = run_spec(write_spec(tmp_path, selection={"k": 40}))
    split = run_spec(write_spec(tmp_path, selection={"k": 40}, pool={"shard_rows": 250}),
                     out=str(tmp_path / "split"))
    assert split.counts["shards"] == 5 + 3  # groups of 100 rows: 2 per shard; 6x100 + 40 -> 3
    shard_files = sorted(p.name for p in (tmp_path / "split" / "scores").iterdir())
    assert all("-rg" in name for name in shard_files)
    assert split.selection.column("id").equals(whole.selection.column("id"))
    assert split.selection.column("score").equals(whole.selection.column("score"))
    assert split.counts["rows_scored"] == 1640


def test_carry_columns_and_outputs(tmp_path):
    write_pool(tmp_path / "pool", [60, 60], dim=8, seed=9)
    write_head(tmp_path / "head.safetensors", classes=3, dim=8)
    spec = write_spec(tmp_path, pool={"carry": ["tag"]}, selection={"k": 5},
                      scoring={"strategy": "margin"})
    result = run_spec(spec)
    out = tmp_path / "out"
    selection = pq.read_table(out / "selection.parquet")
    assert selection.column_names == ["rank", "id", "score", "shard", "uri", "predicted", "reason",
                                      "tag"]
    assert set(selection.column("reason").to_pylist()) == {"score"}
    assert selection.column("tag").to_pylist() == [f"row-{i}" for i in selection["id"].to_pylist()]
    assert all(uri.startswith("file://") for uri in selection.column("uri").to_pylist())
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "succeeded"
    assert job["spec"]["scoring"]["strategy"] == "margin"
    assert job["counts"] == result.counts
    assert set(job["shards"]) == set(selection.column("shard").to_pylist()) | set(job["shards"])
    assert (out / "errors.jsonl").read_text() == ""
    scores = all_scores(out)
    assert scores.column("score").equals(scores.column("margin"))


@pytest.mark.parametrize("fixed, dtype", [(False, np.float32), (True, np.float16),
                                          (False, np.float64)])
def test_list_columns_and_float_widths(tmp_path, fixed, dtype):
    write_pool(tmp_path / "pool", [80, 30], dim=6, seed=2, fixed=fixed, dtype=dtype)
    write_head(tmp_path / "head.npz", classes=3, dim=6)
    result = run_spec(write_spec(tmp_path, model={"path": "./head.npz"}, selection={"k": 9}))
    scores = all_scores(tmp_path / "out")
    assert result.counts["rows_scored"] == 110
    assert result.selection.column("id").to_pylist() == full_sort_ids(scores, 9)


def _probs_pool(folder, rows: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, classes)) * 2
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": np.arange(rows), "probs": embedding_array(probs)}),
                   folder / "probs.parquet")
    return probs


def test_precomputed_probabilities(tmp_path):
    probs = _probs_pool(tmp_path / "pool", 200, 4, seed=1)
    spec = write_spec(tmp_path, pool={"feature_column": None},
                      model={"kind": "precomputed", "column": "probs", "output": "probs",
                             "path": None},
                      scoring={"strategy": "least_confidence"}, selection={"k": 3})
    result = run_spec(spec)
    expected = (1 - probs.max(1)) * 4 / 3
    top = np.argsort(-expected, kind="stable")[:3]
    assert result.selection.column("id").to_pylist() == top.tolist()


class _SmallMlp(torch.nn.Module):
    def __init__(self, dim: int = 8, classes: int = 3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x), x[:, :2]  # (logits, an embedding) pairs are allowed


# torch 2.13 deprecates TorchScript in favour of torch.export; users still ship .pt archives.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_model(tmp_path):
    torch.manual_seed(0)
    module = torch.jit.script(_SmallMlp())
    module.save(str(tmp_path / "mlp.pt"))
    paths = write_pool(tmp_path / "pool", [90, 90], dim=8, seed=4)
    result = run_spec(write_spec(tmp_path, model={"kind": "torchscript", "path": "./mlp.pt"},
                                 selection={"k": 12}))
    pool = pq.read_table(paths).sort_by("id")
    x = torch.from_numpy(np.stack(pool.column("embedding").to_numpy(zero_copy_only=False)))
    with torch.no_grad():
        logits = module(x)[0].double()
    p = torch.softmax(logits, dim=1)
    entropy = (-(p * p.log()).sum(1) / np.log(3)).numpy()
    order = sorted(range(len(entropy)), key=lambda i: (-np.float32(entropy[i]), i))[:12]
    assert result.selection.column("id").to_pylist() == order


def test_python_factory_model_and_binary_head(tmp_path):
    write_pool(tmp_path / "pool", [100], dim=8, seed=6)
    spec = write_spec(tmp_path, model={"kind": "python", "path": "tests.models:binary_head"},
                      selection={"k": 5}, scoring={"strategy": "margin"})
    result = run_spec(spec)
    scores = all_scores(tmp_path / "out")
    assert result.selection.column("id").to_pylist() == full_sort_ids(scores, 5)
    assert set(scores.column("predicted").to_pylist()) <= {0, 1}
    assert scores.column("margin").to_numpy().max() <= 1.0


def test_kept_actors_load_the_next_jobs_model(tmp_path):
    """keep_actors: the next job reloads its own model into the idle actor (new weights give
    that model's selection), and the actor is reused, not started again."""
    from alray.runtime import warm

    write_pool(tmp_path / "pool", [300, 300], dim=8, seed=3)
    fresh = {}
    for seed in (1, 2):
        write_head(tmp_path / "head.safetensors", classes=4, dim=8, seed=seed)
        fresh[seed] = run_spec(write_spec(tmp_path, resources={"actors": 1}), ).selection
    try:
        kept = []
        for seed in (1, 2):
            write_head(tmp_path / "head.safetensors", classes=4, dim=8, seed=seed)
            result = alray.run(alray.JobSpec.from_yaml(write_spec(tmp_path, resources={
                "actors": 1})), fresh=True, progress=False, keep_actors=True)
            assert result.selection.column("id").equals(fresh[seed].column("id"))
            idle = [a for actors in warm._IDLE.values() for a in actors]
            assert len(idle) == 1
            kept.append(idle[0])
        assert kept[0] is kept[1]  # the same actor took the second job
    finally:
        warm.release()
    assert not warm._IDLE
