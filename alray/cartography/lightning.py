"""A PyTorch Lightning callback that writes the training log ``alray cartography`` reads.

Importing this module needs Lightning (``lightning`` or the older ``pytorch_lightning``); alray
itself does not: nothing else imports it. The callback is :class:`DynamicsLogger` driven by
Lightning's hooks::

    class Model(lightning.LightningModule):
        def training_step(self, batch, batch_idx):
            ids, x, y = batch
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            return {"loss": loss, "logits": logits.detach()}

    trainer = lightning.Trainer(callbacks=[DynamicsCallback("s3://bucket/run-7/dynamics")])

Each process of a distributed run writes its own part of every epoch
(``dynamics_rank<R>_epoch_<N>.parquet``); ``alray cartography`` reads an epoch's parts as one.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from alray.cartography.hooks import DynamicsLogger
from alray.sources.files import Storage

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the package's older name
    from pytorch_lightning.callbacks import Callback

__all__ = ["DynamicsCallback", "batch_ids", "batch_labels"]


def batch_ids(batch: Any) -> Any:
    """A batch's row ids: ``batch["id"]`` for a mapping, else the first element."""
    return batch["id"] if isinstance(batch, Mapping) else batch[0]


def batch_labels(batch: Any) -> Any:
    """A batch's given labels: ``batch["label"]`` for a mapping, else the last element."""
    return batch["label"] if isinstance(batch, Mapping) else batch[-1]


class DynamicsCallback(Callback):
    """Logs each training batch's outputs, one file per epoch, for ``alray cartography``.

    Args:
        uri: the log's folder, a local path or any fsspec URL.
        outputs_key: where ``training_step``'s returned mapping holds the batch's ``[B, C]``
            logits (or probabilities, with ``output="probs"``).
        ids: takes a batch and returns its ``[B]`` row ids (default :func:`batch_ids`).
        labels: takes a batch and returns its ``[B]`` given labels (default
            :func:`batch_labels`).
        output: ``logits`` or ``probs``.
        format: ``parquet`` or ``jsonl`` (the reference implementation's layout).
        storage: fsspec options by protocol.
    """

    def __init__(self, uri: str, *, outputs_key: str = "logits",
                 ids: Callable[[Any], Any] = batch_ids,
                 labels: Callable[[Any], Any] = batch_labels, output: str = "logits",
                 format: str = "parquet", storage: Storage | None = None):
        super().__init__()
        self.uri, self.outputs_key, self.ids, self.labels = uri, outputs_key, ids, labels
        self.output, self.format, self.storage = output, format, storage
        self.logger: DynamicsLogger | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.logger is None:  # a resumed fit continues at its epoch
            part = trainer.global_rank if trainer.world_size > 1 else None
            self.logger = DynamicsLogger(self.uri, output=self.output, format=self.format,
                                         epoch=trainer.current_epoch, part=part,
                                         storage=self.storage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, Mapping) or self.outputs_key not in outputs:
            raise ValueError(f"DynamicsCallback: training_step must return a mapping with "
                             f"{self.outputs_key!r} (the batch's [B, C] {self.output}) beside "
                             "'loss'")
        self.logger.log(self.ids(batch), outputs[self.outputs_key], self.labels(batch))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.logger.end_epoch()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.logger is not None:
            self.logger.close()  # an unfinished epoch is never published
