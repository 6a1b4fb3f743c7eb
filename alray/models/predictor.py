"""Running the job's model on a batch: one pass, T Monte Carlo dropout passes, or a committee.

The output is always ``[B, C, K]`` with the samples last: K = 1 for one pass, T for MC dropout
(Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation"), M for a committee of M members
(Seung, Opper & Sompolinsky 1992, query by committee), and M x T for both (member-major: sample
``m * T + t``). The data is read once; each batch goes through the model K times in memory.

MC dropout puts only the dropout modules in train mode (BatchNorm and everything else stay in
eval), for ``python`` and ``torchscript`` models alike. The masks of pass t over batch b of a shard
come from the generator seeded with a hash of (``scoring.seed``, shard id, b, member, t), so a
rerun or a resume on one kind of device draws the same masks and writes the same bytes; each pass
runs over the whole batch, so peak memory is that of one plain pass, whatever T is.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch

from alray.errors import ModelError
from alray.models.loaders import LoadedModel, as_two_classes

__all__ = ["ModelOutput", "Predictor", "dropout_modules"]

_DROPOUT_NAMES = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                  "FeatureAlphaDropout"}


@dataclass
class ModelOutput:
    """What the model gave for one batch.

    Attributes:
        values: ``[B, C, K]`` logits or probabilities (classification; a one-logit binary head
            already widened to C = 2), or ``[B, O, K]`` outputs (regression).
        embedding: ``[B, D]`` (the mean over the samples), or None when the model gives none.
    """

    values: torch.Tensor
    embedding: torch.Tensor | None

    @property
    def samples(self) -> int:
        return self.values.shape[-1]


def dropout_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The dropout modules of ``module`` (eager or TorchScript), in definition order."""
    found = []
    for sub in module.modules():
        name = getattr(sub, "original_name", type(sub).__name__)  # TorchScript keeps the name
        if isinstance(sub, torch.nn.modules.dropout._DropoutNd) or name in _DROPOUT_NAMES:
            found.append(sub)
    return found


def _mask_seed(seed: int, shard_id: str, batch_index: int, member: int, sample: int) -> int:
    key = f"{seed}\0{shard_id}\0{batch_index}\0{member}\0{sample}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


class Predictor:
    """The job's model(s), giving ``[B, C, K]`` for a batch.

    Args:
        members: the loaded models (one, or a committee of one kind).
        mc_samples: T stochastic passes per member; 0 for one deterministic pass.
        seed: ``scoring.seed``.
        task: ``classification`` or ``regression``.

    Raises:
        ModelError: MC dropout was asked of a model without dropout modules.
    """

    def __init__(self, members: list[LoadedModel], mc_samples: int = 0, seed: int = 0,
                 task: str = "classification"):
        self.members = members
        self.passes = max(1, mc_samples)
        self.mc = mc_samples > 0
        self.seed = seed
        self.task = task
        first = members[0]
        self.output, self.device, self.input_width = first.output, first.device, first.input_width
        if self.mc:
            for index, member in enumerate(members):
                layers = dropout_modules(member.module)
                if not layers:
                    where = f"model.members[{index}]" if len(members) > 1 else "model.path"
                    raise ModelError(f"{where}: the model has no dropout modules, so its "
                                     f"{mc_samples} MC passes would all agree; use a model with "
                                     "dropout, or set scoring.mc_samples: 0")
                for layer in layers:  # only dropout samples; BatchNorm and the rest stay eval
                    layer.train()

    @contextlib.contextmanager
    def _masks(self, shard_id: str, batch_index: int, member: int, sample: int):
        """Seed the generator the dropout modules draw from, and restore it afterwards."""
        if not self.mc:
            yield
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_mask_seed(self.seed, shard_id, batch_index, member, sample))
            yield

    def __call__(self, x: torch.Tensor, shard_id: str = "", batch_index: int = 0,
                 folds: torch.Tensor | None = None) -> ModelOutput:
        """``[B, ...]`` features -> :class:`ModelOutput` with K samples.

        With ``folds`` (``[B]`` int64, ``pool.fold_column``), row i goes through member
        ``folds[i]`` only, its out-of-fold model, and K is the passes of one member; a row whose
        fold is -1 (a rejected row) goes through none and gets zeros.
        """
        if folds is not None:
            return self._out_of_fold(x, folds, shard_id, batch_index)
        outputs, embeddings = [], []
        for m, member in enumerate(self.members):
            out, embedding = self._passes(member, m, x, shard_id, batch_index)
            outputs.extend(out)
            if embedding is not None and m == 0:
                embeddings.extend(embedding)
        widths = {o.shape[1] for o in outputs}
        if len(widths) > 1:
            raise ModelError(f"model.members: the members give {sorted(widths)} outputs per row; "
                             "a committee's members must agree on the classes")
        values = torch.stack(outputs, dim=-1)
        # The embedding is the first member's (members trained apart share no embedding space):
        # its input features for a linear head, else the mean over its T passes.
        embedding = None
        if embeddings:
            same = len(embeddings) == 1 or self.members[0].features_are_embedding
            embedding = embeddings[0] if same else torch.stack(
                [e.float() for e in embeddings]).mean(dim=0)
        return ModelOutput(values, embedding)

    def _passes(self, member: LoadedModel, m: int, x: torch.Tensor, shard_id: str,
                batch_index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Member ``m``'s T passes over ``x``: its outputs and embeddings, one per pass."""
        outputs, embeddings = [], []
        for t in range(self.passes):
            with self._masks(shard_id, batch_index, m, t):
                out, embedding = member(x)
            if self.task == "classification":
                out = as_two_classes(out, self.output)
            outputs.append(out)
            if embedding is not None:
                embeddings.append(embedding)
        return outputs, embeddings

    def _out_of_fold(self, x: torch.Tensor, folds: torch.Tensor, shard_id: str,
                     batch_index: int) -> ModelOutput:
        folds = folds.to(x.device)
        values = embedding = None
        for m, member in enumerate(self.members):
            rows = torch.nonzero(folds == m).squeeze(1)
            if not len(rows):
                continue
            outputs, embeddings = self._passes(member, m, x[rows], shard_id, batch_index)
            part = torch.stack(outputs, dim=-1)
            if values is None:
                values = part.new_zeros((len(x), *part.shape[1:]))
            elif part.shape[1] != values.shape[1]:
                raise ModelError(f"model.members: member {m} gives {part.shape[1]} outputs per "
                                 f"row, an earlier one {values.shape[1]}; the fold models must "
                                 "agree on the classes")
            values[rows] = part.to(values.dtype)
            if embeddings:
                e = torch.stack([v.float() for v in embeddings]).mean(dim=0)
                if embedding is None:
                    embedding = e.new_zeros((len(x), e.shape[1]))
                embedding[rows] = e
        if values is None:  # every row of the batch was rejected: any shape will do
            values = self.members[0](x)[0]
            values = torch.zeros_like(as_two_classes(values, self.output))[..., None] \
                if self.task == "classification" else torch.zeros_like(values)[..., None]
        return ModelOutput(values, embedding)
