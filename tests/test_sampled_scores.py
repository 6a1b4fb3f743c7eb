"""Scores beyond one softmax, end to end on a real Ray: committees, MC dropout, a target class,
expected gradient length and a user's own score.

Each job's stored scores are compared with a float64 NumPy reference computed from the same pool
and weights, and its selection with a full sort of the stored scores.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import alray
from alray.errors import ModelError
from tests.conftest import write_head, write_pool, write_spec

pytestmark = pytest.mark.usefixtures("ray_session")

DIM, CLASSES = 8, 4


def _pool(tmp_path, shards=(120, 80, 100)) -> np.ndarray:
    """Write the pool; returns its features ``[N, D]`` in id order."""
    paths = write_pool(tmp_path / "pool", list(shards), dim=DIM, seed=5)
    tables = [pq.read_table(p) for p in paths]
    x = np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
                        for t in tables])
    ids = np.concatenate([t.column("id").to_numpy() for t in tables])
    return x[np.argsort(ids)].astype(np.float64)


def _heads(tmp_path, count: int) -> list[str]:
    return [str(write_head(tmp_path / f"head{i}.npz", CLASSES, DIM, seed=10 + i, scale=2.0))
            for i in range(count)]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _member_probs(x: np.ndarray, heads: list[str]) -> np.ndarray:
    """``[N, C, K]`` float64 probabilities of each linear head."""
    out = []
    for path in heads:
        with np.load(path) as head:
            out.append(_softmax(x @ head["weight"].astype(np.float64).T + head["bias"]))
    return np.stack(out, axis=-1)


def _entropy(p: np.ndarray, axis: int = 1) -> np.ndarray:
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(axis=axis)


def _scores(out) -> pa.Table:
    return pq.read_table(out / "scores").sort_by("id")


def _full_sort_ids(scores, k: int) -> list:
    order = np.lexsort((scores.column("id").to_numpy(), -scores.column("score").to_numpy()))
    return scores.column("id").to_numpy()[order][:k].tolist()


def test_committee_of_linear_heads_scores_exactly(tmp_path):
    x = _pool(tmp_path)
    heads = _heads(tmp_path, 3)
    spec = write_spec(tmp_path, model={"kind": "linear", "path": None, "members": heads},
                      scoring={"strategy": "bald", "batch_size": 64},
                      selection={"k": 25, "candidates": 30})
    result = alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    scores = _scores(tmp_path / "out")
    p = _member_probs(x, heads)
    mean = p.mean(axis=-1)
    bald = (_entropy(mean) - _entropy(p).mean(axis=-1)) / math.log(CLASSES)
    np.testing.assert_allclose(scores.column("bald").to_numpy(), bald, atol=2e-6)
    np.testing.assert_allclose(scores.column("entropy").to_numpy(),
                               _entropy(mean) / math.log(CLASSES), atol=2e-6)
    assert scores.column("predicted").to_numpy().tolist() == mean.argmax(axis=1).tolist()
    assert scores.column("score").equals(scores.column("bald"))
    assert result.selection.column("id").to_pylist() == _full_sort_ids(scores, 25)
    # for badge the candidates carry p-bar and, for linear members, the input features as the
    # embedding; for batchbald every member's probabilities, samples last
    for method, columns in (("badge", ("probs", "embedding")), ("batchbald", ("samples",))):
        alray.run(alray.JobSpec.from_yaml(spec, overrides={
            "selection.method": method, "selection.prefilter": 1}), progress=False)
        candidates = pa.concat_tables(
            pq.read_table(f) for f in (tmp_path / "out" / "_shards").glob("*.candidates.parquet"))
        assert sorted(c for c in candidates.column_names
                      if c in ("probs", "embedding", "samples")) == sorted(columns)
        rows = candidates.column("id").to_numpy()
        expected = {"probs": mean[rows], "embedding": x[rows],
                    "samples": p[rows].reshape(len(rows), -1)}
        for column in columns:
            np.testing.assert_allclose(np.stack(candidates.column(column).to_numpy(
                zero_copy_only=False)), expected[column], atol=1e-6)


def test_identical_members_disagree_nowhere(tmp_path):
    _pool(tmp_path)
    head = _heads(tmp_path, 1)[0]
    for strategy in ("bald", "variation_ratio", "vote_entropy", "max_disagreement"):
        spec = write_spec(tmp_path, model={"kind": "linear", "path": None,
                                                "members": [head, head, head]},
                          scoring={"strategy": strategy}, selection={"k": 5},
                          output={"uri": f"./out-{strategy}"})
        alray.run(alray.JobSpec.from_yaml(spec), progress=False)
        assert (_scores(tmp_path / f"out-{strategy}").column(strategy).to_numpy() == 0).all()


MC = {"kind": "python", "path": "tests.models:mlp_dropout"}


def _mc_job(tmp_path, out: str, model=MC, samples: int = 8, **scoring):
    return write_spec(tmp_path, model=model,
                      scoring={"strategy": "bald", "mc_samples": samples, "batch_size": 50,
                               **scoring},
                      selection={"k": 20, "candidates": 25}, output={"uri": f"./{out}"},
                      resources={"gpus_per_actor": 0})


def test_mc_dropout_is_byte_identical_across_runs_and_resumes(tmp_path):
    _pool(tmp_path)
    first = alray.run(alray.JobSpec.from_yaml(_mc_job(tmp_path, "a")), progress=False)
    second = alray.run(alray.JobSpec.from_yaml(_mc_job(tmp_path, "b")), progress=False)
    files = sorted(p.name for p in (tmp_path / "a" / "scores").iterdir())
    assert len(files) == 3
    for name in files:
        assert (tmp_path / "a" / "scores" / name).read_bytes() == \
            (tmp_path / "b" / "scores" / name).read_bytes()
    assert first.selection.equals(second.selection)
    bald = _scores(tmp_path / "a").column("bald").to_numpy()
    assert (bald > 0).mean() > 0.9  # dropout makes the passes disagree
    # Resume: two shards' commits are gone (as after a driver killed before they committed);
    # the resumed run scores them again, to the same bytes.
    saved = {name: (tmp_path / "a" / "scores" / name).read_bytes() for name in files}
    for record in sorted((tmp_path / "a" / "_shards").glob("*.json"))[:2]:
        record.unlink()
    resumed = alray.run(alray.JobSpec.from_yaml(_mc_job(tmp_path, "a")), progress=False)
    assert resumed.job["runs"][-1]["shards_reused"] == 1
    for name in files:
        assert (tmp_path / "a" / "scores" / name).read_bytes() == saved[name]
    assert resumed.selection.equals(first.selection)
    # another seed draws other masks
    other = alray.run(alray.JobSpec.from_yaml(_mc_job(tmp_path, "c", seed=1)), progress=False)
    assert not other.selection.column("score").equals(first.selection.column("score"))


def test_mc_dropout_with_p0_has_no_disagreement(tmp_path):
    _pool(tmp_path)
    spec = _mc_job(tmp_path, "out", model={"kind": "python", "path": "tests.models:mlp_dropout_p0"})
    alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    assert (_scores(tmp_path / "out").column("bald").to_numpy() == 0).all()


def test_mc_dropout_needs_dropout_modules(tmp_path):
    _pool(tmp_path)
    spec = _mc_job(tmp_path, "out",
                   model={"kind": "python", "path": "tests.models:mlp_without_dropout"})
    with pytest.raises(ModelError, match="no dropout modules"):
        alray.run(alray.JobSpec.from_yaml(spec), progress=False)


def test_mc_dropout_on_a_torchscript_model_matches_the_python_model(tmp_path):
    """The same MLP as TorchScript draws the same masks (dropout modules found by name)."""
    from tests.models import mlp_dropout

    _pool(tmp_path)
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; users still ship it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(mlp_dropout().eval()).save(str(tmp_path / "mlp.pt"))
    scripted = alray.run(alray.JobSpec.from_yaml(_mc_job(
        tmp_path, "ts", model={"kind": "torchscript", "path": "./mlp.pt"})), progress=False)
    eager = alray.run(alray.JobSpec.from_yaml(_mc_job(tmp_path, "py")), progress=False)
    np.testing.assert_allclose(_scores(tmp_path / "ts").column("bald").to_numpy(),
                               _scores(tmp_path / "py").column("bald").to_numpy(), atol=1e-6)
    assert scripted.selection.column("id").equals(eager.selection.column("id"))


def test_target_probability_by_class_name(tmp_path):
    x = _pool(tmp_path)
    head = _heads(tmp_path, 1)
    spec = write_spec(tmp_path, model={"kind": "linear", "path": head[0],
                                       "classes": ["cat", "dog", "bird", "fish"]},
                      scoring={"strategy": "target_probability", "target_class": "bird"},
                      selection={"k": 10})
    result = alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    expected = _member_probs(x, head)[:, 2, 0]
    scores = _scores(tmp_path / "out")
    np.testing.assert_allclose(scores.column("target_probability").to_numpy(), expected,
                               atol=1e-6)
    assert result.selection.column("id").to_pylist() == _full_sort_ids(scores, 10)


def test_expected_gradient_length_of_a_linear_head(tmp_path):
    x = _pool(tmp_path)
    head = _heads(tmp_path, 1)
    spec = write_spec(tmp_path, model={"kind": "linear", "path": head[0]},
                      scoring={"strategy": "expected_gradient_length"}, selection={"k": 10})
    alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    p = _member_probs(x, head)[:, :, 0]
    norms = np.sqrt((p ** 2).sum(axis=1, keepdims=True) - 2 * p + 1)
    expected = (p * norms).sum(axis=1) * np.sqrt((x ** 2).sum(axis=1) + 1)
    np.testing.assert_allclose(_scores(tmp_path / "out").column("score").to_numpy(), expected,
                               rtol=1e-5)


def test_a_users_own_score(tmp_path):
    x = _pool(tmp_path)
    heads = _heads(tmp_path, 2)
    spec = write_spec(tmp_path, model={"kind": "linear", "path": None, "members": heads},
                      scoring={"strategy": "tests.models:first_class_probability"},
                      selection={"k": 10})
    result = alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    scores = _scores(tmp_path / "out")
    assert "first_class_probability" not in scores.column_names
    np.testing.assert_allclose(scores.column("score").to_numpy(),
                               _member_probs(x, heads)[:, 0, :].mean(axis=-1), atol=1e-6)
    assert result.selection.column("id").to_pylist() == _full_sort_ids(scores, 10)


def test_a_regression_committee_scores_its_variance(tmp_path):
    from tests.models import regressor_a, regressor_b

    x = torch.from_numpy(_pool(tmp_path)).float()
    spec = write_spec(tmp_path, model={"kind": "python", "path": None, "task": "regression",
                                       "members": ["tests.models:regressor_a",
                                                   "tests.models:regressor_b"]},
                      scoring={"strategy": "variance"}, selection={"k": 10})
    result = alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    scores = _scores(tmp_path / "out")
    assert scores.column_names == ["id", "score", "variance", "prediction", "row"]
    with torch.no_grad():
        a, b = regressor_a()(x)[:, 0].double().numpy(), regressor_b()(x)[:, 0].double().numpy()
    np.testing.assert_allclose(scores.column("variance").to_numpy(), (a - b) ** 2 / 4,
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scores.column("prediction").to_numpy(), (a + b) / 2, atol=1e-5)
    assert result.selection.column("id").to_pylist() == _full_sort_ids(scores, 10)
    assert "predicted" not in result.selection.column_names
