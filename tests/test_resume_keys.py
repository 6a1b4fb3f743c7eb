"""What a shard's commit keys on, so that no change of input reuses stale scores: every spec key
that changes a score, the content of every model file (a `python` model's module too), and each
image's size and ETag; and what planning does with a footer the store fails to give for a while.
"""

from __future__ import annotations

import io

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import alray
from alray.output.commits import scoring_hash
from alray.sources.images import plan_image_shards
from alray.sources.plan import list_pool_files, plan_shards
from tests.conftest import embedding_array, write_head
from tests.test_images import write_digit_folder

NET = '''import torch


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
'''


def _image_spec(tmp_path, **overrides) -> alray.JobSpec:
    if overrides.get("scoring.mc_samples"):
        overrides.setdefault("resources.gpus_per_actor", 0)
    raw = {"pool": {"uri": str(tmp_path / "images"), "format": "images",
                    "image": {"resize": 8, "crop": 8}},
           "model": {"kind": "python", "path": "alray_key_models:net"},
           "selection": {"k": 5}, "output": {"uri": str(tmp_path / "out")}}
    return alray.JobSpec.from_dict(raw, overrides=overrides)


@pytest.fixture
def python_model(tmp_path, monkeypatch):
    (tmp_path / "alray_key_models.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "alray_key_models.py"


RESCORING = [
    {"pool.image.resize": 10},
    {"pool.image.mean": [0.5, 0.5, 0.5]},
    {"pool.image.mode": "L", "pool.image.mean": [0.5], "pool.image.std": [0.5]},
    {"model.output": "probs"},
    {"model.classes": ["a", "b", "c", "d"]},
    {"scoring.strategy": "margin"},
    {"scoring.mc_samples": 4},
    {"scoring.strategy": "target_probability", "scoring.target_class": 1},
]
NOT_RESCORING = [{"selection.k": 7}, {"resources.actors": 3}, {"scoring.batch_size": 64},
                 {"scoring.seed": 3}, {"resources.gpus_per_actor": 0}]


@pytest.mark.parametrize("change", RESCORING, ids=[str(c) for c in RESCORING])
def test_a_change_that_alters_scores_changes_the_key(tmp_path, python_model, change):
    assert scoring_hash(_image_spec(tmp_path, **change)) != scoring_hash(_image_spec(tmp_path))


@pytest.mark.parametrize("change", NOT_RESCORING, ids=[str(c) for c in NOT_RESCORING])
def test_a_change_that_keeps_scores_keeps_the_key(tmp_path, python_model, change):
    """Without MC dropout, the batch size and the seed change no score."""
    assert scoring_hash(_image_spec(tmp_path, **change)) == scoring_hash(_image_spec(tmp_path))


def test_with_mc_dropout_batches_seed_and_device_kind_count(tmp_path, python_model):
    mc = {"scoring.mc_samples": 4}
    base = scoring_hash(_image_spec(tmp_path, **mc))
    for change in ({"scoring.batch_size": 64}, {"scoring.seed": 3},
                   {"resources.gpus_per_actor": 1}):
        assert scoring_hash(_image_spec(tmp_path, **mc, **change)) != base, change


def test_an_edited_python_model_changes_the_key(tmp_path, python_model):
    before = scoring_hash(_image_spec(tmp_path))
    python_model.write_text(NET.replace("torch.manual_seed(0)", "torch.manual_seed(1)"))
    assert scoring_hash(_image_spec(tmp_path)) != before


def test_new_weights_of_any_committee_member_change_the_key(tmp_path):
    heads = [str(write_head(tmp_path / f"h{i}.npz", 3, 8, seed=i)) for i in range(3)]
    raw = {"pool": {"uri": str(tmp_path), "feature_column": "embedding"},
           "model": {"kind": "linear", "members": heads}, "scoring": {"strategy": "bald"},
           "selection": {"k": 5}, "output": {"uri": str(tmp_path / "out")}}
    before = scoring_hash(alray.JobSpec.from_dict(raw))
    write_head(tmp_path / "h2.npz", 3, 8, seed=9)
    assert scoring_hash(alray.JobSpec.from_dict(raw)) != before


def test_a_replaced_image_changes_its_shards_version_only(tmp_path):
    write_digit_folder(tmp_path / "images", count=12)
    before = plan_image_shards([str(tmp_path / "images")], 4)
    victim = tmp_path / "images" / before[1].members[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # same name, other bytes
    after = plan_image_shards([str(tmp_path / "images")], 4)
    assert [s.shard_id for s in after] == [s.shard_id for s in before]
    changed = [a.version != b.version for a, b in zip(after, before)]
    assert changed == [False, True, False, False]


# ----------------------------------------------------------------------------------- footers


class _FlakyMemory(MemoryFileSystem):
    """An in-memory store whose reads of a path fail with a time-out the first N times, as a
    throttled object store does."""

    protocol = "flakymem"
    failures: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.replace("flakymem://", "memory://", 1))

    def _open(self, path, mode="rb", **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode and self.failures.get(path, 0) > 0:
            self.failures[path] -= 1
            raise TimeoutError("503 Slow Down")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky_store():
    fsspec.register_implementation("flakymem", _FlakyMemory, clobber=True)
    fs = _FlakyMemory()
    table = pa.table({"id": pa.array(range(10), pa.int64()),
                      "embedding": embedding_array(pa.array(range(80), pa.float32())
                                                   .to_numpy().reshape(10, 8))})
    for name in ("a", "b"):
        sink = io.BytesIO()
        pq.write_table(table, sink)
        fs.pipe(f"/pool/{name}.parquet", sink.getvalue())
    yield fs
    _FlakyMemory.failures.clear()
    fs.rm("/pool", recursive=True)


def test_a_footer_the_store_fails_to_give_twice_is_read_on_the_third_try(flaky_store):
    _FlakyMemory.failures["/pool/a.parquet"] = 2
    shards = plan_shards(list_pool_files(["flakymem://pool/"]), 100)
    assert [(s.num_rows, s.problem) for s in shards] == [(10, None), (10, None)]


def test_a_footer_that_keeps_failing_is_left_to_the_actors_not_marked_bad(flaky_store):
    """A store that keeps timing out is not a bad file: the shard is planned without a footer
    and read (with retries) by an actor, not quarantined for good."""
    _FlakyMemory.failures["/pool/a.parquet"] = 100
    shards = plan_shards(list_pool_files(["flakymem://pool/"]), 100)
    assert [(s.num_rows, s.problem) for s in shards] == [(None, None), (10, None)]
