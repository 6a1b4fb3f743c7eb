"""The GPU path without Ray: the scoring loop an actor runs, on `cuda` against the CPU.

Writes a pool of N x 256 float32 embeddings, scores every shard with a linear head (and a small
MLP through the `python` model kind) on the CPU and on the GPU, checks that the scores agree and
that the top-k is identical, and prints rows/s for both. Run it where a GPU is:

    python benchmarks/gpu_check.py --rows 2000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alray.config import JobSpec  # noqa: E402
from alray.pipeline.batch import load_scorer  # noqa: E402
from alray.reduce import TopKReducer  # noqa: E402
from alray.pipeline.shard import scan_shard  # noqa: E402
from alray.sources import list_pool_files, plan_shards  # noqa: E402
from benchmarks.bench_scan import SHARD_ROWS, write_head, write_pool  # noqa: E402


def score_pool(spec: JobSpec, device: str) -> tuple[float, TopKReducer]:
    shards = plan_shards(list_pool_files(spec.pool.uri), spec.pool.rows_per_shard)
    model = load_scorer(spec, device)
    scan_shard(shards[0], spec, model)  # warm-up: CUDA context, kernels, page cache
    reducer = TopKReducer(spec.selection.k)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for shard in shards:
        outcome = scan_shard(shard, spec, model)
        assert outcome.status == "done", outcome.errors
        reducer.update(outcome.candidates)
    return time.perf_counter() - started, reducer


def check_images(count: int) -> None:
    """An image folder through the CNN of tests/models.py, on the CPU and on cuda: the same
    scores (within float rounding) and candidates that carry the CNN's embedding."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(count):
            photo = photos[i % 2]
            y, x = rng.integers(0, 180), rng.integers(0, 300)
            sink = io.BytesIO()
            Image.fromarray(photo[y:y + 240, x:x + 320]).save(sink, format="JPEG")
            (folder / f"{i:05d}.jpg").write_bytes(sink.getvalue())
        from alray.sources.images import plan_image_shards

        scores = {}
        for device in ["cpu", "cuda"]:
            spec = JobSpec.from_dict({
                "pool": {"uri": str(folder), "format": "images", "shard_rows": count,
                         "image": {"mode": "RGB", "resize": 256, "crop": 224}},
                "model": {"kind": "python", "path": "tests.models:cnn_rgb"},
                "scoring": {"batch_size": 128}, "selection": {"k": 50},
                "output": {"uri": str(Path(tmp) / f"out-{device}")}})
            shard = plan_image_shards(spec.pool.uri, count)[0]
            model = load_scorer(spec, device)
            started = time.perf_counter()
            outcome = scan_shard(shard, spec, model)
            seconds = time.perf_counter() - started
            scores[device] = pq.read_table(Path(tmp) / f"out-{device}" / "scores").sort_by("id")
            width = outcome.candidates.schema.field("embedding").type.list_size
            print(f"images on {device}: {count} in {seconds:.2f} s = {count / seconds:,.0f} "
                  f"images/s; candidates carry a {width}-d embedding")
        diff = np.abs(scores["cpu"]["entropy"].to_numpy() - scores["cuda"]["entropy"].to_numpy())
        print(f"images: max |entropy cpu - gpu| = {diff.max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=0, help="also check an image folder")
    args = parser.parse_args()
    if args.images and torch.cuda.is_available():
        check_images(args.images)
    print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_pool(data / "pool", 0, args.rows // SHARD_ROWS, seed=0)
        write_head(data / "head.safetensors")
        rows = args.rows // SHARD_ROWS * SHARD_ROWS
        results = {}
        for device in ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]:
            spec = JobSpec.from_dict({
                "pool": {"uri": str(data / "pool"), "feature_column": "embedding"},
                "model": {"kind": "linear", "path": str(data / "head.safetensors")},
                "selection": {"k": 1000}, "output": {"uri": str(data / f"out-{device}")}})
            seconds, reducer = score_pool(spec, device)
            results[device] = reducer.result()
            print(f"{device}: {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s")
        if "cuda" in results:
            cpu = pq.read_table(data / "out-cpu" / "scores").sort_by("id")
            gpu = pq.read_table(data / "out-cuda" / "scores").sort_by("id")
            diff = np.abs(cpu.column("entropy").to_numpy() - gpu.column("entropy").to_numpy())
            same = results["cpu"].column("id").equals(results["cuda"].column("id"))
            print(f"max |entropy cpu - gpu| = {diff.max():.2e}; top-1000 identical: {same}")
            overlap = len(set(results["cpu"]["id"].to_pylist()) & set(results["cuda"]["id"].to_pylist()))
            print(f"top-1000 overlap: {overlap}")


if __name__ == "__main__":
    main()
