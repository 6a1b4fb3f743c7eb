"""The selection stage end to end on a local Ray: the same selection whatever the sharding, the
actors or a resume; ledgers' ids never selected; a changed ledger reuses the scores; diversity
methods pass over copies that top-k takes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import alray
from alray.ledger import append_ledger, read_ledger
from alray.selection.methods import kcenter_greedy
from tests.conftest import embedding_array, write_head, write_spec

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(autouse=True)
def warm_actors():
    """The jobs of a test reuse their actors (``keep_actors``), as a loop of rounds does; none
    outlive the test, so other tests find the session's CPUs free."""
    from alray.runtime import warm

    yield
    warm.release()

CLASSES, DIM = 4, 8


def _pool_table(rows: int, seed: int = 0, copies: int = 1, noise: float = 0.0) -> pa.Table:
    """``rows`` distinct rows (each ``copies`` times, with ``noise``), ids 0.., a ``tag``."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.standard_normal((rows, DIM)), copies, axis=0)
    x = (x + noise * rng.standard_normal(x.shape)).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    return pa.table({"id": ids, "embedding": embedding_array(x),
                     "origin": pa.array(ids // copies),
                     "tag": pa.array([f"row-{i}" for i in ids])})


def _write(folder, table: pa.Table, files: int) -> None:
    """``table`` as ``files`` parquet files in a shuffled row order (the same rows)."""
    (folder / "pool").mkdir(parents=True)
    order = np.random.default_rng(files).permutation(table.num_rows)
    for i, part in enumerate(np.array_split(order, files)):
        pq.write_table(table.take(pa.array(part)), folder / "pool" / f"part-{i:03d}.parquet")
    write_head(folder / "head.safetensors", CLASSES, DIM, seed=1, scale=0.7)


def _run(folder, selection: dict, actors: int = 2, **kwargs) -> alray.Result:
    path = write_spec(folder, pool={"carry": ["origin"]}, selection=selection,
                      resources={"actors": actors})
    return alray.run(alray.JobSpec.from_yaml(path), progress=False, keep_actors=True, **kwargs)


METHODS = [{"method": "kmeans"}, {"method": "kcenter"}, {"method": "badge"},
           {"method": "cluster_margin"}, {"method": "power", "power": 2.0},
           {"method": "random"}, {"method": "topk", "explore": 0.3},
           {"method": "kmeans", "balance": "predicted"}]


@pytest.mark.parametrize("selection", METHODS, ids=[str(m) for m in METHODS])
def test_the_selection_does_not_depend_on_shards_actors_or_resume(tmp_path, selection):
    table = _pool_table(600)
    selection = {"k": 12, "prefilter": 5, **selection}
    _write(tmp_path / "one", table, files=1)
    _write(tmp_path / "many", table, files=16)
    one = _run(tmp_path / "one", selection, actors=1)
    many = _run(tmp_path / "many", selection, actors=2)
    assert one.selection.num_rows == 12
    assert one.selection.column("id").to_pylist() == many.selection.column("id").to_pylist()
    assert one.selection.column("reason").to_pylist() == many.selection.column("reason").to_pylist()
    # a resume: three shards' commits lost, scored again, the same selection
    for commit in sorted((tmp_path / "many" / "out" / "_shards").glob("*.json"))[:3]:
        commit.unlink()
    again = _run(tmp_path / "many", selection)
    assert again.counts["shards_reused"] == 13
    assert again.selection.column("id").to_pylist() == many.selection.column("id").to_pylist()


def test_balance_caps_every_class(tmp_path):
    _write(tmp_path, _pool_table(400), files=4)
    k = 10
    result = _run(tmp_path, {"k": k, "method": "topk", "balance": "predicted"})
    counts = np.bincount(result.selection.column("predicted").to_numpy(), minlength=CLASSES)
    assert result.selection.num_rows == k
    assert counts.max() <= math.ceil(k / CLASSES)


def test_diversity_passes_over_copies_that_topk_takes(tmp_path):
    """Every row three times, with noise far below the rows' spread."""
    _write(tmp_path, _pool_table(300, copies=3, noise=1e-4), files=4)
    k = 20
    distinct = {}
    for method in ("topk", "kmeans", "kcenter", "badge", "cluster_margin"):
        result = _run(tmp_path, {"k": k, "method": method})
        distinct[method] = len(set(result.selection.column("origin").to_pylist()))
    assert distinct["topk"] <= k // 2 + 1, distinct  # the top scores come in threes
    for method in ("kmeans", "kcenter", "badge", "cluster_margin"):
        assert distinct[method] >= k - 1, distinct


