"""Selection methods against plain single-process references, and the whole-pool selection path.

Each diversity method of :mod:`alray.selection.methods` is compared, id for id, with a reference
written here in numpy (float64, simple loops) from the algorithm as the module's docstrings state
it: the same tie rules (the lower candidate index wins), and the same seeded uniforms
(:func:`alray.selection.keys.uniform_stream` with salt 11 for k-means++ seeding, 12 for BADGE, 13
for the Cluster-Margin member order), turned into a pick by the index where the float64 cumsum of
the weights first exceeds ``u * total``. The torch functions get float64 tensors.

Exact comparison needs distances that both sides compute without rounding differences that could
flip a choice. Most data here are scikit-learn's digits divided by 16: every value is a multiple of
1/16, so squared distances between rows (directly, or as ``|x|^2 - 2 x.c + |c|^2``) are exact in
float64 and in float32, and genuine ties stay ties on both sides. Where centroids (k-means) or
products of probabilities (BADGE, BatchBALD) enter, a difference needs a near-tie within ~1e-13
relative, which real data do not produce (and a test that hit one would fail loudly, not pass).

Then the whole-pool path: ``take_candidates`` per shard, ``CandidateReducer``, ``select``: random
and power draws follow their distributions (chi-square tests, false-alarm rate 1e-3 each, all
seeds fixed so a run is reproducible), the result does not depend on how the pool is cut, class
caps hold and ledger ids never come back. No Ray is started.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.datasets import load_digits, load_wine
from sklearn.linear_model import LogisticRegression

from alray.config import JobSpec
from alray.ledger import Exclusion, append_ledger
from alray.pipeline.candidates import take_candidates
from alray.pipeline.outcome import label_candidates
from alray.pipeline.vectors import CandidateVectors
from alray.reduce.parts import CandidateReducer
from alray.selection import keys
from alray.selection.keys import power_keys, row_uniforms, uniform_stream
from alray.selection.methods import (
    ClassCaps,
    badge,
    batchbald,
    cluster_margin,
    kcenter_greedy,
    kmeans,
    weighted_kmeans,
)
from alray.selection.stage import select
from alray.sources.plan import ShardSpec

SETTINGS = settings(derandomize=True, max_examples=40, deadline=None, database=None)
#: The false-alarm rate of each statistical test: the chance that a correct implementation with
#: ideal uniforms fails it. Seeds are fixed, so a given build passes or fails every time.
ALPHA = 1e-3
SALT_KMEANS, SALT_BADGE, SALT_CLUSTER = 11, 12, 13


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The candidates here are small: one intra-op thread is faster than contending for the
    machine's cores with itself (restored after this module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------- data


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features / 16 [1797, 64], labels, a logistic model's probabilities [1797, 10]).

    The model is trained on every third row, with strong regularization so its probabilities
    are far from 0 and 1 (no saturated one-hot rows, whose gradient embeddings would vanish).
    """
    data = load_digits()
    x = data.data / 16.0
    model = LogisticRegression(C=0.05, max_iter=1000).fit(x[::3], data.target[::3])
    return x, data.target, model.predict_proba(x)


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(-1)


def ranked(x: np.ndarray, probs: np.ndarray, rows: np.ndarray):
    """The candidates ``rows`` in rank order (entropy descending, row ascending), as the methods
    expect them: (embedding, probs, scores)."""
    scores = entropy(probs[rows])
    order = np.lexsort((rows, -scores))
    rows = rows[order]
    return x[rows], probs[rows], scores[order]


@functools.cache
def digit_candidates(n: int = 300):
    """``n`` held-out digits (not in the model's training rows), in rank order."""
    x, _, probs = digits()
    rows = np.arange(1797)[np.arange(1797) % 3 != 0][:n]
    return ranked(x, probs, rows)


def t64(a) -> torch.Tensor:
    """A float64 copy (the cached arrays stay untouched whatever a method does)."""
    return torch.tensor(np.asarray(a, np.float64))


def caps_of(classes, cap):
    return ClassCaps(torch.as_tensor(np.asarray(classes, np.int64)), cap)


# ----------------------------------------------------------------------------------- references


class RefCaps:
    """At most ``cap`` picks per class; no classes: no limit."""

    def __init__(self, classes=None, cap=None):
        self.classes, self.cap, self.counts = classes, cap, {}

    def allows(self, i: int) -> bool:
        return self.classes is None or self.counts.get(int(self.classes[i]), 0) < self.cap

    def take(self, i: int) -> None:
        if self.classes is not None:
            c = int(self.classes[i])
            self.counts[c] = self.counts.get(c, 0) + 1


def sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``[N]`` squared distances of every row of ``x`` to the point ``c``."""
    return ((x - c[None, :]) ** 2).sum(1)


def ref_draw(weights: np.ndarray, u: float) -> int:
    cumulative = np.cumsum(np.asarray(weights, np.float64))
    return min(int(np.searchsorted(cumulative, u * cumulative[-1], side="right")),
               len(weights) - 1)


def ref_kcenter(x, k, start=None, classes=None, cap=None) -> list[int]:
    """Farthest-first: each pick is the open candidate farthest from every pick and start row."""
    n, caps, picks = len(x), RefCaps(classes, cap), []
    if start is not None and len(start):
        nearest = np.array([min(((x[i] - s) ** 2).sum() for s in start) for i in range(n)])
    else:
        first = next((i for i in range(n) if caps.allows(i)), None)
        if first is None:
            return []
        picks.append(first)
        caps.take(first)
        nearest = sqdist(x, x[first])
    while len(picks) < min(k, n):
        best = None
        for i in range(n):
            if i not in picks and caps.allows(i) and (best is None or nearest[i] > nearest[best]):
                best = i
        if best is None:
            break
        picks.append(best)
        caps.take(best)
        nearest = np.minimum(nearest, sqdist(x, x[best]))
    return picks


def ref_seeding(x, w, k, seed) -> list[int]:
    """Weighted k-means++: the heaviest row, then draws with probability w * D^2 by the step-th
    uniform of salt 11; stops early when every row sits on a center."""
    u = uniform_stream(seed, k, SALT_KMEANS)
    centers = [int(np.argmax(w))]
    nearest = sqdist(x, x[centers[0]])
    for step in range(1, k):
        mass = w * nearest
        if not (mass > 0).any():
            break
        centers.append(ref_draw(mass, u[step]))
        nearest = np.minimum(nearest, sqdist(x, x[centers[-1]]))
    return centers


def ref_lloyd(x, w, k, seed, iterations=25):
    """Weighted Lloyd from :func:`ref_seeding`; a center without rows stays; stops when no
    assignment changes."""
    centers = x[ref_seeding(x, w, k, seed)].copy()

    def assign():
        return np.stack([sqdist(x, c) for c in centers], 1).argmin(1)  # ties: lower center

    labels = None
    for _ in range(iterations):
        new = assign()
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for c in range(len(centers)):
            members = labels == c
            if members.any():
                centers[c] = (w[members, None] * x[members]).sum(0) / w[members].sum()
    return (assign() if labels is None else labels), centers


def ref_weighted_kmeans(x, w, k, seed, classes=None, cap=None) -> list[int]:
    """Zhdanov: k clusters weighted by score; heaviest cluster first, each gives its open member
    nearest the centroid; the rest is filled from the top of the ranking; ascending index."""
    n, caps = len(x), RefCaps(classes, cap)
    labels, centers = ref_lloyd(x, w, min(k, n), seed)
    dist = np.array([((x[i] - centers[labels[i]]) ** 2).sum() for i in range(n)])
    mass = [w[labels == c].sum() for c in range(len(centers))]
    picks: list[int] = []
    for c in sorted(range(len(centers)), key=lambda c: (-mass[c], c)):
        if len(picks) >= k:
            break
        open_members = [i for i in range(n) if labels[i] == c and caps.allows(i)]
        if open_members:
            best = min(open_members, key=lambda i: (dist[i], i))
            picks.append(best)
            caps.take(best)
    for i in range(n):
        if len(picks) >= k:
            break
        if i not in picks and caps.allows(i):
            picks.append(i)
            caps.take(i)
    return sorted(picks)


def ref_badge(probs, h, k, seed, classes=None, cap=None) -> list[int]:
    """BADGE with the gradient embeddings built: g_i = (p_i - onehot(argmax p_i)) kron h_i,
    k-means++ seeding over them (largest norm first, then D^2 draws by salt 12)."""
    n, caps = len(probs), RefCaps(classes, cap)
    a = probs.copy()
    a[np.arange(n), probs.argmax(1)] -= 1.0
    g = np.stack([np.kron(a[i], h[i]) for i in range(n)])  # [N, C * D]
    norms = (g * g).sum(1)
    u = uniform_stream(seed, k, SALT_BADGE)
    picks: list[int] = []
    nearest = np.full(n, np.inf)
    while len(picks) < min(k, n):
        eligible = np.array([i not in picks and caps.allows(i) for i in range(n)])
        if not eligible.any():
            break
        if not picks:
            index = max(np.flatnonzero(eligible), key=lambda i: (norms[i], -i))
        else:
            mass = np.where(eligible, nearest, 0.0)
            index = (ref_draw(mass, u[len(picks)]) if (mass > 0).any()
                     else int(np.flatnonzero(eligible)[0]))
        picks.append(int(index))
        caps.take(index)
        nearest = np.minimum(nearest, sqdist(g, g[index]))
    return picks


def ref_cluster_margin(x, k, clusters, seed, classes=None, cap=None) -> list[int]:
    """Unweighted k-means, members in the order of their salt-13 uniforms, clusters from the
    smallest (equal sizes: by cluster index), one open member per cluster per turn."""
    n, caps = len(x), RefCaps(classes, cap)
    labels, _ = ref_lloyd(x, np.ones(n), min(clusters, n), seed)
    u = uniform_stream(seed, n, SALT_CLUSTER)
    queues = [sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: (u[i], i))
              for c in range(labels.max() + 1)]
    queues = sorted([q for q in queues if q], key=len)
    picks: list[int] = []
    while len(picks) < k and any(queues):
        for queue in queues:
            while queue and not caps.allows(queue[0]):
                queue.pop(0)
            if queue and len(picks) < k:
                picks.append(queue.pop(0))
                caps.take(picks[-1])
    return picks


def ref_batchbald(samples, k, classes=None, cap=None) -> list[int]:
    """Greedy BatchBALD by brute force: every joint labeling of the batch enumerated. Gains
    within 1e-12 of the best count as tied (a symmetric case ties exactly, and two summation
    orders must not break that tie two ways): the lower index wins."""
    n, c, _ = samples.shape
    caps = RefCaps(classes, cap)
    conditional = np.array([-(samples[i] * np.log(samples[i])).sum(0).mean() for i in range(n)])

    def joint_entropy(batch):
        h = 0.0
        for labels in itertools.product(range(c), repeat=len(batch)):
            p = np.prod([samples[j, y] for j, y in zip(batch, labels)], axis=0).mean()
            h -= p * math.log(p) if p > 0 else 0.0
        return h

    picks: list[int] = []
    while len(picks) < min(k, n):
        gains = {i: joint_entropy(picks + [i]) - conditional[picks + [i]].sum()
                 for i in range(n) if i not in picks and caps.allows(i)}
        if not gains:
            break
        top = max(gains.values())
        best = min(i for i, gain in gains.items() if gain >= top - 1e-12)
        picks.append(best)
        caps.take(best)
    return picks


# ----------------------------------------------------------------------------------- k-center


@pytest.mark.parametrize("k", [1, 7, 40])
def test_kcenter_matches_farthest_first(k):
    x, _, _ = digit_candidates()
    got = kcenter_greedy(t64(x), k).tolist()
    assert got == ref_kcenter(x, k)
    assert got[0] == 0 and len(set(got)) == k


def test_kcenter_from_labeled_rows():
    x, _, _ = digit_candidates()
    labeled = digits()[0][::3][:50]  # training rows of the model: the labeled set
    got = kcenter_greedy(t64(x), 30, start=t64(labeled)).tolist()
    assert got == ref_kcenter(x, 30, start=labeled)
    assert got != kcenter_greedy(t64(x), 30).tolist()[:30]  # the start rows change the picks


def test_kcenter_with_class_caps():
    x, probs, _ = digit_candidates()
    classes = probs.argmax(1)
    got = kcenter_greedy(t64(x), 30, caps=caps_of(classes, 3)).tolist()
    assert got == ref_kcenter(x, 30, classes=classes, cap=3)
    assert np.bincount(classes[got]).max() <= 3
    labeled = digits()[0][::3][:20]
    got = kcenter_greedy(t64(x), 25, start=t64(labeled), caps=caps_of(classes, 3)).tolist()
    assert got == ref_kcenter(x, 25, start=labeled, classes=classes, cap=3)


@SETTINGS
@given(data=st.data())
def test_kcenter_on_grids_with_ties(data):
    """Small integer grids: many exact ties, which must go to the lower index."""
    n = data.draw(st.integers(1, 25), label="n")
    coords = st.lists(st.integers(0, 3), min_size=2, max_size=2)
    x = np.array(data.draw(st.lists(coords, min_size=n, max_size=n), label="x"), np.float64)
    k = data.draw(st.integers(1, n + 2), label="k")
    start = None
    if data.draw(st.booleans(), label="with start"):
        start = np.array(data.draw(st.lists(coords, min_size=1, max_size=4)), np.float64)
    classes, cap = None, None
    if data.draw(st.booleans(), label="with caps"):
        classes = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
        cap = data.draw(st.integers(1, 4), label="cap")
    got = kcenter_greedy(t64(x), k, start=None if start is None else t64(start),
                         caps=None if classes is None else caps_of(classes, cap)).tolist()
    assert got == ref_kcenter(x, k, start, classes, cap)


# ----------------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_weighted_lloyd(seed):
    x, _, scores = digit_candidates()
    labels, centers = kmeans(t64(x), t64(scores), 12, seed=seed)
    ref_labels, ref_centers = ref_lloyd(x, scores, 12, seed)
    assert labels.tolist() == ref_labels.tolist()
    np.testing.assert_allclose(centers.numpy(), ref_centers, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed, k", [(0, 10), (1, 10), (5, 25), (3, 299), (4, 300), (4, 310)])
def test_weighted_kmeans_matches_reference(seed, k):
    x, _, scores = digit_candidates()
    got = weighted_kmeans(t64(x), t64(scores), k, seed=seed).tolist()
    assert got == ref_weighted_kmeans(x, scores, k, seed)
    assert got == sorted(set(got)) and len(got) == min(k, len(x))


def test_weighted_kmeans_with_class_caps():
    x, probs, scores = digit_candidates()
    classes = probs.argmax(1)
    got = weighted_kmeans(t64(x), t64(scores), 30, seed=3, caps=caps_of(classes, 3)).tolist()
    assert got == ref_weighted_kmeans(x, scores, 30, 3, classes, 3)
    assert len(got) == 30 and np.bincount(classes[got]).max() <= 3


def test_kmeans_seed_is_reproducible_and_matters():
    x, _, scores = digit_candidates()
    picks = {seed: weighted_kmeans(t64(x), t64(scores), 15, seed=seed).tolist()
             for seed in (0, 1)}
    assert weighted_kmeans(t64(x), t64(scores), 15, seed=0).tolist() == picks[0]
    assert picks[0] != picks[1]
    assert picks[1] == ref_weighted_kmeans(x, scores, 15, 1)


def test_kmeans_with_fewer_distinct_points_than_k():
    """Seeding stops when every row sits on a center: 4 distinct rows give 4 clusters, and the
    rest of k comes from the top of the ranking."""
    x, _, scores = digit_candidates()
    rows = np.array([0, 1, 2, 3] * 5)
    got = weighted_kmeans(t64(x[rows]), t64(scores[rows]), 7, seed=0).tolist()
    assert got == ref_weighted_kmeans(x[rows], scores[rows], 7, 0)
    assert len(got) == 7 and len({int(r) for r in rows[got]}) == 4


# ----------------------------------------------------------------------------------- BADGE


@pytest.mark.parametrize("seed, k", [(0, 20), (1, 20), (2, 45)])
def test_badge_matches_materialized_gradient_embeddings(seed, k):
    x, probs, _ = digit_candidates()
    got = badge(t64(probs), t64(x), k, seed=seed).tolist()
    assert got == ref_badge(probs, x, k, seed)
    assert len(set(got)) == k


def test_badge_seed_matters_and_caps_hold():
    x, probs, _ = digit_candidates()
    classes = probs.argmax(1)
    assert badge(t64(probs), t64(x), 20, seed=0).tolist() != \
        badge(t64(probs), t64(x), 20, seed=1).tolist()
    got = badge(t64(probs), t64(x), 24, seed=4, caps=caps_of(classes, 3)).tolist()
    assert got == ref_badge(probs, x, 24, 4, classes, 3)
    assert np.bincount(classes[got]).max() <= 3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_badge_takes_the_best_ranked_when_only_copies_remain(dtype):
    """Three distinct rows, each repeated: after three picks every open row is a copy of a pick,
    D^2 = 0 exactly, so the rest come in rank order (also in float32, the stage's dtype)."""
    x, probs, _ = digit_candidates()
    rows = np.array([0, 1, 2, 0, 1, 2, 0])
    got = badge(t64(probs[rows]).to(dtype), t64(x[rows]).to(dtype), 6, seed=0).tolist()
    assert got == ref_badge(probs[rows], x[rows], 6, 0)
    assert sorted(rows[got[:3]].tolist()) == [0, 1, 2] and got[3:] == \
        [i for i in range(7) if i not in got[:3]][:3]


@pytest.mark.parametrize("seed", range(10))
def test_badge_never_draws_a_copy_of_a_pick_while_another_row_remains(seed):
    """A digit, 3000 exact copies of it, and the same digit with one pixel 1/16 darker (so a
    smaller gradient norm: the first pick is the original). Only the near twin is at D^2 > 0
    from the first pick, so it is the second pick for every seed, in float32 too: the copies'
    rounding noise must not be drawn (3000 copies at ~1e-7 of the norm each would outweigh a
    twin at D^2 ~ 1e-3 of it)."""
    x, probs, _ = digit_candidates()
    pixel = int(np.argmax(x[0]))
    twin = x[0].copy()
    twin[pixel] -= 1 / 16
    h = np.vstack([x[0], twin, np.repeat(x[:1], 3000, axis=0)])
    p = np.repeat(probs[:1], len(h), axis=0)
    got = badge(t64(p).float(), t64(h).float(), 2, seed=seed).tolist()
    assert got == [0, 1]


# ----------------------------------------------------------------------------------- cluster-margin


@pytest.mark.parametrize("seed, k, clusters", [(0, 20, 20), (1, 20, 7), (2, 33, 5),
                                               (3, 10, 40)])
def test_cluster_margin_matches_reference(seed, k, clusters):
    x, _, _ = digit_candidates()
    got = cluster_margin(t64(x), k, clusters=clusters, seed=seed).tolist()
    assert got == ref_cluster_margin(x, k, clusters, seed)
    assert len(set(got)) == k


def test_cluster_margin_with_class_caps():
    x, probs, _ = digit_candidates()
    classes = probs.argmax(1)
    got = cluster_margin(t64(x), 30, clusters=8, seed=5, caps=caps_of(classes, 3)).tolist()
    assert got == ref_cluster_margin(x, 30, 8, 5, classes, 3)
    assert len(got) == 30 and np.bincount(classes[got]).max() <= 3


# ----------------------------------------------------------------------------------- BatchBALD


@functools.cache
def wine_samples(members: int = 6, n: int = 14) -> np.ndarray:
    """``[n, 3, members]``: a bootstrap committee of logistic models on standardized wine, on
    rows none of them trained on."""
    data = load_wine()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, held = order[:60], order[60:60 + n]
    out = []
    for _ in range(members):
        boot = rng.choice(train, size=len(train))
        model = LogisticRegression(C=0.05, max_iter=1000).fit(x[boot], data.target[boot])
        out.append(model.predict_proba(x[held]))
    return np.stack(out, axis=2)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_batchbald_matches_brute_force(k):
    samples = wine_samples()
    got = batchbald(t64(samples), k, seed=0, max_configurations=1024).tolist()
    assert got == ref_batchbald(samples, k)


def test_batchbald_with_class_caps():
    samples = wine_samples()
    classes = samples.mean(2).argmax(1)
    got = batchbald(t64(samples), 4, seed=0, caps=caps_of(classes, 2)).tolist()
    assert got == ref_batchbald(samples, 4, classes, 2)
    assert np.bincount(classes[got]).max() <= 2


def committee_case() -> np.ndarray:
    """``[15, 3, 8]``: 5 rows on which 8 members disagree, each split differently (bits of the
    member's number), each member giving its class ``c_r`` (0.9 down to 0.74 by row, so no two
    rows tie) and the rest evenly to the others; 10 rows on which every member gives the same,
    nearly uniform, probabilities (high entropy, no information about the members)."""
    members = np.arange(8)
    splits = [members & 1, (members >> 1) & 1, (members >> 2) & 1,
              ((members >> 1) ^ members) & 1, (members % 3)]
    samples = np.empty((15, 3, 8))
    for r, split in enumerate(splits):
        confidence = 0.9 - 0.04 * r
        samples[r] = (1 - confidence) / 2
        samples[r, split, members] = confidence
    flat = digits()[2][1:301:30]  # 10 real probability rows, flattened toward uniform
    flat = 0.2 * flat[:, :3] / flat[:, :3].sum(1, keepdims=True) + 0.8 / 3
    samples[5:] = flat[:, :, None]
    return samples


def test_batchbald_sampled_path_is_reproducible_and_finds_the_informative_rows():
    """With ``max_configurations=9`` (C = 3) the first three picks are exact and later ones use
    sampled labelings. What is asserted, for seeds 0..4: the same seed gives the same picks; the
    first three picks equal the exact ones; the five picks are the five informative rows, as
    the exact ones are.

    Not flaky: every seed is fixed. And not tuned: for a row on which all members agree,
    ``p(m, y) = p(m) q(y)``, so its importance-weighted gain is the estimate of ``H(y_S)``
    whatever labelings were drawn; an informative row's gain exceeds it by the mean over the
    drawn labelings ``m`` of ``I(y_i; w | y_S = m)`` (its members' aleatoric entropies are all
    equal here), which is > 0 for every ``m`` since no 5 noisy labels pin down one member."""
    samples = committee_case()
    exact = batchbald(t64(samples), 5, seed=0, max_configurations=1024).tolist()
    assert exact == ref_batchbald(samples, 5)
    assert sorted(exact) == [0, 1, 2, 3, 4]
    for seed in range(5):
        picks = batchbald(t64(samples), 5, seed=seed, max_configurations=9).tolist()
        assert picks == batchbald(t64(samples), 5, seed=seed, max_configurations=9).tolist()
        assert picks[:3] == exact[:3]
        assert sorted(picks) == sorted(exact)
    top_entropy = np.argsort(-entropy(samples.mean(2)), kind="stable")[:5]
    assert len(set(top_entropy.tolist()) & set(exact)) <= 1  # plain entropy takes the others


# ----------------------------------------------------------------------------------- three copies


def tripled_digits(seed: int = 0):
    """60 distinct held-out digits (6 per class), each three times with 1e-4 relative noise on
    the features and the probabilities; in rank order. Returns (x, probs, scores, originals)."""
    x, labels, probs = digits()
    held = np.arange(1797)[np.arange(1797) % 3 != 0]
    rows = np.concatenate([held[labels[held] == c][:6] for c in range(10)])
    rng = np.random.default_rng(seed)
    originals = np.repeat(np.arange(60), 3)
    xs = x[rows][originals]
    xs = xs + 1e-4 * xs.std() * rng.standard_normal(xs.shape)
    ps = probs[rows][originals] * (1 + 1e-4 * rng.standard_normal((180, 10)))
    ps /= ps.sum(1, keepdims=True)
    scores = entropy(ps)
    order = np.argsort(-scores, kind="stable")
    return xs[order], ps[order], scores[order], originals[order]


def test_diversity_methods_take_one_copy_of_nearly_every_row():
    """k = 30 among 60 rows x 3 near-copies. A copy sits ~1e-4 from its twins while distinct
    digits are >= 1/16 apart: k-center never picks a copy before every original is covered
    (its farthest open row is always a new original), BADGE draws a copy with probability
    ~1e-8 per pick (D^2 ratio), and k-means / Cluster-Margin take one row per cluster with 30
    clusters, which a triple straddles only if it sits within 1e-4 of a border, and an empty
    cluster (Lloyd may empty one) hands its place to the ranking. Requiring >= 27 of 30 distinct
    originals (90%) leaves room for three such events; top-k, by contrast, takes the three
    copies of each of the 10 best originals, whose scores differ by far more than the noise."""
    x, probs, scores, originals = tripled_digits()
    k = 30
    picks = {
        "kcenter": kcenter_greedy(t64(x), k),
        "kmeans": weighted_kmeans(t64(x), t64(scores), k, seed=0),
        "badge": badge(t64(probs), t64(x), k, seed=0),
        "cluster_margin": cluster_margin(t64(x), k, clusters=k, seed=0),
    }
    for name, chosen in picks.items():
        assert len(chosen) == k, name
        distinct = len(set(originals[chosen.numpy()].tolist()))
        assert distinct >= 27, f"{name}: {distinct} distinct originals of {k}"
    assert len(set(originals[picks["kcenter"].numpy()].tolist())) == k  # the argument above
    topk = np.arange(k)  # the candidates are in rank order
    assert len(set(originals[topk].tolist())) <= 12


# ----------------------------------------------------------------------------------- keys


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


text_ids = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


def test_id_hashes_are_fnv1a_and_int_bits():
    assert fnv1a64(b"") == 0xCBF29CE484222325 and fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    ids = ["", "a", "foobar", "é", "日本語", "\x00", "row-" * 40]
    assert keys.id_hashes(pa.array(ids)).tolist() == [fnv1a64(s.encode()) for s in ids]
    ints = [0, 1, -1, 2**63 - 1, -(2**63)]
    assert keys.id_hashes(pa.array(ints, pa.int64())).tolist() == [i % 2**64 for i in ints]
    assert keys.id_hashes(pa.array([5, -7], pa.int32())).tolist() == [5, 2**64 - 7]


@SETTINGS
@given(ids=st.lists(text_ids, min_size=1, max_size=40, unique=True), seed=st.integers(0, 2**40),
       data=st.data())
def test_string_uniforms_depend_only_on_seed_and_id(ids, seed, data):
    alone = np.array([row_uniforms(pa.array([i]), seed)[0] for i in ids])
    assert ((alone > 0) & (alone < 1)).all()
    array = pa.array(ids)
    assert row_uniforms(array, seed).tolist() == alone.tolist()
    assert row_uniforms(array.cast(pa.large_string()), seed).tolist() == alone.tolist()
    order = data.draw(st.permutations(range(len(ids))), label="order")
    assert row_uniforms(pa.array([ids[i] for i in order]), seed).tolist() == alone[order].tolist()
    a = data.draw(st.integers(0, len(ids)), label="a")
    b = data.draw(st.integers(a, len(ids)), label="b")
    assert row_uniforms(array.slice(a, b - a), seed).tolist() == alone[a:b].tolist()
    chunked = pa.chunked_array([array.slice(0, a), array.slice(a)], pa.string())
    assert row_uniforms(chunked, seed).tolist() == alone.tolist()


@SETTINGS
@given(ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40, unique=True),
       seed=st.integers(0, 2**40), cut=st.integers(0, 40))
