"""Labels out and back in, without an annotation server: exports of a real job in every format,
Ground Truth output manifests and CSV answers imported into its ledger, the rule for several
annotators, and bad input (each a one-line error that names the file and line, with nothing
recorded)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import urllib.request
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import alray
from alray.annotation import export, import_labels
from alray.annotation.answers import Answer, resolve
from alray.errors import ConfigError
from alray.ledger import latest_records, read_ledger
from tests.annotation_jobs import CLASSES, truth, write_digits_job

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A finished job over digits (20 selected of 1,697) and its output folder."""
    folder = tmp_path_factory.mktemp("annotation")
    result = alray.run(alray.JobSpec.from_yaml(write_digits_job(folder)), progress=False)
    return folder, str(folder / "out"), result.selection


@pytest.fixture
def ledger(tmp_path):
    return str(tmp_path / "ledger")


def _ledger_state(uri: str) -> dict:
    return {r["id"]: (r["status"], r["label"], r["round"])
            for r in latest_records(read_ledger(uri, labels=True)).to_pylist()}


def test_csv_and_jsonl_hold_the_selection_with_class_names(job, tmp_path):
    _, out, selection = job
    export(out, "csv", to=str(tmp_path / "batch.csv"))
    export(out, "jsonl", to=str(tmp_path / "batch.jsonl"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "batch.csv").read_text())))
    lines = [json.loads(x) for x in (tmp_path / "batch.jsonl").read_text().splitlines()]
    assert [int(r["id"]) for r in rows] == [r["id"] for r in lines] == \
        selection.column("id").to_pylist()
    assert [r["predicted"] for r in lines] == [CLASSES[i] for i in
                                               selection.column("predicted").to_pylist()]
    assert [r["image_uri"] for r in rows] == selection.column("image_uri").to_pylist()
    assert [float(r["score"]) for r in rows] == pytest.approx(selection.column("score")
                                                              .to_pylist())
    assert [r["rank"] for r in lines] == list(range(selection.num_rows))


def test_label_studio_tasks_carry_the_uri_the_id_and_a_scored_prediction(job, tmp_path):
    _, out, selection = job
    result = export(out, "label-studio", data_fields={"image": "image_uri"})
    assert result.path == f"{out}/exports/label-studio.json" and result.project is None
    tasks = json.loads(Path(result.path).read_text())
    assert [t["data"]["alray_id"] for t in tasks] == selection.column("id").to_pylist()
    assert [t["data"]["image"] for t in tasks] == selection.column("image_uri").to_pylist()
    assert all(set(t["data"]) == {"image", "alray_id"} for t in tasks)
    for task, predicted, score in zip(tasks, selection.column("predicted").to_pylist(),
                                      selection.column("score").to_pylist()):
        (prediction,) = task["predictions"]
        assert prediction["score"] == pytest.approx(score)
        assert prediction["result"] == [{"from_name": "choice", "to_name": "image",
                                         "type": "choices",
                                         "value": {"choices": [CLASSES[predicted]]}}]


def test_sagemaker_manifest_is_ground_truths_input_shape(job):
    _, out, selection = job
    result = export(out, "sagemaker")
    lines = Path(result.path).read_text().splitlines()
    assert len(lines) == selection.num_rows
    for line, row in zip(lines, selection.to_pylist()):
        record = json.loads(line)  # one JSON object per line, as Ground Truth reads it
        assert record == {"source-ref": row["image_uri"], "alray-id": row["id"],
                          "alray-score": pytest.approx(row["score"])}


def test_export_records_the_batch_as_sent_round_after_round(job, ledger):
    _, out, selection = job
    first = export(out, "csv", ledger=ledger)
    second = export(out, "jsonl", ledger=ledger)
    assert (first.round, second.round) == (0, 1)
    records = read_ledger(ledger)
    assert records.num_rows == 2 * selection.num_rows
    assert set(records.column("status").to_pylist()) == {"sent"}
    assert set(_ledger_state(ledger)) == set(selection.column("id").to_pylist())


def test_export_writes_to_object_storage(job, s3, s3_server):
    _, out, selection = job
    s3.mkdir("exports-bucket")
    export(out, "jsonl", to="s3://exports-bucket/round-0/batch.jsonl",
           storage={"s3": {"endpoint_url": s3_server}})
    lines = s3.cat_file("exports-bucket/round-0/batch.jsonl").decode().splitlines()
    assert [json.loads(x)["id"] for x in lines] == selection.column("id").to_pylist()


