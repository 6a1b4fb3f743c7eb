"""The data, the strategies and the runs behind ``bench_selection.py`` (its tables live there)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from benchmarks.selection_loop import (MLP, Data, Logistic, alray_picker, baal_picker,
                                       engine_select, job, modal_picker, run_curve)

__all__ = ["COPIES", "DIVERSITY", "budgets", "copies_data", "digits_data", "engine_check",
           "iris_data", "labels_to", "agreement", "rare_run", "run_strategies", "speed_runs", "strategies"]

#: The prefilter score of the diversity methods and of power: one score for all of them.
PREFILTER_SCORE = "margin"
DIVERSITY = ("kmeans", "kcenter", "badge", "cluster_margin")
COPIES = ("random", "entropy top-k", *DIVERSITY)
COPY_NOISE = 0.01


# ----------------------------------------------------------------------------------- data


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def digits_data(seed: int) -> Data:
    """75/25 stratified split of digits (by ``seed``); ids are the rows' indices in digits."""
    from sklearn.model_selection import train_test_split

    x, y = _digits()
    pool, test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y,
                                  random_state=seed)
    return Data(x[pool], y[pool], x[test], y[test], pool.astype(np.int64), 10)


def copies_data(seed: int) -> Data:
    """:func:`digits_data` with every pool row three times plus N(0, 0.01) noise; copy ``c`` of
    row id ``i`` has id ``3 i + c`` (its own label reveal); ``origin`` = ``i``."""
    plain = digits_data(seed)
    rng = np.random.default_rng(10_000 + seed)
    x = np.repeat(plain.pool_x, 3, axis=0)
    x = (x + COPY_NOISE * rng.standard_normal(x.shape)).astype(np.float32)
    ids = (np.repeat(plain.ids, 3) * 3 + np.tile(np.arange(3), len(plain.ids))).astype(np.int64)
    return Data(x, np.repeat(plain.pool_y, 3), plain.test_x, plain.test_y, ids, 10, ids // 3)


def iris_data(seed: int) -> Data:
    """Iris: a stratified third (50 rows) for the test, standardized by the pool's statistics."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    x, y = iris.data.astype(np.float32), iris.target.astype(np.int64)
    pool, test = train_test_split(np.arange(len(y)), test_size=50, stratify=y, random_state=seed)
    mean, sd = x[pool].mean(0), x[pool].std(0)
    x = ((x - mean) / sd).astype(np.float32)
    return Data(x[pool], y[pool], x[test], y[test], pool.astype(np.int64), 3)


# ----------------------------------------------------------------------------------- strategies


def strategies(include_mlp: bool, k_one: bool = False) -> dict[str, tuple[str, str, Callable]]:
    """``name -> (family, learner, picker factory)``."""
    s = PREFILTER_SCORE
    rows = {"random": ("baseline", "logistic", lambda: alray_picker("random", s))}
    for score in ("least_confidence", "margin", "ratio", "entropy"):
        rows[f"{score} top-{'1' if k_one else 'k'}"] = (
            "alray topk", "logistic", lambda score=score: alray_picker("topk", score))
    if k_one:
        rows["modAL uncertainty_sampling"] = ("peer", "logistic",
                                              lambda: modal_picker("uncertainty_sampling"))
        return rows
    for method in DIVERSITY:
        rows[method] = ("alray divers.", "logistic", lambda method=method: alray_picker(method, s))
    rows["power"] = ("alray draws", "logistic", lambda: alray_picker("power", s))
    rows["modAL uncertainty_sampling"] = ("peer", "logistic",
                                          lambda: modal_picker("uncertainty_sampling"))
    rows["modAL ranked batch"] = ("peer", "logistic",
                                  lambda: modal_picker("uncertainty_batch_sampling"))
    if include_mlp:
        rows["random (MLP)"] = ("baseline", "mlp", lambda: alray_picker("random", s))
        rows["bald top-k (MLP, T=20)"] = ("alray topk", "mlp", lambda: alray_picker(
            "topk", "bald", scoring={"mc_samples": 20}))
        rows["baal BALD (MLP, T=20)"] = ("peer", "mlp", baal_picker)
    return rows


def _learner(kind: str, penalty: str, classes: int):
    return MLP(classes) if kind == "mlp" else Logistic(classes, penalty)


def budgets(initial: int, batch: int, rounds: int) -> list[int]:
    return [initial + batch * r for r in range(rounds + 1)]


def labels_to(curve: np.ndarray, labels: list[int], threshold: float) -> int | None:
    """The first budget at which ``curve`` reaches ``threshold`` (None: never)."""
    hits = np.flatnonzero(curve >= threshold - 1e-12)
    return labels[hits[0]] if len(hits) else None


_LOADERS = {"digits": digits_data, "copies": copies_data, "iris": iris_data}


def run_strategies(dataset: str, rows: dict, seeds: int, penalty: str, initial: int, batch: int,
                   rounds: int) -> tuple[dict, dict, dict]:
    """Every strategy on every seed; the same split and initial labels within a seed.

    Returns:
        ``({name: [seeds, rounds + 1] accuracies}, {learner: mean accuracy with every pool row
        labeled} (digits only), {name: [(data, positions labeled at the end)] per seed})``.
    """
    curves = {name: [] for name in rows}
    ceiling: dict[str, list[float]] = {}
    ends: dict[str, list[tuple[Data, np.ndarray]]] = {name: [] for name in rows}
    for seed in range(seeds):
        data = _LOADERS[dataset](seed)
        start = np.random.default_rng(seed).choice(len(data.ids), initial, replace=False)
        for name, (_, kind, factory) in rows.items():
            learner = _learner(kind, penalty, data.classes)
            accuracy, labeled = run_curve(data, learner, factory(), start, batch, rounds, seed)
            curves[name].append(accuracy)
            ends[name].append((data, labeled))
        if dataset == "digits":
            for kind in sorted({kind for _, kind, _ in rows.values()}):
                learner = _learner(kind, penalty, data.classes).fit(data.pool_x, data.pool_y, seed)
                ceiling.setdefault(kind, []).append(
                    float(np.mean(learner.predict(data.test_x) == data.test_y)))
    return ({name: np.array(c) for name, c in curves.items()},
            {kind: float(np.mean(v)) for kind, v in ceiling.items()}, ends)


# ----------------------------------------------------------------------------------- rare class


RARE_CLASS, RARE_SHARE, RARE_START, RARE_BATCH, RARE_ROUNDS, RARE_TOP = 8, 0.02, 20, 20, 2, 50


def _rare_data(seed: int) -> Data:
    x, y = _digits()
    rng = np.random.default_rng(seed)
    others = np.flatnonzero(y != RARE_CLASS)
    keep = int(round(RARE_SHARE * len(others) / (1 - RARE_SHARE)))
    rare = rng.choice(np.flatnonzero(y == RARE_CLASS), keep, replace=False)
    pool = np.sort(np.concatenate([others, rare]))
    return Data(x[pool], y[pool], x[pool], y[pool], pool.astype(np.int64), 10)


def rare_run(seed: int, how: str) -> dict:
    """Start from one random positive plus 19 random rows, two rounds of 20 chosen by
    ``target_probability`` (or at random), then the top 50 unlabeled by target_probability."""
    data = _rare_data(seed)
    rng = np.random.default_rng(seed)
    positive = rng.choice(np.flatnonzero(data.pool_y == RARE_CLASS))
    rest = rng.choice(np.setdiff1d(np.arange(len(data.ids)), [positive]), RARE_START - 1,
                      replace=False)
    start = np.concatenate([[positive], rest])
    target = {"scoring": {"target_class": RARE_CLASS}}
    picker = (alray_picker("topk", "target_probability", **target) if how != "random"
              else alray_picker("random", "margin"))
    learner = Logistic(data.classes)
    _, order = run_curve(data, learner, picker, start, RARE_BATCH, RARE_ROUNDS, seed)
    labeled = np.zeros(len(data.ids), bool)
    labeled[order] = True
    spec = job("topk", "target_probability", RARE_TOP, seed, **target)
    top = engine_select(spec, data.ids, learner.log_probs(data.pool_x), data.pool_x, labeled)
    is_rare = data.pool_y == RARE_CLASS
    started = np.zeros(len(is_rare), bool)
    started[start] = True
    rate_after_start = is_rare[~started].mean()
    return {"precision": float(is_rare[top].mean()), "base_rate": float(is_rare[~labeled].mean()),
            "found": int(is_rare[labeled & ~started].sum()),
            "expected": RARE_BATCH * RARE_ROUNDS * float(rate_after_start),
            "positives": int(is_rare.sum()), "pool": len(is_rare)}


# ----------------------------------------------------------------------------------- speed


def _mixture(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((100, dim)).astype(np.float32)
    x = centers[rng.integers(0, 100, rows)] + rng.standard_normal((rows, dim), dtype=np.float32)
    return x.astype(np.float32)


def _timed(function) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds (all threads) and the result of ``function``."""
    tick, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - tick, time.process_time() - cpu, result


@contextmanager
def _counting_assignments():
    """Counts alray's k-means assignment passes (one per Lloyd round, the last one finding no
    change): wraps ``alray.selection.methods._nearest``, which :func:`kmeans` looks up per call."""
    from alray.selection import methods

    original, calls = methods._nearest, [0]

    def counted(x, centers):
        calls[0] += 1
        return original(x, centers)

    methods._nearest = counted
    try:
        yield calls
    finally:
        methods._nearest = original


_SKLEARN_CHILD = """
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.cluster import KMeans
sys.path.insert(0, {root!r})
from benchmarks.bench_selection_parts import speed_data
x, weights = speed_data({rows}, {dim})
x = x.astype(np.{dtype})
model = KMeans(n_clusters={k}, n_init=1, max_iter=25, random_state=0)
print(json.dumps({{"ready": time.time()}}), flush=True)
with threadpool_limits(2):
    tick, cpu = time.perf_counter(), time.process_time()
    model.fit(x, sample_weight=weights)
print(json.dumps({{"seconds": time.perf_counter() - tick, "cpu": time.process_time() - cpu,
                  "rounds": int(model.n_iter_)}}))
"""


def _sklearn_kmeans(rows: int, dim: int, k: int, dtype: str, cap: float) -> dict:
    """scikit-learn's ``KMeans(n_clusters=k, n_init=1, max_iter=25)`` with sample weights, in a
    child process stopped after ``cap`` seconds of its wall time, start-up included (0: no
    limit); the seconds reported are the fit's alone."""
    root = str(Path(__file__).resolve().parent.parent)
    code = _SKLEARN_CHILD.format(root=root, rows=rows, dim=dim, k=k, dtype=dtype)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    launched = time.time()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=cap or None, env=env, check=True)
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        ready = [json.loads(line)["ready"] for line in printed.splitlines() if "ready" in line]
        fit = launched + cap - ready[0] if ready else 0.0
        return {"seconds": None, "cpu": None, "at_least": fit,
                "note": f"stopped after {cap:.0f} s of the child, {fit:.0f} s into the fit "
                        "(--sklearn-cap)"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "cpu": result["cpu"],
            "note": f"fit only; {result['rounds']} Lloyd rounds (tol 1e-4), k-means++ init"}


