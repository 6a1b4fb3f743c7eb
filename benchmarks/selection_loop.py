"""An active-learning loop in one process, for ``bench_selection.py``: the learners, alray's
selection as the engine runs it minus the Ray transport, and the peers' query functions.

How alray chooses here (:func:`engine_select`) is the code an actor and the driver run, in order:
the score kernels the registry names (the ones :class:`alray.pipeline.batch.BatchScorer` calls),
the scores file's table, :class:`~alray.pipeline.vectors.CandidateVectors` holding the vectors of
the open rows, :func:`~alray.pipeline.candidates.take_candidates` with the labeled ids as the
ledgers' :class:`~alray.ledger.Exclusion`, :func:`~alray.pipeline.outcome.label_candidates`, the
:class:`~alray.reduce.parts.CandidateReducer` and :func:`alray.selection.stage.select`. The pool is
one shard. No Ray is started here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from alray.config import JobSpec
from alray.ledger import Exclusion
from alray.pipeline.candidates import take_candidates
from alray.pipeline.outcome import label_candidates
from alray.pipeline.vectors import CandidateVectors
from alray.reduce.parts import CandidateReducer
from alray.scoring.registry import CLASSIC_SCORES, score_for
from alray.scoring.samples import mean_log_probs
from alray.scoring.uncertainty import log_probs_from_logits, score_all
from alray.selection.parts import CandidatePlan
from alray.selection.stage import select
from alray.sources.plan import ShardSpec

__all__ = ["Data", "Logistic", "MLP", "alray_picker", "baal_picker", "engine_select",
           "fit_logistic", "job", "modal_picker", "run_curve"]

MC_PASSES = 20
_SHARD = ShardSpec("pool-0", "memory://bench-selection/pool", None, 0, None, None, None)


# ----------------------------------------------------------------------------------- data


@dataclass
class Data:
    """A pool (selectable, labels revealed on selection) and a held-out test split."""

    pool_x: np.ndarray  # [N, D] float32
    pool_y: np.ndarray  # [N] int64
    test_x: np.ndarray
    test_y: np.ndarray
    ids: np.ndarray  # [N] int64, the pool's id column
    classes: int
    origin: np.ndarray | None = None  # [N] the row each copy was made from (copies only)


# ----------------------------------------------------------------------------------- learners


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, seed: int,
                 l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by L-BFGS, loss ``mean CE + l2 * |W|^2``:
    :func:`alray.demo.train_head` (the learner of ``alray simulate``'s ``logistic``)."""
    from alray.demo import train_head

    return train_head(x, y, classes, seed=seed, l2=l2)


class Logistic:
    """A linear head (alray's ``linear`` model kind: the embedding is the input features).

    Args:
        penalty: ``"c1"``: ``l2 = 1 / (2 n)``, scikit-learn's default ``C = 1`` (penalty
            ``|W|^2 / 2`` against the summed loss); ``"demo"``: ``l2 = 1e-2`` whatever ``n``, as
            :func:`alray.demo.train_head`.
    """

    def __init__(self, classes: int, penalty: str = "c1"):
        self.classes, self.penalty = classes, penalty
        self.weight = self.bias = None

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int) -> "Logistic":
        l2 = 1e-2 if self.penalty == "demo" else 1.0 / (2 * len(y))
        self.weight, self.bias = fit_logistic(x, y, self.classes, seed, l2)
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias

    def log_probs(self, x: np.ndarray, seed: int = 0) -> torch.Tensor:
        """``[N, C, 1]`` log-probabilities (alray's caller-named logits path)."""
        return log_probs_from_logits(torch.from_numpy(self.logits(x)))[..., None]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(1)


