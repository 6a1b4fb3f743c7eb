"""``alray export``: a job's selection to an annotation tool (a file any fsspec URL names, or a
running Label Studio), recorded in a ledger as ``sent``; or the pool's surest predictions as
pseudo-labels for semi-supervised training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

import pyarrow as pa
import pyarrow.csv as pacsv

from alray.annotation import formats
from alray.annotation.batch import Batch
from alray.annotation.label_studio import LabelingConfig, LabelStudio, project_url
from alray.errors import ConfigError
from alray.ledger import append_ledger, next_round
from alray.sources.files import Storage, access_refusals, atomic_stream, atomic_write, url_to_fs

__all__ = ["ExportResult", "export"]

#: The ``<Choices>`` control's name in the configs alray writes.
CONTROL = "choice"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes:
        format: the ``--format``.
        rows: rows exported.
        path: the file written (tasks, manifest, records or pseudo-labels).
        project: the Label Studio project URL the tasks went to (None: a file only).
        ledger: the ledger file recording them as sent (None: no ledger).
        round: the ledger round they were recorded in.
    """

    format: str
    rows: int
    path: str
    project: str | None = None
    ledger: str | None = None
    round: int | None = None


def _presigner(storage: Storage | None, seconds: int) -> Callable[[str], str]:
    fs, _ = url_to_fs("s3://", storage)

    def presign(uri: str) -> str:
        with access_refusals("--presign", uri):
            return fs.sign(uri, expiration=seconds)
    return presign


def _object_field(batch: Batch, rows: list[dict], renames: Mapping[str, str]) -> str:
    """The data field an annotator looks at: ``image``, else the (renamed) URI column, else
    ``text``, else the first field."""
    fields = [f for f in (rows[0] if rows else {}) if f != "alray_id"]
    column = batch.default_uri_column()
    renamed = {c: f for f, c in renames.items()}.get(column, column)
    for choice in ("image", renamed, "text"):
        if choice in fields:
            return choice
    if not fields:
        raise ConfigError("--data-field", "the tasks would carry no data to label; carry the "
                                          "object's URI or text with pool.carry")
    return fields[0]


def _class_names(batch: Batch) -> list[str]:
    if batch.classes:
        return list(batch.classes)
    return sorted({n for n in batch.predicted_names() if n is not None}, key=_natural)


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _label_studio(batch: Batch, to: str | None, renames: Mapping[str, str],
                  presign: Callable[[str], str] | None, create_project: str | None,
                  token: str | None) -> tuple[list[dict], str | None]:
    """The tasks, and the project URL they were pushed to (None: not pushed)."""
    rows = formats.data_fields(batch, renames, presign)
    key = _object_field(batch, rows, renames)
    classes = _class_names(batch)
    if create_project is not None:
        if not batch.classes:
            raise ConfigError("--create-project", "the job's model names no classes; set "
                                                  "model.classes in the spec so that annotators "
                                                  "can choose among all of them")
        if not (to or "").startswith(("http://", "https://")):
            raise ConfigError("--create-project", "give the Label Studio server with --to "
                                                  "http(s)://HOST")
        client = LabelStudio(to, token, where="--to")
        xml = LabelingConfig.for_classes(classes, key, rows[0][key] if rows else None)
        project = client.create_project(create_project, xml)
        config = LabelingConfig.parse(xml)
    elif to is not None and to.startswith(("http://", "https://")):
        base, project = project_url(to, "--to")
        client = LabelStudio(base, token, where="--to")
        config = client.labeling_config(project)
        config.check_classes(classes)
    else:
        return formats.label_studio_tasks(batch, rows, LabelingConfig(CONTROL, key, key,
                                                                      tuple(classes))), None
    tasks = formats.label_studio_tasks(batch, rows, config)
    client.import_tasks(project, tasks)
    return tasks, f"{client.base_url}/projects/{project}"


def _write_pseudo_labels(batch: Batch, path: str, format: str, min_confidence: float,
                         storage: Storage | None) -> int:
    """Stream the confident rows to ``path``, one scores file at a time."""
    names = pa.array(list(batch.classes or ()), pa.string())
    rows, writer = 0, None
    with atomic_stream(path, storage) as sink:
        for table in batch.confident_rows(min_confidence):
            predicted = table.column("predicted")
            label = (names.take(predicted) if batch.classes
                     else predicted.cast(pa.string()))
            table = table.set_column(1, "predicted", label)
            rows += table.num_rows
            if format == "csv":
                writer = writer or pacsv.CSVWriter(sink, table.schema)
                writer.write_table(table)
            else:
                sink.write(formats.jsonl_bytes(table))
        if writer is not None:
            writer.close()
        elif format == "csv":  # no row reached the threshold: the header alone
            header = ["id", "predicted", "confidence", *batch.carry]
            sink.write((",".join(f'"{c}"' for c in header) + "\n").encode())
    return rows


