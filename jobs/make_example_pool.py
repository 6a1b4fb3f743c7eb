"""Write the pool and heads that jobs/example.yaml and jobs/committee.yaml read:
jobs/example/{pool/, head.safetensors, committee/head-{0,1,2}.safetensors}.

200,000 rows of 64-d float32 embeddings drawn around 10 class centres, in 8 parquet shards, with a
`source` column to carry into the selection; a linear head that knows the centres only roughly,
and a committee of three such heads, each with its own error (as heads trained on different
samples of the labels would be).

    python jobs/make_example_pool.py [--rows 200000] [--shards 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
DIM, CLASSES = 64, 10


def save_head(centres: np.ndarray, path: Path) -> None:
    """A linear head scoring each class by its (noisy) centre: nearest centre wins."""
    temperature = 0.02  # a head about as unsure as a real one early in labeling
    save_file({"weight": centres * temperature,
               "bias": -0.5 * temperature * (centres ** 2).sum(1)}, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "example")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32) * 2
    pool = args.out / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    first = 0
    for i, rows in enumerate(np.array_split(np.arange(args.rows), args.shards)):
        labels = rng.integers(0, CLASSES, len(rows))
        x = centres[labels] + rng.standard_normal((len(rows), DIM)).astype(np.float32) * 1.5
        table = pa.table({
            "id": np.arange(first, first + len(rows), dtype=np.int64),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
            "source": [f"s3://example-bucket/items/{j:08d}.json" for j in range(first, first + len(rows))],
        })
        pq.write_table(table, pool / f"part-{i:04d}.parquet")
        first += len(rows)
    noisy = centres + rng.standard_normal(centres.shape).astype(np.float32) * 0.8
    save_head(noisy, args.out / "head.safetensors")
    (args.out / "committee").mkdir(exist_ok=True)
    for member in range(3):
        noisy = centres + rng.standard_normal(centres.shape).astype(np.float32) * 0.8
        save_head(noisy, args.out / "committee" / f"head-{member}.safetensors")
    print(f"wrote {args.rows:,} rows in {args.shards} shards to {pool}")


if __name__ == "__main__":
    main()
