"""Label Studio: its labeling configs, and the few API calls a round needs.

alray talks to Label Studio's REST API with the standard library: five endpoints do not justify
the SDK's dependencies. The token comes from ``LABEL_STUDIO_API_KEY`` only, never from a spec or
a file alray writes. Both kinds Label Studio issues work: a legacy token (``Authorization: Token
KEY``) and a personal access token, a JWT refresh token that is exchanged at
``/api/token/refresh/`` for a short-lived ``Bearer`` access token.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from xml.sax.saxutils import quoteattr

from alray.errors import ConfigError

__all__ = ["TOKEN_VARIABLE", "LabelingConfig", "LabelStudio", "project_url"]

TOKEN_VARIABLE = "LABEL_STUDIO_API_KEY"
_PROJECT_URL = re.compile(r"^(https?://[^/]+(?:/.*?)?)/projects/(\d+)/?(?:[?#].*)?$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def project_url(url: str, where: str) -> tuple[str, int]:
    """``(base URL, project id)`` of ``http(s)://HOST[/PATH]/projects/ID``.

    Raises:
        ConfigError: (naming ``where``) not a project URL.
    """
    match = _PROJECT_URL.match(url)
    if not match:
        raise ConfigError(where, f"{url!r} is not a Label Studio project URL; give "
                                 "http(s)://HOST/projects/ID (the address of the project's page)")
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class LabelingConfig:
    """The part of a labeling config that a class prediction must match.

    Attributes:
        from_name: the ``<Choices>`` control's name.
        to_name: the object tag it labels (``<Image>``, ``<Text>``, ...).
        data_key: the task ``data`` field that object reads (``value="$image"`` -> ``image``).
        choices: the choice values, in config order.
    """

    from_name: str
    to_name: str
    data_key: str
    choices: tuple[str, ...]

    @classmethod
    def parse(cls, xml: str, where: str = "--to") -> "LabelingConfig":
        """Read a project's config; it must have exactly one ``<Choices>`` control.

        Raises:
            ConfigError: (naming ``where``) not XML, no or several ``<Choices>``, or its object
                tag reads no ``$field``.
        """
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise ConfigError(where, f"the project's labeling config is not XML ({exc})") from None
        controls = [e for e in root.iter() if e.tag == "Choices"]
        if len(controls) != 1:
            raise ConfigError(where, f"the project's labeling config has {len(controls)} "
                                     "<Choices> controls; alray predicts one class per task, so "
                                     "the config needs exactly one (or use --create-project)")
        control = controls[0]
        to_name = control.get("toName", "")
        objects = [e for e in root.iter() if e.get("name") == to_name and e is not control]
        value = objects[0].get("value", "") if objects else ""
        if not value.startswith("$"):
            raise ConfigError(where, f"<Choices name={control.get('name')!r}> labels "
                                     f"{to_name!r}, which reads no task field ($name)")
        choices = tuple(c.get("value") or c.get("alias") or "" for c in control.iter("Choice"))
        return cls(control.get("name", ""), to_name, value[1:], choices)

    @staticmethod
    def for_classes(classes: Sequence[str], data_key: str, sample: Any = None,
                    control: str = "choice") -> str:
        """A config with one single-choice control over ``classes``, labeling the ``data_key``
        field as an image when ``sample`` (one of its values) looks like an image URI, else as
        text."""
        is_image = isinstance(sample, str) and (
            sample.lower().split("?")[0].endswith(_IMAGE_SUFFIXES)
            or sample.startswith(("s3://", "gs://", "data:image/")))
        tag = "Image" if is_image else "Text"
        choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
        return (f"<View>\n  <{tag} name={quoteattr(data_key)} value={quoteattr('$' + data_key)}/>"
                f"\n  <Choices name={quoteattr(control)} toName={quoteattr(data_key)} "
                f"choice=\"single\" showInline=\"true\">\n{choices}\n  </Choices>\n</View>")

    def check_data(self, fields: Iterable[str], where: str = "--to") -> None:
        """Raise unless the tasks' ``data`` has the field the config reads."""
        fields = sorted(fields)
        if fields and self.data_key not in fields:
            raise ConfigError(where, f"the labeling config reads ${self.data_key}, but the tasks' "
                                     f"data fields are {', '.join(fields)}; map one with "
                                     f"--data-field {self.data_key}=COLUMN")

    def check_classes(self, classes: Iterable[str], where: str = "--to") -> None:
        """Raise unless every class name is one of the config's choices."""
        missing = [c for c in classes if c not in self.choices]
        if missing:
            raise ConfigError(where, f"the labeling config's <Choices name={self.from_name!r}> "
                                     f"lacks the model's classes {missing[:5]} (it has "
                                     f"{list(self.choices)[:10]}); Label Studio rejects "
                                     "predictions it cannot show: add them to the config")

    def prediction(self, class_name: str, score: float, model_version: str) -> dict:
        """One pre-annotation: the class as this config's choice, with alray's score."""
        return {"model_version": model_version, "score": score,
                "result": [{"from_name": self.from_name, "to_name": self.to_name,
                            "type": "choices", "value": {"choices": [class_name]}}]}

    def choice_of(self, result: Sequence[dict]) -> list[str]:
        """The choices an annotation's ``result`` makes with this config's control (every
        choices result when the config is unknown: ``from_name`` empty)."""
        found = []
        for item in result:
            if item.get("type") != "choices":
                continue
            if self.from_name and item.get("from_name") != self.from_name:
                continue
            found.extend(item.get("value", {}).get("choices", []))
        return found


