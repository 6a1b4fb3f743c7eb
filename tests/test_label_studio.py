"""The round trip with a real Label Studio server on 127.0.0.1: export pushes a job's batch into
a project, an annotator's client answers over Label Studio's API, import-labels pulls the answers
back into the ledger, and the next run never selects those ids.

Label Studio pins an older pyarrow than alray's, so the server lives in a virtualenv of its own:
`.ci/run` makes `.venv-label-studio` (or set ALRAY_LABEL_STUDIO to a `label-studio` program).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import alray
from alray.annotation import export, import_labels
from alray.errors import ConfigError
from alray.ledger import latest_records, read_ledger
from tests.annotation_jobs import CLASSES, truth, write_digits_job
from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = Path(os.environ.get("ALRAY_LABEL_STUDIO",
                              ROOT / ".venv-label-studio" / "bin" / "label-studio"))
START_LIMIT = 300.0

pytestmark = pytest.mark.usefixtures("ray_session")


class Server:
    """A running Label Studio: its URL, an admin's token, and an annotator's client."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def call(self, method: str, path: str, body=None):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def tasks(self, project: int) -> list[dict]:
        return self.call("GET", f"/api/tasks?project={project}&page_size=1000")["tasks"]

    def annotate(self, task: int, choice: str | None, to_name: str = "image") -> None:
        """Answer a task as an annotator's client does (None: cancel, "skip")."""
        result = [] if choice is None else [{"from_name": "choice", "to_name": to_name,
                                             "type": "choices",
                                             "value": {"choices": [choice]}}]
        self.call("POST", f"/api/tasks/{task}/annotations",
                  {"result": result, "was_cancelled": choice is None, "lead_time": 3.5})


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    if not PROGRAM.exists():
        reason = (f"Label Studio is not installed at {PROGRAM}: `python3 -m venv "
                  ".venv-label-studio && .venv-label-studio/bin/pip install "
                  "label-studio==1.23.2` (as .ci/run does), or set ALRAY_LABEL_STUDIO")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    data, port, token = tmp_path_factory.mktemp("label-studio"), _free_port(), uuid.uuid4().hex
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data),
           "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
           "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
    log = (data / "server.log").open("wb")
    server = subprocess.Popen(
        [str(PROGRAM), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
         str(port), "--data-dir", str(data), "--username", "admin@example.com", "--password",
         uuid.uuid4().hex, "--user-token", token], stdout=log, stderr=subprocess.STDOUT,
        env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started, deadline = time.monotonic(), time.monotonic() + START_LIMIT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if json.loads(answer.read()).get("status") == "UP":
                        break
            except (OSError, ValueError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (data / "server.log").read_text(errors="replace")[-1500:]
                pytest.fail(f"Label Studio did not answer on {url} within {START_LIMIT:.0f} s "
                            f"(exit {server.poll()}):\n{tail}")
            time.sleep(0.5)
        print(f"\nLabel Studio ready in {time.monotonic() - started:.1f} s")
        yield Server(url, token)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ls-job")
    result = alray.run(alray.JobSpec.from_yaml(write_digits_job(folder)), progress=False)
    return folder, str(folder / "out"), result.selection


def test_a_round_through_label_studio(label_studio, job, tmp_path):
    folder, out, selection = job
    ledger = str(tmp_path / "ledger")
    sent = export(out, "label-studio", to=label_studio.url, create_project="digits round 0",
                  data_fields={"image": "image_uri"}, ledger=ledger, token=label_studio.token)
    project = int(sent.project.rsplit("/", 1)[-1])
    tasks = label_studio.tasks(project)
    ids = selection.column("id").to_pylist()
    assert sorted(t["data"]["alray_id"] for t in tasks) == sorted(ids)
    assert all(t["total_predictions"] == 1 for t in tasks)  # Label Studio took every prediction
    config = label_studio.call("GET", f"/api/projects/{project}")["label_config"]
    assert all(f'value="{name}"' in config for name in CLASSES)

    by_id = {t["data"]["alray_id"]: t["id"] for t in tasks}
    right = dict(zip(ids[:10], truth(ids[:10])))
    for row_id, name in right.items():
        label_studio.annotate(by_id[row_id], name)
    label_studio.annotate(by_id[ids[10]], None)                        # cancelled: skipped
    for name in ("one", "two", "two"):                                  # three annotators
        label_studio.annotate(by_id[ids[11]], name)

    result = import_labels(sent.project, "label-studio", ledger, classes=CLASSES,
                           token=label_studio.token)
    state = {r["id"]: (r["status"], r["label"])
             for r in latest_records(read_ledger(ledger, labels=True)).to_pylist()}
    assert {i: state[i] for i in ids[:10]} == {i: ("labeled", n) for i, n in right.items()}
    assert state[ids[10]] == ("skipped", None)
    assert state[ids[11]] == ("labeled", "two")
    assert all(state[i] == ("sent", None) for i in ids[12:])             # nobody answered yet
    assert (result.labeled, result.skipped, result.unanswered) == (11, 1, len(ids) - 12)

    again = alray.run(alray.JobSpec.from_yaml(
        folder / "job.yaml", overrides={"selection.exclude": [ledger]},
        out=str(tmp_path / "round-1")), progress=False)
    assert not set(again.selection.column("id").to_pylist()) & set(ids)


def test_pushing_into_an_existing_project_reads_its_labeling_config(label_studio, job):
    _, out, selection = job
    config = ("<View><Image name='picture' value='$image'/><Choices name='digit' "
              "toName='picture'>" + "".join(f"<Choice value='{c}'/>" for c in CLASSES)
              + "</Choices></View>")
    project = label_studio.call("POST", "/api/projects",
                                {"title": "existing", "label_config": config})["id"]
    url = f"{label_studio.url}/projects/{project}"
    export(out, "label-studio", to=url, data_fields={"image": "image_uri"},
           token=label_studio.token)
    tasks = label_studio.tasks(project)
    assert len(tasks) == selection.num_rows
    predictions = label_studio.call("GET", f"/api/predictions?task={tasks[0]['id']}")
    (result,) = predictions[0]["result"]
    assert (result["from_name"], result["to_name"]) == ("digit", "picture")


def test_label_studio_refusals_are_one_line_errors(label_studio, job):
    _, out, _ = job
    narrow = label_studio.call("POST", "/api/projects", {
        "title": "two classes", "label_config": "<View><Image name='img' value='$image'/>"
        "<Choices name='c' toName='img'><Choice value='zero'/><Choice value='one'/></Choices>"
        "</View>"})["id"]
    url = f"{label_studio.url}/projects/{narrow}"
    with pytest.raises(ConfigError, match=r"--to: .*lacks the model's classes \['two'"):
        export(out, "label-studio", to=url, data_fields={"image": "image_uri"},
               token=label_studio.token)
    with pytest.raises(ConfigError, match=r"--to: the labeling config reads \$image, but the "
                                          r"tasks' data fields are alray_id, image_uri"):
        config_ok = label_studio.call("POST", "/api/projects", {
            "title": "all", "label_config": "<View><Image name='img' value='$image'/>"
            "<Choices name='c' toName='img'>" + "".join(f"<Choice value='{c}'/>"
                                                        for c in CLASSES)
            + "</Choices></View>"})["id"]
        export(out, "label-studio", to=f"{label_studio.url}/projects/{config_ok}",
               token=label_studio.token)
    with pytest.raises(ConfigError, match="refused the token"):
        export(out, "label-studio", to=url, token="not-a-token")
    assert label_studio.tasks(narrow) == []
