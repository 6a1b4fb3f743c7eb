"""Uncertainty scores and row validity against a float64 NumPy reference (DESIGN.md, "Scores").

The reference follows DESIGN.md literally: p is the stable softmax of the logits in float64,
sorted descending, and

    least_confidence = (1 - p1) * n / (n - 1)     margin  = 1 - (p1 - p2)
    ratio            = p2 / p1                    entropy = -sum p ln p / ln n

For logits, ``1 - p1`` is computed as the sum of the other classes' probabilities, so the
reference stays accurate (in relative terms) for confident rows where ``p1`` rounds to 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alray.scoring import SCORES
from alray.scoring.uncertainty import (
    entropy,
    least_confidence,
    log_probs_from_logits,
    log_probs_from_probs,
    margin,
    ratio,
    score_all,
)
from alray.scoring.validity import PROB_SUM_TOLERANCE, invalid_rows

SCORE_NAMES = ["least_confidence", "margin", "ratio", "entropy"]
SCORE_FUNCTIONS = {"least_confidence": least_confidence, "margin": margin, "ratio": ratio,
                   "entropy": entropy}
SHAPES = [(1, 2), (5, 2), (7, 3), (33, 17), (64, 50)]
INPUT_DTYPES = [torch.float16, torch.float32, torch.float64]
MAX_LOGIT = 1e4
EPS32 = float(np.finfo(np.float32).eps)

# float32 results are compared at 1e-5; float64 inputs through the single functions at 1e-9.
ATOL = {torch.float16: 1e-5, torch.float32: 1e-5, torch.float64: 1e-9}

SETTINGS = settings(derandomize=True, max_examples=30, deadline=None, database=None)

# --------------------------------------------------------------------------------- reference


def _reference(p: np.ndarray, one_minus_p1: np.ndarray, log_p: np.ndarray) -> dict:
    n = p.shape[1]
    top2 = -np.sort(-p, axis=1)[:, :2]
    p1, p2 = top2[:, 0], top2[:, 1]
    terms = np.where(p > 0, p * log_p, 0.0)
    scores = {
        "least_confidence": one_minus_p1 * n / (n - 1),
        "margin": one_minus_p1 + p2,
        "ratio": p2 / p1,
        "entropy": -terms.sum(axis=1) / math.log(n),
    }
    # Every score is in [0, 1]; rows off 1 by rounding (float16 probabilities) can step outside.
    return {
        **{name: np.clip(values, 0.0, 1.0) for name, values in scores.items()},
        "predicted": np.argmax(p, axis=1),
        "confidence": p1,
        "p1_minus_p2": p1 - p2,
    }


def reference_from_logits(logits: torch.Tensor) -> dict:
    """DESIGN.md's scores of ``[B, C]`` logits, in float64 from the exact input values."""
    x = logits.double().numpy()
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1)
    others = np.where(np.arange(x.shape[1]) == np.argmax(x, axis=1)[:, None], 0.0, e).sum(axis=1)
    log_p = shifted - np.log(total)[:, None]
    return _reference(e / total[:, None], others / total, log_p)


def reference_from_probs(probs: torch.Tensor) -> dict:
    """DESIGN.md's scores of ``[B, C]`` probabilities (zeros allowed), in float64, after
    renormalizing each row to sum to 1 (as alray documents for probability inputs)."""
    p = probs.double().numpy()
    p = p / p.sum(axis=1, keepdims=True)
    log_p = np.log(p, out=np.zeros_like(p), where=p > 0)
    return _reference(p, 1.0 - p.max(axis=1), log_p)


# ------------------------------------------------------------------------------------ inputs


