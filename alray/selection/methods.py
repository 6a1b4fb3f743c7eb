"""Diversity methods: pure torch functions that choose ``k`` of ``N`` candidates.

Shape contract: the candidates come in rank order (score descending, id ascending), index
``0..N-1``; ``embedding`` is ``[N, D]``, ``probs`` ``[N, C]``, ``samples`` ``[N, C, K]`` (samples
last), ``weights`` ``[N]``. Each function returns a ``[n]`` int64 tensor of candidate indices,
``n <= k`` (fewer only when the candidates, or the class caps, run out), on the CPU. Ties go to the
lower index (the better-ranked candidate). Computation stays in the tensors' dtype and device: a
GPU where one is given, float64 where a caller needs results to match a float64 reference.

Seeded choices draw their uniforms from :func:`alray.selection.keys.uniform_stream` (a hash of the
seed and the step), not from a device generator, so a pick is the same on every machine, and a
plain reference implementation can draw the same numbers.

Memory: distances are taken in blocks of rows, so a method holds ``O(N * (D + k))`` values at
most, never ``N x N``; BADGE never builds its ``C * D``-wide gradient embeddings.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from alray.selection.keys import uniform_stream

__all__ = ["ClassCaps", "badge", "batchbald", "cluster_margin", "kcenter_greedy", "kmeans",
           "weighted_kmeans"]

#: Rows per block when a method takes distances to many centers at once.
_BLOCK_ROWS = 16_384
#: Salts that keep each method's uniform stream apart.
_SALT_KMEANS, _SALT_BADGE, _SALT_CLUSTER = 11, 12, 13


class ClassCaps:
    """At most ``cap`` picks per predicted class (``selection.balance: predicted``).

    Args:
        classes: ``[N]`` int64, each candidate's predicted class.
        cap: picks allowed per class.
    """

    def __init__(self, classes: torch.Tensor, cap: int):
        self.classes = classes.to(torch.int64)
        self.cap = cap
        self.counts: dict[int, int] = {}

    def allows(self, index: int) -> bool:
        return self.counts.get(int(self.classes[index]), 0) < self.cap

    def take(self, index: int) -> int | None:
        """Count a pick; returns its class when that class is now full."""
        c = int(self.classes[index])
        self.counts[c] = self.counts.get(c, 0) + 1
        return c if self.counts[c] >= self.cap else None


class _Picks:
    """The picks so far, and ``open``: the ``[N]`` mask of candidates still eligible (not picked,
    class not full), kept up to date pick by pick."""

    def __init__(self, n: int, caps: ClassCaps | None, device):
        self.caps = caps
        self.order: list[int] = []
        self.open = torch.ones(n, dtype=torch.bool, device=device)

    def __len__(self) -> int:
        return len(self.order)

    def allows(self, index: int) -> bool:
        return bool(self.open[index])

    def take(self, index: int) -> None:
        self.order.append(index)
        self.open[index] = False
        full = self.caps.take(index) if self.caps is not None else None
        if full is not None:
            self.open &= self.caps.classes.to(self.open.device) != full

    def indices(self) -> torch.Tensor:
        return torch.tensor(self.order, dtype=torch.int64)


class _Rows:
    """Squared distances from every row of ``x`` to one row or to a few centers, with the rows'
    squared norms computed once."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.sq = (x * x).sum(1)

    def to_row(self, index: int) -> torch.Tensor:
        """``[N]`` squared distances to row ``index``."""
        return (self.sq + self.sq[index] - 2 * (self.x @ self.x[index])).clamp_min_(0)

    def to_points(self, points: torch.Tensor) -> torch.Tensor:
        """``[N]`` squared distance to the nearest of ``points`` ``[L, D]``, in blocks."""
        _, nearest = _nearest(self.x, points)
        return nearest


