"""Scoring one batch: check its rows, run the model K times, score by the job's registry entry.

:class:`BatchScorer` holds what a job fixes (the model, the strategy's kernel and its inputs);
calling it on a :class:`~alray.sources.rows.RowBatch` gives the scores-file columns of the good
rows and the vectors their candidates carry. Bad rows are handed to a :class:`RowRejects`, which
raises on the first under ``on_error: fail`` and records each under ``skip``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from alray.config import JobSpec, target_index
from alray.errors import ModelError, ShardError
from alray.models.loaders import load_members
from alray.models.predictor import ModelOutput, Predictor
from alray.pipeline.outcome import error_record
from alray.scoring.labels import gold_statistics
from alray.scoring.registry import CLASSIC_SCORES, score_for
from alray.scoring.samples import mean_log_probs, mean_prediction
from alray.scoring.uncertainty import log_probs_from_logits, log_probs_from_probs, score_all
from alray.scoring.validity import PROB_SUM_TOLERANCE, invalid_rows
from alray.selection.parts import CandidatePlan
from alray.sources.plan import ShardSpec
from alray.sources.rows import RowBatch

__all__ = ["BatchScorer", "RowRejects", "ScoredBatch", "load_scorer"]


class RowRejects:
    """Collects bad rows: raises on the first under ``fail``, records each under ``skip``."""

    def __init__(self, shard: ShardSpec, fail_fast: bool):
        self.shard = shard
        self.fail_fast = fail_fast
        self.records: list[dict] = []

    def add(self, kind: str, message: str, rows: np.ndarray, ids: pa.Array,
            positions: np.ndarray) -> None:
        """Reject ``rows`` (file row indices) whose ids sit at ``positions`` of ``ids``."""
        if len(rows) == 0:
            return
        if self.fail_fast:
            raise ShardError(kind, message, row=int(rows[0]), row_id=ids[int(positions[0])].as_py())
        for row, pos in zip(rows.tolist(), positions.tolist()):
            self.records.append(error_record(self.shard, kind, message, row, ids[pos].as_py()))


@dataclass
class ScoredBatch:
    """The good rows of a batch, scored.

    Attributes:
        good: ``[n]`` positions in the batch of the rows kept.
        columns: scores-file columns of those rows (``score``, the classic four, ``predicted``,
            ``confidence``, ...), each ``[n]`` or ``[n, O]``.
        vectors: what their candidates carry: ``embedding [n, D]`` where the model gives one,
            ``probs [n, C]`` (the mean class probabilities) for classification.
    """

    good: np.ndarray
    columns: dict[str, np.ndarray]
    vectors: dict[str, np.ndarray]


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A ``[n, ...]`` array as a float32 tensor on ``device``, sharing memory where it can."""
    with warnings.catch_warnings():
        # Arrow's buffers are read-only; alray never writes into this tensor.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(values)
    if device.type == "cuda":
        return t.pin_memory().to(device, dtype=torch.float32, non_blocking=True)
    return t.to(dtype=torch.float32)


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """``[n, ...]`` -> ``[n]`` bool, True where every value of a row is finite.

    A row sum is NaN or Inf whenever the row holds one, so one cheap reduction screens every row;
    only rows it flags (a NaN, an Inf, or finite values whose float32 sum overflows) are checked
    element by element.
    """
    flat = x.reshape(len(x), -1)
    finite = torch.isfinite(flat.sum(dim=1))
    if not finite.all():
        suspects = torch.nonzero(~finite).squeeze(1)
        finite[suspects] = torch.isfinite(flat[suspects]).all(dim=1)
    return finite


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class BatchScorer:
    """The job's model and strategy, applied batch by batch.

    Args:
        spec: the job spec (strategy, target class, task).
        predictor: the loaded model(s), giving ``[B, C, K]``.
    """

    def __init__(self, spec: JobSpec, predictor: Predictor):
        self.predictor = predictor
        self.task = spec.model.task
        self.classes = len(spec.model.classes) if spec.model.classes else None
        self.score = score_for(spec.scoring.strategy)
        self.strategy = spec.scoring.strategy
        self.kernel = None if self.score.name in CLASSIC_SCORES else self._load_kernel()
        self.target = target_index(spec) if self.score.needs_target else None
        self.output_kind = "outputs" if self.task == "regression" else predictor.output
        plan = CandidatePlan.of(spec)
        #: The vectors the candidates carry (the selection method's), and the embedding of
        #: labeled rows for ``kcenter``: nothing else leaves the device.
        self.vectors = set(plan.vectors) | ({"embedding"} if plan.labeled else set())

    def _load_kernel(self):
        try:
            return self.score.load()
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"scoring.strategy: cannot import {self.strategy!r} ({exc}); your "
                             "score's module must be importable on every Ray worker") from None

    # -- the model ----------------------------------------------------------------------------

    def _run_model(self, x: torch.Tensor, shard_id: str, batch_index: int,
                   folds: np.ndarray | None) -> ModelOutput:
        try:
            return self.predictor(x, shard_id, batch_index,
                                  None if folds is None else torch.from_numpy(folds))
        except torch.cuda.OutOfMemoryError:
            raise ShardError("out_of_memory",
                             f"the model ran out of GPU memory on a batch of {len(x)} rows; lower "
                             "scoring.batch_size", key="scoring.batch_size") from None
        except RuntimeError as exc:
            raise ShardError("schema", "the model cannot take this shard's features: "
                                       f"{_first_line(exc)}") from None

    def _check_classes(self, values: torch.Tensor) -> None:
        if self.task == "classification" and self.classes and values.shape[1] != self.classes:
            raise ModelError(f"model.classes: names {self.classes} classes; the model gives "
                             f"{values.shape[1]} per row")
        if self.target is not None and self.target >= values.shape[1]:
            raise ModelError(f"scoring.target_class: class {self.target} is out of range; the "
                             f"model gives {values.shape[1]} classes")

    # -- scores -------------------------------------------------------------------------------

    def _inputs(self, out: ModelOutput, log_probs, mean_lp, gold=None) -> list:
        """What the strategy's kernel takes, in the order its registry entry names."""
        available = {"log_probs": lambda: log_probs, "mean_log_probs": lambda: mean_lp,
                     "gold": lambda: gold,
                     "embedding": lambda: out.embedding, "target_class": lambda: self.target,
                     "outputs": lambda: out.values, "probs": lambda: torch.exp(log_probs)}
        return [available[name]() for name in self.score.inputs]

    def _strategy_score(self, out: ModelOutput, log_probs=None, mean_lp=None,
                        gold=None) -> torch.Tensor:
        rows = len(out.values)
        if self.score.needs_embedding and out.embedding is None:
            raise ModelError(f"scoring.strategy: {self.strategy} needs an embedding and the model "
                             "gives none; use a linear model, or one that returns (output, "
                             "embedding)")
        try:
            score = self.kernel(*self._inputs(out, log_probs, mean_lp, gold))
        except Exception as exc:  # a score's own failure: the job's error, not the shard's
            raise ModelError(f"scoring.strategy: {self.strategy} raised {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
        if not isinstance(score, torch.Tensor) or tuple(score.shape) != (rows,):
            shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ModelError(f"scoring.strategy: {self.strategy} returned {shape} for {rows} rows; "
                             "a score returns a [B] tensor")
        if not torch.isfinite(score).all():
            raise ModelError(f"scoring.strategy: {self.strategy} returned NaN or Inf for a row "
                             "whose model output is finite")
        return score.float()

    def _classification(self, out: ModelOutput,
                        gold: torch.Tensor | None = None) -> tuple[dict, dict]:
        values = out.values
        to_log_probs = (log_probs_from_logits if self.output_kind == "logits"
                        else log_probs_from_probs)
        if out.samples == 1:  # one pass: the [B, C] kernels directly, no mean to take
            mean_lp = to_log_probs(values[..., 0])
            log_probs = mean_lp[..., None]
        else:
            log_probs = to_log_probs(values)
            mean_lp = mean_log_probs(log_probs)
        columns = score_all(mean_lp)
        probs = torch.exp(mean_lp) if gold is not None or "probs" in self.vectors else None
        if gold is not None:
            columns["gold"] = gold.int()
            columns.update({name: value.float() for name, value in
                            gold_statistics(log_probs, gold).items()})
            columns["probs"] = probs.float()
        if self.score.name in CLASSIC_SCORES:
            columns["score"] = columns[self.score.name]
        else:
            score = self._strategy_score(out, log_probs, mean_lp, gold)
            columns["score"] = score
            if self.score.name != "score":  # a built-in beyond the classic four: its own column
                columns[self.score.name] = score
        vectors = {}
        if "probs" in self.vectors:
            vectors["probs"] = probs
        if "samples" in self.vectors:  # [B, C, K] flattened to [B, C * K], samples last
            vectors["samples"] = torch.exp(log_probs).reshape(len(log_probs), -1)
        return columns, vectors

    def _regression(self, out: ModelOutput) -> tuple[dict, dict]:
        score = self._strategy_score(out)
        prediction = mean_prediction(out.values)
        prediction = prediction[:, 0] if prediction.ndim == 2 and prediction.shape[1] == 1 \
            else prediction
        columns = {"score": score, "prediction": prediction}
        if self.score.name != "score":
            columns[self.score.name] = score
        return columns, {}

    # -- a batch ------------------------------------------------------------------------------

    def __call__(self, batch: RowBatch, value_name: str, rejects: RowRejects,
                 batch_index: int) -> ScoredBatch:
        """Score one batch of ``rejects.shard``; bad rows go to ``rejects``."""
        x = _tensor(batch.values, self.predictor.device)
        checks = list(batch.bad)
        finite = _finite_rows(x)
        checks.append(("non_finite", f"NaN or Inf in column {value_name!r}",
                       (~finite).cpu().numpy()))
        if not finite.all():
            x = torch.where(finite.view((-1,) + (1,) * (x.ndim - 1)), x, torch.zeros_like(x))
        out = self._run_model(x, rejects.shard.shard_id, batch_index, batch.folds)
        self._check_classes(out.values)
        if batch.labels is not None:
            checks.append(("bad_label", f"label is not a class of the {out.values.shape[1]} the "
                                        f"model gives (0..{out.values.shape[1] - 1})",
                           batch.labels >= out.values.shape[1]))
        non_finite, bad_probs = invalid_rows(out.values, self.output_kind)
        checks.append(("non_finite", "the model's output holds NaN or Inf",
                       non_finite.cpu().numpy()))
        checks.append(("bad_probabilities", "probabilities are negative or do not sum to 1 within "
                                            f"{PROB_SUM_TOLERANCE:g}", bad_probs.cpu().numpy()))
        rejected = self._reject(batch, checks, rejects)
        if rejected.any():
            out.values = self._filled(out.values, rejected)
        gold = None if batch.labels is None else torch.from_numpy(
            np.where(rejected | (batch.labels < 0), 0, batch.labels)).to(out.values.device)
        columns, vectors = (self._regression(out) if self.task == "regression"
                            else self._classification(out, gold))
        if "embedding" in self.vectors:
            if out.embedding is None:
                raise ModelError("selection.method: needs the model's embedding and the model "
                                 "returns none; return (output, embedding [B, D]) from the "
                                 "model, or choose topk, power or random")
            vectors["embedding"] = out.embedding
        good = np.flatnonzero(~rejected)
        as_numpy = {name: t.cpu().numpy() for name, t in columns.items()}
        vectors = {name: t.float().cpu().numpy() for name, t in vectors.items()}
        if len(good) < len(batch):  # gather only when a row was rejected; else keep the arrays
            as_numpy = {name: col[good] for name, col in as_numpy.items()}
            vectors = {name: v[good] for name, v in vectors.items()}
        return ScoredBatch(good, as_numpy, vectors)

    @staticmethod
    def _reject(batch: RowBatch, checks: list, rejects: RowRejects) -> np.ndarray:
        """Hand each check's new bad rows to ``rejects``; returns the ``[B]`` rejected mask."""
        rejected = np.zeros(len(batch), dtype=bool)
        for kind, message, mask in checks:
            new = mask & ~rejected
            if new.any():
                positions = np.flatnonzero(new)
                rejects.add(kind, message, batch.first_row + positions, batch.ids, positions)
                rejected |= new
        return rejected

    def _filled(self, values: torch.Tensor, rejected: np.ndarray) -> torch.Tensor:
        """``values`` with rejected rows replaced by a harmless filler (never stored)."""
        filler = 1.0 / values.shape[1] if self.output_kind == "probs" else 0.0
        mask = torch.from_numpy(rejected).to(values.device).view((-1,) + (1,) * (values.ndim - 1))
        return torch.where(mask, torch.full_like(values, filler), values)


def load_scorer(spec: JobSpec, device: torch.device | str = "cpu") -> BatchScorer:
    """Load ``spec``'s model(s) onto ``device`` and build its scorer (what an actor holds).

    Raises:
        ModelError: a model cannot be loaded, or MC dropout was asked of one without dropout.
    """
    members = load_members(spec.model, device, spec.fsspec_storage)
    predictor = Predictor(members, spec.scoring.mc_samples, spec.scoring.seed, spec.model.task)
    return BatchScorer(spec, predictor)
