"""The pool for the README's labeling round, on S3: scikit-learn's 1,797 handwritten digits as
PNG images (s3://alray-round/images/<id>.png, what annotators see) and a parquet pool of their
pixels as embeddings with each image's URI (s3://alray-round/pool/), plus a linear head trained
on 30 of them (jobs/round/head.safetensors).

S3 is whatever AWS_ENDPOINT_URL names (jobs/round/servers.sh starts one on 127.0.0.1), or AWS.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import s3fs
from PIL import Image
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

from alray.demo import train_head

BUCKET, SHARDS, LABELED = "alray-round", 4, 30


def png(pixels: np.ndarray) -> bytes:
    """An 8x8 digit (0..16) as a 128x128 grey PNG a person can read."""
    image = Image.fromarray((255 - pixels.reshape(8, 8) * 255 / 16).astype(np.uint8))
    out = io.BytesIO()
    image.resize((128, 128), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    fs.pipe({f"{BUCKET}/images/{i}.png": png(digits.data[i]) for i in range(len(x))})
    ids = np.arange(len(x))
    for part, rows in enumerate(np.array_split(ids, SHARDS)):
        flat = pa.array(x[rows].ravel())
        table = pa.table({"id": pa.array(rows, pa.int64()),
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1]),
                          "image_uri": [f"s3://{BUCKET}/images/{i}.png" for i in rows]})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        fs.pipe(f"{BUCKET}/pool/digits-{part}.parquet", sink.getvalue())
    labeled = np.random.default_rng(0).choice(len(x), LABELED, replace=False)
    weight, bias = train_head(x[labeled], digits.target[labeled], 10)
    save_file({"weight": weight, "bias": bias}, str(Path(__file__).parent / "head.safetensors"))
    print(f"pool: {len(x):,} digits in {SHARDS} shards under s3://{BUCKET}/pool/, images under "
          f"s3://{BUCKET}/images/; head trained on {LABELED} -> jobs/round/head.safetensors")


if __name__ == "__main__":
    main()
