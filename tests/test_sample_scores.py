"""Scores of sampled outputs ``[B, C, K]`` (alray.scoring.samples) against a float64 reference.

The reference follows the definitions literally, in float64, from the exact input values:
``p = exp(log_probs)``, ``p̄ = mean_k p_k``, ``H(q) = -sum q ln q`` (``0 ln 0 = 0``) and

    predictive_entropy = H(p̄) / ln C          bald = (H(p̄) - mean_k H(p_k)) / ln C
    variation_ratio    = 1 - modal votes / K   vote_entropy = H(vote shares) / ln min(C, K)
    max_disagreement   = max_k KL(p_k || p̄) / ln K
    expected_gradient_length = sum_c p̄_c ||p̄ - e_c|| sqrt(||h||^2 + 1)   (a [B, C, C] difference)

Inputs mix ordinary rows, members that are each very confident (gaps up to 200 logits), identical
members, extreme logits and classes with an exact ``-inf`` log-probability (p = 0) in some or all
members.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alray.scoring.samples import (
    bald,
    expected_gradient_length,
    max_disagreement,
    mean_log_probs,
    mean_prediction,
    predictive_entropy,
    target_probability,
    variance,
    variation_ratio,
    vote_entropy,
)
from alray.scoring.uncertainty import entropy

UNIT_SCORES = {"predictive_entropy": predictive_entropy, "bald": bald,
               "variation_ratio": variation_ratio, "vote_entropy": vote_entropy,
               "max_disagreement": max_disagreement}
DISAGREEMENT = ["bald", "variation_ratio", "vote_entropy", "max_disagreement"]
INPUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
OUTPUT_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32,
                torch.float32: torch.float32, torch.float64: torch.float64}
ATOL = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-5, torch.float64: 1e-9}
KINDS = ["ordinary", "confident", "identical", "zero_class", "extreme"]

SETTINGS = settings(derandomize=True, max_examples=30, deadline=None, database=None)

# --------------------------------------------------------------------------------- reference


def _log(q: np.ndarray) -> np.ndarray:
    """``ln q``, with 0 standing in for ``ln 0``: every use multiplies it by ``q = 0``."""
    return np.log(q, out=np.zeros_like(q), where=q > 0)


def _entropy(q: np.ndarray, axis: int) -> np.ndarray:
    return -(q * _log(q)).sum(axis=axis)


def _vote_counts(log_p: np.ndarray) -> np.ndarray:
    b, c, _ = log_p.shape
    votes = np.argmax(log_p, axis=1)  # [B, K]; ties to the lowest index, as torch.argmax
    return np.stack([np.bincount(votes[i], minlength=c) for i in range(b)]).astype(np.float64)


def reference(log_probs: torch.Tensor) -> dict:
    """Every ``[B, C, K]`` score and ``p̄``, in float64 from the exact input values."""
    log_p = log_probs.double().numpy()
    _, c, k = log_p.shape
    p = np.exp(log_p)
    p_mean = p.mean(axis=2)
    h_mean, h_members = _entropy(p_mean, axis=1), _entropy(p, axis=1).mean(axis=1)
    kl = (p * (_log(p) - _log(p_mean)[:, :, None])).sum(axis=1)  # [B, K]
    counts = _vote_counts(log_p)
    scores = {
        "predictive_entropy": h_mean / math.log(c),
        "bald": (h_mean - h_members) / math.log(c),
        "variation_ratio": 1 - counts.max(axis=1) / k,
        "vote_entropy": _entropy(counts / k, axis=1) / math.log(min(c, k)) if k > 1
        else np.zeros(len(log_p)),
        "max_disagreement": kl.max(axis=1) / math.log(k) if k > 1 else np.zeros(len(log_p)),
    }
    return {**{name: np.clip(v, 0.0, 1.0) for name, v in scores.items()}, "p_mean": p_mean}


def reference_mean_log_probs(log_probs: torch.Tensor) -> np.ndarray:
    """``logsumexp_k - ln K`` in float64 (shifted by the largest finite sample)."""
    log_p = log_probs.double().numpy()
    top = np.nan_to_num(log_p.max(axis=2, keepdims=True), neginf=0.0)
    with np.errstate(divide="ignore"):  # ln 0 = -inf where every sample has p = 0
        return (np.log(np.exp(log_p - top).sum(axis=2)) + top[..., 0]) - math.log(log_p.shape[2])


def reference_gradient_length(p_mean: np.ndarray, embedding: torch.Tensor) -> np.ndarray:
    """The literal sum over labels, of ``p̄`` renormalized as the function documents."""
    c = p_mean.shape[1]
    p_mean = p_mean / p_mean.sum(axis=1, keepdims=True)
    distance = np.linalg.norm(p_mean[:, None, :] - np.eye(c)[None], axis=2)  # [B, C(label), C]
    h = embedding.double().numpy()
    return (p_mean * distance).sum(axis=1) * np.sqrt((h * h).sum(axis=1) + 1)


# ------------------------------------------------------------------------------------ inputs


def _member_logits(rng: np.random.Generator, kind: str, c: int, k: int) -> np.ndarray:
    """``[c, k]`` float64 logits of one row, ``-inf`` for classes of probability 0."""
    if kind == "extreme":
        return rng.uniform(-1e4, 1e4, (c, k))
    if kind == "confident":  # each member sure of one of a few classes, by 5 to 200 logits
        rows = rng.standard_normal((c, k)) * rng.choice([0.1, 1.0, 5.0])
        favourite = rng.choice(rng.choice(c, size=min(c, 3), replace=False), size=k)
        rows[favourite, np.arange(k)] = rows.max(axis=0) + rng.uniform(5, 200, size=k)
        return rows + rng.uniform(-100, 100)
    centre = rng.standard_normal((c, 1)) * rng.choice([0.1, 1.0, 5.0])
    if kind == "identical":
        return np.repeat(centre, k, axis=1)
    rows = centre + rng.standard_normal((c, k)) * rng.choice([0.0, 0.01, 0.5, 3.0])
    if kind == "zero_class":  # some classes p = 0 in every member, some in a few
        keep = rng.integers(c)
        gone = rng.random(c) < 0.4
        gone[keep] = False
        rows[gone] = -np.inf
        some = rng.random((c, k)) < 0.2
        some[keep] = False
        rows[some] = -np.inf
    return rows


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Over axis 1 of ``[B, C, K]``; ``-inf`` logits give exact ``-inf`` log-probabilities."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def make_log_probs(rng: np.random.Generator, b: int, c: int, k: int, kinds=None) -> np.ndarray:
    kinds = kinds or KINDS
    logits = [_member_logits(rng, kinds[rng.integers(len(kinds))], c, k) for _ in range(b)]
    return log_softmax(np.stack(logits))


SAMPLE_COUNTS = st.integers(1, 12)


@st.composite
def sample_batches(draw, dtype=torch.float32, k=SAMPLE_COUNTS, kinds=None):
    b, c, k = draw(st.integers(1, 32)), draw(st.integers(2, 20)), draw(k)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(make_log_probs(rng, b, c, k, kinds)).to(dtype), rng


def embedding_for(rng: np.random.Generator, b: int) -> torch.Tensor:
    d = int(rng.integers(1, 17))
    return torch.from_numpy(rng.standard_normal((b, d)) * rng.choice([0.1, 1.0, 10.0])).float()


@st.composite
def scoring_inputs(draw, dtype=torch.float32):
    """``(log_probs, embedding, target, rng)``: a sample batch, an embedding and a target class."""
    log_probs, rng = draw(sample_batches(dtype))
    return log_probs, embedding_for(rng, len(log_probs)), int(rng.integers(log_probs.shape[1])), rng


def all_scores(log_probs: torch.Tensor, embedding: torch.Tensor, target: int) -> dict:
    out = {name: fn(log_probs) for name, fn in UNIT_SCORES.items()}
    out["target_probability"] = target_probability(log_probs, target)
    out["expected_gradient_length"] = expected_gradient_length(log_probs, embedding)
    out["mean_log_probs"] = mean_log_probs(log_probs)
    return out


# ----------------------------------------------------------------------------------- helpers


def assert_close_to(actual: torch.Tensor, expected: np.ndarray, atol: float, rtol=0.0) -> None:
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=rtol, atol=atol)


def assert_in_unit_interval(scores: torch.Tensor) -> None:
    values = scores.double().numpy()
    assert not np.isnan(values).any()
    assert (values >= 0).all() and (values <= 1).all(), values[(values < 0) | (values > 1)]


# ----------------------------------------------------------------- scores against reference


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=str)
@SETTINGS
@given(data=st.data())
def test_scores_match_reference(dtype, data):
    log_probs, embedding, target, _ = data.draw(scoring_inputs(dtype))
    out = all_scores(log_probs, embedding, target)
    ref = reference(log_probs)
    for name in UNIT_SCORES:
        assert out[name].shape == (len(log_probs),)
        assert out[name].dtype == OUTPUT_DTYPE[dtype], name
        assert_close_to(out[name], ref[name], atol=ATOL[dtype])
        assert_in_unit_interval(out[name])
    assert_close_to(out["target_probability"], ref["p_mean"][:, target], atol=ATOL[dtype])
    assert_in_unit_interval(out["target_probability"])
    assert_close_to(out["expected_gradient_length"],
                    reference_gradient_length(ref["p_mean"], embedding), atol=ATOL[dtype],
                    rtol=ATOL[dtype])
    egl, c = out["expected_gradient_length"].double(), log_probs.shape[1]
    bound = math.sqrt(1 - 1 / c) * torch.sqrt((embedding.double() ** 2).sum(dim=1) + 1)
    assert (egl >= 0).all() and (egl <= bound * (1 + 1e-6)).all()
    mean_lp = out["mean_log_probs"]
    assert mean_lp.shape == log_probs.shape[:2] and mean_lp.dtype == OUTPUT_DTYPE[dtype]
    assert torch.equal(torch.isinf(mean_lp), torch.isinf(log_probs).all(dim=-1))
    finite = torch.isfinite(mean_lp).numpy()
    assert_close_to(mean_lp[finite], reference_mean_log_probs(log_probs)[finite],
                    atol=ATOL[dtype], rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@SETTINGS
@given(data=st.data())
def test_confident_rows_keep_gradient_length_precision(dtype, data):
    # ||p̄ - e_c||^2 = ||p̄||^2 - 2 p̄_c + 1 cancels for the top class once p̄_c is near 1; the
    # score is then about 2 (1 - p̄_top) sqrt(||h||^2 + 1): it must stay relatively accurate.
    log_probs, rng = data.draw(sample_batches(dtype, kinds=["confident", "identical"]))
    embedding = embedding_for(rng, len(log_probs))
    scores = expected_gradient_length(log_probs, embedding)
    ref = reference_gradient_length(reference(log_probs)["p_mean"], embedding)
    meaningful = ref > 1e-10  # below, float64 rounds p̄_top to 1 and the reference cancels too
    assert_close_to(scores[meaningful], ref[meaningful], atol=0.0, rtol=1e-4)


def test_hand_worked_two_members_that_disagree_completely():
    # Two one-hot members on different classes: every score at its maximum of 1.
    log_probs = torch.log(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    for name in ["predictive_entropy", "bald", "vote_entropy", "max_disagreement"]:
        assert UNIT_SCORES[name](log_probs).item() == pytest.approx(1.0, abs=1e-7), name
    assert variation_ratio(log_probs).item() == 0.5
    assert target_probability(log_probs, 1).item() == 0.5
    egl = expected_gradient_length(log_probs, torch.zeros(1, 3))
    assert egl.item() == pytest.approx(math.sqrt(0.5), abs=1e-7)


def test_a_tie_within_a_sample_votes_for_the_lowest_class():
    # Member 0 ties classes 0 and 1, member 1 ties 1 and 2: votes 0 and 1, never 1 and 1.
    probs = torch.tensor([[[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]])
    log_probs = torch.log(probs)
    assert variation_ratio(log_probs).item() == 0.5
    assert vote_entropy(log_probs).item() == pytest.approx(1.0, abs=1e-7)


# ------------------------------------------------------------- expected gradient length, proof


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("c, d", [(2, 1), (3, 5), (10, 16)])
def test_expected_gradient_length_is_the_expected_norm_of_a_linear_heads_gradient(dtype, c, d):
    torch.manual_seed(c * 100 + d)
    head = torch.nn.Linear(d, c).double()
    scale = torch.tensor([0.1, 1.0, 5.0, 30.0], dtype=torch.float64).repeat(5)[:, None]
    h = torch.randn(20, d, dtype=torch.float64) * scale
    with torch.no_grad():
        log_p = torch.log_softmax(head(h), dim=-1)
    brute = []
    for row in range(len(h)):
        expected = 0.0
        for label in range(c):
            loss = torch.nn.functional.cross_entropy(head(h[row:row + 1]), torch.tensor([label]))
            grads = torch.autograd.grad(loss, [head.weight, head.bias])
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            expected += log_p[row, label].exp().item() * norm.item()
        brute.append(expected)
    # One sample (K = 1): p̄ is the head's own softmax, so the formula must be the gradient's norm.
    scores = expected_gradient_length(log_p[..., None].to(dtype), h.to(dtype))
    assert scores.dtype == dtype
    assert_close_to(scores, np.array(brute), atol=ATOL[dtype], rtol=ATOL[dtype])


# ---------------------------------------------------------------------------- properties


@SETTINGS
@given(data=st.data())
def test_bald_is_between_zero_and_predictive_entropy(data):
    log_probs, _ = data.draw(sample_batches())
    information, total = bald(log_probs), predictive_entropy(log_probs)
    assert (information >= 0).all()
    assert (information <= total + 1e-6).all()
    assert (variation_ratio(log_probs) < 1).all()


@SETTINGS
@given(data=st.data())
def test_one_sample_has_no_disagreement(data):
    log_probs, _ = data.draw(sample_batches(k=st.just(1)))
    for name in DISAGREEMENT:
        assert (UNIT_SCORES[name](log_probs) == 0).all(), name
    # With one sample, p̄ is that sample: the predictive entropy is the plain entropy.
    assert torch.equal(mean_log_probs(log_probs), log_probs[..., 0])
    torch.testing.assert_close(predictive_entropy(log_probs), entropy(log_probs[..., 0]))


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=str)
@SETTINGS
@given(data=st.data())
def test_identical_members_have_no_disagreement(dtype, data):
    one, rng = data.draw(sample_batches(dtype, k=st.just(1)))
    log_probs = one.expand(-1, -1, int(rng.integers(1, 12))).contiguous()
    for name in DISAGREEMENT:
        assert (UNIT_SCORES[name](log_probs) == 0).all(), name


@SETTINGS
@given(data=st.data())
def test_permuting_samples_changes_nothing(data):
    log_probs, embedding, target, rng = data.draw(scoring_inputs())
    order = torch.from_numpy(rng.permutation(log_probs.shape[-1]))
    whole = all_scores(log_probs, embedding, target)
    permuted = all_scores(log_probs[..., order], embedding, target)
    for name, values in whole.items():
        torch.testing.assert_close(permuted[name], values, rtol=1e-6, atol=1e-6, msg=name)


@SETTINGS
@given(data=st.data())
def test_scoring_in_chunks_equals_scoring_at_once(data):
    log_probs, embedding, target, rng = data.draw(scoring_inputs())
    cut = int(rng.integers(1, len(log_probs) + 1))
    whole = all_scores(log_probs, embedding, target)
    parts = [all_scores(log_probs[rows], embedding[rows], target)
             for rows in (slice(0, cut), slice(cut, None))]
    for name, values in whole.items():
        assert torch.equal(torch.cat([p[name] for p in parts]), values), name


# ------------------------------------------------------------------------------ regression


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@SETTINGS
@given(b=st.integers(1, 32), o=st.integers(0, 6), k=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1))
def test_variance_and_mean_prediction_match_numpy(dtype, b, o, k, seed):
    rng = np.random.default_rng(seed)
    shape = (b, k) if o == 0 else (b, o, k)  # o = 0 stands for the [B, K] form
    outputs = torch.from_numpy(rng.normal(rng.uniform(-100, 100), rng.choice([1e-3, 1, 50]),
                                          shape)).to(dtype)
    x = outputs.double().numpy()
    spread, centre = variance(outputs), mean_prediction(outputs)
    assert spread.shape == (b,) and centre.shape == shape[:-1]
    assert spread.dtype == centre.dtype == OUTPUT_DTYPE[dtype]
    ref = x.var(axis=-1, ddof=0)
    ref = ref if o == 0 else ref.mean(axis=-1)
    scale = 1e-5 if dtype != torch.float64 else 1e-12
    np.testing.assert_allclose(spread.double().numpy(), ref, rtol=scale, atol=scale)
    np.testing.assert_allclose(centre.double().numpy(), x.mean(axis=-1), rtol=scale, atol=scale)
    assert (spread >= 0).all()
    if k == 1:
        assert (spread == 0).all()
    order = torch.from_numpy(rng.permutation(k))
    torch.testing.assert_close(variance(outputs[..., order]), spread, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("shape", [(4, 3), (4, 1, 5), (4, 3, 0), (2, 3, 4, 5)])
def test_wrong_sample_shapes_are_refused(shape):
    log_probs = torch.zeros(shape)
    for fn in [*UNIT_SCORES.values(), mean_log_probs]:
        with pytest.raises(ValueError, match=r"\[B, C, K\]"):
            fn(log_probs)


def test_bad_target_and_embedding_are_refused():
    log_probs = torch.log_softmax(torch.zeros(4, 3, 2), dim=1)
    for target in (-1, 3):
        with pytest.raises(ValueError, match="target"):
            target_probability(log_probs, target)
    for embedding in (torch.zeros(3, 5), torch.zeros(4)):
        with pytest.raises(ValueError, match="embedding"):
            expected_gradient_length(log_probs, embedding)
    with pytest.raises(ValueError, match="outputs"):
        variance(torch.zeros(4))
