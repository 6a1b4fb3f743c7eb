"""`alray simulate`: an active-learning loop on the real engine.

One small simulation on iris runs on the session's Ray (every round a real job: actors, four
shards, the run's ledger excluded) and its outputs are checked against what they claim, from
sources the loop does not control: the pool files the engine read, scikit-learn's own labels, the
jobs' selections. A second run of the same seed must give the same curves. Spec errors, data
loading and the learners' exports are checked without Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import alray
from alray.errors import ConfigError
from alray.simulation.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

IRIS = {
    "dataset": "iris", "learner": "logistic", "initial": 6, "batch": 4, "rounds": 3,
    "repeats": 2,
    "strategies": [{"name": "entropy", "scoring": {"strategy": "entropy"}},
                   {"name": "kcenter", "scoring": {"strategy": "margin"},
                    "selection": {"method": "kcenter"}}],
}
STRATEGIES = ["random", "entropy", "kcenter"]


@pytest.fixture(scope="module")
def iris_run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("simulate") / "iris"
    return alray.simulate(IRIS, out=out, progress=False), out


def _iris_labels() -> dict[int, str]:
    from sklearn.datasets import load_iris

    iris = load_iris()
    return {i: str(iris.target_names[t]) for i, t in enumerate(iris.target)}


# ----------------------------------------------------------------------------------- end to end


def test_curves_have_rounds_plus_one_points_per_run(iris_run):
    result, out = iris_run
    curves = pq.read_table(out / "curves.parquet")
    assert curves.column_names == ["strategy", "repeat", "round", "labels", "accuracy"]
    assert curves.equals(result.curves)
    rows = curves.to_pylist()
    assert sorted({r["strategy"] for r in rows}) == sorted(STRATEGIES)
    for strategy in STRATEGIES:
        for repeat in range(IRIS["repeats"]):
            run = [r for r in rows if r["strategy"] == strategy and r["repeat"] == repeat]
            assert [r["round"] for r in run] == list(range(IRIS["rounds"] + 1))
            assert [r["labels"] for r in run] == [IRIS["initial"] + i * IRIS["batch"]
                                                  for i in range(IRIS["rounds"] + 1)]
    accuracy = curves.column("accuracy").to_numpy()
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
    assert len(rows) == len(STRATEGIES) * IRIS["repeats"] * (IRIS["rounds"] + 1)


def test_summary_agrees_with_the_curves(iris_run):
    result, out = iris_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert list(summary["strategies"]) == STRATEGIES
    curves = result.curves.to_pylist()

    def accuracy(strategy):  # [repeats, rounds + 1]
        return np.array([[r["accuracy"] for r in curves
                          if r["strategy"] == strategy and r["repeat"] == repeat]
                         for repeat in range(IRIS["repeats"])])

    target = accuracy("random")[:, -1].mean()
    assert summary["random_final_accuracy"] == pytest.approx(target)
    for strategy in STRATEGIES:
        figures, acc = summary["strategies"][strategy], accuracy(strategy)
        assert set(figures) >= {"auc_mean", "auc_sd", "final_accuracy_mean",
                                "final_accuracy_sd", "labels_to_match_random", "auc_gain",
                                "wins"}
        assert figures["auc_mean"] == pytest.approx(acc.mean())
        assert figures["auc_sd"] == pytest.approx(acc.mean(axis=1).std(ddof=1))
        assert figures["final_accuracy_mean"] == pytest.approx(acc[:, -1].mean())
        reached = [IRIS["initial"] + i * IRIS["batch"]
                   for i, a in enumerate(acc.mean(axis=0)) if a >= target - 1e-12]
        assert figures["labels_to_match_random"] == (reached[0] if reached else None)
    assert summary["strategies"]["random"]["labels_to_match_random"] is not None
    assert summary["timing"]["jobs"] == len(STRATEGIES) * IRIS["repeats"] * IRIS["rounds"]
    for strategy in STRATEGIES:
        assert strategy in result.table
    assert "labels to reach" in result.table


def test_learning_curves_is_a_png(iris_run):
    _, out = iris_run
    data = (out / "learning_curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_ledgers_reveal_true_labels_once_and_never_test_rows(iris_run):
    _, out = iris_run
    truth = _iris_labels()
    for repeat in range(IRIS["repeats"]):
        folder = out / "runs" / f"repeat-{repeat}"
        pool_ids = set(pq.read_table(folder / "pool").column("id").to_pylist())
        split = pq.read_table(folder / "split.parquet").to_pylist()
        test_ids = {r["id"] for r in split if r["split"] == "test"}
        assert pool_ids.isdisjoint(test_ids) and pool_ids | test_ids == set(truth)
        assert len(list((folder / "pool").glob("*.parquet"))) == 4
        for strategy in STRATEGIES:
            ledger = pq.read_table(folder / strategy / "ledger").to_pylist()
            ids = [r["id"] for r in ledger]
            assert len(ids) == len(set(ids)), f"{strategy}, repeat {repeat}: an id labeled twice"
            assert len(ids) == IRIS["initial"] + IRIS["rounds"] * IRIS["batch"]
            assert set(ids) <= pool_ids and not set(ids) & test_ids
            assert all(r["label"] == truth[r["id"]] and r["status"] == "labeled"
                       and r["source"] == "simulate" for r in ledger)
            for round_ in range(IRIS["rounds"] + 1):
                count = sum(r["round"] <= round_ for r in ledger)
                assert count == IRIS["initial"] + round_ * IRIS["batch"]
            # the last round's labels are the last job's selection, as the engine wrote it
            selected = pq.read_table(folder / strategy / "job" / "selection.parquet")
            assert sorted(selected.column("id").to_pylist()) == sorted(
                r["id"] for r in ledger if r["round"] == IRIS["rounds"])


def test_jobs_ran_each_strategy_as_its_fragment_says(iris_run):
    _, out = iris_run
    for strategy, method, score in (("random", "random", "entropy"),
                                    ("entropy", "topk", "entropy"),
                                    ("kcenter", "kcenter", "margin")):
        job = json.loads((out / "runs" / "repeat-1" / strategy / "job" / "job.json").read_text())
        assert job["spec"]["selection"]["method"] == method
        assert job["spec"]["scoring"]["strategy"] == score
        assert job["spec"]["selection"]["k"] == IRIS["batch"]
        assert job["spec"]["selection"]["seed"] == 1
        assert job["counts"]["shards"] == 4


def test_same_seed_same_curves(iris_run, tmp_path):
    """Repeat 0 again, alone and shorter: the same curves to the last bit (a round depends only
    on the seed and the rounds before it)."""
    first, _ = iris_run
    again = alray.simulate({**IRIS, "repeats": 1, "rounds": 2,
                            "strategies": IRIS["strategies"][:1]},
                           out=tmp_path / "again", progress=False)

    def points(curves: pa.Table) -> list:
        return [(r["strategy"], r["round"], r["labels"], r["accuracy"])
                for r in curves.to_pylist()
                if r["repeat"] == 0 and r["round"] <= 2 and r["strategy"] != "kcenter"]

    assert len(points(again.curves)) == 2 * 3
    assert points(again.curves) == points(first.curves)


def test_mlp_with_mc_dropout_and_badge_run_on_the_engine(ray_session, tmp_path):
    """The torchscript learner end to end: BALD over MC dropout passes, BADGE over its hidden
    layer (the model's second output)."""
    spec = {**IRIS, "learner": "mlp", "repeats": 1, "rounds": 1,
            "strategies": [{"name": "bald", "scoring": {"strategy": "bald", "mc_samples": 4}},
                           {"name": "badge", "selection": {"method": "badge"}}]}
    result = alray.simulate(spec, out=tmp_path / "mlp", progress=False)
    assert result.curves.num_rows == 3 * 2
    for name in ("bald", "badge"):
        job = json.loads((tmp_path / "mlp" / "runs" / "repeat-0" / name / "job" /
                          "job.json").read_text())
        assert job["spec"]["model"]["kind"] == "torchscript"
        assert job["counts"]["rows_scored"] == 114
    scores = pq.read_table(tmp_path / "mlp" / "runs" / "repeat-0" / "bald" / "job" / "scores")
    assert (scores.column("bald").to_numpy() > 0).any()


def test_a_selection_that_breaks_the_contract_stops_the_simulation(tmp_path):
    from alray.errors import JobFailed
    from alray.simulation.loop import _check_selection, _Run
    from alray.simulation.spec import StrategySpec

    run = _Run(StrategySpec(name="entropy"), 1, tmp_path, tmp_path / "pool", split=None)
    rows_of = {10: 0, 11: 1, 12: 2, 13: 3, 14: 4}
    assert _check_selection(run, 2, [13, 11], rows_of, {0}, {4}, 2) == [3, 1]
    for ids, words in (([11, 11], "selected twice"), ([11, 10], "already labeled"),
                       ([11, 14], "test-split ids"), ([11, 99], "not in the dataset"),
                       ([11], "1 rows selected, 2 asked for")):
        with pytest.raises(JobFailed, match="strategy 'entropy', repeat 1, round 2: .*" + words):
            _check_selection(run, 2, ids, rows_of, {0}, {4}, 2)


# ----------------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize("change, key, words", [
    ({"rounds": 0}, "rounds", "integer >= 1"),
    ({"round": 3}, "round", "unknown key"),
    ({"test_fraction": 1.0}, "test_fraction", "between 0 and 1"),
    ({"learner": "svm"}, "learner", "logistic"),
    ({"members": 3}, "members", "only learner: ensemble"),
    ({"id_column": "key"}, "id_column", "only for a parquet dataset"),
    ({"dataset": "digitz"}, "dataset", "breast_cancer"),
    ({"strategies": {"name": "x"}}, "strategies", "list"),
    ({"strategies": [{"scoring": {"strategy": "margin"}}]}, "strategies[0].name", "required"),
    ({"strategies": [{"name": "a"}, {"name": "b", "selection": {"method": "kmean"}}]},
     "strategies[1].selection.method", "kmeans"),
    ({"strategies": [{"name": "b", "scoring": {"strategy": "bald"}}]},
     "strategies[0].scoring.strategy", "learner: ensemble"),
    ({"strategies": [{"name": "b", "selection": {"method": "batchbald"}}]},
     "strategies[0].selection.method", "K = 1"),
    ({"strategies": [{"name": "b", "scoring": {"strategy": "bald", "mc_samples": 8}}]},
     "strategies[0].scoring.mc_samples", "learner: mlp"),
    ({"strategies": [{"name": "random"}]}, "strategies[0].name", "always run"),
    ({"strategies": [{"name": "a"}, {"name": "a"}]}, "strategies[1].name", "already"),
    ({"strategies": [{"name": "a/b"}]}, "strategies[0].name", "folders"),
    ({"strategies": [{"name": "a", "selection": {"k": 5}}]}, "strategies[0].selection.k",
     "set by the simulator"),
    ({"strategies": [{"name": "a", "model": {"kind": "linear"}}]}, "strategies[0].model",
     "the learner decides"),
    ({"strategies": [{"name": "a", "scorng": {}}]}, "strategies[0].scorng", "unknown key"),
    ({"strategies": [{"name": "a", "scoring": {"batch_size": 0}}]},
     "strategies[0].scoring.batch_size", "integer >= 1"),
])
def test_spec_errors_name_the_key(change, key, words):
    with pytest.raises(ConfigError) as caught:
        load_spec({**IRIS, **change})
    assert caught.value.where == key
    assert words in str(caught.value)