def test_presigned_uris_open_in_a_browser(job, s3, s3_server):
    _, out, selection = job
    s3.mkdir("digits")
    first = selection.column("id")[0].as_py()
    s3.pipe_file(f"digits/images/{first}.png", b"\x89PNG pixels")
    storage = {"s3": {"endpoint_url": s3_server}}
    result = export(out, "label-studio", presign=600, storage=storage)
    task = json.loads(Path(result.path).read_text())[0]
    url = task["data"]["image_uri"]
    assert url.startswith("http") and "Signature" in url
    assert urllib.request.urlopen(url, timeout=10).read() == b"\x89PNG pixels"


def test_pseudo_labels_are_the_pools_surest_rows_and_never_enter_a_ledger(job, tmp_path):
    _, out, selection = job
    result = export(out, "csv", pseudo_labels=True, min_confidence=0.95,
                    to=str(tmp_path / "pseudo.csv"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "pseudo.csv").read_text())))
    scores = pq.read_table(f"{out}/scores")
    confident = scores.filter(pc.greater_equal(scores.column("confidence"), 0.95))
    expected = set(confident.column("id").to_pylist()) - set(selection.column("id").to_pylist())
    assert result.rows == len(rows) == len(expected) > 100
    assert {int(r["id"]) for r in rows} == expected
    assert all(float(r["confidence"]) >= 0.95 and r["predicted"] in CLASSES for r in rows)
    by_id = dict(zip(confident.column("id").to_pylist(), confident.column("predicted")
                     .to_pylist()))
    assert all(r["predicted"] == CLASSES[by_id[int(r["id"])]] for r in rows)
    with pytest.raises(ConfigError, match="--ledger"):
        export(out, "csv", pseudo_labels=True, ledger=str(tmp_path / "ledger"))
    assert not (tmp_path / "ledger").exists()


def _ground_truth_output(manifest: str, answers: dict, failed: set) -> str:
    """A Ground Truth output manifest for an input manifest, in AWS's documented shape for an
    image classification job named ``digits``: each line keeps the input's keys and gains the
    label attribute and its metadata; a line the job failed has only metadata with a
    ``failure-reason``."""
    lines = []
    for line in manifest.splitlines():
        record = json.loads(line)
        row_id = record["alray-id"]
        if row_id in failed:
            record["digits-metadata"] = {"failure-reason": "ClientError: the worker declined",
                                         "job-name": "labeling-job/digits"}
        elif row_id in answers:
            record["digits"] = CLASSES.index(answers[row_id])
            record["digits-metadata"] = {
                "class-name": answers[row_id], "confidence": 0.91,
                "type": "groundtruth/image-classification", "job-name": "labeling-job/digits",
                "human-annotated": "yes", "creation-date": "2026-11-23T10:15:00.000000"}
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def test_ground_truth_output_imports_and_the_next_run_never_selects_those_ids(job, tmp_path,
                                                                               ledger):
    folder, out, selection = job
    manifest = Path(export(out, "sagemaker", ledger=ledger).path).read_text()
    ids = selection.column("id").to_pylist()
    answers = dict(zip(ids[:12], truth(ids[:12])))
    output = tmp_path / "output.manifest"
    output.write_text(_ground_truth_output(manifest, answers, failed={ids[12]}))
    result = import_labels(str(output), "sagemaker", ledger, classes=CLASSES)
    assert (result.labeled, result.skipped, result.answers) == (12, 1, 13)
    assert result.unanswered == len(ids) - 13
    state = _ledger_state(ledger)
    assert {i: state[i][:2] for i in ids[:12]} == {i: ("labeled", answers[i]) for i in ids[:12]}
    assert state[ids[12]][:2] == ("skipped", None)
    assert all(state[i][0] == "sent" for i in ids[13:])
    assert {v[2] for v in state.values()} == {0}  # the round each id was sent in

    again = alray.run(alray.JobSpec.from_yaml(
        folder / "job.yaml", overrides={"selection.exclude": [ledger]},
        out=str(tmp_path / "round-1")), progress=False)
    assert not set(again.selection.column("id").to_pylist()) & set(ids)
    assert again.selection.num_rows == selection.num_rows