def test_int_uniforms_depend_only_on_seed_and_id(ids, seed, cut):
    alone = np.array([row_uniforms(pa.array([i], pa.int64()), seed)[0] for i in ids])
    assert ((alone > 0) & (alone < 1)).all()
    array = pa.array(ids, pa.int64())
    assert row_uniforms(array[::-1], seed).tolist() == alone[::-1].tolist()
    assert row_uniforms(array.slice(cut), seed).tolist() == alone[cut:].tolist()
    chunked = pa.chunked_array([array.slice(0, cut), array.slice(cut)])
    assert row_uniforms(chunked, seed).tolist() == alone.tolist()


def test_seed_and_salt_change_the_uniforms():
    ids = pa.array(np.arange(10_000))
    base = row_uniforms(ids, 3)
    for other in (row_uniforms(ids, 4), row_uniforms(ids, 3, salt=1)):
        assert (other == base).mean() < 1e-3
    assert uniform_stream(3, 100, 11).tolist() != uniform_stream(3, 100, 12).tolist()
    assert uniform_stream(3, 50, 11).tolist() == uniform_stream(3, 100, 11)[:50].tolist()


@pytest.mark.parametrize("ids", [pa.array(np.arange(100_000)),
                                 pa.array([f"row-{i}" for i in range(100_000)]),
                                 None])
