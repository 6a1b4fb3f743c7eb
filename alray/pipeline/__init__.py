"""The work on one shard: read it, check its rows, run the model, score, keep its candidates, and
commit. Plain Python with no Ray, so every step runs and is tested in one process; a scoring actor
(:mod:`alray.runtime.actor`) only holds the model and calls :func:`~alray.pipeline.shard.scan_and_commit`.
"""