def speed_data(rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``[rows, dim]`` float32 from a 100-component Gaussian mixture, and ``[rows]`` weights."""
    x = _mixture(rows, dim)
    return x, np.random.default_rng(1).random(rows, dtype=np.float32)


def speed_runs(rows: int, dim: int, k: int, cap: float, repeats: int) -> dict[str, dict]:
    """Seconds of each method choosing ``k`` of ``rows`` on 2 threads; alray's k-means and
    scikit-learn's (float64) run ``repeats`` times, interleaved, and the fastest counts."""
    from threadpoolctl import threadpool_limits

    from alray.selection.methods import badge, kcenter_greedy, weighted_kmeans

    x, weights = speed_data(rows, dim)
    logits = np.random.default_rng(2).standard_normal((rows, 10)).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits), 1)
    xt, wt = torch.from_numpy(x), torch.from_numpy(weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    out: dict[str, dict] = {}

    def fastest(name: str, result: dict) -> None:
        held = out.get(name)
        if held is None or (result["seconds"] or math.inf) < (held["seconds"] or math.inf):
            out[name] = {**result, "runs": [*(held or {}).get("runs", []), result["seconds"]]}
        else:
            held["runs"].append(result["seconds"])

    try:
        for _ in range(repeats):
            with threadpool_limits(2), _counting_assignments() as passes:
                seconds, cpu, picks = _timed(lambda: weighted_kmeans(xt, wt, k, seed=0))
            fastest("alray weighted_kmeans", {
                "seconds": seconds, "cpu": cpu,
                "note": f"{len(picks)} picks; {passes[0]} assignment passes (k-means++ seeding, "
                        "1 candidate a step)"})
            fastest("sklearn KMeans, sample_weight, float64",
                    _sklearn_kmeans(rows, dim, k, "float64", 0))
        out["sklearn KMeans, sample_weight, float32"] = _sklearn_kmeans(rows, dim, k, "float32",
                                                                        cap)
        with threadpool_limits(2):
            seconds, cpu, picks = _timed(lambda: kcenter_greedy(xt, k))
            out["alray kcenter_greedy"] = {"seconds": seconds, "cpu": cpu,
                                           "note": f"{len(picks)} picks"}
            seconds, cpu, picks = _timed(lambda: badge(probs, xt, k, seed=0))
            out["alray badge (C = 10)"] = {"seconds": seconds, "cpu": cpu,
                                           "note": f"{len(picks)} picks"}
    finally:
        torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------------- agreement


AGREEMENT = (("least_confidence top-k", "modAL uncertainty_sampling"),
             ("bald top-k (MLP, T=20)", "baal BALD (MLP, T=20)"))


def agreement(seed: int = 0) -> list[tuple[str, str, int]]:
    """Given the same fitted learner and the same MC passes, how many of the first round's 20
    picks alray and the peer share (rows that tie may differ)."""
    rows = strategies(include_mlp=True)
    data = digits_data(seed)
    labeled = np.zeros(len(data.ids), bool)
    labeled[np.random.default_rng(seed).choice(len(data.ids), 20, replace=False)] = True
    shared = []
    for ours, theirs in AGREEMENT:
        learner = _learner(rows[ours][1], "c1", data.classes).fit(
            data.pool_x[labeled], data.pool_y[labeled], seed)
        a, b = (set(rows[name][2]()(learner, data, labeled, 20, seed * 1000).tolist())
                for name in (ours, theirs))
        shared.append((ours, theirs, len(a & b)))
    return shared


# ----------------------------------------------------------------------------------- engine


class _SimLogistic:
    """The simulator's logistic learner (``alray.simulation.training.train_logistic``), its
    logits as the job's ``linear`` head computes them (``torch.nn.Linear``, float32)."""

    def __init__(self, classes: int):
        self.classes, self.model = classes, None

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int) -> _SimLogistic:
        from alray.simulation.training import train_logistic

        self.model = train_logistic(x, y, self.classes, seed)
        return self

    def log_probs(self, x: np.ndarray, seed: int = 0) -> torch.Tensor:
        from alray.scoring.uncertainty import log_probs_from_logits

        weight, bias = (torch.from_numpy(np.ascontiguousarray(t)) for t in self.model.heads[0])
        with torch.inference_mode():
            logits = torch.nn.functional.linear(torch.from_numpy(x), weight, bias)
        return log_probs_from_logits(logits)[..., None]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.probabilities(x).argmax(axis=1)