def test_uniforms_are_uniform(ids):
    """Kolmogorov-Smirnov and a 100-bin chi-square on 100k sequential ids (the hardest case for
    a weak hash), seed 7; each test's false-alarm rate is ALPHA."""
    u = uniform_stream(7, 100_000, 13) if ids is None else row_uniforms(ids, 7)
    assert ((u > 0) & (u < 1)).all()
    assert stats.kstest(u, "uniform").pvalue > ALPHA
    counts = np.bincount((u * 100).astype(int), minlength=100)
    assert stats.chisquare(counts).pvalue > ALPHA
    assert stats.kstest(u[1:] - u[:-1] + (u[1:] < u[:-1]), "uniform").pvalue > ALPHA  # lag 1


def test_power_keys():
    u = np.array([0.5, 0.25, 0.9, 0.1, 0.3, 0.7, 0.2])
    scores = np.array([2.0, 0.5, 0.0, -1.0, np.nan, np.inf, 1e-3], np.float32)
    got = power_keys(u, scores, 2.0)
    assert np.isinf(got[2:6]).all() and (got[2:6] > 0).all()
    expected = -np.log(u[[0, 1, 6]]) / scores[[0, 1, 6]].astype(np.float64) ** 2
    np.testing.assert_allclose(got[[0, 1, 6]], expected, rtol=1e-15)