@pytest.mark.parametrize("learner, fragment", [
    ("ensemble", {"scoring": {"strategy": "bald"}}),
    ("ensemble", {"selection": {"method": "batchbald"}}),
    ("mlp", {"scoring": {"strategy": "bald", "mc_samples": 8}}),
    ("mlp", {"selection": {"method": "badge", "explore": 0.2}, "resources": {"actors": 2}}),
])
def test_strategies_that_fit_the_learner_are_accepted(learner, fragment):
    spec = load_spec({**IRIS, "learner": learner, "strategies": [{"name": "s", **fragment}]})
    assert [s.name for s in spec.strategies] == ["random", "s"]
    assert spec.strategies[1].fragment == fragment


def test_data_errors_come_before_ray_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"^rounds: initial \+ rounds x batch"):
        alray.simulate({**IRIS, "rounds": 40}, out=out, progress=False)
    assert not out.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="^--out: .* not made by `alray simulate`"):
        alray.simulate(IRIS, out=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_spec_error_is_one_line_and_exit_2(tmp_path):
    spec = tmp_path / "bad.sim.yaml"
    spec.write_text("dataset: iris\nstrategies:\n  - {name: a}\n"
                    "  - {name: b, selection: {method: kmean}}\n")
    done = subprocess.run([sys.executable, "-m", "alray", "simulate", str(spec)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("alray: error: strategies[1].selection.method: got 'kmean'")
    assert len(done.stderr.strip().splitlines()) == 1


def test_import_alray_and_the_spec_stay_free_of_torch_and_ray():
    code = ("import sys, alray, alray.simulation.spec as s; "
            "s.load_spec('jobs/digits.sim.yaml'); "
            "print(sorted(m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_example_specs_are_valid():
    for name in ("iris", "digits"):
        spec = load_spec(ROOT / "jobs" / f"{name}.sim.yaml")
        assert spec.dataset == name and spec.strategies[0].name == "random"
    digits = load_spec(ROOT / "jobs" / "digits.sim.yaml")
    assert (digits.initial, digits.batch, digits.labels_needed, digits.repeats) == (20, 20, 300, 5)
    assert [s.name for s in digits.strategies] == ["random", "entropy", "margin", "kmeans",
                                                   "badge", "power"]


# ----------------------------------------------------------------------------------- data


def test_parquet_dataset_with_string_ids_and_labels(tmp_path):
    from alray.simulation.data import load_dataset, split_dataset

    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 5)).astype(np.float32) * 3 + 7
    labels = np.array(["cat", "dog", "owl"])[np.arange(90) % 3]
    features = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 5)
    pq.write_table(pa.table({"key": [f"row-{i}" for i in range(90)], "vec": features,
                             "y": labels}), tmp_path / "data.parquet")
    spec = load_spec({"dataset": str(tmp_path / "data.parquet"), "id_column": "key",
                      "feature_column": "vec", "label_column": "y", "initial": 5, "batch": 5,
                      "rounds": 2, "test_fraction": 0.2})
    dataset = load_dataset(spec)
    assert dataset.classes == ("cat", "dog", "owl") and dataset.ids.type == pa.string()
    split = split_dataset(dataset, 0.2, 5, seed=3)
    assert np.bincount(dataset.y[split.test]).tolist() == [6, 6, 6]  # stratified
    assert set(split.initial) <= set(split.train) and not set(split.train) & set(split.test)
    np.testing.assert_allclose(split.x[split.train].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(split.x[split.train].std(axis=0), 1, atol=1e-4)
    other = split_dataset(dataset, 0.2, 5, seed=4)
    assert not np.array_equal(other.test, split.test)
    with pytest.raises(ConfigError, match="^feature_column: no column 'vector'"):
        load_dataset(load_spec({"dataset": str(tmp_path / "data.parquet"), "id_column": "key",
                                "feature_column": "vector", "label_column": "y"}))


# ----------------------------------------------------------------------------------- learners


def _blobs(n=60, classes=3, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.standard_normal((n, dim)) + 3 * np.eye(classes, dim)[y]).astype(np.float32)
    return x, y.astype(np.int64)


# torch 2.13 deprecates TorchScript; alray still loads the .pt archives users ship
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("learner", ["logistic", "mlp", "ensemble"])
def test_learners_export_what_the_engine_loads(learner, tmp_path):
    import torch

    from alray.config import ModelSpec
    from alray.models.loaders import load_members
    from alray.simulation import training
    from alray.simulation.learners import LEARNERS

    x, y = _blobs()
    train = getattr(training, LEARNERS[learner].train.rpartition(":")[2])
    model = train(x, y, 3, seed=7, members=4)
    again = train(x, y, 3, seed=7, members=4)
    np.testing.assert_array_equal(model.probabilities(x), again.probabilities(x))
    assert (model.probabilities(x).argmax(axis=1) == y).mean() > 0.9
    section = model.export(tmp_path, "round-000")
    assert section["kind"] == LEARNERS[learner].model_kind
    members = load_members(ModelSpec(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in section.items()}))
    assert len(members) == (4 if learner == "ensemble" else 1)
    outputs = [member(torch.from_numpy(x)) for member in members]
    probs = np.mean([torch.softmax(logits, 1).numpy() for logits, _ in outputs], axis=0)
    np.testing.assert_allclose(probs, model.probabilities(x), atol=1e-5)
    embedding = outputs[0][1]
    assert embedding.shape == ((60, training.MLP_HIDDEN) if learner == "mlp" else (60, 4))


# ----------------------------------------------------------------------------------- docs


def test_simulate_md_documents_every_key_and_its_default():
    import dataclasses

    from alray.simulation.spec import _PARQUET_COLUMNS, SimSpec
    from tests.test_docs import backticked, tables, yaml_text

    (table,) = [t for t in tables("simulate.md") if t.header == ["key", "type", "default",
                                                                 "meaning"]]
    documented = {backticked(row[0]): row[2] for row in table.rows}
    fields = {f.name: f for f in dataclasses.fields(SimSpec)}
    assert list(documented) == list(fields), "docs/simulate.md keys differ from SimSpec's fields"
    assert documented["dataset"] == "required"
    for name, f in fields.items():
        if name in ("name", "out", "dataset"):  # said in words: the file's stem, <name>-sim
            continue
        expected = yaml_text(_PARQUET_COLUMNS.get(name, f.default))
        assert backticked(documented[name]) == expected, f"docs/simulate.md: {name}"


def test_simulate_md_documents_the_owned_keys_the_columns_and_the_summary():
    import re

    from alray.simulation.jobs import OWNED_KEYS
    from alray.simulation.outputs import CURVE_COLUMNS, _strategy_summary
    from tests.test_docs import table_under, tables

    header = ["key", "set by the simulator to"]
    (owned,) = [t for t in tables("simulate.md") if t.header == header]
    names = [name for row in owned.rows for name in re.findall(r"`([^`]+)`", row[0])]
    for key in OWNED_KEYS:
        assert any(key == n or (n.endswith("*") and key.startswith(n[:-1])) for n in names), key
    assert table_under("simulate.md", "curves.parquet", "column").first_column() == \
        list(CURVE_COLUMNS)
    figures = _strategy_summary(np.array([6, 10]), np.array([[0.5, 0.7], [0.6, 0.8]]), 0.7,
                                np.array([0.5, 0.6]))
    assert table_under("simulate.md", "summary.json", "key").first_column() == list(figures)
