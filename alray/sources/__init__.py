"""Pool sources: list and plan shards on the driver, stream them in the actors."""

from alray.sources.parquet import RowBatch, ShardColumns, read_shard
from alray.sources.plan import PoolFile, ShardSpec, list_pool_files, plan_shards, shard_id

__all__ = ["PoolFile", "RowBatch", "ShardColumns", "ShardSpec", "list_pool_files", "plan_shards",
           "read_shard", "shard_id"]