ENGINE_STRATEGIES = {"random": ("random", "margin"), "entropy": ("topk", "entropy"),
                     "kmeans": ("kmeans", "margin")}


def engine_check(out) -> None:
    """Seed 0 through ``alray.simulate`` (the real engine on Ray: parquet shards, actors,
    ledgers) against this process's loop on the simulator's own split, learner and seeds."""
    import alray

    try:
        simulate = alray.simulate
        from alray.simulation.data import load_dataset, split_dataset
        from alray.simulation.spec import load_spec
    except (AttributeError, ImportError) as exc:
        out(f"\nengine check skipped: alray.simulate is not there ({exc})")
        return
    raw = {"name": "bench-selection-check", "dataset": "digits", "test_fraction": 0.25,
           "learner": "logistic", "initial": 20, "batch": 20, "rounds": 14, "repeats": 1,
           "strategies": [{"name": "entropy", "scoring": {"strategy": "entropy"}},
                          {"name": "kmeans", "scoring": {"strategy": "margin"},
                           "selection": {"method": "kmeans"}}]}
    with tempfile.TemporaryDirectory() as folder:
        tick = time.perf_counter()
        try:
            result = simulate(raw, out=f"{folder}/sim", progress=False)
        except Exception as exc:  # noqa: BLE001 - another engineer's work in progress: report it
            first = str(exc).splitlines()[0] if str(exc) else ""
            out(f"\nengine check skipped: alray.simulate is not ready ({type(exc).__name__}: "
                f"{first})")
            return
        seconds = time.perf_counter() - tick
    sim = result.curves.to_pandas()
    spec = load_spec(raw)
    dataset = load_dataset(spec)
    split = split_dataset(dataset, spec.test_fraction, spec.initial, 0)
    data = Data(split.x[split.train], dataset.y[split.train], split.x[split.test],
                dataset.y[split.test], dataset.ids.to_numpy()[split.train].astype(np.int64),
                len(dataset.classes))
    start = np.searchsorted(split.train, split.initial)
    out(f"\nengine check: alray.simulate (Ray, 4 shards, 1 actor, ledgers) took {seconds:.0f} s; "
        "the same loop in this process on its split, learner and seeds (selection.seed 0):")
    for name, (method, score) in ENGINE_STRATEGIES.items():
        here, _ = run_curve(data, _SimLogistic(data.classes), alray_picker(method, score),
                            start, spec.batch, spec.rounds, 0, pick_seed=0)
        theirs = sim[sim["strategy"] == name].sort_values("round")["accuracy"].to_numpy()
        same = int(np.sum(np.isclose(here, theirs, atol=0, rtol=0)))
        out(f"  {name:<8} mean acc on Ray {theirs.mean():.4f}, here {here.mean():.4f}; "
            f"{same} of {len(theirs)} points identical")
