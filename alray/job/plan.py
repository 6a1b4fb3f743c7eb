"""What a run would do, found before Ray starts: the shards, their problems, what can be reused.

:func:`plan_job` checks the model's file, lists the pool, reads every parquet footer and checks it
against the job's columns and the model's input width, and matches the output folder's commit
records. It reads and never writes, and imports neither Ray nor torch, so ``alray plan`` and the
start of ``alray run`` take seconds. A problem that every shard shares is a configuration error of
the key it is about (exit 2), not a job that fails shard by shard after Ray has started.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from alray.config import JobSpec
from alray.errors import ConfigError
from alray.ledger import Exclusion
from alray.models.files import check_model_source, model_input_width
from alray.output.commits import ShardRecord, load_records, scoring_hash, shard_key
from alray.output.folder import OutputFolder
from alray.selection.parts import CandidatePlan
from alray.sources.files import access_refusals, open_parquet
from alray.sources.images import plan_image_shards
from alray.sources.plan import ShardSpec, list_pool_files, plan_shards
from alray.sources.rows import ShardColumns

__all__ = ["JobPlan", "format_plan", "plan_job"]

_PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class JobPlan:
    """The shards of a job and what a run would do with each.

    Attributes:
        spec: the job spec.
        shards: every planned shard, in pool order.
        scoring: the hash of everything that changes a shard's scores (model content, keys).
        records: the commit records found under ``output.uri`` (empty with ``fresh``).
        reusable: ids of the shards whose commit matches their current key: not scored again.
        rebuild: ids of the shards whose scores are reusable and whose candidates are not (the
            ledgers, ``k`` or the selection changed): rebuilt from the scores file, no model.
        exclusion: the ids the ledgers of ``selection.exclude`` name.
        candidates_key: what a commit's candidates must match to be reused.
    """

    spec: JobSpec
    shards: tuple[ShardSpec, ...]
    scoring: str
    records: dict[str, ShardRecord]
    reusable: frozenset[str]
    rebuild: frozenset[str] = frozenset()
    exclusion: Exclusion = Exclusion()
    candidates_key: str = ""

    @property
    def bad(self) -> list[ShardSpec]:
        """Shards that planning already found bad."""
        return [s for s in self.shards if s.problem is not None]

    @property
    def to_score(self) -> list[ShardSpec]:
        """Shards a run would hand to actors."""
        return [s for s in self.shards if s.problem is None and s.shard_id not in self.reusable
                and s.shard_id not in self.rebuild]

    @property
    def rows(self) -> int:
        return sum(s.num_rows or 0 for s in self.shards)

    def rows_of(self, shards: list[ShardSpec]) -> int:
        return sum(s.num_rows or 0 for s in shards)


def _plan_shards(spec: JobSpec) -> list[ShardSpec]:
    storage = spec.fsspec_storage
    pool = spec.pool
    if pool.reads_images and pool.image_source_column is None:
        return plan_image_shards(pool.uri, pool.rows_per_shard, storage)
    files = list_pool_files(pool.uri, storage=storage)
    columns = ShardColumns.of(spec, model_input_width(spec.model, storage))
    return plan_shards(files, pool.rows_per_shard, storage, id_column=pool.id_column,
                       columns=columns)


def _every_shard_is_bad(shards: list[ShardSpec]) -> ConfigError:
    """The configuration error for a pool none of whose shards can be scored."""
    problems = Counter((s.problem.key, s.problem.kind, s.problem.message) for s in shards)
    (key, kind, message), count = problems.most_common(1)[0]
    files = len({s.uri for s in shards})
    where = key if len(problems) == 1 and key else "pool.uri"
    scope = (f"every pool file ({files})" if count == len(shards)
             else f"{count} of {len(shards)} shards; the others have other problems")
    return ConfigError(where, f"{message} [{kind}], in {scope}; nothing can be scored: fix the "
                              "spec or the pool (`alray plan` lists each shard's problem)")


def plan_job(spec: JobSpec, fresh: bool = False) -> JobPlan:
    """Plan ``spec`` without Ray: list and shard the pool, check footers, match commits.

    Args:
        fresh: plan as ``alray run --fresh`` would: reuse nothing.

    Raises:
        ConfigError: the model file or pool is missing, or no shard could be scored (a problem
            of every shard names the key it is about).
        ModelError: a linear head's file is not a readable head.
    """
    check_model_source(spec.model, spec.fsspec_storage)
    shards = _plan_shards(spec)
    if shards and all(s.problem is not None for s in shards):
        raise _every_shard_is_bad(shards)
    exclusion = _exclusion(spec, shards)
    scoring = scoring_hash(spec)
    with access_refusals("output.uri", spec.output.uri):
        records = {} if fresh else load_records(OutputFolder.of(spec))
    candidates = CandidatePlan.of(spec)
    candidates_key = candidates.key(exclusion.digest)
    scored = [s.shard_id for s in shards
              if s.problem is None and s.shard_id in records
              and records[s.shard_id].status == "done"
              and records[s.shard_id].key == shard_key(s, scoring)]
    reusable = frozenset(sid for sid in scored if records[sid].candidates_key == candidates_key)
    # other candidates from the same scores: without vectors they come from the scores file;
    # with vectors (an embedding, probs) the shard is read and scored again
    rebuild = frozenset() if candidates.needs_scan else frozenset(scored) - reusable
    return JobPlan(spec, tuple(shards), scoring, records, reusable, rebuild, exclusion,
                   candidates_key)


def _pool_id_type(spec: JobSpec, shards: list[ShardSpec]) -> pa.DataType | None:
    """The pool's id type, from the first good shard (an image folder's ids are strings)."""
    shard = next((s for s in shards if s.problem is None), None)
    if shard is None:
        return None
    if shard.members is not None:
        return pa.string()
    try:
        with open_parquet(shard.uri, spec.fsspec_storage) as f:
            return f.schema_arrow.field(spec.pool.id_column).type
    except (OSError, KeyError):  # unreadable for now: the actors will say so
        return None


def _exclusion(spec: JobSpec, shards: list[ShardSpec]) -> Exclusion:
    """The ledgers of ``selection.exclude``, read once and checked against the pool's ids."""
    if not spec.selection.exclude:
        return Exclusion()
    with access_refusals("selection.exclude", ", ".join(spec.selection.exclude)):
        exclusion = Exclusion.of(spec.selection.exclude, spec.fsspec_storage)
    if len(exclusion):
        id_type = _pool_id_type(spec, shards)
        if id_type is not None:
            exclusion.check_id_type(id_type)
    return exclusion


