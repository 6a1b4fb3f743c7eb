"""alray.cartography.confident against cleanlab 2.9's find_label_issues(prune_by_noise_rate).

The pools are continuous (softmax of Gaussian logits), so no two margins tie and cleanlab's
unstable argsort has a unique answer; the flagged sets must then be identical, row for row.
cleanlab runs with ``n_jobs=1``: its result does not depend on ``n_jobs``, and forking a pool per
call would dominate the run time.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pytest
from cleanlab.count import (
    calibrate_confident_joint,
    compute_confident_joint,
    get_confident_thresholds,
)
from cleanlab.filter import _keep_at_least_n_per_class, _reduce_issues
from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alray.cartography.confident import (
    ClassTotals,
    IssueFlagger,
    calibrate_joint,
    confident_joint,
    find_label_issues,
    flag_rows,
    prune_counts,
)

COLUMNS = ["id", "given", "suggested", "self_confidence", "margin"]


# -- helpers ---------------------------------------------------------------------------------------


def _pool(seed: int, classes: int, rows: int, flip_rate: float, dtype=np.float64):
    """A model-like pool: ``given`` [rows], ``probs`` [rows, classes], ``flipped`` [rows] bool.

    Imbalanced true classes, softmax of Gaussian logits with a bump of random strength on the true
    class, and a ``flip_rate`` share of given labels moved to another class.
    """
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.full(classes, rng.choice([0.5, 2.0, 10.0])))
    true = rng.choice(classes, size=rows, p=prior)
    logits = rng.normal(size=(rows, classes)) * rng.uniform(0.5, 2.0)
    logits += rng.uniform(0.5, 4.0) * np.eye(classes)[true]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    flipped = rng.random(rows) < flip_rate
    given_labels = true.copy()
    given_labels[flipped] = (true[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    return given_labels, probs.astype(dtype), flipped


def _cleanlab_flags(labels, probs, **options) -> np.ndarray:
    """Row indices cleanlab flags; its small-class warnings are expected and silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = cleanlab_find_label_issues(
            labels, probs, filter_by="prune_by_noise_rate", n_jobs=1, **options
        )
    return np.flatnonzero(mask)


def _chunked(ids: pa.Array, labels: np.ndarray, probs: np.ndarray, cuts):
    """A ``chunks()`` callable yielding the pool cut at the sorted positions ``cuts``."""
    bounds = [0, *sorted(cuts), len(labels)]

    def chunks():
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield ids[start:stop], labels[start:stop], probs[start:stop]

    return chunks


def _random_cuts(rng: np.random.Generator, rows: int, most: int = 6) -> list[int]:
    count = int(rng.integers(1, most + 1))
    return sorted(rng.choice(np.arange(1, rows), size=min(count, rows - 1), replace=False))


def _ids_of(table: pa.Table) -> set:
    return set(table.column("id").to_pylist())


# -- against cleanlab.filter.find_label_issues -----------------------------------------------------


@settings(deadline=None, max_examples=150)
@given(
    seed=st.integers(0, 2**32 - 1),
    classes=st.integers(2, 6),
    rows=st.integers(20, 400),
    flip_rate=st.floats(0.0, 0.4),
)
def test_flags_equal_cleanlab_in_one_chunk_and_in_many(seed, classes, rows, flip_rate):
    labels, probs, _ = _pool(seed, classes, rows, flip_rate)
    assume(len(np.unique(labels)) >= 2)  # cleanlab refuses a single given class
    expected = _cleanlab_flags(labels, probs)
    rng = np.random.default_rng(seed)
    int_ids = rng.permutation(rows).astype(np.int64) * 7 + 3
    str_ids = np.array([f"row-{i:05d}" for i in int_ids])

    one_chunk = find_label_issues(_chunked(pa.array(int_ids), labels, probs, []), classes)
    cuts = _random_cuts(rng, rows)
    int_chunks = find_label_issues(_chunked(pa.array(int_ids), labels, probs, cuts), classes)
    str_chunks = find_label_issues(_chunked(pa.array(str_ids), labels, probs, cuts), classes)

    assert _ids_of(one_chunk) == set(int_ids[expected].tolist())
    assert _ids_of(int_chunks) == set(int_ids[expected].tolist())
    assert _ids_of(str_chunks) == set(str_ids[expected].tolist())
    assert one_chunk.equals(int_chunks)
    _assert_columns(one_chunk, int_ids, labels, probs)