def _nearest(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``x``: the nearest center's index and squared distance, in blocks.

    A row's own norm does not change which center is nearest, so each block is one
    ``|c|^2 - 2 x c^T`` (a single ``addmm``) and one ``min``; the norm is added to the minimum.
    """
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    dists = torch.empty(len(x), dtype=x.dtype, device=x.device)
    center_sq = (centers * centers).sum(1)
    for start in range(0, len(x), _BLOCK_ROWS):
        block = x[start:start + _BLOCK_ROWS]
        partial = torch.addmm(center_sq, block, centers.T, alpha=-2.0)
        nearest, labels[start:start + len(block)] = partial.min(1)
        dists[start:start + len(block)] = (nearest + (block * block).sum(1)).clamp_min_(0)
    return labels, dists


def _draw(weights: torch.Tensor, u: float) -> int:
    """The index where the cumulative ``weights`` first exceed ``u * total`` (a draw with
    probability proportional to ``weights``, by one given uniform); float64 sums."""
    cumulative = torch.cumsum(weights.double(), 0)
    at = int(torch.searchsorted(cumulative, cumulative[-1] * u, right=True))
    return min(at, len(weights) - 1)


# ----------------------------------------------------------------------------------- k-center


def kcenter_greedy(embedding: torch.Tensor, k: int, *, start: torch.Tensor | None = None,
                   caps: ClassCaps | None = None) -> torch.Tensor:
    """Greedy k-center (Sener and Savarese 2018, "Active learning for convolutional neural
    networks: a core-set approach"): each pick is the candidate farthest from everything chosen
    so far (and from the ``start`` rows, the labeled set).

    Args:
        embedding: ``[N, D]``.
        start: ``[L, D]`` embeddings of already-labeled rows, or None: then the first pick is
            candidate 0 (the highest score).

    Returns:
        ``[n]`` indices in pick order.
    """
    rows = _Rows(embedding)
    picks = _Picks(len(embedding), caps, embedding.device)
    if start is not None and len(start):
        nearest = rows.to_points(start.to(embedding))
    else:
        if not bool(picks.open.any()):
            return picks.indices()
        first = int(torch.nonzero(picks.open)[0])
        picks.take(first)
        nearest = rows.to_row(first)
    while len(picks) < k and bool(picks.open.any()):
        index = int(torch.where(picks.open, nearest, torch.full_like(nearest, -1.0)).argmax())
        picks.take(index)
        nearest = torch.minimum(nearest, rows.to_row(index))
    return picks.indices()


# ----------------------------------------------------------------------------------- k-means


def _seed_centers(x: torch.Tensor, weights: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Weighted k-means++ seeding (Arthur and Vassilvitskii 2007): the first center is the
    heaviest row (ties: the lowest index), then each next is drawn with probability
    ``weight * D^2`` from :func:`uniform_stream`; ``[k']`` row indices, ``k' <= k``."""
    u = uniform_stream(seed, k, _SALT_KMEANS)
    rows = _Rows(x)
    first = int(weights.argmax())
    centers = [first]
    nearest = rows.to_row(first)
    for step in range(1, k):
        mass = weights * nearest
        if not bool((mass > 0).any()):
            break  # every row sits on a center: fewer distinct centers than k
        index = _draw(mass, float(u[step]))
        centers.append(index)
        nearest = torch.minimum(nearest, rows.to_row(index))
    return torch.tensor(centers, dtype=torch.int64, device=x.device)


def kmeans(x: torch.Tensor, weights: torch.Tensor, k: int, *, seed: int,
           iterations: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lloyd k-means from :func:`_seed_centers`.

    Each iteration assigns every row to its nearest center (ties: the lower center index) and
    moves each center to the weighted mean of its rows; a center left without rows stays. Stops
    when no assignment changes, or after ``iterations``.

    Returns:
        ``(labels [N] int64, centers [k', D])``.
    """
    centers = x[_seed_centers(x, weights, k, seed)].clone()
    labels = None
    for _ in range(iterations):
        new_labels, _ = _nearest(x, centers)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        mass = torch.zeros(len(centers), dtype=x.dtype, device=x.device).index_add_(
            0, labels, weights)
        sums = torch.zeros_like(centers).index_add_(0, labels, x * weights[:, None])
        moved = mass > 0
        centers[moved] = sums[moved] / mass[moved, None]
    if labels is None:
        labels, _ = _nearest(x, centers)
    return labels, centers


def weighted_kmeans(embedding: torch.Tensor, weights: torch.Tensor, k: int, *, seed: int,
                    caps: ClassCaps | None = None, iterations: int = 25) -> torch.Tensor:
    """Weighted k-means selection (Zhdanov 2019, "Diverse mini-batch active learning"): ``k``
    clusters over the candidates' embeddings, each row weighted by its score; from each cluster
    the member nearest its centroid.

    Clusters are visited by total weight, heaviest first; with ``caps`` a cluster gives its
    nearest member whose class has room. Clusters that end empty (or without an open member)
    leave their place to the best-ranked candidates not yet picked.

    Args:
        weights: ``[N]`` >= 0 (the scores; a floor keeps every row in play).

    Returns:
        ``[n]`` indices in rank order (ascending index).
    """
    n = len(embedding)
    picks = _Picks(n, caps, embedding.device)
    if n == 0:
        return picks.indices()
    weights = weights.to(embedding).clamp_min(1e-6)
    labels, centers = kmeans(embedding, weights, min(k, n), seed=seed, iterations=iterations)
    dist = torch.empty(n, dtype=embedding.dtype, device=embedding.device)
    for start in range(0, n, _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        dist[block] = ((embedding[block] - centers[labels[block]]) ** 2).sum(1)
    mass = torch.zeros(len(centers), dtype=embedding.dtype,
                       device=embedding.device).index_add_(0, labels, weights)
    order = sorted(range(len(centers)), key=lambda c: (-float(mass[c]), c))
    for cluster in order:
        if len(picks) >= k:
            break
        members = (labels == cluster) & picks.open
        if bool(members.any()):
            picks.take(int(torch.where(members, dist, torch.full_like(dist, math.inf)).argmin()))
    for index in range(n):  # fill from the top of the ranking
        if len(picks) >= k:
            break
        if picks.allows(index):
            picks.take(index)
    return torch.sort(picks.indices()).values


# ----------------------------------------------------------------------------------- BADGE


class _GradientRows:
    """Squared distances between BADGE's gradient embeddings ``g_i = a_i (outer) h_i`` without
    building them: ``|g_i - g_j|^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 <a_i, a_j> <h_i, h_j>``,
    two matrix-vector products per row ``j``. A result within float rounding of zero (1e-6 of
    the norms) is zero, so a copy of a pick is never drawn for rounding noise."""

    def __init__(self, a: torch.Tensor, h: torch.Tensor):
        self.a, self.h = a, h
        self.sq = (a * a).sum(1) * (h * h).sum(1)  # |g_i|^2

    def to_row(self, index: int) -> torch.Tensor:
        scale = self.sq + self.sq[index]
        d = scale - 2 * (self.a @ self.a[index]) * (self.h @ self.h[index])
        return torch.where(d > 1e-6 * scale, d, torch.zeros_like(d))


def badge(probs: torch.Tensor, embedding: torch.Tensor, k: int, *, seed: int,
          caps: ClassCaps | None = None) -> torch.Tensor:
    """BADGE (Ash et al. 2020, "Deep batch active learning by diverse, uncertain gradient lower
    bounds"): k-means++ seeding over the gradient embeddings ``g_i = (p_i - e_{argmax p_i})
    (outer) h_i``, the last layer's gradient under the predicted label.

    The ``[C * D]`` vectors are never built: with ``a = p - onehot(argmax p)``,
    ``<g_i, g_j> = <a_i, a_j> <h_i, h_j>``, so each pick costs two matrix-vector products,
    ``O(N (C + D))`` (:class:`_GradientRows`).

    The first pick is the largest gradient norm (ties: the lower index), as the authors' code
    does; each next is drawn with probability ``D^2`` (squared distance to the nearest pick) by
    the ``step``-th uniform of :func:`uniform_stream` (salt 12); when every open candidate
    has ``D^2 = 0`` (copies of picks) the best-ranked open one is taken.

    Args:
        probs: ``[N, C]`` class probabilities (the mean over samples).
        embedding: ``[N, D]`` the last layer's input.

    Returns:
        ``[n]`` indices in pick order.
    """
    n = len(probs)
    a = probs.to(embedding).clone()
    a[torch.arange(n), probs.argmax(1)] -= 1.0
    h = embedding
    rows = _GradientRows(a, h)
    norms = rows.sq
    u = uniform_stream(seed, k, _SALT_BADGE)
    picks = _Picks(n, caps, h.device)
    nearest = torch.full_like(norms, math.inf)
    while len(picks) < k and bool(picks.open.any()):
        if not len(picks):
            index = int(torch.where(picks.open, norms, torch.full_like(norms, -1.0)).argmax())
        else:
            mass = torch.where(picks.open, nearest, torch.zeros_like(nearest))
            index = (_draw(mass, float(u[len(picks)])) if bool((mass > 0).any())
                     else int(torch.nonzero(picks.open)[0]))
        picks.take(index)
        nearest = torch.minimum(nearest, rows.to_row(index))
    return picks.indices()


# ----------------------------------------------------------------------------------- cluster-margin


def cluster_margin(embedding: torch.Tensor, k: int, *, clusters: int, seed: int,
                   caps: ClassCaps | None = None) -> torch.Tensor:
    """Cluster-Margin (Citovsky et al. 2021, "Batch active learning at scale"): cluster the
    candidates, then take one candidate per cluster in turns, from the smallest cluster to the
    largest, until ``k`` are taken.

    The paper clusters the whole pool once with average-linkage HAC and takes the lowest-margin
    candidates; here the candidates are the global top ``prefilter * k`` by the job's score (use
    ``scoring.strategy: margin`` for the paper's), clustered with unweighted k-means
    (:func:`kmeans`, ``clusters`` clusters), so memory stays ``O(N D)`` and the clusters follow
    the candidates of this round. Within a cluster members come in a seeded random order (salt
    13 of :func:`uniform_stream`); clusters of equal size go by index.

    Returns:
        ``[n]`` indices in pick order.
    """
    n = len(embedding)
    picks = _Picks(n, caps, embedding.device)
    if n == 0:
        return picks.indices()
    weights = torch.ones(n, dtype=embedding.dtype, device=embedding.device)
    labels, _ = kmeans(embedding, weights, min(clusters, n), seed=seed)
    labels = labels.cpu().numpy()
    u = uniform_stream(seed, n, _SALT_CLUSTER)
    members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    members = [m[np.argsort(u[m], kind="stable")].tolist() for m in members if len(m)]
    members.sort(key=len)  # stable: equal sizes keep cluster order
    while len(picks) < k and any(members):
        for queue in members:
            while queue and not picks.allows(queue[0]):
                queue.pop(0)
            if queue and len(picks) < k:
                picks.take(queue.pop(0))
    return picks.indices()


# ----------------------------------------------------------------------------------- BatchBALD


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-300))).sum(dim)


def _configurations(samples: torch.Tensor, picks: list[int], m: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``[K, M]``: each sample's probability of each joint labeling of ``picks``: all of them
    while ``C^n <= m``, else ``m`` labelings drawn from the mixture over samples."""
    n_samples, classes = samples.shape[2], samples.shape[1]
    if classes ** len(picks) <= m:
        joint = torch.ones(n_samples, 1, dtype=samples.dtype, device=samples.device)
        for index in picks:  # [K, M] x [K, C] -> [K, M * C]
            joint = (joint[:, :, None] * samples[index].T[:, None, :]).reshape(n_samples, -1)
        return joint
    which = torch.randint(n_samples, (m,), generator=generator).to(samples.device)
    joint = torch.ones(n_samples, m, dtype=samples.dtype, device=samples.device)
    for index in picks:
        p = samples[index].T  # [K, C]
        labels = torch.multinomial(p[which].cpu().float(), 1, generator=generator)[:, 0]
        joint = joint * p[:, labels.to(samples.device)]
    return joint


def batchbald(samples: torch.Tensor, k: int, *, seed: int, caps: ClassCaps | None = None,
              max_configurations: int = 1024, block: int = 256) -> torch.Tensor:
    """BatchBALD (Kirsch et al. 2019, "BatchBALD: efficient and diverse batch acquisition for
    deep Bayesian active learning"): greedily add the candidate that maximizes
    ``I(y_1..y_n, y_i; w) = H(y_1..y_n, y_i) - sum_j E_w H(y_j | w)``.

    The joint entropy is exact while the picks' joint labelings number ``C^n <=
    max_configurations``; past that it is estimated from ``max_configurations`` labelings drawn
    from the model's joint (importance-weighted, as the paper does), with a ``torch.Generator``
    seeded by ``seed`` on the CPU. The first pick is the BALD maximum. Runs in float64.

    Args:
        samples: ``[N, C, K]`` class probabilities per sample (MC pass or member).

    Returns:
        ``[n]`` indices in pick order.
    """
    samples = samples.double()
    n = len(samples)
    conditional = _entropy(samples, 1).mean(1)  # [N] E_w H(y_i | w)
    generator = torch.Generator().manual_seed(seed)
    picks = _Picks(n, caps, samples.device)
    while len(picks) < k and bool(picks.open.any()):
        joint = _configurations(samples, picks.order, max_configurations, generator)  # [K, M]
        exact = samples.shape[1] ** len(picks) <= max_configurations
        weights = joint.mean(0)  # [M] p(configuration)
        gain = torch.empty(n, dtype=samples.dtype, device=samples.device)
        for start in range(0, n, block):
            s = samples[start:start + block]  # [b, C, K]
            p = torch.einsum("km,bck->bmc", joint, s) / joint.shape[0]  # [b, M, C]
            terms = -(p * torch.log(p.clamp_min(1e-300)))
            h = terms.sum((1, 2)) if exact else (terms.sum(2) / weights[None, :]).mean(1)
            gain[start:start + len(s)] = h - conditional[start:start + len(s)]
        picks.take(int(torch.where(picks.open, gain, torch.full_like(gain, -math.inf)).argmax()))
    return picks.indices()