def test_several_annotators_resolve_by_majority_then_latest(job, tmp_path, ledger):
    _, out, selection = job
    export(out, "csv", ledger=ledger)
    a, b, c, d = selection.column("id").to_pylist()[:4]
    (tmp_path / "answers.csv").write_text(
        "id,label,status,time\n"
        f"{a},one,,2026-11-20T10:00:00\n{a},seven,,2026-11-20T11:00:00\n"
        f"{a},one,,2026-11-20T09:00:00\n"                    # a: one, two votes to one
        f"{b},one,,2026-11-20T10:00:00\n{b},seven,,2026-11-20T11:00:00\n"  # b: a tie: latest
        f"{c},,skipped,2026-11-20T10:00:00\n{c},two,,2026-11-20T08:00:00\n"  # c: one label wins
        f"{d},,skipped,\n{d},,skipped,\n")                    # d: all skipped
    result = import_labels(str(tmp_path / "answers.csv"), "csv", ledger)
    state = _ledger_state(ledger)
    assert [state[i][:2] for i in (a, b, c, d)] == [("labeled", "one"), ("labeled", "seven"),
                                                    ("labeled", "two"), ("skipped", None)]
    assert (result.labeled, result.skipped, result.answers) == (3, 1, 9)
    again = import_labels(str(tmp_path / "answers.csv"), "csv", ledger)
    assert (again.ledger, again.unchanged) == (None, 4)


def test_label_studio_export_file_imports_with_cancelled_and_unanswered_tasks(job, tmp_path,
                                                                              ledger):
    _, out, selection = job
    tasks = json.loads(Path(export(out, "label-studio", ledger=ledger).path).read_text())
    ids = selection.column("id").to_pylist()

    def annotation(choice, when, cancelled=False):
        return {"id": 1, "completed_by": 1, "was_cancelled": cancelled, "updated_at": when,
                "result": [] if cancelled else [{"from_name": "choice", "to_name": "image_uri",
                                                 "type": "choices",
                                                 "value": {"choices": [choice]}}]}
    tasks[0]["annotations"] = [annotation("three", "2026-11-23T10:00:00Z")]
    tasks[1]["annotations"] = [annotation(None, "2026-11-23T10:00:00Z", cancelled=True)]
    tasks[2]["annotations"] = [annotation("four", "2026-11-23T10:00:00Z"),
                               annotation(None, "2026-11-23T11:00:00Z", cancelled=True)]
    for n, task in enumerate(tasks):
        task["id"] = 100 + n
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    result = import_labels(str(tmp_path / "export.json"), "label-studio", ledger,
                           classes=CLASSES)
    state = _ledger_state(ledger)
    assert [state[i][:2] for i in ids[:3]] == [("labeled", "three"), ("skipped", None),
                                               ("labeled", "four")]
    assert result.unanswered == len(ids) - 3
    assert all(state[i][0] == "sent" for i in ids[3:])


def test_resolve_is_order_independent_for_majorities():
    import datetime as dt

    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    answers = [Answer(1, "x", t, "f, line 2"), Answer(1, "y", t + dt.timedelta(1), "f, line 3"),
               Answer(1, "x", t, "f, line 4")]
    assert resolve(answers)[0].label == resolve(answers[::-1])[0].label == "x"


# -- bad input: one line naming the file and line; nothing recorded ---------------------------

def _import_fails(tmp_path, ledger, name, text, format, match, **options):
    before = sorted(Path(ledger).iterdir())
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=match) as error:
        import_labels(str(tmp_path / name), format, ledger, **options)
    assert "\n" not in str(error.value)
    assert sorted(Path(ledger).iterdir()) == before


@pytest.fixture
def sent(job, ledger):
    _, out, selection = job
    export(out, "csv", ledger=ledger)
    return selection.column("id").to_pylist()


def test_a_malformed_manifest_line_is_named_and_nothing_is_imported(tmp_path, ledger, sent):
    good = json.dumps({"alray-id": sent[0], "digits": 1,
                       "digits-metadata": {"class-name": "one"}})
    _import_fails(tmp_path, ledger, "out.manifest", f"{good}\n{{\"alray-id\": 3,\n",
                  "sagemaker", r"out\.manifest, line 2: not a JSON object")
    no_id = json.dumps({"source-ref": "s3://x/y.png", "digits-metadata": {"class-name": "one"}})
    _import_fails(tmp_path, ledger, "out.manifest", f"{good}\n{no_id}\n", "sagemaker",
                  r"line 2: no 'alray-id'")


