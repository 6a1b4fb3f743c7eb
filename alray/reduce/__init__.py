"""Reducing per-shard candidates into the exact global selection."""

from alray.reduce.topk import TopKReducer, first_occurrences, top_k_rows

__all__ = ["TopKReducer", "first_occurrences", "top_k_rows"]
