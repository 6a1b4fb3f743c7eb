"""The only package that imports Ray: the Ray session a job runs on (:mod:`.session`), the
scoring actors (:mod:`.actor`, :mod:`.actors`) and the driver that hands them shards
(:mod:`.driver`). What each actor does with a shard is plain Python in :mod:`alray.pipeline`."""
