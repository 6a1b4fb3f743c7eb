"""Exact top-k against a full sort (DESIGN.md, "Outputs": selection rule and duplicate rule).

The reference: sort every row by (score descending, id ascending) and take the first k. Where an
id appears in several shards, only one copy of it takes part: the highest-scoring one, ties going
to the lower shard id (string order). Shards are simulated as the engine runs them: each keeps
``top_k_rows(shard, M)`` with M >= k, tags its candidates with a string ``shard`` column, and the
candidates reach one ``TopKReducer(k)`` in an arbitrary shard order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alray.reduce import TopKReducer, first_occurrences, top_k_rows

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None, database=None)
ID_KINDS = ["int", "str"]
ID_TYPES = {"int": pa.int64(), "str": pa.string()}

# ------------------------------------------------------------------------------- pool data


def make_ids(rng: np.random.Generator, n: int, kind: str, universe: int | None = None) -> list:
    """``n`` distinct ids drawn from ``universe`` candidates (default: plenty).

    Int ids are spread over int64 (negatives included); string ids are ``id-<number>``, so their
    order ("id-10" < "id-9") differs from the numbers'.
    """
    universe = universe if universe is not None else 4 * n + 1
    base = rng.choice(universe, size=n, replace=False)
    if kind == "int":
        return [int(b) * 1_000_003_007 - 2**62 for b in base]
    return [f"id-{b}" for b in base]


def make_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 scores, usually from a handful of values so ties are everywhere."""
    if rng.random() < 0.2:
        return rng.random(n).astype(np.float32)
    values = rng.random(rng.integers(1, 5)).astype(np.float32)
    return rng.choice(values, size=n)


def shard_table(ids: list, scores: np.ndarray, kind: str) -> pa.Table:
    """One shard's scored rows; ``row`` is each row's index in its shard (a payload column)."""
    return pa.table({"id": pa.array(ids, ID_TYPES[kind]),
                     "score": pa.array(scores, pa.float32()),
                     "row": pa.array(np.arange(len(ids), dtype=np.int64))})


def make_shard_names(rng: np.random.Generator, n: int) -> list[str]:
    # "s10" sorts before "s9": the tie rule is on the shard id as a string.
    return [f"s{x}" for x in rng.choice(100, size=n, replace=False)]


@dataclass
class Pool:
    kind: str
    shards: dict[str, pa.Table]

    def rows(self) -> list[dict]:
        return [dict(row, shard=name) for name, table in self.shards.items()
                for row in table.to_pylist()]