def _assert_columns(table: pa.Table, ids: np.ndarray, labels: np.ndarray, probs: np.ndarray):
    """Every column is what it says for its row, and the rows are sorted as documented."""
    assert table.column_names == COLUMNS
    assert table.schema.field("given").type == pa.int64()
    row_of = {row_id: row for row, row_id in enumerate(ids.tolist())}
    rows = np.array([row_of[i] for i in table.column("id").to_pylist()], dtype=np.int64)
    own = probs[rows, labels[rows]]
    suggested = probs[rows].argmax(axis=1)
    np.testing.assert_array_equal(table.column("given").to_numpy(), labels[rows])
    np.testing.assert_array_equal(table.column("suggested").to_numpy(), suggested)
    np.testing.assert_array_equal(table.column("self_confidence").to_numpy(), own)
    margin = table.column("margin").to_numpy()
    np.testing.assert_array_equal(margin, probs[rows, suggested] - own)
    assert (margin > 0).all()
    order = list(zip(own.tolist(), table.column("id").to_pylist()))
    assert order == sorted(order)


def test_most_generated_pools_flag_rows_and_match():
    """The pool generator is not vacuous: nearly every pool flags rows, all equal cleanlab's."""
    flagging = 0
    for seed in range(40):
        labels, probs, _ = _pool(seed, 2 + seed % 5, 60 + 9 * seed, 0.05 + 0.3 * (seed % 4) / 3)
        expected = _cleanlab_flags(labels, probs)
        ids = np.arange(len(labels))
        found = find_label_issues(_chunked(pa.array(ids), labels, probs, [len(labels) // 3]),
                                  probs.shape[1])
        assert _ids_of(found) == set(expected.tolist())
        flagging += len(expected) > 0
    assert flagging >= 36


def test_options_match_cleanlab():
    """min_examples_per_class and frac_noise, over chunks cut at random."""
    for seed in range(30):
        rng = np.random.default_rng(seed)
        classes, rows = int(rng.integers(2, 9)), int(rng.integers(30, 600))
        labels, probs, _ = _pool(seed, classes, rows, 0.3)
        if len(np.unique(labels)) < 2:
            continue
        options = {"min_examples_per_class": int(rng.choice([0, 1, 3, 20])),
                   "frac_noise": float(rng.choice([1.0, 0.7, 0.3]))}
        expected = _cleanlab_flags(labels, probs, **options)
        chunks = _chunked(pa.array(np.arange(rows)), labels, probs, _random_cuts(rng, rows))
        found = find_label_issues(chunks, classes, **options)
        assert _ids_of(found) == set(expected.tolist()), (seed, options)


def test_float32_probs_match_cleanlab():
    for seed in range(10):
        labels, probs, _ = _pool(seed, 4, 300, 0.2, dtype=np.float32)
        expected = _cleanlab_flags(labels, probs)
        found = find_label_issues(_chunked(pa.array(np.arange(300)), labels, probs, [100, 250]), 4)
        assert _ids_of(found) == set(expected.tolist())


def test_missing_and_single_row_classes_match_cleanlab():
    labels, probs, _ = _pool(7, 6, 200, 0.25)
    labels = np.where(labels == 5, 4, labels)  # class 5: no rows
    labels[labels == 3] = 2
    labels[17] = 3  # class 3: one row
    expected = _cleanlab_flags(labels, probs)
    assert len(expected) > 0
    found = find_label_issues(_chunked(pa.array(np.arange(200)), labels, probs, [50, 51]), 6)
    assert _ids_of(found) == set(expected.tolist())


def test_flipped_digits_are_found():
    """Scikit-learn's digits with 10% of labels moved: the flags catch most of them."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    features, true = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    flipped = rng.random(len(true)) < 0.1
    labels = true.copy()
    labels[flipped] = (true[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    probs = cross_val_predict(LogisticRegression(max_iter=2000, C=0.1), features / 16, labels,
                              cv=4, method="predict_proba")
    ids = np.arange(len(labels))
    found = find_label_issues(_chunked(pa.array(ids), labels, probs, [500, 1000, 1500]), 10)
    flagged = np.zeros(len(labels), bool)
    flagged[found.column("id").to_numpy()] = True
    assert flagged[flipped].mean() >= 0.8  # recall
    assert flipped[flagged].mean() >= 0.7  # precision
    assert _ids_of(found) == set(_cleanlab_flags(labels, probs).tolist())
    caught = flipped[found.column("id").to_numpy()]
    suggested = found.column("suggested").to_numpy()[caught]
    assert (suggested == true[found.column("id").to_numpy()[caught]]).mean() >= 0.9


# -- the pieces ------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), classes=st.integers(2, 8), rows=st.integers(10, 300))
def test_joint_and_calibration_equal_cleanlab(seed, classes, rows):
    labels, probs, _ = _pool(seed, classes, rows, 0.3)
    assume(len(np.unique(labels)) >= 2)
    totals = ClassTotals.zeros(classes).add(labels, probs)
    raw = sum(confident_joint(labels[part], probs[part], totals.thresholds())
              for part in np.array_split(np.arange(rows), 3))
    reference = compute_confident_joint(labels, probs, calibrate=False)
    off_diagonal = ~np.eye(classes, dtype=bool)
    np.testing.assert_array_equal(raw[off_diagonal], reference[off_diagonal])
    np.testing.assert_array_equal(np.maximum(np.diagonal(raw), 1), np.diagonal(reference))
    np.testing.assert_array_equal(calibrate_joint(raw, totals.counts),
                                  compute_confident_joint(labels, probs))


@settings(deadline=None, max_examples=100)
@given(seed=st.integers(0, 2**32 - 1), classes=st.integers(2, 24))
def test_calibration_and_prune_counts_equal_cleanlab_on_tie_prone_counts(seed, classes):
    """Small integer joints make exact .5 values and tied residuals in the rounding step."""
    rng = np.random.default_rng(seed)
    joint = rng.integers(0, 4, size=(classes, classes))
    np.fill_diagonal(joint, rng.integers(1, 6, classes))
    class_counts = rng.integers(0, 12, classes)
    class_counts[rng.integers(classes)] += 1  # cleanlab needs at least one label
    # cleanlab's joint is sklearn's confusion matrix transposed: column-major memory.
    expected = calibrate_confident_joint(np.asfortranarray(joint), np.repeat(
        np.arange(classes), class_counts))
    calibrated = calibrate_joint(joint, class_counts)
    np.testing.assert_array_equal(calibrated, expected)
    for n, frac in [(1, 1.0), (0, 1.0), (3, 0.6)]:
        by_suggested = _keep_at_least_n_per_class(calibrated.T, n, frac_noise=frac)
        expected_flags = by_suggested.T.copy()
        np.fill_diagonal(expected_flags, 0)
        expected_flags[class_counts <= max(n, 1)] = 0
        found = prune_counts(calibrated, class_counts, min_examples_per_class=n, frac_noise=frac)
        np.testing.assert_array_equal(found, expected_flags)


def test_row_over_several_thresholds_counts_at_its_argmax_even_if_unconfident():
    thresholds = np.array([0.9, 0.3, 0.3])
    probs = np.array([[0.38, 0.31, 0.31], [0.2, 0.7, 0.1], [0.5, 0.25, 0.25], [0.1, 0.32, 0.58]])
    labels = np.array([1, 1, 2, 0])
    joint = confident_joint(labels, probs, thresholds)
    reference = compute_confident_joint(labels, probs, thresholds=thresholds, calibrate=False)
    off_diagonal = ~np.eye(3, dtype=bool)
    np.testing.assert_array_equal(joint[off_diagonal], reference[off_diagonal])
    assert joint[1, 0] == 1  # row 0: classes 1 and 2 confident, argmax 0 is not
    assert joint[2].sum() == 0  # row 2: no class confident, not counted
    assert joint[0, 2] == 1 and joint[1, 1] == 1


def test_class_totals_merge_round_trip_and_thresholds():
    labels, probs, _ = _pool(3, 5, 500, 0.2)
    labels[labels == 4] = 0  # class 4: no rows
    whole = ClassTotals.zeros(5).add(labels, probs)
    parts = [ClassTotals.zeros(5).add(labels[p], probs[p])
             for p in np.array_split(np.arange(500), 4)]
    merged = parts[0].merge(parts[1]).merge(parts[2]).merge(parts[3])
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    assert merged is not parts[0] and parts[0].counts.sum() == 125

    restored = ClassTotals.from_dict(json.loads(json.dumps(whole.to_dict())))
    np.testing.assert_array_equal(restored.sums, whole.sums)
    np.testing.assert_array_equal(restored.counts, whole.counts)
    assert restored.counts.dtype == np.int64 and restored.sums.dtype == np.float64

    thresholds = whole.thresholds()
    np.testing.assert_allclose(thresholds, get_confident_thresholds(labels, probs), rtol=1e-12)
    assert thresholds[4] == 2.0
    assert np.array_equal(np.bincount(labels, minlength=5), whole.counts)


def test_issue_flagger_by_hand_equals_find_label_issues_and_holds_only_the_flags():
    labels, probs, _ = _pool(11, 4, 3000, 0.2)
    ids = pa.array(np.arange(3000))
    chunks = _chunked(ids, labels, probs, [700, 1800, 2500])
    totals = ClassTotals.zeros(4)
    for _, gold, p in chunks():
        totals.add(gold, p)
    joint = sum(confident_joint(gold, p, totals.thresholds()) for _, gold, p in chunks())
    to_flag = prune_counts(calibrate_joint(joint, totals.counts), totals.counts)
    flagger = IssueFlagger(to_flag)
    for chunk in chunks():
        flagger.add(*chunk)
        assert flagger._held <= to_flag.sum()
    by_hand = flagger.result()
    assert by_hand.equals(find_label_issues(chunks, 4))
    assert by_hand.equals(flag_rows(chunks, totals))  # pass 1 taken elsewhere (a job's shards)
    assert _ids_of(by_hand) == set(_cleanlab_flags(labels, probs).tolist())


def test_equal_margins_go_to_the_earlier_row():
    row = [0.2, 0.8]
    flagger = IssueFlagger(np.array([[0, 2], [0, 0]]))
    flagger.add(pa.array(["c", "a"]), np.array([0, 0]), np.array([[0.5, 0.5], row]))
    flagger.add(pa.array(["z", "b"]), np.array([0, 0]), np.array([row, row]))
    assert flagger.result().column("id").to_pylist() == ["a", "z"]


def test_a_model_within_1e6_of_the_given_label_agrees_with_it():
    """cleanlab's last step: a picked row stays unflagged unless another class beats the given
    one by more than 1e-6."""
    probs = np.array([[0.5 - 2e-7, 0.5 + 2e-7], [0.4, 0.6], [0.5 - 6e-7, 0.5 + 6e-7]])
    labels = np.zeros(3, np.int64)
    flagger = IssueFlagger(np.array([[0, 3], [0, 0]]))
    flagger.add(pa.array([0, 1, 2]), labels, probs)
    found = sorted(_ids_of(flagger.result()))
    assert found == [1, 2]
    assert found == np.flatnonzero(~_reduce_issues(probs, labels)).tolist()


def test_empty_pool_gives_an_empty_table():
    table = find_label_issues(lambda: iter(()), 3)
    assert table.num_rows == 0 and table.column_names == COLUMNS
    assert table.schema.field("id").type == pa.int64()


# -- bad input -------------------------------------------------------------------------------------


def _one_chunk(gold, probs, ids=None):
    ids = pa.array(np.arange(len(gold))) if ids is None else ids
    return lambda: iter([(ids, np.asarray(gold), np.asarray(probs))])


GOOD = np.array([[0.9, 0.1], [0.2, 0.8]])


@pytest.mark.parametrize("chunks, message", [
    (_one_chunk([0, 2], GOOD), "gold out of range"),
    (_one_chunk([0, -1], GOOD), "gold out of range"),
    (_one_chunk([0.0, 1.0], GOOD), "integer class indices"),
    (_one_chunk([0, 1], GOOD[:, :1]), "probs shape mismatch"),
    (_one_chunk([0, 1, 1], GOOD), "probs shape mismatch"),
    (_one_chunk([0, 1], [[0.9, np.nan], [0.2, 0.8]]), "NaN"),
    (_one_chunk([0, 1], [[1.5, 0.1], [0.2, 0.8]]), r"outside \[0, 1\]"),
    (_one_chunk([0, 1], GOOD, pa.array([1, 2, 3])), "ids length mismatch"),
    (_one_chunk([0, 1], GOOD, pa.array([1.0, 2.0])), "ids must be integer or string"),
    (_one_chunk([0, 1], GOOD, pa.array([1, None])), "nulls"),
])
def test_bad_chunks_raise_value_errors_naming_the_problem(chunks, message):
    with pytest.raises(ValueError, match=message):
        find_label_issues(chunks, 2)


def test_other_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="class count mismatch"):
        ClassTotals.zeros(2).merge(ClassTotals.zeros(3))
    with pytest.raises(ValueError, match="gold out of range"):
        ClassTotals.zeros(2).add(np.array([3]), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="to_flag must be a square"):
        IssueFlagger(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="non-negative"):
        IssueFlagger(np.array([[0, -1], [0, 0]]))
    with pytest.raises(ValueError, match="thresholds must be"):
        confident_joint(np.array([0]), np.array([[0.5, 0.5]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="frac_noise"):
        find_label_issues(_one_chunk([0, 1], GOOD), 2, frac_noise=2.0)
    with pytest.raises(ValueError, match="classes must be"):
        find_label_issues(_one_chunk([0, 1], GOOD), 0)
    flagger = IssueFlagger(np.array([[0, 1], [1, 0]]))
    flagger.add(pa.array([1]), np.array([0]), np.array([[0.1, 0.9]]))
    with pytest.raises(ValueError, match="ids type changed"):
        flagger.add(pa.array(["x"]), np.array([0]), np.array([[0.1, 0.9]]))


def test_chunks_that_change_between_reads_are_refused():
    reads = iter([[0, 1, 1], [0, 0, 1], [0, 1, 1]])  # the confident joint's read differs
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])

    def chunks():
        return iter([(pa.array([1, 2, 3]), np.array(next(reads)), probs)])

    with pytest.raises(ValueError, match="different rows on a later read"):
        find_label_issues(chunks, 2)
