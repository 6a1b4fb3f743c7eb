"""The output folder of one job: the one place that knows where each of its files lives.

::

    <output.uri>/
      scores/<shard>.parquet             every scored row of a shard
      _shards/<shard>.candidates.parquet a shard's top-M candidates
      _shards/<shard>.json               its commit record (the commit point)
      selection.parquet                  the selection, in rank order
      job.json                           the spec as run, counts, runs, status
      errors.jsonl                       quarantined shards and rows
      _lock.json                         held while a run uses the folder
      report.html                        `alray report OUT`: one self-contained page
      report/<plot>.png                  the page's plots, as files
      exports/                           `alray export`: tasks, manifests, records
      label_issues.parquet               confident learning's flags (pool.label_column)
      statistics.parquet                 `alray cartography`: training dynamics per row
      data_map.png                       `alray cartography`: the data map

Every module that reads or writes the folder asks an :class:`OutputFolder` for the path and goes
through it for storage options, so the layout is spelled out here only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alray.errors import ConfigError
from alray.sources.files import Storage, atomic_write, join_uri, open_file, url_to_fs

if TYPE_CHECKING:
    from alray.config import JobSpec

__all__ = ["OutputFolder"]


@dataclass(frozen=True)
class OutputFolder:
    """Paths under one output folder, and the fsspec options to reach them.

    Attributes:
        uri: the folder, a local path or any fsspec URL.
        storage: fsspec options by protocol (the spec's ``storage`` section).
    """

    uri: str
    storage: Storage = field(default_factory=dict)

    SCORES = "scores"
    COMMITS = "_shards"
    SELECTION = "selection.parquet"
    JOB = "job.json"
    ERRORS = "errors.jsonl"
    LOCK = "_lock.json"
    REPORT = "report.html"
    REPORT_PLOTS = "report"
    EXPORTS = "exports"
    STATISTICS = "statistics.parquet"
    DATA_MAP = "data_map.png"
    LABEL_ISSUES = "label_issues.parquet"
    #: What one run writes at the top of the folder, and what was made from it; a new run clears
    #: them before it starts, so no report or export outlives its selection.
    SUMMARIES = (SELECTION, JOB, ERRORS, REPORT, REPORT_PLOTS, EXPORTS, LABEL_ISSUES)

    @classmethod
    def of(cls, spec: "JobSpec") -> "OutputFolder":
        return cls(spec.output.uri, spec.fsspec_storage)

    # -- paths --------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """The URI of ``parts`` under the folder (``path()`` is the folder itself)."""
        return join_uri(self.uri, *parts) if parts else self.uri

    def scores(self, shard_id: str) -> str:
        return self.path(self.SCORES, f"{shard_id}.parquet")

    def record(self, shard_id: str) -> str:
        return self.path(self.COMMITS, f"{shard_id}.json")

    def candidates(self, shard_id: str) -> str:
        return self.path(self.COMMITS, f"{shard_id}.candidates.parquet")

    @staticmethod
    def shard_of(name: str) -> str | None:
        """The shard id a file under ``scores/`` or ``_shards/`` belongs to (None: a temporary or
        foreign file)."""
        base = name.rsplit("/", 1)[-1]
        for suffix in (".candidates.parquet", ".parquet", ".json"):
            if base.endswith(suffix) and not base.startswith("."):
                return base[:-len(suffix)]
        return None

    # -- access -------------------------------------------------------------------------------

    def fs(self):
        """``(filesystem, path of the folder on it)``."""
        return url_to_fs(self.uri, self.storage)

    def write(self, uri: str, data: bytes) -> str:
        """Write ``data`` to ``uri`` (under this folder) atomically; returns ``uri``."""
        atomic_write(uri, data, self.storage)
        return uri

    def open(self, uri: str, mode: str = "rb"):
        return open_file(uri, mode, self.storage)

    def read_json(self, name: str) -> Any:
        """The JSON file ``name`` at the top of the folder, parsed (None when missing or not
        JSON)."""
        fs, root = self.fs()
        try:
            return json.loads(fs.cat_file(f"{root}/{name}"))
        except (FileNotFoundError, ValueError):
            return None

    def finished_job(self, where: str = "OUT") -> dict[str, Any]:
        """``job.json`` of a job that finished with a selection (what export, import-labels and
        the report read).

        Raises:
            ConfigError: (naming ``where``) no job here, or it is running or failed, each
                with what to do.
        """
        job = self.read_json(self.JOB)
        if not isinstance(job, dict) or not isinstance(job.get("spec"), dict):
            raise ConfigError(where, f"no job.json under {self.uri!r}; give the output folder of "
                                     "a job that has run (output.uri), or run the job first")
        fs, root = self.fs()
        if not fs.exists(f"{root}/{self.SELECTION}"):
            raise ConfigError(where, _no_selection(job))
        return job

    def remove(self, *names: str) -> None:
        """Remove files or folders (by name under the folder) that exist."""
        fs, root = self.fs()
        for name in names:
            path = f"{root}/{name}"
            if fs.exists(path):
                fs.rm(path, recursive=True)

    def listing(self, folder: str) -> list[str]:
        """Paths of the files directly under ``folder`` (empty when it does not exist)."""
        fs, root = self.fs()
        path = f"{root}/{folder}"
        fs.invalidate_cache(path)
        return fs.ls(path, detail=False) if fs.isdir(path) else []


def _no_selection(job: dict[str, Any]) -> str:
    status, name, error = job.get("status"), job.get("name"), job.get("error")
    if status == "running":
        return (f"job {name!r} is still running and has no selection.parquet yet; wait for it "
                "to finish (alray status OUT shows its progress)")
    if status == "failed":
        cause = f" ({error})" if error else ""
        return (f"job {name!r} failed and wrote no selection.parquet{cause}; fix the cause and "
                "run the job again: the same command resumes it")
    return (f"job {name!r} has no selection.parquet (status {status}); run the job first: the "
            "same command resumes it")
