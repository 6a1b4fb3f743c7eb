"""A real labeled job for the annotation tests: scikit-learn's digits as a pool whose rows name
their images by URI, a linear head trained on a few of them, class names, and a ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tests.conftest import embedding_array

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def write_digits_job(folder: Path, k: int = 20, bucket: str = "digits", shards: int = 2,
                     **selection) -> Path:
    """A pool of the 1,697 digits after the first 100 (ids = their index, ``image_uri`` =
    ``s3://<bucket>/images/<id>.png``, ``truth`` = the class name), a head trained on the first
    100, and a spec choosing ``k``. Returns the spec's path (output ``./out``)."""
    from safetensors.numpy import save_file

    from alray.demo import train_head

    x, y = digits()
    weight, bias = train_head(x[:100], y[:100], 10, l2=1e-3)
    save_file({"weight": weight, "bias": bias}, str(folder / "head.safetensors"))
    (folder / "pool").mkdir(parents=True, exist_ok=True)
    ids = np.arange(100, len(x))
    for part, rows in enumerate(np.array_split(ids, shards)):
        table = pa.table({
            "id": pa.array(rows, pa.int64()), "embedding": embedding_array(x[rows]),
            "image_uri": pa.array([f"s3://{bucket}/images/{i}.png" for i in rows]),
            "truth": pa.array([CLASSES[c] for c in y[rows]])})
        pq.write_table(table, folder / "pool" / f"digits-{part}.parquet")
    spec = {"name": "digits-round", "pool": {"uri": "./pool", "feature_column": "embedding",
                                             "carry": ["image_uri"]},
            "model": {"kind": "linear", "path": "./head.safetensors", "classes": CLASSES},
            "scoring": {"strategy": "margin"},
            "selection": {"k": k, **selection}, "output": {"uri": "./out"},
            "resources": {"actors": 1}}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def truth(ids) -> list[str]:
    """The true class name of each digit id."""
    _, y = digits()
    return [CLASSES[y[int(i)]] for i in ids]