def _row_of_kind(rng: np.random.Generator, kind: str, c: int) -> np.ndarray:
    if kind == "ordinary":
        scale = rng.choice([1e-3, 1.0, 10.0, 100.0])
        return rng.uniform(-MAX_LOGIT / 2, MAX_LOGIT / 2) + scale * rng.standard_normal(c)
    if kind == "extreme":
        return rng.uniform(-MAX_LOGIT, MAX_LOGIT, c)
    if kind == "constant":
        return np.full(c, rng.uniform(-MAX_LOGIT, MAX_LOGIT))
    row = rng.standard_normal(c) * rng.choice([0.1, 1.0, 10.0]) + rng.uniform(-1000, 1000)
    if kind == "tied_top":
        i, j = rng.choice(c, 2, replace=False)
        row[[i, j]] = row.max() + rng.uniform(0, 3)
    else:  # "dominant": one logit above the rest by a gap, up to well past 100
        gap = rng.choice([rng.uniform(0, 40), rng.uniform(100, 200)])
        row[rng.integers(c)] = row.max() + gap
    return row


def make_logits(rng: np.random.Generator, b: int, c: int, kinds=None) -> np.ndarray:
    """``[b, c]`` float64 logits in [-1e4, 1e4], each row of a random kind."""
    kinds = kinds or ["ordinary", "extreme", "constant", "tied_top", "dominant"]
    rows = [_row_of_kind(rng, kinds[rng.integers(len(kinds))], c) for _ in range(b)]
    return np.clip(np.stack(rows), -MAX_LOGIT, MAX_LOGIT)


def make_probs(rng: np.random.Generator, b: int, c: int) -> np.ndarray:
    """``[b, c]`` float64 probability rows, some sharp, some with exact zeros."""
    rows = rng.dirichlet(np.full(c, rng.choice([0.05, 1.0, 20.0])), size=b)
    zeroed = rng.random((b, c)) < 0.3
    zeroed[np.arange(b), rng.integers(c, size=b)] = False  # keep one class per row positive
    rows = np.where(zeroed, 0.0, rows + 1e-12)
    return rows / rows.sum(axis=1, keepdims=True)


@st.composite
def logit_batches(draw, dtype=torch.float32, c=st.integers(2, 50)):
    b, c = draw(st.integers(1, 64)), draw(c)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(make_logits(rng, b, c)).to(dtype), rng


def confident_logits(rng: np.random.Generator, b: int, c: int, max_gap=200.0) -> np.ndarray:
    """Rows whose top logit beats the rest by 5 to ``max_gap`` (200: ``1 - p1`` down to 1e-87)."""
    rows = rng.standard_normal((b, c)) * rng.choice([0.1, 1.0, 5.0])
    gaps = rng.uniform(5, max_gap, size=b)
    rows[np.arange(b), rng.integers(c, size=b)] = rows.max(axis=1) + gaps
    return rows + rng.uniform(-1000, 1000, size=(b, 1))


# ----------------------------------------------------------------------------------- helpers


def assert_close_to(actual: torch.Tensor, expected: np.ndarray, atol: float) -> None:
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=0, atol=atol)


def assert_in_unit_interval(scores: torch.Tensor) -> None:
    values = scores.double().numpy()
    assert not np.isnan(values).any()
    assert (values >= 0).all() and (values <= 1).all(), values[(values < 0) | (values > 1)]


def assert_matches_reference(out: dict, ref: dict) -> None:
    for name in SCORE_NAMES:
        assert out[name].dtype == torch.float32
        assert_close_to(out[name], ref[name], atol=1e-5)
    assert_close_to(out["confidence"], ref["confidence"], atol=1e-6)


def assert_predicted_is_argmax(predicted: torch.Tensor, log_probs: torch.Tensor, ref: dict):
    assert predicted.dtype == torch.int32
    rows = torch.arange(len(predicted))
    chosen = log_probs[rows, predicted.long()]
    assert torch.equal(chosen, log_probs.max(dim=-1).values)
    clear = ref["p1_minus_p2"] > 1e-5  # a unique top class, well beyond float32 rounding
    np.testing.assert_array_equal(predicted.numpy()[clear], ref["predicted"][clear])