def test_huge_seeds_are_usable():
    """``selection.seed`` takes any integer >= 0: one past 56 bits (a nanosecond timestamp) used
    to overflow ``(seed << 8)`` in uint64."""
    for seed in (2**56, 1_732_000_000_000_000_000, 2**64 - 1, 2**64, 2**130):
        u = row_uniforms(pa.array([1, 2, 3]), seed)
        assert ((u > 0) & (u < 1)).all()
        assert uniform_stream(seed, 3, 11).tolist() != uniform_stream(seed - 1, 3, 11).tolist()
        assert u.tolist() != row_uniforms(pa.array([1, 2, 3]), seed + 2**64).tolist()


# ----------------------------------------------------------------------------------- the pipeline


def make_spec(method: str, k: int, *, vectors: bool = False, members: int = 0, **selection):
    """A valid spec for ``method``: a precomputed model, or a linear one (with ``members``) when
    the method needs an embedding or samples; no file is read."""
    pool = {"uri": ["/nonexistent/pool"]}
    model = {"kind": "precomputed", "column": "probs", "output": "probs"}
    if vectors or members:
        pool["feature_column"] = "embedding"
        model = {"kind": "linear", "path": "/nonexistent/head.safetensors"}
    if members:
        model = {"kind": "linear",
                 "members": [f"/nonexistent/m{i}.safetensors" for i in range(members)]}
    return JobSpec.from_dict({"name": "selection-test", "pool": pool, "model": model,
                              "selection": {"method": method, "k": k, **selection},
                              "output": {"uri": "/nonexistent/out"}})


