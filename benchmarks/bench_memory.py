"""Peak memory against pool size: the same shards, a pool of N rows and one of 10N rows.

Peak PSS is summed over the `alray run` process and every descendant (Ray's processes and the
actors), so pages shared through Ray's object store count once. Uses the files bench_scan.py
writes (shards of 125k rows x 256 float32).

    python benchmarks/bench_scan.py          # once, to write the pools
    python benchmarks/bench_memory.py        # N = 250k rows (2 shards), 10N = 2.5M (20 shards)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_scan import HERE, SHARD_ROWS, run_alray  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--shards", type=int, default=2, help="shards in the small pool")
    args = parser.parse_args()
    files = sorted((args.data / "pool-a").glob("*.parquet")) + sorted(
        (args.data / "pool-b").glob("*.parquet"))
    if len(files) < 10 * args.shards:
        raise SystemExit(f"need {10 * args.shards} shards under {args.data}; run bench_scan.py")
    spec = args.data / "bench.yaml"
    results = {}
    for count in (args.shards, 10 * args.shards):
        seconds, peak = run_alray(spec, files[:count], args.data / f"out-mem-{count}")
        results[count] = peak
        print(f"{count * SHARD_ROWS:>10,} rows ({count:>2} shards): peak PSS {peak / 2**20:,.0f} "
              f"MiB, {seconds:.1f} s")
    small, large = results[args.shards], results[10 * args.shards]
    print(f"peak PSS ratio at 10x the pool: {large / small:.2f}x")


if __name__ == "__main__":
    main()