# ----------------------------------------------------------------- scores against reference


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xC{s[1]}")
@pytest.mark.parametrize("name", SCORE_NAMES)
def test_score_matches_reference(name, shape):
    rng = np.random.default_rng(sum(shape) * 101 + SCORE_NAMES.index(name))
    logits = torch.from_numpy(make_logits(rng, *shape)).float()
    scores = SCORES[name].load()(log_probs_from_logits(logits))
    assert scores.shape == (shape[0],)
    assert_close_to(scores, reference_from_logits(logits)[name], atol=1e-5)
    assert_in_unit_interval(scores)


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=str)
@SETTINGS
@given(data=st.data())
def test_score_all_matches_reference_and_single_functions(dtype, data):
    logits, _ = data.draw(logit_batches(dtype))
    log_probs = log_probs_from_logits(logits)
    out = score_all(log_probs)
    ref = reference_from_logits(logits)
    assert_matches_reference(out, ref)
    for name in SCORE_NAMES:
        single = SCORE_FUNCTIONS[name](log_probs)
        assert_close_to(single, ref[name], atol=ATOL[dtype])
        torch.testing.assert_close(out[name], single.float(), rtol=0, atol=1e-6)
        assert_in_unit_interval(out[name])
        assert_in_unit_interval(single)
    assert_predicted_is_argmax(out["predicted"], log_probs, ref)


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=str)
@SETTINGS
@given(b=st.integers(1, 64), c=st.integers(2, 50), seed=st.integers(0, 2**32 - 1))
def test_probabilities_with_zeros_match_reference(dtype, b, c, seed):
    probs = torch.from_numpy(make_probs(np.random.default_rng(seed), b, c)).to(dtype)
    log_probs = log_probs_from_probs(probs)
    out = score_all(log_probs)
    ref = reference_from_probs(probs)
    assert_matches_reference(out, ref)
    for name in SCORE_NAMES:
        assert_close_to(SCORE_FUNCTIONS[name](log_probs), ref[name], atol=ATOL[dtype])
    assert_predicted_is_argmax(out["predicted"], log_probs, ref)