def make_pool(rng: np.random.Generator, kind: str, sizes: list[int],
              id_universe: int | None = None) -> Pool:
    """Shards of the given sizes. Ids are unique within a shard (the engine drops repeats there);
    with ``id_universe`` they repeat across shards, else they are unique in the whole pool."""
    names = make_shard_names(rng, len(sizes))
    if id_universe is None:
        all_ids = make_ids(rng, sum(sizes), kind)
        offsets = np.cumsum([0, *sizes])
        ids = [all_ids[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    else:
        ids = [make_ids(rng, size, kind, universe=id_universe) for size in sizes]
    return Pool(kind, {name: shard_table(shard_ids, make_scores(rng, len(shard_ids)), kind)
                       for name, shard_ids in zip(names, ids)})


@st.composite
def pool_cases(draw, repeated_ids=False):
    """A pool, k, the per-shard candidate count M >= k, and a generator for everything random."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(ID_KINDS))
    sizes = draw(st.lists(st.integers(0, 200), min_size=1, max_size=8))
    universe = max(sizes) + draw(st.integers(0, 60)) if repeated_ids else None
    pool = make_pool(rng, kind, sizes, id_universe=universe)
    k = draw(st.integers(1, sum(sizes) + 10))
    m = k + draw(st.sampled_from([0, 0, 1, 7, 50, 1000]))
    return pool, k, m, rng


# ------------------------------------------------------------------------------- reference


def rank_key(row: dict):
    return (-row["score"], row["id"])


def full_sort_top_k(rows: list[dict], k: int) -> list[dict]:
    return sorted(rows, key=rank_key)[:k]


def winning_copies(rows: list[dict]) -> dict:
    """id -> the copy that counts: highest score, ties to the lower shard id."""
    best = {}
    for row in rows:
        current = best.get(row["id"])
        if current is None or (-row["score"], row["shard"]) < (-current["score"], current["shard"]):
            best[row["id"]] = row
    return best


def as_tuples(rows: list[dict], columns=("id", "score", "shard", "row")) -> list[tuple]:
    return [tuple(row[c] for c in columns) for row in rows]


# ---------------------------------------------------------------------- engine, simulated


def shard_candidates(table: pa.Table, shard: str, m: int) -> pa.Table:
    """What a scoring actor hands the reducer: its top M rows, tagged with the shard id."""
    candidates = top_k_rows(table, m)
    return candidates.append_column("shard", pa.array([shard] * candidates.num_rows, pa.string()))


def reduce_shards(pool: Pool, names: list[str], k: int, m: int) -> TopKReducer:
    reducer = TopKReducer(k)
    for name in names:
        reducer.update(shard_candidates(pool.shards[name], name, m))
    return reducer


def selected_rows(reducer: TopKReducer) -> list[dict]:
    result = reducer.result()
    return [] if result is None else result.to_pylist()


def shuffled(rng: np.random.Generator, names) -> list[str]:
    names = list(names)
    return [names[i] for i in rng.permutation(len(names))]


# ------------------------------------------------------------------------------ top_k_rows


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(ID_KINDS),
       n=st.integers(0, 300), extra_k=st.integers(-300, 10), chunks=st.integers(1, 4))
def test_top_k_rows_equals_full_sort(seed, kind, n, extra_k, chunks):
    rng = np.random.default_rng(seed)
    table = shard_table(make_ids(rng, n, kind), make_scores(rng, n), kind)
    pieces = np.array_split(np.arange(n), chunks)  # a multi-chunk table, as a concat would give
    table = pa.concat_tables([table.take(pa.array(p, pa.int64())) for p in pieces])
    k = max(1, n + extra_k)
    top = top_k_rows(table, k)
    assert top.schema == table.schema
    assert as_tuples(top.to_pylist(), ("id", "score", "row")) == as_tuples(
        full_sort_top_k(table.to_pylist(), k), ("id", "score", "row"))


def test_top_k_rows_breaks_score_ties_by_id():
    table = pa.table({"id": pa.array(["b", "c", "a", "d"]),
                      "score": pa.array([0.5, 0.9, 0.5, 0.5], pa.float32())})
    assert top_k_rows(table, 3).column("id").to_pylist() == ["c", "a", "b"]


# ------------------------------------------------------------------------------ reducer


@SETTINGS
@given(case=pool_cases())
def test_reducer_over_shard_candidates_equals_full_sort(case):
    pool, k, m, rng = case
    reducer = reduce_shards(pool, shuffled(rng, pool.shards), k, m)
    assert as_tuples(selected_rows(reducer)) == as_tuples(full_sort_top_k(pool.rows(), k))
    assert reducer.duplicates() is None


@SETTINGS
@given(case=pool_cases(repeated_ids=True))
def test_ids_repeated_across_shards_follow_the_duplicate_rule(case):
    pool, k, m, rng = case
    reducer = reduce_shards(pool, shuffled(rng, pool.shards), k, m)
    winners = winning_copies(pool.rows())
    selected = selected_rows(reducer)
    assert as_tuples(selected) == as_tuples(full_sort_top_k(list(winners.values()), k))
    assert len({row["id"] for row in selected}) == len(selected)
    check_duplicate_records(reducer, pool, winners, selected)


def check_duplicate_records(reducer, pool, winners, selected):
    """Every reported duplicate is a real losing copy, reported once, and its ``kept_in`` shard
    holds a copy of the same id that ranks higher."""
    duplicates = reducer.duplicates()
    records = [] if duplicates is None else duplicates.to_pylist()
    copies = {(row["id"], row["shard"]): row for row in pool.rows()}
    reported = Counter((r["id"], r["shard"]) for r in records)
    assert all(count == 1 for count in reported.values()), reported.most_common(3)
    selected_copies = {(row["id"], row["shard"]) for row in selected}
    for record in records:
        copy = copies[(record["id"], record["shard"])]
        assert (record["score"], record["row"]) == (copy["score"], copy["row"])
        assert winners[record["id"]]["shard"] != record["shard"]
        assert (record["id"], record["shard"]) not in selected_copies
        kept = copies[(record["id"], record["kept_in"])]
        assert (-kept["score"], kept["shard"]) < (-copy["score"], copy["shard"])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(ID_KINDS),
       sizes=st.lists(st.integers(0, 60), min_size=1, max_size=8), copies=st.sampled_from([2, 8]),
       merged=st.booleans())
def test_every_losing_copy_in_contention_is_reported(seed, kind, sizes, copies, merged):
    """With nothing cut (M and k above every count), each losing copy is reported exactly once,
    also through ``merge``; where an id has at most two copies, ``kept_in`` is the shard whose
    copy is selected."""
    rng = np.random.default_rng(seed)
    pool = make_pool(rng, kind, sizes, id_universe=max(sizes) + 5)
    if copies == 2:  # keep each id in at most two shards
        pool = at_most_two_copies(pool)
    total = sum(t.num_rows for t in pool.shards.values())
    names = shuffled(rng, pool.shards)
    if merged:
        cut = int(rng.integers(0, len(names) + 1))
        reducer = reduce_shards(pool, names[:cut], total + 1, total + 1)
        reducer.merge(reduce_shards(pool, names[cut:], total + 1, total + 1))
    else:
        reducer = reduce_shards(pool, names, total + 1, total + 1)
    winners = winning_copies(pool.rows())
    losers = {(r["id"], r["shard"]) for r in pool.rows()} - {
        (w["id"], w["shard"]) for w in winners.values()}
    records = [] if reducer.duplicates() is None else reducer.duplicates().to_pylist()
    assert sorted((r["id"], r["shard"]) for r in records) == sorted(losers)
    check_duplicate_records(reducer, pool, winners, selected_rows(reducer))
    if copies == 2:
        assert all(r["kept_in"] == winners[r["id"]]["shard"] for r in records)


def at_most_two_copies(pool: Pool) -> Pool:
    seen = Counter()
    shards = {}
    for name, table in pool.shards.items():
        keep = [seen[i] < 2 for i in table.column("id").to_pylist()]
        seen.update(i for i, k in zip(table.column("id").to_pylist(), keep) if k)
        shards[name] = table.filter(pa.array(keep, pa.bool_()))
    return Pool(pool.kind, shards)


@pytest.mark.parametrize("kind", ID_KINDS)
def test_duplicate_rule_by_hand(kind):
    ids = {"int": [7, 8, 9], "str": ["x", "y", "z"]}[kind]
    shards = {"s1": shard_table([ids[0], ids[1]], np.array([0.5, 0.4], np.float32), kind),
           "s2": shard_table([ids[0], ids[1], ids[2]], np.array([0.9, 0.4, 0.1], np.float32),
                             kind)}
    pool = Pool(kind, shards)
    for order in (["s1", "s2"], ["s2", "s1"]):
        reducer = reduce_shards(pool, order, k=3, m=3)
        # ids[0]: s2's copy scores higher; ids[1]: a tie, so the lower shard id (s1) keeps it.
        assert as_tuples(selected_rows(reducer), ("id", "shard")) == [
            (ids[0], "s2"), (ids[1], "s1"), (ids[2], "s2")]
        records = reducer.duplicates().to_pylist()
        assert sorted((r["id"], r["shard"], r["kept_in"]) for r in records) == sorted(
            [(ids[0], "s1", "s2"), (ids[1], "s2", "s1")])


@SETTINGS
@given(case=pool_cases(repeated_ids=True))
def test_merging_reducers_equals_one_reducer_fed_everything(case):
    pool, k, m, rng = case
    names = shuffled(rng, pool.shards)
    cut = int(rng.integers(0, len(names) + 1))
    left, right = reduce_shards(pool, names[:cut], k, m), reduce_shards(pool, names[cut:], k, m)
    left.merge(right)
    whole = reduce_shards(pool, names, k, m)
    assert selected_rows(left) == selected_rows(whole)
    expected = full_sort_top_k(list(winning_copies(pool.rows()).values()), k)
    assert as_tuples(selected_rows(left)) == as_tuples(expected)
    check_duplicate_records(left, pool, winning_copies(pool.rows()), selected_rows(left))


def test_reducer_fed_nothing_or_empty_shards_has_no_result():
    reducer = TopKReducer(5)
    assert reducer.result() is None
    reducer.update(shard_candidates(shard_table([], np.zeros(0, np.float32), "int"), "s1", 5))
    assert reducer.result() is None
    assert reducer.duplicates() is None


# ------------------------------------------------------------------------ first_occurrences


def first_occurrence_reference(ids: list) -> list[bool]:
    seen, keep = set(), []
    for i in ids:
        keep.append(i not in seen)
        seen.add(i)
    return keep


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(ID_KINDS), n=st.integers(0, 300),
       universe=st.integers(1, 400), chunks=st.integers(1, 3))
def test_first_occurrences_keeps_the_first_copy_of_each_id(seed, kind, n, universe, chunks):
    rng = np.random.default_rng(seed)
    pool_of_ids = make_ids(rng, universe, kind)
    ids = [pool_of_ids[i] for i in rng.integers(universe, size=n)]
    pieces = np.array_split(np.array(ids, dtype=object), chunks)
    arrays = {"array": pa.array(ids, ID_TYPES[kind]),
              "chunked": pa.chunked_array([pa.array(list(p), ID_TYPES[kind]) for p in pieces],
                                          ID_TYPES[kind])}
    for array in arrays.values():
        keep = first_occurrences(array)
        assert keep.dtype == bool
        assert keep.tolist() == first_occurrence_reference(ids)
