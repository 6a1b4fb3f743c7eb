"""Merging every shard's candidates part by part: the global top by score, the global smallest
draw keys, and the labeled rows, each exact whatever the sharding (see
:mod:`alray.selection.parts`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from alray.reduce.topk import KEY_ORDER, TopKReducer, first_occurrences
from alray.selection.parts import CandidatePlan

if TYPE_CHECKING:
    from alray.config import JobSpec

__all__ = ["CandidateReducer", "ReducedCandidates"]


@dataclass
class ReducedCandidates:
    """What the selection chooses from.

    Attributes:
        top: the global top ``selection.prefiltered`` by (score desc, id asc), in that order,
            with their vectors; None when nothing was scored.
        draws: the global smallest draw keys (``random``, ``power``), in key order, or None.
        explore: the global smallest explore keys, in key order, or None.
        labeled: ``id`` and ``embedding`` of the labeled rows in the pool, or None.
    """

    top: pa.Table | None
    draws: pa.Table | None = None
    explore: pa.Table | None = None
    labeled: pa.Table | None = None


class CandidateReducer:
    """Streams shards' candidates tables (with a ``part`` column) into the global parts, in
    memory bounded by the parts' sizes (and the labeled set)."""

    def __init__(self, spec: "JobSpec"):
        plan = CandidatePlan.of(spec)
        self.top = TopKReducer(spec.selection.prefiltered)
        self.draws = TopKReducer(plan.draws, KEY_ORDER) if plan.draws else None
        self.explore = TopKReducer(plan.explore, KEY_ORDER) if plan.explore else None
        self._labeled: list[pa.Table] = []

    def update(self, candidates: pa.Table) -> None:
        if "part" not in candidates.column_names:  # a file from before parts: all top
            self.top.update(candidates)
            return
        parts = candidates.column("part")
        for name, reducer in (("top", self.top), ("draw", self.draws),
                              ("explore", self.explore)):
            if reducer is not None:
                rows = candidates.filter(pc.equal(parts, name))
                not_here = ("key",) if name == "top" else ("probs", "embedding", "samples")
                rows = rows.drop_columns([c for c in not_here if c in rows.column_names])
                reducer.update(rows.drop_columns(["part"]))
        labeled = candidates.filter(pc.equal(parts, "labeled"))
        if labeled.num_rows:
            self._labeled.append(labeled.select(["id", "embedding"]))

    def duplicates(self) -> pa.Table | None:
        return self.top.duplicates()

    def result(self) -> ReducedCandidates:
        labeled = None
        if self._labeled:
            labeled = pa.concat_tables(self._labeled)
            labeled = labeled.filter(pa.array(first_occurrences(labeled.column("id"))))
        return ReducedCandidates(
            self.top.result(),
            self.draws.result() if self.draws is not None else None,
            self.explore.result() if self.explore is not None else None,
            labeled)