class LabelStudio:
    """A client of one Label Studio server (``base_url``: scheme, host and any path prefix).

    Args:
        token: a legacy API token or a personal access token (JWT); default
            ``$LABEL_STUDIO_API_KEY``.
        where: the option named in errors.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, token: str | None = None, where: str = "--to",
                 timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.where = where
        self.timeout = timeout
        token = token if token is not None else os.environ.get(TOKEN_VARIABLE)
        if not token:
            raise ConfigError(where, f"no Label Studio token: set {TOKEN_VARIABLE} to your "
                                     "access token (Label Studio: Account & Settings)")
        self._token = token
        self._authorization: str | None = None

    # -- requests ---------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any = None,
              authorization: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300].replace("\n", " ")
            if exc.code in (401, 403):
                raise ConfigError(self.where, f"Label Studio at {self.base_url} refused the "
                                              f"token ({exc.code}: {detail}); set "
                                              f"{TOKEN_VARIABLE} to a valid access token"
                                              ) from None
            raise ConfigError(self.where, f"Label Studio answered {method} {path} with "
                                          f"{exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(self.where, f"cannot reach Label Studio at {self.base_url} "
                                          f"({reason}); check the URL and that the server "
                                          "runs") from None
        return json.loads(text) if text else None

    def _auth(self) -> str:
        if self._authorization is None:
            if self._token.count(".") == 2:  # a personal access token: a JWT refresh token
                access = self._send("POST", "/api/token/refresh/", {"refresh": self._token})
                self._authorization = f"Bearer {access['access']}"
            else:
                self._authorization = f"Token {self._token}"
        return self._authorization

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; the answer's JSON."""
        return self._send(method, path, body, self._auth())

    # -- what a round needs -------------------------------------------------------------------

    def labeling_config(self, project: int) -> LabelingConfig:
        return LabelingConfig.parse(self.call("GET", f"/api/projects/{project}")["label_config"],
                                    self.where)

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.call("POST", "/api/projects",
                             {"title": title, "label_config": label_config})["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> int:
        """Add ``tasks`` to ``project`` in one request (Label Studio imports them together or
        not at all); returns how many it created."""
        answer = self.call("POST", f"/api/projects/{project}/import", tasks)
        return int(answer.get("task_count", len(tasks)))

    def export(self, project: int) -> list[dict]:
        """Every task of ``project`` (answered or not) in Label Studio's JSON export format."""
        query = urllib.parse.urlencode({"exportType": "JSON", "download_all_tasks": "true"})
        return self.call("GET", f"/api/projects/{project}/export?{query}")