def with_seed(spec: JobSpec, seed: int) -> JobSpec:
    return spec.replace(selection=dataclasses.replace(spec.selection, seed=seed))


def shard_candidates(table: pa.Table, vectors: dict, spec: JobSpec, name: str,
                     exclusion: Exclusion | None = None) -> pa.Table:
    """What a shard's scan hands the reducer: vectors kept for open rows only, batch by batch
    (so :class:`CandidateVectors` prunes), the labeled rows' embeddings for ``kcenter``."""
    kept = CandidateVectors(spec.selection.per_shard)
    ids = table.column("id").combine_chunks()
    rows = table.column("row").to_numpy()
    scores = table.column("score").to_numpy()
    open_rows = ~exclusion.mask(ids) if exclusion is not None else np.ones(len(rows), bool)
    for start in range(0, len(rows), 64):
        part = np.arange(start, min(start + 64, len(rows)))[open_rows[start:start + 64]]
        kept.add(rows[part], ids.take(pa.array(part, pa.int64())), scores[part],
                 {key: values[rows[part]] for key, values in vectors.items()})
    labeled = None
    if exclusion is not None and spec.selection.method == "kcenter":
        mine = exclusion.mask(ids, "labeled")
        embedding = vectors["embedding"][rows[mine]].astype(np.float32)
        labeled = pa.table({"id": ids.filter(pa.array(mine)), "embedding":
                            pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), 64)})
    candidates = take_candidates(table, spec, exclusion, kept if vectors else None, labeled)
    shard = ShardSpec(name, f"file:///pool/{name}.parquet", None, 0, table.num_rows, None, None)
    return label_candidates(candidates, shard)