def test_ledger_ids_are_never_selected_and_a_new_ledger_reuses_the_scores(tmp_path):
    _write(tmp_path, _pool_table(500), files=4)
    ledger = tmp_path / "ledger"
    first = _run(tmp_path, {"k": 10}, ledger=str(ledger))
    sent = first.selection.column("id").to_pylist()
    assert sorted(read_ledger(str(ledger)).column("id").to_pylist()) == sorted(sent)

    second = _run(tmp_path, {"k": 10, "exclude": [str(ledger)]}, ledger=str(ledger))
    assert second.counts["shards_reused"] == 4  # candidates rebuilt from the scores files
    chosen = second.selection.column("id").to_pylist()
    assert not set(chosen) & set(sent)
    scores = pq.read_table(tmp_path / "out" / "scores").sort_by(
        [("score", "descending"), ("id", "ascending")])
    expected = [i for i in scores.column("id").to_pylist() if i not in set(sent)][:10]
    assert chosen == expected  # still the exact top 10 of what is left
    assert read_ledger(str(ledger)).column("round").to_pylist().count(1) == 10


def test_a_method_that_reads_vectors_scores_again_after_the_ledger_changes(tmp_path):
    _write(tmp_path, _pool_table(500), files=4)
    ledger = str(tmp_path / "ledger")
    first = _run(tmp_path, {"k": 10, "method": "kmeans", "exclude": [ledger]})
    append_ledger(ledger, first.selection.column("id"), "labeled",
                  labels=["x"] * first.selection.num_rows)
    second = _run(tmp_path, {"k": 10, "method": "kmeans", "exclude": [ledger]})
    assert second.counts["shards_reused"] == 0
    parts = [part for f in (tmp_path / "out" / "_shards").glob("*.candidates.parquet")
             for part in pq.read_table(f).column("part").to_pylist()]
    assert set(parts) == {"top"}  # labeled rows are kept for kcenter only
    assert not set(second.selection.column("id").to_pylist()) & set(
        first.selection.column("id").to_pylist())


def test_kcenter_starts_from_the_labeled_rows(tmp_path):
    table = _pool_table(400)
    _write(tmp_path, table, files=4)
    ledger = str(tmp_path / "ledger")
    labeled = list(range(0, 400, 20))
    append_ledger(ledger, labeled, "labeled", labels=["a"] * len(labeled))
    result = _run(tmp_path, {"k": 8, "method": "kcenter", "prefilter": 4, "exclude": [ledger]})
    # the reference: the same greedy over the global top 32 by score, from the labeled rows
    scores = pq.read_table(tmp_path / "out" / "scores")
    scores = scores.filter(pa.array(~np.isin(scores.column("id").to_numpy(), labeled)))
    top = scores.sort_by([("score", "descending"), ("id", "ascending")]).column("id")
    top = top.to_numpy()[:32]
    x = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    picks = kcenter_greedy(torch.from_numpy(x[top]).double(), 8,
                           start=torch.from_numpy(x[labeled]).double())
    assert result.selection.column("id").to_pylist() == top[picks.numpy()].tolist()


def test_batchbald_runs_on_a_committee(tmp_path):
    _write(tmp_path, _pool_table(300), files=3)
    heads = [str(write_head(tmp_path / f"m{i}.safetensors", CLASSES, DIM, seed=10 + i))
             for i in range(3)]
    path = write_spec(tmp_path, model={"path": None, "members": heads},
                      scoring={"strategy": "bald"},
                      selection={"k": 6, "method": "batchbald", "prefilter": 4})
    result = alray.run(alray.JobSpec.from_yaml(path), progress=False, keep_actors=True)
    assert result.selection.num_rows == 6
    assert len(set(result.selection.column("id").to_pylist())) == 6
    assert set(result.selection.column("reason").to_pylist()) == {"diversity"}


def test_a_method_needing_samples_on_one_model_is_a_config_error(tmp_path):
    _write(tmp_path, _pool_table(50), files=1)
    path = write_spec(tmp_path, selection={"k": 5, "method": "batchbald"})
    with pytest.raises(alray.ConfigError, match="selection.method"):
        alray.JobSpec.from_yaml(path)
