"""Planning and streaming shards through fsspec: local folders, globs, lists and memory://."""

from __future__ import annotations

import errno
import hashlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alray.config import JobSpec
from alray.errors import ConfigError
from alray.pipeline.batch import load_scorer
from alray.pipeline.shard import scan_shard
from alray.sources import ShardColumns, list_pool_files, plan_shards, read_shard, shard_id
from alray.sources.parquet import decode_values
from tests.conftest import embedding_array, write_head, write_pool

COLUMNS = ShardColumns("id", "embedding", ("tag",))


def test_listing_recurses_skips_hidden_and_sorts(tmp_path):
    write_pool(tmp_path / "a", [3, 3])
    write_pool(tmp_path / "a" / "nested", [2])
    write_pool(tmp_path / "a" / "_tmp", [2])
    write_pool(tmp_path / "a" / ".cache", [2])
    (tmp_path / "a" / "readme.txt").write_text("not a shard")
    files = list_pool_files([str(tmp_path / "a")])
    names = [f.uri.split("/a/")[1] for f in files]
    assert names == ["nested/part-000.parquet", "part-000.parquet", "part-001.parquet"]
    assert all(f.uri.startswith("file://") and f.size > 0 for f in files)


def test_globs_lists_and_single_files(tmp_path):
    paths = write_pool(tmp_path / "p", [2, 2, 2])
    by_glob = list_pool_files([str(tmp_path / "p" / "part-00[01].parquet")])
    assert len(by_glob) == 2
    both = list_pool_files([str(paths[2]), str(tmp_path / "p")])  # overlap counted once
    assert len(both) == 3
    write_pool(tmp_path / "g" / "ax", [2])
    write_pool(tmp_path / "g" / "_x", [2])  # hidden, though '?x' matches it
    by_wildcard_folder = list_pool_files([str(tmp_path / "g" / "?x" / "*.parquet")])
    assert [f.uri.split("/g/")[1] for f in by_wildcard_folder] == ["ax/part-000.parquet"]


