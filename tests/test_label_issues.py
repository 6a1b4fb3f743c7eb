"""Which labels are wrong, at pool scale: a job with `pool.label_column` on real Ray actors.

scikit-learn's digits with labels flipped on purpose; linear heads trained here (one per fold,
or one per "epoch" of training) stand in for a team's checkpoints. The job's statistics must
equal the log path's on the same numbers, its confident-learning flags must equal cleanlab's on
the probabilities the job stored, and they must find the flipped rows.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from cleanlab.filter import find_label_issues
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

import alray
from alray.cartography import cartography
from alray.demo import train_head
from alray.errors import ConfigError
from tests.conftest import embedding_array

pytestmark = pytest.mark.usefixtures("ray_session")

CLASSES = [str(c) for c in range(10)]


def _digits(flip_share: float = 0.1, seed: int = 0):
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), int(flip_share * len(y)), replace=False)
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10  # always another class
    return x, given, np.sort(flipped)


def _write_pool(folder, x, given, shards: int = 3, folds: np.ndarray | None = None,
                labels=None) -> None:
    (folder / "pool").mkdir(parents=True, exist_ok=True)
    for part, rows in enumerate(np.array_split(np.arange(len(x)), shards)):
        columns = {"id": pa.array(rows), "embedding": embedding_array(x[rows]),
                   "label": pa.array(given[rows] if labels is None else labels[rows])}
        if folds is not None:
            columns["fold"] = pa.array(folds[rows])
        pq.write_table(pa.table(columns), folder / "pool" / f"part-{part}.parquet")


def _spec(folder, members: list[str], k: int, classes: list[str] | None = None,
          on_error: str = "fail", **pool) -> alray.JobSpec:
    spec = {"name": "labels", "pool": {"uri": "./pool", "feature_column": "embedding",
                                       "label_column": "label", **pool},
            "model": {"kind": "linear", "members": members, "classes": classes},
            "scoring": {"strategy": "label_issue"}, "selection": {"k": k},
            "output": {"uri": "./out"}, "resources": {"actors": 1, "on_error": on_error}}
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return alray.JobSpec.from_yaml(folder / "job.yaml")


def _save(folder, name: str, weight, bias) -> str:
    save_file({"weight": weight, "bias": bias}, str(folder / name))
    return f"./{name}"


def _scores(out) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet")))


@pytest.fixture(scope="module")
def out_of_fold_job(tmp_path_factory):
    """Digits with 10% of the labels flipped, 5 heads each trained without its fold, scored
    out of fold in 3 shards."""
    folder = tmp_path_factory.mktemp("oof")
    x, given, flipped = _digits()
    folds = np.random.default_rng(1).permutation(np.arange(len(x)) % 5)
    members = [_save(folder, f"fold-{f}.safetensors", *train_head(x[folds != f],
                                                                   given[folds != f], 10))
               for f in range(5)]
    _write_pool(folder, x, given, folds=folds)
    result = alray.run(_spec(folder, members, k=len(flipped), fold_column="fold"),
                       progress=False)
    return folder, result, flipped


def test_the_flags_equal_cleanlabs_on_the_probabilities_the_job_stored(out_of_fold_job):
    folder, result, _ = out_of_fold_job
    scores = _scores(folder / "out")
    probs = np.stack(scores.column("probs").to_numpy(zero_copy_only=False)).astype(np.float64)
    gold = scores.column("gold").to_numpy().astype(np.int64)
    expected = scores.column("id").to_numpy()[find_label_issues(
        gold, probs, filter_by="prune_by_noise_rate")]
    flagged = pq.read_table(folder / "out" / "label_issues.parquet")
    assert sorted(flagged.column("id").to_pylist()) == sorted(expected.tolist())
    assert result.counts["label_issues"] == len(expected) > 0
    assert result.paths["label_issues"].endswith("label_issues.parquet")
    confidence = flagged.column("self_confidence").to_pylist()
    assert confidence == sorted(confidence)
    assert set(flagged.column("shard").to_pylist()) <= set(result.job["shards"])


def test_out_of_fold_flags_and_label_issue_find_the_flipped_rows(out_of_fold_job):
    folder, result, flipped = out_of_fold_job
    flipped = set(flipped.tolist())
    flagged = set(pq.read_table(folder / "out" / "label_issues.parquet").column("id").to_pylist())
    precision, recall = len(flagged & flipped) / len(flagged), len(flagged & flipped) / len(flipped)
    assert precision > 0.8 and recall > 0.75, (precision, recall)
    top_k = set(result.selection.column("id").to_pylist())  # k = the rows flipped
    assert len(top_k & flipped) / len(flipped) > 0.85
    # each row met its out-of-fold member only: K = 1, so no spread between samples
    scores = _scores(folder / "out")
    assert set(scores.column("gold_variability").to_pylist()) == {0.0}
    assert np.allclose(scores.column("label_issue").to_numpy(),
                       1 - scores.column("gold_confidence").to_numpy(), atol=1e-6)


def test_a_resumed_job_flags_the_same_rows_from_its_commit_records(out_of_fold_job):
    folder, result, _ = out_of_fold_job
    before = pq.read_table(folder / "out" / "label_issues.parquet")
    again = alray.run(alray.JobSpec.from_yaml(folder / "job.yaml"), progress=False)
    assert again.counts["shards_reused"] == again.counts["shards"] == 3
    assert pq.read_table(folder / "out" / "label_issues.parquet").equals(before)


def test_checkpoints_as_members_give_the_log_paths_statistics(tmp_path):
    """One member per training epoch: the job's gold statistics equal `alray cartography`'s on
    a log of the same logits (float32 scoring against the log path's float64)."""
    x, given, _ = _digits(seed=2)
    x, given = x[:600], given[:600]
    members, log = [], tmp_path / "log"
    log.mkdir()
    for epoch, l2 in enumerate([1.0, 0.1, 0.01, 0.001]):  # later epochs fit harder
        weight, bias = train_head(x, given, 10, l2=l2)
        members.append(_save(tmp_path, f"epoch-{epoch}.safetensors", weight, bias))
        logits = x @ weight.T + bias
        order = np.random.default_rng(epoch).permutation(len(x))  # each epoch in its own order
        pq.write_table(pa.table({"id": order, "gold": given[order],
                                 "logits": embedding_array(logits[order].astype(np.float32))}),
                       log / f"dynamics_epoch_{epoch}.parquet")
    _write_pool(tmp_path, x, given, shards=2, labels=np.array(CLASSES)[given])
    # string labels, named by model.classes
    result = alray.run(_spec(tmp_path, members, k=20, classes=CLASSES), progress=False)
    job = _scores(tmp_path / "out").sort_by("id")
    logged = cartography(str(log), str(tmp_path / "carto")).statistics.sort_by("id")
    assert job.column("id").equals(logged.column("id"))
    assert job.column("gold").to_pylist() == logged.column("gold").to_pylist()
    for name in ("gold_confidence", "gold_variability", "gold_correctness"):
        np.testing.assert_allclose(job.column(name).to_numpy(), logged.column(name).to_numpy(),
                                   atol=2e-6, err_msg=name)
    assert job.column("gold_variability").to_numpy().max() > 0.01  # the epochs did differ
    lowest = logged.sort_by([("gold_confidence", "ascending"), ("id", "ascending")])
    assert set(result.selection.column("id").to_pylist()) == set(
        lowest.column("id").to_pylist()[:20])


def test_bad_labels_and_folds_are_quarantined_with_their_kind(tmp_path):
    x, given, _ = _digits()
    x, given = x[:300], given[:300]
    labels = [int(g) for g in given]
    labels[5], labels[7] = None, 12  # a null label, and a class the model does not have
    folds = [i % 2 for i in range(300)]
    folds[9] = 4  # two members: folds 0 and 1
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"id": np.arange(300), "embedding": embedding_array(x),
                             "label": pa.array(labels, pa.int64()), "fold": folds}),
                   tmp_path / "pool" / "part-0.parquet")
    members = [_save(tmp_path, f"m{f}.safetensors", *train_head(x, given, 10)) for f in range(2)]
    result = alray.run(_spec(tmp_path, members, k=5, on_error="skip", fold_column="fold"),
                       progress=False)
    lines = (tmp_path / "out" / "errors.jsonl").read_text().splitlines()
    assert {(e["id"], e["kind"]) for e in map(json.loads, lines)} == {
        (5, "null_value"), (7, "bad_label"), (9, "bad_fold")}
    assert result.counts["rows_scored"] == 297
    assert not {5, 7, 9} & set(_scores(tmp_path / "out").column("id").to_pylist())


