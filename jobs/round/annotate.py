"""Stands in for the annotators of the README's round: answers tasks of a Label Studio project
over its API, as an annotator's browser does, with each digit's true class (and cancels one
task, as a person skips an unreadable image).

    python jobs/round/annotate.py http://HOST/projects/ID --answers 30

The token comes from LABEL_STUDIO_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request

from sklearn.datasets import load_digits

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def call(url: str, method: str = "GET", body=None):
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {os.environ['LABEL_STUDIO_API_KEY']}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", help="http(s)://HOST/projects/ID")
    parser.add_argument("--answers", type=int, default=30)
    args = parser.parse_args()
    base, project = args.project.rstrip("/").rsplit("/projects/", 1)
    truth = load_digits().target
    config = call(f"{base}/api/projects/{project}")["parsed_label_config"]
    control, = config
    to_name = config[control]["to_name"][0]
    tasks = call(f"{base}/api/tasks?project={project}&page_size=1000")["tasks"]
    for n, task in enumerate(tasks[:args.answers]):
        skip = n == 0
        digit = CLASSES[truth[task["data"]["alray_id"]]]
        result = [] if skip else [{"from_name": control, "to_name": to_name, "type": "choices",
                                   "value": {"choices": [digit]}}]
        call(f"{base}/api/tasks/{task['id']}/annotations", "POST",
             {"result": result, "was_cancelled": skip, "lead_time": 4.0})
    print(f"annotated {min(args.answers, len(tasks))} of {len(tasks)} tasks (1 skipped)")


if __name__ == "__main__":
    main()