@SETTINGS
@given(data=st.data())
def test_two_classes(data):
    logits, _ = data.draw(logit_batches(c=st.just(2)))
    out = score_all(log_probs_from_logits(logits))
    ref = reference_from_logits(logits)
    assert_matches_reference(out, ref)
    # With two classes, 1 - (p1 - p2) = 2 * p2 = 2 * (1 - p1): margin is least confidence.
    torch.testing.assert_close(out["margin"], out["least_confidence"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ confident rows


def _confident_case(dtype, b, c, seed, max_gap=200.0):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(confident_logits(rng, b, c, max_gap)).to(dtype)
    scores = least_confidence(log_probs_from_logits(logits)).double().numpy()
    return scores, reference_from_logits(logits)["least_confidence"]


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=str)
@SETTINGS
@given(b=st.integers(1, 64), c=st.integers(2, 50), seed=st.integers(0, 2**32 - 1))
def test_confident_rows_score_small_and_are_not_flushed_to_zero(dtype, b, c, seed):
    scores, ref = _confident_case(dtype, b, c, seed)
    eps = EPS32 if dtype != torch.float64 else float(np.finfo(np.float64).eps)
    # Off by at most a few units in the last place of 1 (log_softmax's rounding of log p1) ...
    np.testing.assert_allclose(scores, ref, rtol=1e-3, atol=8 * eps)
    # ... which is well below 1e-6: a score the reference puts above 1e-6 is never flushed to 0.
    assert (scores[ref > 1e-6] > 0).all()


@pytest.mark.parametrize("c", [2, 10, 50])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_confident_rows_are_relatively_accurate(dtype, c):
    scores, ref = _confident_case(dtype, 500, c, seed=c, max_gap=20.0)
    meaningful = ref > 1e-6
    assert ((ref > 1e-6) & (ref < 1e-5)).sum() > 10  # rows where float32 rounding shows
    np.testing.assert_allclose(scores[meaningful], ref[meaningful], rtol=1e-3)


def test_docstring_example_p1_one_minus_1e9_scores_1e9():
    # uncertainty.py: "p1 = 1 - 1e-9 scores about 1e-9 in float32, not 0" (C = 2: lc = 2(1 - p1)).
    logits = torch.tensor([[0.0, math.log(1e-9)]], dtype=torch.float32)
    score = least_confidence(log_probs_from_logits(logits)).item()
    assert score == pytest.approx(2 * 1e-9 / (1 + 1e-9), rel=1e-3)


# ---------------------------------------------------------------------------- properties


@SETTINGS
@given(data=st.data())
def test_permuting_rows_permutes_scores(data):
    logits, rng = data.draw(logit_batches())
    order = torch.from_numpy(rng.permutation(len(logits)))
    whole = score_all(log_probs_from_logits(logits))
    permuted = score_all(log_probs_from_logits(logits[order]))
    for name, values in whole.items():
        assert torch.equal(permuted[name], values[order]), name


@SETTINGS
@given(data=st.data())
def test_scoring_in_chunks_equals_scoring_at_once(data):
    logits, rng = data.draw(logit_batches())
    cuts = np.sort(rng.choice(np.arange(1, len(logits) + 1), size=rng.integers(1, 5)))
    chunks = [c for c in np.split(np.arange(len(logits)), cuts) if len(c)]
    whole = score_all(log_probs_from_logits(logits))
    parts = [score_all(log_probs_from_logits(logits[torch.from_numpy(c)])) for c in chunks]
    for name, values in whole.items():
        assert torch.equal(torch.cat([p[name] for p in parts]), values), name


def uniform_log_probs(c: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Uniform rows as constant logits (any offset) and, where 1/c is exact enough, as probs."""
    offsets = torch.tensor([-MAX_LOGIT, -3.5, 0.0, 1.0, MAX_LOGIT], dtype=dtype)[:, None]
    rows = [log_probs_from_logits(offsets.expand(-1, c).contiguous())]
    if dtype != torch.float16:  # 1/3 in float16 is off by 1e-4: not a uniform row
        rows.append(log_probs_from_probs(torch.full((3, c), 1.0 / c, dtype=dtype)))
    return rows


@pytest.mark.parametrize("c", [2, 3, 10, 50])
@pytest.mark.parametrize("name", SCORE_NAMES)
def test_uniform_rows_score_one(name, c):
    for dtype in INPUT_DTYPES:
        for log_probs in uniform_log_probs(c, dtype):
            for scores in (SCORES[name].load()(log_probs), score_all(log_probs)[name]):
                assert_close_to(scores, np.ones(len(scores)), atol=1e-6)
                assert_in_unit_interval(scores)


@pytest.mark.parametrize("c", [2, 3, 10, 50])
@pytest.mark.parametrize("name", SCORE_NAMES)
def test_one_hot_probabilities_score_zero(name, c):
    hot = torch.tensor([0, c - 1, c // 2, 1])
    for dtype in INPUT_DTYPES:
        log_probs = log_probs_from_probs(torch.nn.functional.one_hot(hot, c).to(dtype))
        for scores in (SCORES[name].load()(log_probs), score_all(log_probs)[name]):
            assert not torch.isnan(scores).any()
            assert (scores == 0).all(), scores
        out = score_all(log_probs)
        assert torch.equal(out["predicted"], hot.int())
        assert torch.equal(out["confidence"], torch.ones(len(hot)))


# ------------------------------------------------------------------------------- registry


def test_registry_entries_load_their_kernels():
    for name in SCORE_NAMES:
        assert SCORES[name].load() is SCORE_FUNCTIONS[name]
        assert not SCORES[name].needs_samples
    for score in SCORES.values():
        assert callable(score.load()), score.name
        assert score.formula and score.value_range and score.inputs


# ------------------------------------------------------------------------------- validity

VALID, NON_FINITE, NEGATIVE, OFF_SUM, NEAR_SUM = "valid", "non_finite", "negative", "off", "near"


def _probs_row(rng: np.random.Generator, kind: str, c: int) -> np.ndarray:
    row = rng.dirichlet(np.ones(c))
    if kind == NON_FINITE:
        i, j = rng.choice(c, 2, replace=False)
        row[i] = rng.choice([np.nan, np.inf, -np.inf])
        if rng.random() < 0.5:  # a row that is also negative stays non_finite only
            row[j] = -0.5
    elif kind == NEGATIVE:  # sums to 1, but one entry is below 0
        i, j = rng.choice(c, 2, replace=False)
        delta = rng.uniform(1e-3, 0.5)
        row[i], row[j] = -delta, row[j] + row[i] + delta
    elif kind == OFF_SUM:
        row *= 1 + rng.choice([-1, 1]) * rng.uniform(2 * PROB_SUM_TOLERANCE, 0.5)
    elif kind == NEAR_SUM:  # off by less than the tolerance: still valid
        row *= 1 + rng.uniform(-0.5, 0.5) * PROB_SUM_TOLERANCE
    return row


def _logits_row(rng: np.random.Generator, kind: str, c: int) -> np.ndarray:
    row = rng.uniform(-MAX_LOGIT, MAX_LOGIT, c)
    if kind == NON_FINITE:
        bad = rng.random(c) < 0.3
        bad[rng.integers(c)] = True
        row[bad] = rng.choice([np.nan, np.inf, -np.inf], size=bad.sum())
    return row


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=str)
@SETTINGS
@given(b=st.integers(1, 64), c=st.integers(2, 50), seed=st.integers(0, 2**32 - 1))
def test_invalid_logit_rows(dtype, b, c, seed):
    rng = np.random.default_rng(seed)
    kinds = rng.choice([VALID, NON_FINITE], size=b)
    logits = torch.from_numpy(np.stack([_logits_row(rng, k, c) for k in kinds])).to(dtype)
    non_finite, bad = invalid_rows(logits, "logits")
    np.testing.assert_array_equal(non_finite.numpy(), kinds == NON_FINITE)
    assert not bad.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@SETTINGS
@given(b=st.integers(1, 64), c=st.integers(2, 50), seed=st.integers(0, 2**32 - 1))
def test_invalid_probability_rows(dtype, b, c, seed):
    rng = np.random.default_rng(seed)
    kinds = rng.choice([VALID, NEAR_SUM, NON_FINITE, NEGATIVE, OFF_SUM], size=b)
    probs = torch.from_numpy(np.stack([_probs_row(rng, k, c) for k in kinds])).to(dtype)
    non_finite, bad = invalid_rows(probs, "probs")
    assert non_finite.shape == bad.shape == (b,)
    assert non_finite.dtype == bad.dtype == torch.bool
    np.testing.assert_array_equal(non_finite.numpy(), kinds == NON_FINITE)
    np.testing.assert_array_equal(bad.numpy(), np.isin(kinds, [NEGATIVE, OFF_SUM]))


def test_invalid_probability_rows_by_hand():
    probs = torch.tensor([
        [0.25, 0.75, 0.0],           # valid, with a zero
        [float("nan"), 0.5, 0.5],    # non_finite
        [float("inf"), -1.0, 0.0],   # non_finite (and negative): non_finite only
        [-0.1, 0.6, 0.5],            # sums to 1 but negative
        [0.5, 0.5, 0.002],           # sum off by 2e-3
        [0.5, 0.5, 0.0005],          # sum off by 5e-4: within tolerance
    ])
    non_finite, bad = invalid_rows(probs, "probs")
    assert non_finite.tolist() == [False, True, True, False, False, False]
    assert bad.tolist() == [False, False, False, True, True, False]