def run_selection(table, vectors, spec, cuts, exclusion=None, order=None):
    """Cut ``table`` at ``cuts``, take each shard's candidates, reduce them (in ``order``) and
    select. Returns (selection, reduced)."""
    bounds = [0, *cuts, table.num_rows]
    shards = [shard_candidates(table.slice(a, b - a), vectors, spec, f"s{i:02d}", exclusion)
              for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    reducer = CandidateReducer(spec)
    for i in order if order is not None else range(len(shards)):
        reducer.update(shards[i])
    reduced = reducer.result()
    return select(reduced, spec, device="cpu"), reduced


def small_pool(scores) -> pa.Table:
    n = len(scores)
    return pa.table({"id": pa.array([f"img-{i:03d}" for i in range(n)]),
                     "score": pa.array(np.asarray(scores, np.float32)),
                     "row": pa.array(np.arange(n, dtype=np.int64)),
                     "predicted": pa.array(np.arange(n, dtype=np.int64) % 3)})


def test_random_draws_are_uniform_over_the_pool():
    """500 seeds, k = 5 of 20 rows in 2 shards, every row the same score. Inclusion counts:
    their covariance is ``S p (1 - p) N / (N - 1) (I - 11'/N)`` for draws without replacement
    (p = k / N), so ``sum (O - E)^2 / E * (N - 1) / (N (1 - p))`` is ~ chi2(N - 1). First draws:
    a multinomial, chi2(N - 1). False-alarm rate ALPHA each."""
    n, k, seeds = 20, 5, 500
    table, spec = small_pool(np.full(n, 0.5)), make_spec("random", k)
    included, first = np.zeros(n), np.zeros(n)
    for seed in range(seeds):
        chosen, _ = run_selection(table, {}, with_seed(spec, seed), [8])
        rows = chosen.column("row").to_numpy()
        assert len(set(rows.tolist())) == k and set(chosen.column("reason").to_pylist()) == \
            {"explore"}
        included[rows] += 1
        first[rows[0]] += 1
    p = k / n
    expected = seeds * p
    statistic = ((included - expected) ** 2 / expected).sum() * (n - 1) / (n * (1 - p))
    assert stats.chi2.sf(statistic, n - 1) > ALPHA
    assert stats.chisquare(first).pvalue > ALPHA


def test_power_first_draw_follows_score_to_the_power():
    """k = 1, 600 seeds, 6 positive scores and three rows with score 0 or below: the first
    draw's frequencies against P ~ score^3 (chi2(5), false-alarm rate ALPHA; the rarest row
    expects 9 draws); the rows with score <= 0 are never drawn. The same counts against
    P ~ score^1.5 are rejected (the test's power there is > 0.99999: noncentrality 80), so the
    test sees the exponent, not only the order of the scores."""
    scores = np.concatenate([np.linspace(1.0, 3.0, 6), [0.0, -0.5, 0.0]])
    table = small_pool(scores)
    spec = make_spec("power", 1, power=3.0)
    counts = np.zeros(len(scores))
    for seed in range(600):
        chosen, _ = run_selection(table, {}, with_seed(spec, seed), [4])
        counts[chosen.column("row").to_numpy()] += 1
        assert chosen.column("reason").to_pylist() == ["score"]
    assert counts[6:].sum() == 0
    for power, accepted in ((3.0, True), (1.5, False)):
        expected = scores[:6] ** power / (scores[:6] ** power).sum() * 600
        assert (stats.chisquare(counts[:6], expected).pvalue > ALPHA) == accepted


@pytest.mark.parametrize("seed", range(5))
def test_power_draws_rows_without_score_last(seed):
    scores = np.concatenate([np.linspace(0.25, 3.0, 12), [0.0, -0.5, 0.0, 0.0]])
    table = small_pool(scores)
    chosen, _ = run_selection(table, {}, make_spec("power", 15, seed=seed), [5, 10])
    rows = chosen.column("row").to_numpy()
    assert sorted(rows[:12].tolist()) == list(range(12))
    assert set(rows[12:].tolist()) <= {12, 13, 14, 15} and len(set(rows.tolist())) == 15


@functools.cache
def digits_pool(id_kind: str = "int"):
    """Every digit as a pool row, in a shuffled order: ids (spread int64, or strings), scores
    (entropy rounded to 2 decimals: many ties), predicted class; and their vectors
    (embedding, probs, and 3 tempered copies of the probabilities as samples, K last)."""
    x, _, probs = digits()
    n = len(x)
    rng = np.random.default_rng(11)
    if id_kind == "int":
        ids = pa.array(rng.choice(2**40, size=n, replace=False) - 2**39, pa.int64())
    else:
        ids = pa.array([f"digit-{i}" for i in rng.permutation(n)])
    scores = np.round(entropy(probs), 2).astype(np.float32)
    logp = np.log(probs)
    tempered = [np.exp(logp * t) / np.exp(logp * t).sum(1, keepdims=True) for t in (0.5, 1, 2)]
    samples = np.stack(tempered, axis=2).reshape(n, -1)
    table = pa.table({"id": ids, "score": scores, "row": pa.array(np.arange(n, dtype=np.int64)),
                      "predicted": pa.array(probs.argmax(1).astype(np.int64))})
    table = table.take(pa.array(rng.permutation(n)))
    vectors = {"embedding": x.astype(np.float32), "probs": probs.astype(np.float32),
               "samples": samples.astype(np.float32)}
    return table, vectors


PIPELINE_CASES = {
    "topk": {"method": "topk"},
    "topk explore": {"method": "topk", "explore": 0.25},
    "random": {"method": "random"},
    "random explore": {"method": "random", "explore": 0.5},
    "power": {"method": "power", "power": 2.0},
    "power explore": {"method": "power", "explore": 0.25},
    "kmeans": {"method": "kmeans", "vectors": True},
    "kmeans explore": {"method": "kmeans", "vectors": True, "explore": 0.25},
    "kcenter": {"method": "kcenter", "vectors": True},
    "badge": {"method": "badge", "vectors": True},
    "cluster_margin": {"method": "cluster_margin", "vectors": True, "clusters": 3},
    "batchbald": {"method": "batchbald", "members": 3},
}


def case_spec(case: str, k: int = 8, **extra) -> JobSpec:
    options = {"prefilter": 5, "seed": 3, **PIPELINE_CASES[case], **extra}
    return make_spec(options.pop("method"), k, **options)


@pytest.mark.parametrize("id_kind", ["int", "str"])
@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_selection_does_not_depend_on_the_sharding(case, id_kind):
    """One shard against 16 cut at random points and reduced in a random order: the same
    candidates, hence the same selection; the top candidates also equal a full sort."""
    table, vectors = digits_pool(id_kind)
    spec = case_spec(case)
    rng = np.random.default_rng(len(case))
    cuts = np.sort(rng.choice(np.arange(1, table.num_rows), 15, replace=False)).tolist()
    whole, reduced_whole = run_selection(table, vectors, spec, [])
    cut, reduced_cut = run_selection(table, vectors, spec, cuts, order=rng.permutation(16))
    columns = ["id", "score", "row", "predicted", "reason"]
    assert whole.num_rows == 8
    assert whole.select(columns).equals(cut.select(columns))
    full = table.sort_by([("score", "descending"), ("id", "ascending")])
    top = full.slice(0, spec.selection.prefiltered).column("id")
    assert reduced_whole.top.column("id").equals(top)
    assert reduced_cut.top.column("id").equals(top)
    for part in ("draws", "explore"):
        a, b = getattr(reduced_whole, part), getattr(reduced_cut, part)
        assert (a is None) == (b is None) and (a is None or a.column("id").equals(b.column("id")))


def test_stage_kcenter_matches_reference_from_labeled_rows(tmp_path):
    """Through the whole path, with a ledger naming labeled rows: the selection is farthest-first
    over the global top candidates from the labeled rows' embeddings (digits / 16 are exact in
    float32, so the stage's float32 distances equal the reference's)."""
    table, vectors = digits_pool()
    ids = table.column("id").to_numpy()
    append_ledger(str(tmp_path / "ledger"), ids[:40], "labeled", labels=["x"] * 40)
    exclusion = Exclusion.of([str(tmp_path / "ledger")])
    spec = case_spec("kcenter")
    chosen, reduced = run_selection(table, vectors, spec, [500, 1200], exclusion)
    assert reduced.labeled.num_rows == 40
    start = vectors["embedding"][table.column("row").to_numpy()[:40]].astype(np.float64)
    top_rows = reduced.top.column("row").to_numpy()
    expected = ref_kcenter(vectors["embedding"][top_rows].astype(np.float64), 8, start=start)
    assert chosen.column("row").to_numpy().tolist() == top_rows[expected].tolist()
    assert expected != ref_kcenter(vectors["embedding"][top_rows].astype(np.float64), 8)


@pytest.mark.parametrize("case", [c for c in PIPELINE_CASES if "explore" not in c])
def test_balance_predicted_caps_every_class(case):
    """k = 10 over 10 classes: no predicted class more than ceil(10 / 10) = 1 time, and as many
    rows as the caps let the candidates give (one per class present among them, at most k).
    Where the same method without caps repeats a class, the capped selection differs from it."""
    table, vectors = digits_pool()
    capped, reduced = run_selection(table, vectors, case_spec(case, 10, balance="predicted"),
                                    [400, 900, 1500])
    counts = np.bincount(capped.column("predicted").to_numpy(), minlength=10)
    pool = reduced.draws if PIPELINE_CASES[case]["method"] in ("random", "power") else reduced.top
    present = len(np.unique(pool.column("predicted").to_numpy()))
    assert counts.max() <= 1 and capped.num_rows == min(10, present) >= 6
    free, _ = run_selection(table, vectors, case_spec(case, 10), [400, 900, 1500])
    assert free.num_rows == 10
    if np.bincount(free.column("predicted").to_numpy()).max() > 1:
        assert capped.column("id").to_pylist() != free.column("id").to_pylist()


def test_the_caps_bind_on_this_pool():
    """Without caps the top 10 by entropy repeat a class (the confusable digits), so the cap
    tests above are not vacuous."""
    table, vectors = digits_pool()
    free, _ = run_selection(table, vectors, case_spec("topk", 10), [400, 900, 1500])
    assert np.bincount(free.column("predicted").to_numpy()).max() > 1


LEDGER_CASES = [c for c in PIPELINE_CASES if "explore" not in c or c == "topk explore"]


def test_ledger_ids_are_never_selected(tmp_path):
    """Every id any method selects is written to a ledger (sent or labeled); run again with it:
    no method selects one of them (nor keeps one among its candidates), and each still selects
    k rows."""
    table, vectors = digits_pool()
    cuts = [300, 1000]
    before = {case: run_selection(table, vectors, case_spec(case), cuts)[0]
              for case in LEDGER_CASES}
    chosen = sorted({i for t in before.values() for i in t.column("id").to_pylist()})
    ledger = str(tmp_path / "ledger")
    append_ledger(ledger, chosen[::2], "sent")
    append_ledger(ledger, chosen[1::2], "labeled", labels=["1"] * len(chosen[1::2]))
    exclusion = Exclusion.of([ledger])
    assert sorted(exclusion.ids.to_pylist()) == chosen
    for case in LEDGER_CASES:
        after, reduced = run_selection(table, vectors, case_spec(case), cuts, exclusion)
        assert after.num_rows == 8, case
        assert not set(after.column("id").to_pylist()) & set(chosen), case
        for part in (reduced.top, reduced.draws, reduced.explore):
            assert part is None or not set(part.column("id").to_pylist()) & set(chosen), case


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_a_nanosecond_timestamp_seed_selects(case):
    """``selection.seed: 1732000000000000000`` (a time.time_ns()) is a valid spec, and every
    method selects k rows with it (the seed overflowed the uniforms' uint64 mixing before)."""
    table, vectors = digits_pool()
    spec = case_spec(case, seed=1_732_000_000_000_000_000)
    chosen, _ = run_selection(table, vectors, spec, [700])
    assert chosen.num_rows == 8