def export(out: str, format: str, *, to: str | None = None, ledger: str | None = None,
           round: int | None = None, data_fields: Mapping[str, str] | None = None,
           uri_column: str | None = None, presign: int | None = None,
           create_project: str | None = None, pseudo_labels: bool = False,
           min_confidence: float = 0.99, storage: Storage | None = None,
           token: str | None = None) -> ExportResult:
    """Export the selection of the finished job at ``out``.

    Args:
        format: ``label-studio``, ``sagemaker``, ``csv`` or ``jsonl``.
        to: where: any fsspec URL for the file (default ``<out>/exports/<name>``), or a Label
            Studio project, ``http(s)://HOST/projects/ID`` (the tasks are pushed; the file is
            still written under ``<out>/exports/``), or with ``create_project`` its server.
        ledger: record the exported ids there as ``sent``, in ``round`` (default: the
            ledger's next).
        data_fields: Label Studio ``data`` field -> carried column (``{"image": "image_uri"}``).
        uri_column: sagemaker: the column whose values are each row's object (``source-ref``).
        presign: label-studio: turn ``s3://`` URIs into presigned HTTPS URLs valid this many
            seconds.
        create_project: make a Label Studio project of this title, its config from the classes.
        pseudo_labels: instead of the selection, the pool's rows (from every scores file, minus
            the selection) whose top probability is at least ``min_confidence``, with their
            predicted class, as ``csv`` or ``jsonl``; never recorded in a ledger.
        storage: fsspec options by protocol (for ``out``, ``to``, ``ledger`` and presigning).
        token: Label Studio's token (default ``$LABEL_STUDIO_API_KEY``).

    Raises:
        ConfigError: a bad option, a missing job, a refused store or a refusing server; nothing
            is written and the ledger is unchanged.
    """
    if format not in formats.FORMATS:
        raise ConfigError("--format", f"got {format!r}; give one of "
                                      f"{', '.join(formats.FORMATS)}")
    if pseudo_labels:
        if format not in ("csv", "jsonl"):
            raise ConfigError("--format", "pseudo-labels are for training, not for annotators: "
                                          "give csv or jsonl")
        if ledger is not None:
            raise ConfigError("--ledger", "pseudo-labels are the model's guesses and never enter "
                                          "a ledger; drop --ledger")
        if not 0.0 < min_confidence <= 1.0:
            raise ConfigError("--min-confidence", f"got {min_confidence}; give a probability "
                                                  "in (0, 1]")
    if (presign is not None or create_project is not None or data_fields) \
            and format != "label-studio":
        raise ConfigError("--format", "--data-field, --create-project and --presign are for "
                                      "label-studio exports")
    if presign is not None and presign <= 0:
        raise ConfigError("--presign", f"got {presign}; give the URLs' lifetime in seconds")
    batch = Batch.load(out, storage)
    file_to = to if to is not None and not to.startswith(("http://", "https://")) else None

    if pseudo_labels:
        path = file_to or batch.folder.path(batch.folder.EXPORTS, f"pseudo-labels.{format}")
        with access_refusals("--to", path):
            rows = _write_pseudo_labels(batch, path, format, min_confidence, storage)
        return ExportResult(format, rows, path)

    if ledger is not None:  # check the ledger before anything leaves, so a bad one stops it
        with access_refusals("--ledger", ledger):
            round = next_round(ledger, storage) if round is None else round
    path = file_to or batch.folder.path(batch.folder.EXPORTS, formats.FORMATS[format])
    signer = _presigner(storage, presign) if presign is not None else None
    project = None
    if format == "label-studio":
        tasks, project = _label_studio(batch, to, data_fields or {}, signer, create_project,
                                       token)
        payload = json.dumps(tasks, indent=1, default=str).encode()
    elif format == "sagemaker":
        payload = formats.ground_truth_manifest(batch, batch.object_uris(uri_column))
    else:
        table = formats.plain_records(batch)
        payload = (formats.csv_bytes if format == "csv" else formats.jsonl_bytes)(table)
    with access_refusals("--to", path):
        atomic_write(path, payload, storage)
    ledger_file = None
    if ledger is not None:
        with access_refusals("--ledger", ledger):
            ledger_file = append_ledger(ledger, batch.rows.column("id"), "sent", round=round,
                                        source=f"alray export {format}", storage=storage)
    return ExportResult(format, batch.rows.num_rows, path, project, ledger_file, round)
