"""A finished job's selection as it goes to people: one row per selected id, with what an
annotator needs to see it (the object's URI or the text) and the model's guess.

Everything here is read from the job's output folder (``job.json`` and ``selection.parquet``), so
an export needs neither the spec nor Ray, and runs wherever the folder can be read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alray.errors import ConfigError
from alray.output.folder import OutputFolder
from alray.sources.files import Storage, access_refusals, join_uri

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """The selection of one finished job, and what the job's spec says about its rows.

    Attributes:
        folder: the job's output folder.
        name: the job's name.
        rows: ``selection.parquet`` (rank, id, score, shard, uri, predicted, reason, carried
            columns), in rank order.
        classes: ``model.classes`` (None: classes are known by index only).
        carry: the carried columns, in spec order.
        image_uri_column: ``pool.image_uri_column`` (None unless set).
        image_folder: the pool is a folder of image files (a row's object is ``<uri>/<id>``).
        strategy: ``scoring.strategy``, named in the tools' model version.
        task: ``model.task`` (``classification`` or ``regression``).
    """

    folder: OutputFolder
    name: str
    rows: pa.Table
    classes: tuple[str, ...] | None
    carry: tuple[str, ...]
    image_uri_column: str | None
    image_folder: bool
    strategy: str
    task: str

    @classmethod
    def load(cls, out: str, storage: Storage | None = None) -> "Batch":
        """Read the job at ``out`` (its output folder, any fsspec URL).

        Raises:
            ConfigError: (naming ``OUT``) no finished job there (OutputFolder.finished_job).
        """
        folder = OutputFolder(out, storage or {})
        with access_refusals("OUT", out):
            job = folder.finished_job()
            with folder.open(folder.path(folder.SELECTION)) as f:
                rows = pq.read_table(io.BytesIO(f.read()))
        spec = job["spec"]
        pool, model = spec["pool"], spec["model"]
        return cls(folder=folder, name=job["name"], rows=rows,
                   classes=tuple(model["classes"]) if model.get("classes") else None,
                   carry=tuple(pool.get("carry") or ()),
                   image_uri_column=pool.get("image_uri_column"),
                   image_folder=pool.get("format") == "images",
                   strategy=spec["scoring"]["strategy"], task=model.get("task", "classification"))

    # -- what an annotator sees -----------------------------------------------------------------

    def default_uri_column(self) -> str | None:
        """The column whose values name each row's object: the pool's ``image_uri_column``, else
        the only carried column; None for an image folder (its URIs are built) or when there is
        no single choice."""
        if self.image_uri_column:
            return self.image_uri_column
        if len(self.carry) == 1:
            return self.carry[0]
        return None

    def object_uris(self, column: str | None = None, where: str = "--uri-column") -> list[str]:
        """Each row's object (an image URI, or the text itself), by ``column`` or the default.

        Raises:
            ConfigError: (naming ``where``) no such column, or no way to choose one.
        """
        if column is None and self.image_folder:
            return [join_uri(uri, key) for uri, key in
                    zip(self.rows.column("uri").to_pylist(), self.rows.column("id").to_pylist())]
        column = column or self.default_uri_column()
        if column is None:
            carried = ", ".join(self.carry) or "none"
            raise ConfigError(where, f"which column holds each row's object? The job carries "
                                     f"{carried}; name one (carry it with pool.carry)")
        if column not in self.rows.column_names:
            raise ConfigError(where, f"the selection has no column {column!r} (it carries "
                                     f"{', '.join(self.carry) or 'nothing'}); carry it with "
                                     "pool.carry and run the job again")
        return [None if v is None else str(v) for v in self.rows.column(column).to_pylist()]

    def class_name(self, index: int | None) -> str | None:
        """The name of class ``index`` (its decimal index when the model names no classes)."""
        if index is None:
            return None
        return self.classes[index] if self.classes else str(index)

    def predicted_names(self) -> list[str | None]:
        """Each row's predicted class name (all None for a regression model)."""
        if self.task != "classification" or "predicted" not in self.rows.column_names:
            return [None] * self.rows.num_rows
        return [self.class_name(i) for i in self.rows.column("predicted").to_pylist()]

    # -- the whole pool ---------------------------------------------------------------------------

    def confident_rows(self, min_confidence: float) -> Iterator[pa.Table]:
        """The scored rows whose predicted-class probability is at least ``min_confidence``, one
        table per scores file (id, predicted class, confidence, carried columns), skipping the
        selection's ids; memory is one file's rows at a time.

        Raises:
            ConfigError: a regression model (no predicted class).
        """
        if self.task != "classification":
            raise ConfigError("--pseudo-labels", "the job's model is a regression model; "
                                                 "pseudo-labels are predicted classes")
        selected = self.rows.column("id")
        columns = ["id", "predicted", "confidence", *self.carry]
        fs, _ = self.folder.fs()
        for path in sorted(self.folder.listing(self.folder.SCORES)):
            if not path.endswith(".parquet") or path.rsplit("/", 1)[-1].startswith("."):
                continue
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=columns)
            keep = pc.and_(pc.greater_equal(table.column("confidence"), min_confidence),
                           pc.invert(pc.is_in(table.column("id"), value_set=selected)))
            kept = table.filter(keep)
            if kept.num_rows:
                yield kept
