"""Reducing per-shard candidates into the exact global candidates the selection chooses from."""

from alray.reduce.topk import KEY_ORDER, RANK_ORDER, TopKReducer, first_occurrences, top_k_rows

__all__ = ["KEY_ORDER", "RANK_ORDER", "TopKReducer", "first_occurrences", "top_k_rows"]
