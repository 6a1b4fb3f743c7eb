"""The selection stage: from the reduced candidates to the ``k`` rows to label, with a reason each.

Runs once on the driver after the reducer, in torch (on ``cuda`` where the driver has one, else
the CPU), over at most ``prefilter * k`` candidates: memory follows the candidates, not the pool.
The result is a deterministic function of the reduced candidates (which are exact whatever the
sharding), the seed and the ledgers.

Order of the result: the method's picks first (``topk``: by score; ``kmeans``: by score; greedy
methods: in pick order; ``random``/``power``: in draw order), then the explore picks in draw
order. ``reason`` says why a row is there: ``score`` (``topk``, ``power``), ``diversity`` (the
diversity methods), ``explore`` (the explore share, and every ``random`` pick).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.reduce.parts import ReducedCandidates
from alray.selection.registry import METHODS

if TYPE_CHECKING:
    import torch

    from alray.config import JobSpec

__all__ = ["VECTOR_COLUMNS", "select", "selection_device"]

#: Candidate columns that feed the methods and are not written to the selection.
VECTOR_COLUMNS = ("probs", "embedding", "samples", "key")


def selection_device() -> str:
    """``cuda`` where this process sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _vectors(table: pa.Table, name: str, device) -> "torch.Tensor":
    """A ``fixed_size_list`` column as a ``[N, width]`` float32 tensor."""
    import torch

    column = table.column(name).combine_chunks()
    if column.null_count:
        raise ValueError(f"candidates lack {name} vectors; the job's candidates were taken for "
                         "another selection method (run again with --fresh)")
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
    return torch.from_numpy(np.array(values, dtype=np.float32)).to(device)


def _caps(table: pa.Table, classes: int, spec: "JobSpec", device):
    """Class caps for ``balance: predicted`` (None otherwise): at most ceil(k / C) per class."""
    if spec.selection.balance != "predicted":
        return None
    import torch

    from alray.selection.methods import ClassCaps

    predicted = torch.from_numpy(np.array(table.column("predicted").to_numpy(), np.int64))
    return ClassCaps(predicted.to(device), math.ceil(spec.selection.k / classes))


def _walk(table: pa.Table, n: int, caps) -> list[int]:
    """The first ``n`` rows of ``table`` in its order whose class has room."""
    picks: list[int] = []
    for index in range(table.num_rows):
        if len(picks) >= n:
            break
        if caps is None or caps.allows(index):
            picks.append(index)
            if caps is not None:
                caps.take(index)
    return picks


def _method_picks(reduced: ReducedCandidates, spec: "JobSpec", device) -> tuple[pa.Table,
                                                                                 list[int]]:
    """The table the method chose from, and its picks (row indices) in result order."""
    selection = spec.selection
    method = METHODS[selection.method]
    n = selection.method_count
    top = reduced.top
    classes = top.column("probs").type.list_size if "probs" in top.column_names else 0
    if method.draws:
        table = reduced.draws
        return table, _walk(table, n, _caps(table, classes, spec, device))
    table = top
    caps = _caps(table, classes, spec, device)
    if not method.diversity:
        return table, _walk(table, n, caps)
    return table, _diversity_picks(table, reduced.labeled, spec, n, caps, device)


def _diversity_picks(table: pa.Table, labeled: pa.Table | None, spec: "JobSpec", n: int, caps,
                     device) -> list[int]:
    import torch

    selection = spec.selection
    name, seed = selection.method, selection.seed
    function = METHODS[name].load()
    if name == "kmeans":
        scores = torch.from_numpy(table.column("score").to_numpy().astype(np.float32))
        picks = function(_vectors(table, "embedding", device), scores.to(device), n, seed=seed,
                         caps=caps)
    elif name == "kcenter":
        start = _vectors(labeled, "embedding", device) if labeled is not None else None
        picks = function(_vectors(table, "embedding", device), n, start=start, caps=caps)
    elif name == "badge":
        picks = function(_vectors(table, "probs", device), _vectors(table, "embedding", device),
                         n, seed=seed, caps=caps)
    elif name == "cluster_margin":
        picks = function(_vectors(table, "embedding", device), n,
                         clusters=selection.clusters or selection.k, seed=seed, caps=caps)
    elif name == "batchbald":
        from alray.config import samples_per_row

        samples = _vectors(table, "samples", device)  # [N, C * K], samples last
        k_samples = samples_per_row(spec)
        picks = function(samples.reshape(len(samples), -1, k_samples), n, seed=seed, caps=caps)
    else:  # pragma: no cover - the registry and this dispatch are held together by tests
        raise AssertionError(f"no dispatch for selection.method {name}")
    return picks.tolist()


def _with_reason(table: pa.Table, reason: str) -> pa.Table:
    table = table.drop_columns([c for c in VECTOR_COLUMNS if c in table.column_names])
    return table.append_column("reason", pa.array([reason] * table.num_rows, pa.string()))


def _explore_picks(reduced: ReducedCandidates, chosen: pa.Array, n: int) -> pa.Table | None:
    if not n or reduced.explore is None:
        return None
    table = reduced.explore
    fresh = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=chosen)))
    return fresh.slice(0, n)


def select(reduced: ReducedCandidates, spec: "JobSpec", device=None) -> pa.Table | None:
    """The selection, in result order, with a ``reason`` column (None when nothing was scored).

    Args:
        reduced: the global candidates (:class:`~alray.reduce.parts.CandidateReducer`).
        device: where the methods run (default :func:`selection_device`).
    """
    if reduced.top is None:
        return None
    method = METHODS[spec.selection.method]
    device = device or (selection_device() if method.diversity else "cpu")
    table, picks = _method_picks(reduced, spec, device)
    reason = "explore" if method.name == "random" else "diversity" if method.diversity \
        else "score"
    chosen = _with_reason(table.take(pa.array(picks, pa.int64())), reason)
    parts = [chosen]
    explore = _explore_picks(reduced, chosen.column("id").combine_chunks(),
                             spec.selection.explore_count)
    if explore is not None:
        parts.append(_with_reason(explore, "explore"))
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else chosen
