"""Taking a shard's candidates from its scored rows: the parts of
:mod:`alray.selection.parts`, with the ledgers' ids left out first.

No torch: the scan calls :func:`take_candidates` on the rows it scored, and a rerun whose ledgers
(or ``k``) changed calls it on the committed scores file, without the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from alray.pipeline.outcome import candidate_columns
from alray.reduce.topk import KEY_ORDER, top_k_rows
from alray.selection.keys import power_keys, row_uniforms
from alray.selection.parts import EXPLORE_SALT, CandidatePlan

if TYPE_CHECKING:
    from alray.config import JobSpec
    from alray.ledger import Exclusion

__all__ = ["take_candidates"]


def _with_part(table: pa.Table, part: str) -> pa.Table:
    return table.append_column("part", pa.array([part] * table.num_rows, pa.string()))


def _smallest_keys(rows: pa.Table, keys: np.ndarray, n: int) -> pa.Table:
    return top_k_rows(rows.append_column("key", pa.array(keys, pa.float64())), n, KEY_ORDER)


def take_candidates(table: pa.Table, spec: "JobSpec", exclusion: "Exclusion | None" = None,
                    vectors=None, labeled: pa.Table | None = None) -> pa.Table:
    """A shard's candidates, every part in one table with a ``part`` column.

    Args:
        table: the shard's scored rows (its scores file's columns, ``row`` and carried columns),
            ids unique.
        vectors: a :class:`~alray.pipeline.vectors.CandidateVectors` holding the top rows'
            vectors, or None when the plan needs none.
        labeled: ``id`` and ``embedding`` of the shard's labeled rows (``kcenter``), or None.
    """
    plan = CandidatePlan.of(spec)
    if exclusion is not None and len(exclusion):
        table = table.filter(pa.array(~exclusion.mask(table.column("id"))))
    columns = [*candidate_columns(spec), *spec.pool.carry]
    top = top_k_rows(table, plan.top).select(columns)
    if vectors is not None:
        for name, column in vectors.columns(top.column("row").to_numpy()).items():
            if name in plan.vectors:
                top = top.append_column(name, column)
    parts = [_with_part(top, "top")]
    if plan.draws:
        uniforms = row_uniforms(table.column("id"), plan.seed)
        keys = uniforms if plan.power is None else power_keys(
            uniforms, table.column("score").to_numpy(), plan.power)
        parts.append(_with_part(_smallest_keys(table.select(columns), keys, plan.draws), "draw"))
    if plan.explore:
        uniforms = row_uniforms(table.column("id"), plan.seed, EXPLORE_SALT)
        parts.append(_with_part(_smallest_keys(table.select(columns), uniforms, plan.explore),
                                "explore"))
    if labeled is not None and labeled.num_rows:
        parts.append(_with_part(labeled, "labeled"))
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts, promote_options="permissive")