@pytest.mark.parametrize("pool, strategy, where", [
    ({}, "label_issue", "pool.label_column"),
    ({"label_column": "label", "fold_column": "fold"}, "entropy", "pool.fold_column"),
])
def test_label_settings_that_cannot_work_are_refused_before_ray_starts(tmp_path, pool, strategy,
                                                                        where):
    spec = {"pool": {"uri": "./pool", "feature_column": "embedding", **pool},
            "model": {"kind": "linear", "path": "./head.safetensors"},
            "scoring": {"strategy": strategy}, "selection": {"k": 5}, "output": {"uri": "./out"}}
    with pytest.raises(ConfigError) as caught:
        alray.JobSpec.from_dict(spec, base_dir=tmp_path)
    assert caught.value.where == where


def test_the_plan_says_how_rows_are_scored_and_what_is_flagged(out_of_fold_job):
    from alray.job.plan import format_plan, plan_job

    folder, _, _ = out_of_fold_job
    text, would_fail = format_plan(plan_job(alray.JobSpec.from_yaml(folder / "job.yaml")))
    assert not would_fail
    assert "5 fold models, each row scored by the one for its 'fold'" in text
    assert "labels:  'label': gold statistics" in text and "label_issues.parquet" in text


def test_the_report_shows_how_many_labels_are_flagged_and_the_commonest_mix_ups(
        out_of_fold_job):
    from alray.report import report

    folder, result, _ = out_of_fold_job
    report(str(folder / "out"))
    page = (folder / "out" / "report.html").read_text()
    flagged = pq.read_table(folder / "out" / "label_issues.parquet")
    assert "labels probably wrong" in page
    assert f"Confident learning flags {flagged.num_rows:,} rows" in page
    pairs = Counter(zip(flagged.column("given").to_pylist(),
                        flagged.column("suggested").to_pylist()))
    (given, suggested), count = pairs.most_common(1)[0]
    assert any(line.split() == [str(given), str(suggested), str(count)]
               for line in page.splitlines())
