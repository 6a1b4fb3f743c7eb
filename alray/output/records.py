"""Writers for the job's summary files. Each file is committed atomically."""

from __future__ import annotations

import json
import tempfile

import pyarrow as pa

from alray.sources.files import Storage, atomic_write, join_uri, parquet_bytes

__all__ = ["ErrorLog", "write_job_json", "write_selection", "SELECTION_COLUMNS"]

SELECTION_COLUMNS = ["rank", "id", "score", "shard", "uri", "predicted"]


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

    def commit(self, output_uri: str, storage: Storage | None = None) -> str:
        """Write ``errors.jsonl`` and release the spool."""
        uri = join_uri(output_uri, "errors.jsonl")
        self._spool.seek(0)
        try:
            atomic_write(uri, self._spool.read(), storage)
        finally:
            self.close()
        return uri

    def close(self) -> None:
        """Release the spool without writing it (a job that stopped with an exception)."""
        self._spool.close()


def write_selection(output_uri: str, selected: pa.Table | None, carry: tuple[str, ...],
                    id_type: pa.DataType, storage: Storage | None = None) -> tuple[str, pa.Table]:
    """Write ``selection.parquet``: rank, id, score, shard, uri, predicted, then carried columns."""
    if selected is None:
        fields = [("rank", pa.int64()), ("id", id_type), ("score", pa.float32()),
                  ("shard", pa.string()), ("uri", pa.string()), ("predicted", pa.int32())]
        table = pa.table({name: pa.array([], type=t) for name, t in fields})
    else:
        table = selected.append_column("rank", pa.array(range(selected.num_rows), pa.int64()))
        table = table.select(SELECTION_COLUMNS + list(carry))
    uri = join_uri(output_uri, "selection.parquet")
    atomic_write(uri, parquet_bytes(table), storage)
    return uri, table


def write_job_json(output_uri: str, record: dict, storage: Storage | None = None) -> str:
    uri = join_uri(output_uri, "job.json")
    atomic_write(uri, json.dumps(record, indent=2, default=str).encode() + b"\n", storage)
    return uri