def test_nothing_there_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pool.uri: nothing at"):
        list_pool_files([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .parquet files"):
        list_pool_files([str(tmp_path / "empty")])


def test_shard_ids_are_stable_and_unique_across_folders():
    uri_a, uri_b = "file:///x/a/part-0.parquet", "file:///x/b/part-0.parquet"
    assert shard_id(uri_a) == f"part-0-{hashlib.sha1(uri_a.encode()).hexdigest()[:8]}"
    assert shard_id(uri_a) != shard_id(uri_b)
    assert shard_id(uri_a, (2, 5)).endswith("-rg2-5")


def test_large_files_split_by_row_groups(tmp_path):
    write_pool(tmp_path / "p", [1000, 90], row_group_size=100)
    shards = plan_shards(list_pool_files([str(tmp_path / "p")]), shard_rows=300)
    first = [s for s in shards if "part-000" in s.shard_id]
    assert [s.row_groups for s in first] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    assert [s.first_row for s in first] == [0, 300, 600, 900]
    assert sum(s.num_rows for s in shards) == 1090
    assert [s.shard_id.split("-rg")[1] for s in first] == ["0-2", "3-5", "6-8", "9-9"]


def test_reading_row_groups_gives_file_row_numbers(tmp_path):
    write_pool(tmp_path / "p", [1000], row_group_size=100)
    shards = plan_shards(list_pool_files([str(tmp_path / "p")]), shard_rows=300)
    ids = []
    for shard in shards:
        for batch in read_shard(shard, COLUMNS, batch_size=64):
            assert batch.ids.to_pylist()[0] == batch.first_row  # ids are 0..999 in file order
            ids += batch.ids.to_pylist()
    assert ids == list(range(1000))


def test_fixed_size_embeddings_reach_numpy_without_a_copy():
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    arr = embedding_array(x).slice(2, 3)
    matrix, masks, width = decode_values(arr, None)
    assert width == 4 and np.array_equal(matrix, x[2:5])
    values_buffer = arr.values.buffers()[1]
    assert matrix.ctypes.data == values_buffer.address + 2 * 4 * 4  # a view into Arrow's buffer
    assert not masks["null_value"].any()


def test_list_embeddings_flag_wrong_lengths_and_nulls():
    arr = pa.array([[1.0, 2.0], [3.0], None, [4.0, None], [5.0, 6.0]], pa.list_(pa.float64()))
    matrix, masks, width = decode_values(arr, 2)
    assert width == 2
    assert masks["wrong_length"].tolist() == [False, True, False, False, False]
    assert masks["null_value"].tolist() == [False, False, True, True, False]
    assert matrix[4].tolist() == [5.0, 6.0] and matrix[0].tolist() == [1.0, 2.0]


def _memory_pool(name: str, rows: list[int]) -> str:
    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(0)
    next_id = 0
    for i, n in enumerate(rows):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        table = pa.table({"id": np.arange(next_id, next_id + n),
                          "embedding": embedding_array(x),
                          "tag": [f"t{j}" for j in range(n)]})
        next_id += n
        with fs.open(f"/{name}/part-{i}.parquet", "wb") as f:
            pq.write_table(table, f)
    return f"memory://{name}"


def test_memory_filesystem_plan_read_and_score(tmp_path):
    """A non-local fsspec URL end to end in one process (memory:// does not cross processes)."""
    uri = _memory_pool("pool-test", [30, 0, 45])
    write_head(tmp_path / "head.safetensors", classes=3, dim=4)
    spec = JobSpec.from_dict({
        "pool": {"uri": uri, "feature_column": "embedding", "carry": ["tag"]},
        "model": {"kind": "linear", "path": str(tmp_path / "head.safetensors")},
        "selection": {"k": 5}, "output": {"uri": "memory://out-test"},
    })
    shards = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)
    assert [s.num_rows for s in shards] == [30, 0, 45]
    assert all(s.uri.startswith("memory://") for s in shards)
    model = load_scorer(spec)
    outcomes = [scan_shard(s, spec, model) for s in shards]
    assert [o.status for o in outcomes] == ["done"] * 3
    assert [o.rows_scored for o in outcomes] == [30, 0, 45]
    fs = fsspec.filesystem("memory")
    written = sorted(fs.ls("/out-test/scores", detail=False))
    assert len(written) == 3
    scores = pq.read_table(fs.open(written[2], "rb"))
    assert scores.num_rows == 45
    top = outcomes[2].candidates
    assert top.column("tag").to_pylist() == [f"t{i - 30}" for i in top.column("id").to_pylist()]


def test_pickled_weights_are_refused(tmp_path):
    """An .npz holding a pickled object array would run code on load: alray refuses it."""
    from alray.errors import ModelError

    np.savez(tmp_path / "head.npz", weight=np.array([object()], dtype=object),
             bias=np.zeros(2, np.float32))
    spec = JobSpec.from_dict({"pool": {"uri": str(tmp_path), "feature_column": "embedding"},
                              "model": {"kind": "linear", "path": str(tmp_path / "head.npz")},
                              "selection": {"k": 1}, "output": {"uri": str(tmp_path / "out")}})
    with pytest.raises(ModelError, match="not a readable .npz file"):
        load_scorer(spec)


def test_transient_errors_are_retried_with_backoff_and_others_are_not():
    from alray.sources.files import retry_transient

    calls = []

    def flaky(succeed_on: int, error: type[Exception]):
        calls.append(len(calls))
        if len(calls) < succeed_on:
            raise error("503 Slow Down")
        return "data"

    assert retry_transient(flaky, 3, TimeoutError, first_wait=0.001) == "data"
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionResetError):
        retry_transient(flaky, 9, ConnectionResetError, first_wait=0.001)
    assert len(calls) == 4  # gave up after 4 attempts
    calls.clear()
    with pytest.raises(FileNotFoundError):
        retry_transient(flaky, 9, FileNotFoundError, first_wait=0.001)
    assert len(calls) == 1  # a missing object is final


def test_malformed_requests_are_not_transient(s3, s3_server):
    """s3fs maps S3's 4xx "invalid" codes to EINVAL; asking again would not help. A real one from
    the S3 server: a bucket name that is too short."""
    from alray.sources.files import is_transient

    with pytest.raises(OSError) as invalid:
        s3.mkdir("ab")  # bucket names have 3 to 63 characters
    assert invalid.value.errno == errno.EINVAL and not is_transient(invalid.value)
    assert is_transient(OSError(errno.EIO, "503 Slow Down")) and is_transient(TimeoutError())