def test_an_id_never_sent_is_named(tmp_path, ledger, sent):
    _import_fails(tmp_path, ledger, "a.csv", f"id,label\n{sent[0]},one\n999999,two\n", "csv",
                  r"a\.csv, line 3: id 999999 was never sent")


def test_an_unknown_class_is_named(tmp_path, ledger, sent):
    _import_fails(tmp_path, ledger, "a.csv", f"id,label\n{sent[0]},one\n{sent[1]},eleven\n",
                  "csv", r"a\.csv, line 3: class 'eleven' is not one of the model's classes",
                  classes=CLASSES)


def test_malformed_csv_lines_are_named(tmp_path, ledger, sent):
    _import_fails(tmp_path, ledger, "a.csv", f"id,label\n{sent[0]},one,extra\n", "csv",
                  r"line 2: 3 fields; the header has 2")
    _import_fails(tmp_path, ledger, "a.csv", f"id,label\n{sent[0]},\n", "csv",
                  r"line 2: no label")
    _import_fails(tmp_path, ledger, "a.csv", "name,label\n1,one\n", "csv",
                  r"line 1: the header is")
    _import_fails(tmp_path, ledger, "a.csv", "id,label\nabc,one\n", "csv",
                  r"line 2: id 'abc' is not an integer")


def test_a_label_studio_task_without_alray_id_is_named(tmp_path, ledger, sent):
    tasks = [{"id": 7, "data": {"alray_id": sent[0]}, "annotations": []},
             {"id": 8, "data": {"image": "x"}, "annotations": []}]
    _import_fails(tmp_path, ledger, "e.json", json.dumps(tasks), "label-studio",
                  r"e\.json, task 2 \(Label Studio task 8\): no data\.alray_id")
    _import_fails(tmp_path, ledger, "e.json", "{not json", "label-studio", r"not JSON")


def test_export_refuses_bad_options_before_writing(job, tmp_path):
    _, out, _ = job
    cases = [({"format": "label-studio", "pseudo_labels": True}, "--format: pseudo-labels"),
             ({"format": "csv", "presign": 60}, "--format: --data-field, --create-project"),
             ({"format": "xml"}, "--format: got 'xml'"),
             ({"format": "label-studio", "data_fields": {"image": "nope"}},
              "--data-field: image=nope: the selection has no carried column 'nope'"),
             ({"format": "sagemaker", "uri_column": "nope"},
              "--uri-column: the selection has no column 'nope'"),
             ({"format": "csv", "pseudo_labels": True, "min_confidence": 1.5},
              "--min-confidence")]
    for options, message in cases:
        target = tmp_path / "never"
        with pytest.raises(ConfigError, match=message):
            export(out, to=str(target), **options)
        assert not target.exists()
    with pytest.raises(ConfigError, match="OUT: no job.json under"):
        export(str(tmp_path / "nothing"), "csv")


def test_cli_export_and_import_round(job, tmp_path, capsys):
    from alray.cli import main

    _, out, selection = job
    ledger = str(tmp_path / "cli-ledger")
    assert main(["export", out, "--format", "sagemaker", "--ledger", ledger,
                 "--to", str(tmp_path / "in.manifest")]) == 0
    assert "recorded as sent (round 0)" in capsys.readouterr().out
    first = selection.column("id")[0].as_py()
    (tmp_path / "a.csv").write_text(f"id,label\n{first},{truth([first])[0]}\n")
    assert main(["import-labels", str(tmp_path / "a.csv"), "--format", "csv", "--ledger",
                 ledger, "--job", out]) == 0
    assert "1 labeled" in capsys.readouterr().out
    (tmp_path / "b.csv").write_text(f"id,label\n{first},ten\n")
    assert main(["import-labels", str(tmp_path / "b.csv"), "--format", "csv", "--ledger",
                 ledger, "--job", out]) == 2
    assert capsys.readouterr().err.startswith(f"alray: error: {tmp_path}/b.csv, line 2: class")
    shutil.rmtree(ledger)
