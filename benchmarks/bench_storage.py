"""Object storage and images, measured side by side in one run against an S3 server on 127.0.0.1.

1. Parquet on s3://: a plain s3fs + pyarrow read of the pool's objects (embeddings to NumPy, one
   process) against alray's scoring phase on the same objects (rows/s from job.json).
2. Images on s3://: fetching, decoding and preprocessing the same JPEGs with Pillow alone (the
   same thread count, no model) against alray scoring them with a small CNN (images/s from
   job.json).

The server is moto's (`moto_server`, in its own process); it keeps objects in memory.

    python benchmarks/bench_storage.py [--rows 500000] [--images 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alray.config import ImageSpec  # noqa: E402
from alray.sources.decode import preprocess  # noqa: E402
from benchmarks.bench_scan import DIM, write_head  # noqa: E402

SHARD_ROWS = 125_000
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def tiny_cnn():
    """The benchmark's model: cheap next to decoding (4x4 average pool, a conv, a linear head),
    so images/s measures alray's fetch-decode-batch pipeline rather than CPU convolutions."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 8, 3, stride=2),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10))


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto_server did not start")


def upload_parquet(fs, rows: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(rows // SHARD_ROWS):
        x = rng.standard_normal((SHARD_ROWS, DIM), dtype=np.float32)
        table = pa.table({"id": np.arange(i * SHARD_ROWS, (i + 1) * SHARD_ROWS),
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)})
        with fs.open(f"bench/pool/part-{i:03d}.parquet", "wb") as f:
            pq.write_table(table, f, compression="zstd")


def upload_images(fs, count: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - 240), rng.integers(0, photo.shape[1] - 320)
        sink = io.BytesIO()
        Image.fromarray(photo[y:y + 240, x:x + 320]).save(sink, format="JPEG", quality=90)
        fs.pipe_file(f"bench/images/{i:05d}.jpg", sink.getvalue())


def plain_parquet_read(fs) -> float:
    rows, started = 0, time.perf_counter()
    for path in sorted(fs.find("bench/pool")):
        with fs.open(path, "rb", block_size=8 * 2**20, cache_type="readahead") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=8192):
                col = batch.column(1)
                rows += col.values.slice(col.offset * DIM, len(col) * DIM).to_numpy().reshape(
                    -1, DIM).shape[0]
    return rows / (time.perf_counter() - started)


def plain_image_read(fs, image: ImageSpec) -> float:
    """One GET per image (``max_concurrency=1`` skips the size lookup s3fs makes before each
    GET), fetched, decoded and preprocessed in 8 threads."""
    paths = sorted(fs.find("bench/images"))
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        arrays = list(pool.map(lambda p: preprocess(fs.cat_file(p, max_concurrency=1), image),
                               paths))
    assert len(arrays) == len(paths)
    return len(paths) / (time.perf_counter() - started)


def alray_rate(spec: dict, folder: Path) -> float:
    path = folder / "job.yaml"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "alray", "run", str(path), "--fresh"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    out = spec["output"]["uri"]
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=spec["storage"]["s3"]["endpoint_url"])
    return json.loads(fs.cat_file(f"{out}/job.json"))["rows_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement, interleaved; the fastest counts")
    args = parser.parse_args()
    import s3fs

    server, endpoint = start_server()
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        upload_parquet(fs, args.rows)
        upload_images(fs, args.images)
        folder = Path(tempfile.mkdtemp(prefix="alray-bench-"))
        write_head(folder / "head.safetensors")
        fs.put_file(str(folder / "head.safetensors"), "bench/head.safetensors")
        storage = {"s3": {"endpoint_url": endpoint}}
        image = ImageSpec(mode="RGB", resize=256, crop=224)

        parquet_job = {
            "name": "bench-s3", "storage": storage,
            "pool": {"uri": "s3://bench/pool/", "feature_column": "embedding"},
            "model": {"kind": "linear", "path": "s3://bench/head.safetensors"},
            "selection": {"k": 1000}, "output": {"uri": "s3://bench/out-parquet"},
            "resources": {"actors": 2}}
        image_job = {
            "name": "bench-images", "storage": storage,
            "pool": {"uri": "s3://bench/images/", "format": "images", "shard_rows": 500,
                     "image": {"mode": "RGB", "resize": 256, "crop": 224}},
            "model": {"kind": "python", "path": "benchmarks.bench_storage:tiny_cnn"},
            "scoring": {"batch_size": 64},
            "selection": {"k": 100}, "output": {"uri": "s3://bench/out-images"},
            "resources": {"actors": args.image_actors}}
        runs = [(plain_parquet_read(fs), alray_rate(parquet_job, folder),
                 plain_image_read(fs, image), alray_rate(image_job, folder))
                for _ in range(args.repeats)]  # interleaved: noise hits both sides alike
        raw_rows, job_rows, raw_images, job_images = (max(column) for column in zip(*runs))
    finally:
        server.terminate()
    print(f"S3 server: moto on 127.0.0.1; {os.cpu_count()} CPUs; alray with 2 actors; "
          f"fastest of {args.repeats} interleaved runs each")
    print(f"parquet, {args.rows:,} rows x {DIM} float32: plain s3fs + pyarrow "
          f"{raw_rows:,.0f} rows/s; alray {job_rows:,.0f} rows/s = {job_rows / raw_rows:.2f}x")
    print(f"images, {args.images:,} JPEGs 320x240 -> 224x224: Pillow alone (8 threads) "
          f"{raw_images:,.0f} images/s; alray ({args.image_actors} actors) with a tiny CNN {job_images:,.0f} images/s = "
          f"{job_images / raw_images:.2f}x")


if __name__ == "__main__":
    main()
