"""What each annotation tool reads: a batch as Label Studio tasks, a SageMaker Ground Truth input
manifest, or plain CSV / JSON lines. Pure functions of a :class:`~alray.annotation.batch.Batch`;
writing, pushing and ledgers are :mod:`alray.annotation.export`'s.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Callable, Mapping, Sequence

import pyarrow as pa

from alray.annotation.batch import Batch
from alray.annotation.label_studio import LabelingConfig
from alray.errors import ConfigError

__all__ = ["FORMATS", "data_fields", "label_studio_tasks", "ground_truth_manifest",
           "plain_records", "csv_bytes", "jsonl_bytes"]

#: ``--format`` choices, with the file each writes by default under ``<OUT>/exports/``.
FORMATS = {"label-studio": "label-studio.json", "sagemaker": "sagemaker.manifest",
           "csv": "selection.csv", "jsonl": "selection.jsonl"}


def _json_value(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def data_fields(batch: Batch, renames: Mapping[str, str],
                presign: Callable[[str], str] | None = None) -> list[dict]:
    """Each row's ``data`` for Label Studio: every carried column under its own name (or the
    name ``renames`` gives it, ``{field: column}``), ``image`` for an image folder's URI, and
    ``alray_id``. ``presign`` rewrites ``s3://`` values.

    Raises:
        ConfigError: (``--data-field``) a renamed column the selection lacks; a binary column.
    """
    columns = {column: column for column in batch.carry}
    for field, column in renames.items():
        if column not in batch.rows.column_names or column in ("rank", "shard", "reason"):
            raise ConfigError("--data-field", f"{field}={column}: the selection has no carried "
                                              f"column {column!r} (it carries "
                                              f"{', '.join(batch.carry) or 'nothing'})")
        columns.pop(column, None)
        columns[field] = column
    values = {}
    for field, column in columns.items():
        array = batch.rows.column(column)
        if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
            raise ConfigError("--data-field", f"column {column!r} holds bytes; annotation tools "
                                              "read URIs or text: carry a URI column instead")
        values[field] = [_json_value(v) for v in array.to_pylist()]
    if batch.image_folder and "image" not in values:
        values["image"] = batch.object_uris()
    if presign is not None:
        values = {field: [presign(v) if isinstance(v, str) and v.startswith("s3://") else v
                          for v in column] for field, column in values.items()}
    ids = batch.rows.column("id").to_pylist()
    return [{**{field: column[i] for field, column in values.items()}, "alray_id": ids[i]}
            for i in range(len(ids))]


def label_studio_tasks(batch: Batch, data: Sequence[dict], config: LabelingConfig) -> list[dict]:
    """Label Studio tasks, as its import API and its "Import" dialog take them: ``data`` and,
    for a classifier, the model's predicted class as a pre-annotation whose ``score`` is the
    row's alray score (the data manager sorts by it).

    Raises:
        ConfigError: (``--to``) the tasks lack the field the labeling config reads.
    """
    config.check_data(data[0].keys() if data else ())
    scores = batch.rows.column("score").to_pylist()
    version = f"alray {batch.name} {batch.strategy}"
    tasks = []
    for row, name, score in zip(data, batch.predicted_names(), scores):
        task = {"data": row}
        if name is not None:
            task["predictions"] = [config.prediction(name, float(score), version)]
        tasks.append(task)
    return tasks


def ground_truth_manifest(batch: Batch, uris: Sequence[str | None]) -> bytes:
    """A SageMaker Ground Truth input manifest: one JSON object per line, ``source-ref`` for an
    ``s3://`` object, else ``source`` for the text itself, with ``alray-id`` and
    ``alray-score`` beside it (Ground Truth passes extra keys through to its output manifest).
    """
    lines = []
    for uri, row_id, score in zip(uris, batch.rows.column("id").to_pylist(),
                                  batch.rows.column("score").to_pylist()):
        key = "source-ref" if uri is not None and uri.startswith("s3://") else "source"
        lines.append(json.dumps({key: uri, "alray-id": row_id, "alray-score": score}))
    return ("\n".join(lines) + "\n").encode()


def plain_records(batch: Batch) -> pa.Table:
    """The batch for any other tool: rank, id, score, predicted (class name), reason, the
    carried columns, and ``image_uri`` for an image folder."""
    rows = batch.rows
    columns = {"rank": rows.column("rank"), "id": rows.column("id"),
               "score": rows.column("score"),
               "predicted": pa.array(batch.predicted_names(), pa.string()),
               "reason": rows.column("reason")}
    columns.update({c: rows.column(c) for c in batch.carry})
    if batch.image_folder:
        columns["image_uri"] = pa.array(batch.object_uris(), pa.string())
    return pa.table(columns)


def csv_bytes(table: pa.Table) -> bytes:
    """``table`` as CSV with a header (values as Python prints them; nulls empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    return out.getvalue().encode()


def jsonl_bytes(table: pa.Table) -> bytes:
    """``table`` as JSON lines, one object per row."""
    return "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist()).encode()
