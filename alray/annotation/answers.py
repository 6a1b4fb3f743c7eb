"""What annotators answered, read from the files their tools write, and the rule that turns
several answers for one id into one ledger record.

Each reader turns a whole file into :class:`Answer` records or raises on its first bad line,
naming the file and the line (or task), so nothing is imported from a file that is partly wrong.

The rule (:func:`resolve`): an id anyone labeled is ``labeled``, with the label most annotators
gave; a tie goes to the label given last. An id whose every answer is a skip (Label Studio's
cancelled annotations, Ground Truth's failed lines, CSV's ``skipped``) is ``skipped``. An id with
no answer gets no record: it stays ``sent``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from alray.annotation.label_studio import LabelingConfig
from alray.errors import ConfigError

__all__ = ["Answer", "Resolved", "label_studio_answers", "ground_truth_answers", "csv_answers",
           "resolve"]

_EARLIEST = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Answer:
    """One annotator's answer for one id.

    Attributes:
        id: alray's id, as the file holds it (checked against the ledger later).
        label: the class name given; None for a skip.
        time: when it was given (earliest possible when the file does not say).
        where: the file and line (or task) it came from, for errors.
    """

    id: Any
    label: str | None
    time: dt.datetime
    where: str


@dataclass(frozen=True)
class Resolved:
    """The one record an id's answers come to (``status``: labeled or skipped)."""

    id: Any
    status: str
    label: str | None
    answers: int
    where: str


def _time(text: Any, where: str) -> dt.datetime:
    if text in (None, ""):
        return _EARLIEST
    try:
        when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(where, f"time {text!r} is not an ISO 8601 date and time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def label_studio_answers(tasks: Any, source: str,
                         config: LabelingConfig | None = None) -> tuple[list[Answer], int]:
    """Answers in a Label Studio JSON export (a list of tasks, each with ``data.alray_id`` and
    ``annotations``); ``config`` picks the ``<Choices>`` control when a task has several.
    Returns the answers and the number of tasks nobody answered."""
    if not isinstance(tasks, list):
        raise ConfigError(source, "not a Label Studio JSON export (a list of tasks); export the "
                                  "project as JSON")
    config = config or LabelingConfig("", "", "", ())
    answers, unanswered = [], 0
    for n, task in enumerate(tasks, 1):
        where = f"{source}, task {n}" + (f" (Label Studio task {task['id']})"
                                         if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or "alray_id" not in (task.get("data") or {}):
            raise ConfigError(where, "no data.alray_id; import the tasks that `alray export` "
                                     "made (it puts alray's id there)")
        row_id, given = task["data"]["alray_id"], 0
        for annotation in task.get("annotations") or []:
            when = _time(annotation.get("updated_at") or annotation.get("created_at"), where)
            if annotation.get("was_cancelled"):
                answers.append(Answer(row_id, None, when, where))
                given += 1
                continue
            choices = config.choice_of(annotation.get("result") or [])
            if len(choices) > 1:
                raise ConfigError(where, f"annotation {annotation.get('id')} chose "
                                         f"{len(choices)} classes ({choices}); alray records one "
                                         "label per id: use a single-choice control")
            if choices:
                answers.append(Answer(row_id, str(choices[0]), when, where))
                given += 1
        unanswered += given == 0
    return answers, unanswered


def _json_lines(text: str, source: str) -> Iterable[tuple[str, dict]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}, line {n}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ConfigError(where, f"not a JSON object ({exc})") from None
        if not isinstance(record, dict):
            raise ConfigError(where, "not a JSON object")
        yield where, record


def ground_truth_answers(text: str, source: str) -> tuple[list[Answer], int]:
    """Answers in a SageMaker Ground Truth output manifest (JSON lines), and the number of lines
    nobody answered. A line's label attribute is the key whose ``<key>-metadata`` object holds
    ``class-name`` (a label) or ``failure-reason`` (a skip); with several (chained jobs), the
    latest ``creation-date`` wins; a line with none was not labeled (a stopped job). The id is
    ``alray-id``, which the input manifest carried through."""
    answers, unanswered = [], 0
    for where, line in _json_lines(text, source):
        if "alray-id" not in line:
            raise ConfigError(where, "no 'alray-id'; import the output of a labeling job whose "
                                     "input manifest `alray export --format sagemaker` wrote")
        found = []
        for key, meta in line.items():
            if not (key.endswith("-metadata") and isinstance(meta, dict)):
                continue
            if "failure-reason" in meta:
                found.append((_time(meta.get("creation-date"), where), None))
            elif "class-name" in meta:
                found.append((_time(meta.get("creation-date"), where), str(meta["class-name"])))
        if not found:
            unanswered += 1
            continue
        when, label = max(found, key=lambda item: item[0])
        answers.append(Answer(line["alray-id"], label, when, where))
    return answers, unanswered


def csv_answers(text: str, source: str) -> list[Answer]:
    """Answers in a CSV file with a header: ``id`` and ``label``, and optionally ``status``
    (``labeled`` or ``skipped``) and ``time``; one row per answer, several rows for an id when
    several people answered."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if not header or "id" not in header or "label" not in header:
        raise ConfigError(f"{source}, line 1", f"the header is {header}; it needs id and label "
                                               "(and optionally status, time)")
    answers = []
    for n, row in enumerate(rows, 2):
        where = f"{source}, line {n}"
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError(where, f"{len(row)} fields; the header has {len(header)}")
        record = dict(zip(header, row))
        status = record.get("status") or "labeled"
        if status not in ("labeled", "skipped"):
            raise ConfigError(where, f"status {status!r}; give labeled or skipped")
        if status == "labeled" and not record["label"]:
            raise ConfigError(where, "no label; give one, or status skipped")
        label = record["label"] if status == "labeled" else None
        answers.append(Answer(record["id"], label, _time(record.get("time"), where), where))
    return answers


def _latest(answers: Sequence[Answer]) -> Answer:
    """The answer given last: by time, then by position in the file."""
    return max(enumerate(answers), key=lambda item: (item[1].time, item[0]))[1]


def resolve(answers: Sequence[Answer]) -> list[Resolved]:
    """One record per id, by the rule in this module's docstring, in order of first answer."""
    by_id: dict[Any, list[Answer]] = {}
    for answer in answers:
        by_id.setdefault(answer.id, []).append(answer)
    resolved = []
    for row_id, given in by_id.items():
        labels = [a for a in given if a.label is not None]
        last = _latest(given)
        if not labels:
            resolved.append(Resolved(row_id, "skipped", None, len(given), last.where))
            continue
        votes = Counter(a.label for a in labels)
        top = max(votes.values())
        tied = {label for label, count in votes.items() if count == top}
        winner = _latest([a for a in labels if a.label in tied])
        resolved.append(Resolved(row_id, "labeled", winner.label, len(given), winner.where))
    return resolved