def _verdict(plan: JobPlan) -> tuple[str, bool]:
    """What ``alray run`` would do with the bad shards, and whether it would fail."""
    bad, resources = len(plan.bad), plan.spec.resources
    if not bad:
        return "a run would score every shard it does not reuse", False
    if resources.on_error == "fail":
        return (f"a run would fail before scoring (resources.on_error: fail); fix the "
                f"{bad} bad shard(s), or set resources.on_error: skip to quarantine them"), True
    limit = resources.max_quarantined
    allowed = limit * len(plan.shards) if isinstance(limit, float) else limit
    if bad > allowed:
        return (f"a run would fail: {bad} bad shard(s) are past resources.max_quarantined "
                f"({limit}); fix them, or set resources.max_quarantined: {bad}"), True
    return f"a run would quarantine the {bad} bad shard(s) and score the rest", False


def _model_names(spec: JobSpec) -> str:
    model = spec.model
    if model.members and spec.pool.fold_column:
        return (f"{len(model.members)} fold models, each row scored by the one for its "
                f"{spec.pool.fold_column!r}: {', '.join(model.members)}")
    if model.members:
        return f"committee of {len(model.members)}: {', '.join(model.members)}"
    return model.path or model.column or ""


def _labels_line(spec: JobSpec) -> list[str]:
    """What a job with given labels adds: the label statistics and the flags."""
    if spec.pool.label_column is None:
        return []
    return [f"  labels:  {spec.pool.label_column!r}: gold statistics in the scores files, "
            "confident learning's flags in label_issues.parquet"]


def format_plan(plan: JobPlan) -> tuple[str, bool]:
    """The text ``alray plan`` prints, and whether a run would fail on what planning found."""
    spec = plan.spec
    to_score = plan.to_score
    reused = [s for s in plan.shards if s.shard_id in plan.reusable | plan.rebuild]
    files = len({s.uri for s in plan.shards})
    lines = [
        f"{spec.name}: plan (nothing ran; Ray was not started)",
        f"  pool:    {', '.join(spec.pool.uri)}",
        f"           {files:,} file(s), {len(plan.shards):,} shard(s), {plan.rows:,} rows",
        f"  model:   {spec.model.kind} {_model_names(spec)}".rstrip(),
        *_labels_line(spec),
        f"  output:  {spec.output.uri}",
        f"  to score: {len(to_score):,} shard(s), {plan.rows_of(to_score):,} rows",
        f"  reused:   {len(reused):,} shard(s), {plan.rows_of(reused):,} rows (committed under "
        "the same key" + (f"; {len(plan.rebuild):,} take their candidates again from their "
                          "scores files" if plan.rebuild else "") + ")",
        f"  bad:      {len(plan.bad):,} shard(s)",
    ]
    for shard in plan.bad[:_PROBLEMS_SHOWN]:
        lines.append(f"    {shard.where}: {shard.problem.message} [{shard.problem.kind}]")
    if len(plan.bad) > _PROBLEMS_SHOWN:
        lines.append(f"    ... and {len(plan.bad) - _PROBLEMS_SHOWN} more")
    verdict, would_fail = _verdict(plan)
    lines.append(f"  {verdict}")
    return "\n".join(lines), would_fail
