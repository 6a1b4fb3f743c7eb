"""``alray import-labels``: what annotators answered, back into the ledger the batch was sent
with, all of a file or none of it (one ledger file, written atomically, after every check)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from alray.annotation import answers as read
from alray.annotation.label_studio import LabelStudio, project_url
from alray.errors import ConfigError
from alray.ledger import append_ledger, latest_records, read_ledger
from alray.output.folder import OutputFolder
from alray.sources.files import Storage, access_refusals, open_file

__all__ = ["IMPORT_FORMATS", "ImportResult", "import_labels", "job_classes"]

IMPORT_FORMATS = ("label-studio", "sagemaker", "csv")


@dataclass(frozen=True)
class ImportResult:
    """What an import recorded.

    Attributes:
        ledger: the ledger file written (None: nothing new to record).
        labeled: ids recorded as labeled.
        skipped: ids recorded as skipped.
        unchanged: ids whose answers the ledger already held.
        unanswered: tasks nobody answered (they stay sent).
        answers: answers read.
    """

    ledger: str | None
    labeled: int
    skipped: int
    unchanged: int
    unanswered: int
    answers: int


def job_classes(out: str, storage: Storage | None = None) -> tuple[str, ...] | None:
    """``model.classes`` of the job at ``out`` (None when it names none)."""
    with access_refusals("--job", out):
        job = OutputFolder(out, storage or {}).finished_job("--job")
    classes = job["spec"]["model"].get("classes")
    return tuple(classes) if classes else None


def _answers(source: str, format: str, storage: Storage | None,
             token: str | None) -> tuple[list[read.Answer], int]:
    if format == "label-studio" and source.startswith(("http://", "https://")):
        base, project = project_url(source, "FILE|URL")
        client = LabelStudio(base, token, where=source)
        return read.label_studio_answers(client.export(project), f"project {project}",
                                         client.labeling_config(project))
    with access_refusals("FILE", source):
        try:
            with open_file(source, "rb", storage) as f:
                text = f.read().decode("utf-8-sig")
        except FileNotFoundError:
            raise ConfigError("FILE", f"{source!r} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(source, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                              ) from None
    if format == "label-studio":
        try:
            tasks = json.loads(text)
        except ValueError as exc:
            raise ConfigError(source, f"not JSON ({exc})") from None
        return read.label_studio_answers(tasks, source)
    if format == "sagemaker":
        return read.ground_truth_answers(text, source)
    return read.csv_answers(text, source), 0


def _typed_id(value: Any, id_type: pa.DataType, where: str) -> Any:
    """``value`` as the ledger's id type (a CSV's ids are text)."""
    if pa.types.is_integer(id_type):
        if isinstance(value, bool) or not (isinstance(value, int) or
                                           (isinstance(value, str) and value.strip().lstrip("-")
                                            .isdigit())):
            raise ConfigError(where, f"id {value!r} is not an integer, as the ledger's ids are")
        return int(value)
    return str(value)


def import_labels(source: str, format: str, ledger: str, *,
                  classes: Sequence[str] | None = None, storage: Storage | None = None,
                  token: str | None = None,
                  time: dt.datetime | None = None) -> ImportResult:
    """Record the answers in ``source`` in ``ledger``.

    Args:
        source: a file (any fsspec URL) in ``format``, or for ``label-studio`` a project URL
            ``http(s)://HOST/projects/ID`` whose annotated tasks are pulled over the API.
        format: ``label-studio`` (its JSON export), ``sagemaker`` (a Ground Truth output
            manifest) or ``csv`` (id, label[, status, time]).
        ledger: the ledger the batch was exported with; each id must be in it.
        classes: the class names a label may take (None: not checked).
        time: the records' time (default: now, so they supersede the ``sent`` records).

    Raises:
        ConfigError: a malformed line, an id never sent, a class the model does not know (each
            naming the file and line or task); nothing is recorded then.
    """
    if format not in IMPORT_FORMATS:
        raise ConfigError("--format", f"got {format!r}; give one of {', '.join(IMPORT_FORMATS)}")
    answers, unanswered = _answers(source, format, storage, token)
    known = set(classes) if classes else None
    for answer in answers:
        if known is not None and answer.label is not None and answer.label not in known:
            raise ConfigError(answer.where, f"class {answer.label!r} is not one of the model's "
                                            f"classes ({', '.join(list(classes)[:10])})")
    with access_refusals("--ledger", ledger):
        records = latest_records(read_ledger(ledger, storage, "--ledger", labels=True))
    if records.num_rows == 0:
        raise ConfigError("--ledger", f"{ledger!r} records nothing; import into the ledger the "
                                      "batch was exported with (alray export --ledger)")
    id_type = records.schema.field("id").type
    answers = [read.Answer(_typed_id(a.id, id_type, a.where), a.label, a.time, a.where)
               for a in answers]
    answered = pa.array({a.id for a in answers}, id_type)
    state = {row["id"]: row for row in   # only the answered ids: a ledger may hold millions
             records.filter(pc.is_in(records.column("id"), value_set=answered)).to_pylist()}
    for answer in answers:
        if answer.id not in state:
            raise ConfigError(answer.where, f"id {answer.id!r} was never sent: {ledger} has no "
                                            "record of it; import into the ledger its batch was "
                                            "exported with")
    resolved = read.resolve(answers)
    new = [r for r in resolved if (state[r.id]["status"], state[r.id]["label"])
           != (r.status, r.label)]
    path = None
    if new:
        with access_refusals("--ledger", ledger):
            path = append_ledger(ledger, pa.array([r.id for r in new], id_type),
                                 [r.status for r in new], labels=[r.label for r in new],
                                 round=[state[r.id]["round"] for r in new],
                                 source=f"alray import-labels {format}", storage=storage,
                                 time=time)
    return ImportResult(path, sum(r.status == "labeled" for r in new),
                        sum(r.status == "skipped" for r in new), len(resolved) - len(new),
                        unanswered, len(answers))
