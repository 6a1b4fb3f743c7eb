"""Writers for the job's summary files. Each file is committed atomically."""

from __future__ import annotations

import json
import tempfile

import pyarrow as pa

from alray.output.folder import OutputFolder
from alray.sources.files import parquet_bytes

__all__ = ["ErrorLog", "write_job_json", "write_selection", "SELECTION_COLUMNS"]

SELECTION_COLUMNS = ["rank", "id", "score", "shard", "uri", "predicted", "reason"]


class ErrorLog:
    """``errors.jsonl`` records, spooled to a temporary file so memory stays flat."""

    def __init__(self):
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 * 2**20, mode="w+b")
        self.count = 0
        self.first: dict | None = None

    def add(self, records: list[dict]) -> None:
        for record in records:
            self._spool.write(json.dumps(record, default=str).encode() + b"\n")
            self.first = self.first or record
        self.count += len(records)

    def commit(self, folder: OutputFolder) -> str:
        """Write ``errors.jsonl`` and release the spool."""
        self._spool.seek(0)
        try:
            return folder.write(folder.path(folder.ERRORS), self._spool.read())
        finally:
            self.close()

    def close(self) -> None:
        """Release the spool without writing it (a job that stopped with an exception)."""
        self._spool.close()


def write_selection(folder: OutputFolder, selected: pa.Table | None, carry: tuple[str, ...],
                    id_type: pa.DataType) -> tuple[str, pa.Table]:
    """Write ``selection.parquet``: rank, id, score, shard, uri, predicted, reason, then carried
    columns."""
    if selected is None:
        fields = [("rank", pa.int64()), ("id", id_type), ("score", pa.float32()),
                  ("shard", pa.string()), ("uri", pa.string()), ("predicted", pa.int32()),
                  ("reason", pa.string())]
        table = pa.table({name: pa.array([], type=t) for name, t in fields})
    else:
        table = selected.append_column("rank", pa.array(range(selected.num_rows), pa.int64()))
        present = [c for c in SELECTION_COLUMNS if c in table.column_names]  # regression: no
        table = table.select(present + list(carry))                           # `predicted`
    return folder.write(folder.path(folder.SELECTION), parquet_bytes(table)), table


def write_job_json(folder: OutputFolder, record: dict) -> str:
    return folder.write(folder.path(folder.JOB),
                        json.dumps(record, indent=2, default=str).encode() + b"\n")
