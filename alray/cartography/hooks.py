"""Writing a training log from the training loop, for ``alray cartography``.

The reference implementation of dataset cartography (Swayamdipta et al. 2020) logs, for every
training batch, the logits the model gave each row on its forward pass, and writes one file per
epoch. :class:`DynamicsLogger` does the same for any PyTorch loop, to a local folder or any fsspec
URL::

    logger = DynamicsLogger("s3://bucket/run-7/dynamics")
    for epoch in range(epochs):
        for ids, x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            ...
            logger.log(ids, logits, y)
        logger.end_epoch()             # publishes dynamics_epoch_<epoch>.parquet

With PyTorch Lightning, :class:`alray.cartography.lightning.DynamicsCallback` drives this logger
from the trainer's hooks (that module imports Lightning; nothing else in alray does). In
distributed training each process passes its rank as ``part`` and writes its own part of every
epoch.

Rows go to the file in row groups as the epoch runs (memory: one row group), and the file is
published whole when the epoch ends, never half-written if training stops mid-epoch.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alray.sources.files import Storage, atomic_stream, join_uri

__all__ = ["DynamicsLogger"]

_ROW_GROUP = 65_536


def _numpy(values: Any) -> np.ndarray:
    """A tensor (any device, with or without grad), array or list as a NumPy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if str(values.dtype) in ("torch.bfloat16", "torch.float16"):
            values = values.float()
        values = values.numpy()
    return np.asarray(values)


def _ids(values: Any) -> pa.Array:
    array = _numpy(values)
    if array.dtype.kind in "iu":
        return pa.array(array.astype(np.int64))
    return pa.array([str(v) for v in array.tolist()], pa.string())


class DynamicsLogger:
    """Writes one file per epoch of ``id``, ``gold`` and the model's outputs for each row.

    Args:
        uri: the log's folder, a local path or any fsspec URL.
        output: ``logits`` (default) or ``probs``: what :meth:`log` is given.
        format: ``parquet`` (default) or ``jsonl``, the reference implementation's layout
            (``guid``, ``logits_epoch_N``, ``gold``; ``dynamics_epoch_N.jsonl``).
        epoch: the number of the first epoch written (a resumed training run continues).
        part: this process's rank in distributed training: each writes its own part of every
            epoch (``dynamics_rank<part>_epoch_<N>``), and the parts are read as one epoch.
            None for one process.
        storage: fsspec options by protocol.
    """

    def __init__(self, uri: str, *, output: str = "logits", format: str = "parquet",
                 epoch: int = 0, part: int | None = None, storage: Storage | None = None):
        if output not in ("logits", "probs"):
            raise ValueError(f"output must be 'logits' or 'probs'; got {output!r}")
        if format not in ("parquet", "jsonl"):
            raise ValueError(f"format must be 'parquet' or 'jsonl'; got {format!r}")
        self.uri, self.output, self.format, self.storage = uri, output, format, storage
        self.epoch, self.part = epoch, part
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._file: contextlib.ExitStack | None = None
        self._sink = None
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    @property
    def path(self) -> str:
        """The current epoch's file."""
        suffix = "parquet" if self.format == "parquet" else "jsonl"
        rank = "" if self.part is None else f"rank{self.part}_"
        return join_uri(self.uri, f"dynamics_{rank}epoch_{self.epoch}.{suffix}")

    def log(self, ids: Any, outputs: Any, gold: Any) -> None:
        """Record a batch: ``ids [B]`` (integers or strings), ``outputs [B, C]`` (logits or
        probabilities, as the model gave them on this training step) and ``gold [B]`` (the
        given labels, class indices). Tensors may be on any device."""
        values = _numpy(outputs)
        labels = _numpy(gold).astype(np.int64).reshape(-1)
        if values.ndim != 2 or len(values) != len(labels):
            raise ValueError(f"outputs must be [B, C] and gold [B]; got {values.shape} and "
                             f"{labels.shape}")
        row_ids = _ids(ids)
        if len(row_ids) != len(labels):
            raise ValueError(f"ids must be [B] with B = {len(labels)}; got {len(row_ids)}")
        flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        names = (["id", "gold", self.output] if self.format == "parquet"
                 else ["guid", "gold", f"{self.output}_epoch_{self.epoch}"])
        self._pending.append(pa.record_batch([row_ids, pa.array(labels), column], names=names))
        self._pending_rows += len(labels)
        if self._pending_rows >= _ROW_GROUP:
            self._flush()

    def _open(self) -> None:
        self._file = contextlib.ExitStack()
        self._sink = self._file.enter_context(atomic_stream(self.path, self.storage))

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self._open()
        table = pa.Table.from_batches(self._pending)
        if self.format == "parquet":
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._sink, table.schema, compression="zstd")
            self._writer.write_table(table, row_group_size=len(table))
        else:
            lines = (json.dumps(row, separators=(",", ":")) for row in table.to_pylist())
            self._sink.write(("\n".join(lines) + "\n").encode())
        self.rows += table.num_rows
        self._pending, self._pending_rows = [], 0

    def end_epoch(self) -> str:
        """Publish this epoch's file and move to the next epoch; returns the file's URI."""
        self._flush()
        if self._file is None:
            raise ValueError(f"epoch {self.epoch}: no rows were logged; call log() for the "
                             "rows of each training batch before end_epoch()")
        if self._writer is not None:
            self._writer.close()
        written = self.path
        stack, self._file, self._writer, self._sink = self._file, None, None, None
        stack.close()
        self.epoch += 1
        return written

    def close(self) -> None:
        """Drop an unfinished epoch without publishing it."""
        if self._file is not None:
            stack, self._file, self._writer = self._file, None, None
            with contextlib.suppress(Exception):
                stack.__exit__(RuntimeError, RuntimeError("closed mid-epoch"), None)
        self._pending, self._pending_rows = [], 0
