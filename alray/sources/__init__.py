"""Pool sources: list and plan shards on the driver, stream them in the actors."""

from alray.sources.parquet import read_shard
from alray.sources.plan import PoolFile, ShardSpec, list_pool_files, plan_shards, shard_id
from alray.sources.rows import RowBatch, ShardColumns

__all__ = ["PoolFile", "RowBatch", "ShardColumns", "ShardSpec", "list_pool_files", "plan_shards",
           "read_shard", "shard_id"]