class MLP:
    """``D -> 128 -> ReLU -> dropout(0.5) -> C``, Adam, full batch; MC dropout draws its masks
    from a seeded generator (``[N, C, K]`` log-probabilities, samples last)."""

    def __init__(self, classes: int, hidden: int = 128, steps: int = 300, p: float = 0.5):
        self.classes, self.hidden, self.steps, self.p = classes, hidden, steps, p
        self.net = None

    def _forward(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        first, last = self.net
        h = torch.relu(first(x))
        if gen is not None:  # dropout on: a fresh mask per pass
            h = h * (torch.rand(h.shape, generator=gen) >= self.p) / (1 - self.p)
        return last(h)

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int) -> "MLP":
        torch.manual_seed(seed)  # nn.Linear's init has no generator argument
        self.net = (torch.nn.Linear(x.shape[1], self.hidden), torch.nn.Linear(self.hidden,
                                                                             self.classes))
        params = [p for layer in self.net for p in layer.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed + 1)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(self.steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(self._forward(xt, gen), yt).backward()
            optimizer.step()
        return self

    def log_probs(self, x: np.ndarray, seed: int = 0, passes: int = MC_PASSES) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            logits = torch.stack([self._forward(xt, gen) for _ in range(passes)], dim=-1)
        return log_probs_from_logits(logits)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._forward(torch.from_numpy(x), None).argmax(1).numpy()

    def embedding(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.relu(self.net[0](torch.from_numpy(x))).numpy()


# ----------------------------------------------------------------------------------- alray


def job(method: str, strategy: str, k: int, seed: int, **extra) -> JobSpec:
    """The JobSpec a user would write, validated as ``alray run`` validates it.

    A ``linear`` model whose embedding is its input (the logistic learner), or with
    ``mc_samples`` a ``python`` model with dropout; neither file is opened here.
    """
    selection = {"k": k, "method": method, "seed": seed, **extra.pop("selection", {})}
    scoring = {"strategy": strategy, **extra.pop("scoring", {})}
    model = ({"kind": "python", "path": "benchmarks.selection_loop:MLP"}
             if scoring.get("mc_samples") else {"kind": "linear", "path": "unused.safetensors"})
    return JobSpec.from_dict({
        "name": "bench-selection", "pool": {"uri": "unused/", "feature_column": "embedding"},
        "model": model, "scoring": scoring, "selection": selection,
        "output": {"uri": "unused-out/"}, "resources": {"actors": 1, "gpus_per_actor": 0}})


def _scores(log_probs: torch.Tensor, spec: JobSpec, embedding: np.ndarray) -> dict:
    """The scores file's columns for ``[N, C, K]`` log-probabilities, as the actor computes
    them: the classic four from the mean, the strategy's kernel from the registry otherwise."""
    mean_lp = log_probs[..., 0] if log_probs.shape[-1] == 1 else mean_log_probs(log_probs)
    columns = score_all(mean_lp)
    score = score_for(spec.scoring.strategy)
    if score.name in CLASSIC_SCORES:
        columns["score"] = columns[score.name]
    else:
        inputs = {"log_probs": log_probs, "mean_log_probs": mean_lp,
                  "embedding": torch.from_numpy(embedding),
                  "target_class": spec.scoring.target_class}
        columns["score"] = score.load()(*[inputs[name] for name in score.inputs]).float()
    columns["probs"] = torch.exp(mean_lp)
    return {name: t.numpy() for name, t in columns.items()}


def engine_select(spec: JobSpec, ids: np.ndarray, log_probs: torch.Tensor, embedding: np.ndarray,
                  labeled: np.ndarray) -> np.ndarray:
    """The rows (positions in the pool) alray selects, labeled rows excluded by the ledgers.

    Args:
        ids: ``[N]`` int64 pool ids; log_probs: ``[N, C, K]``; embedding: ``[N, D]``;
        labeled: ``[N]`` bool, the rows whose labels were revealed.
    """
    columns = _scores(log_probs, spec, embedding)
    rows = np.arange(len(ids), dtype=np.int64)
    id_array = pa.array(ids, pa.int64())
    table = pa.table({"id": id_array, "score": columns["score"],
                      **{name: columns[name] for name in CLASSIC_SCORES},
                      "predicted": columns["predicted"], "confidence": columns["confidence"],
                      "row": rows})
    done = pa.array(np.sort(ids[labeled]), pa.int64())
    exclusion = Exclusion(done, done, "bench")
    plan = CandidatePlan.of(spec)
    vectors = CandidateVectors(spec.selection.per_shard)
    open_rows = ~labeled
    available = {"probs": columns["probs"], "embedding": embedding}
    vectors.add(rows[open_rows], id_array.filter(pa.array(open_rows)),
                columns["score"][open_rows],
                {name: available[name][open_rows] for name in plan.vectors})
    labeled_table = None
    if plan.labeled and labeled.any():
        values = embedding[labeled].astype(np.float32)
        labeled_table = pa.table({"id": id_array.filter(pa.array(labeled)),
                                  "embedding": pa.FixedSizeListArray.from_arrays(
                                      pa.array(values.ravel()), values.shape[1])})
    candidates = label_candidates(take_candidates(table, spec, exclusion, vectors,
                                                  labeled_table), _SHARD)
    reducer = CandidateReducer(spec)
    reducer.update(candidates)
    selection = select(reducer.result(), spec, device="cpu")
    return selection.column("row").to_numpy()


# ----------------------------------------------------------------------------------- pickers

#: ``pick(learner, data, labeled, k, seed) -> positions``: one round's choice.
Picker = Callable[[object, Data, np.ndarray, int, int], np.ndarray]


def alray_picker(method: str, strategy: str, **extra) -> Picker:
    """alray's selection of ``k`` rows by ``method`` over ``strategy``'s scores."""

    def pick(learner, data: Data, labeled: np.ndarray, k: int, seed: int) -> np.ndarray:
        spec = job(method, strategy, k, seed, **extra)
        embedding = data.pool_x
        return engine_select(spec, data.ids, learner.log_probs(data.pool_x, seed=seed),
                             embedding, labeled)

    return pick


class _Fitted:
    """A fitted learner as scikit-learn sees a classifier (what modAL queries)."""

    def __init__(self, learner: Logistic):
        self.learner = learner

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.learner.logits(x)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def fit(self, x, y):  # modAL's learner never refits here: the loop fits
        raise NotImplementedError


def modal_picker(name: str) -> Picker:
    """modAL's ``uncertainty_sampling`` or ``uncertainty_batch_sampling`` (ranked batch mode),
    through modAL's ``ActiveLearner`` holding the same fitted model and the labeled rows."""
    from modAL.batch import uncertainty_batch_sampling
    from modAL.models import ActiveLearner
    from modAL.uncertainty import uncertainty_sampling

    strategy = {"uncertainty_sampling": uncertainty_sampling,
                "uncertainty_batch_sampling": uncertainty_batch_sampling}[name]

    def pick(learner, data: Data, labeled: np.ndarray, k: int, seed: int) -> np.ndarray:
        active = ActiveLearner(estimator=_Fitted(learner), query_strategy=strategy)
        active.X_training, active.y_training = data.pool_x[labeled], data.pool_y[labeled]
        unlabeled = np.flatnonzero(~labeled)
        chosen, _ = active.query(data.pool_x[unlabeled], n_instances=k)
        return unlabeled[np.asarray(chosen, dtype=np.int64)]

    return pick


def baal_picker() -> Picker:
    """baal's ``BALD`` heuristic ranking the MC-dropout probabilities ``[N, C, K]``."""
    from baal.active.heuristics import BALD

    heuristic = BALD()

    def pick(learner, data: Data, labeled: np.ndarray, k: int, seed: int) -> np.ndarray:
        unlabeled = np.flatnonzero(~labeled)
        # the whole pool's passes, as alray's picker draws them (the same masks), then the
        # unlabeled rows: baal ranks what it is given
        probs = torch.exp(learner.log_probs(data.pool_x, seed=seed)).numpy()[unlabeled]
        return unlabeled[heuristic(probs)[:k]]

    return pick


# ----------------------------------------------------------------------------------- the loop


def run_curve(data: Data, learner, pick: Picker, initial: np.ndarray, batch: int, rounds: int,
              seed: int, pick_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit, measure, pick, reveal; ``rounds`` times, then fit and measure once more. The learner
    trains on the labeled rows in the order they were revealed.

    Args:
        pick_seed: the selection's seed every round (None: ``seed * 1000 + round``).

    Returns:
        ``([rounds + 1] test accuracies, [labels] positions in reveal order)``.
    """
    order = [int(i) for i in initial]
    labeled = np.zeros(len(data.ids), bool)
    labeled[order] = True
    accuracy = []
    for r in range(rounds + 1):
        learner.fit(data.pool_x[order], data.pool_y[order], seed)
        accuracy.append(float(np.mean(learner.predict(data.test_x) == data.test_y)))
        if r == rounds:
            break
        chosen = pick(learner, data, labeled, batch, seed * 1000 + r if pick_seed is None
                      else pick_seed)
        if len(chosen) != batch or labeled[chosen].any() or len(set(chosen.tolist())) != batch:
            raise RuntimeError(f"round {r}: the picker returned {len(chosen)} rows, some "
                               "labeled or repeated")
        labeled[chosen] = True
        order.extend(int(i) for i in chosen)
    return np.array(accuracy), np.array(order)
