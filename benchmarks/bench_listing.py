"""Planning an image prefix of many objects on S3: alray's paged, names-only listing against s3fs's
``find``, side by side in one run against moto's S3 server on 127.0.0.1.

Reports wall time and the Python memory each holds at its peak (tracemalloc), for the same keys.

    python benchmarks/bench_listing.py [--objects 20000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alray.sources.images import plan_image_shards  # noqa: E402
from benchmarks.bench_storage import start_server  # noqa: E402


def measure(fn) -> tuple[float, float, object]:
    """(seconds, peak MiB of Python allocations, result) of ``fn()``."""
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=20_000)
    args = parser.parse_args()
    import s3fs

    server, endpoint = start_server()
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        names = [f"bench/images/{i // 1000:03d}/{i:08d}.jpg" for i in range(args.objects)]
        for first in range(0, len(names), 2000):  # s3fs puts a dict's objects concurrently
            fs.pipe({name: b"x" for name in names[first:first + 2000]})
        storage = {"s3": {"endpoint_url": endpoint}}

        def with_find():
            fs.invalidate_cache()
            return sorted(fs.find("bench/images"))

        def with_alray():
            fs.invalidate_cache()
            return plan_image_shards(["s3://bench/images/"], 1000, storage)

        find_s, find_mib, found = measure(with_find)
        fs.invalidate_cache()
        plan_s, plan_mib, shards = measure(with_alray)
    finally:
        server.terminate()
    planned = sum(len(s.members) for s in shards)
    assert planned == len(found) == args.objects, (planned, len(found))
    print(f"{args.objects:,} objects on moto: s3fs find {find_s:.2f} s, {find_mib:.1f} MiB peak; "
          f"alray plan ({len(shards)} shards) {plan_s:.2f} s, {plan_mib:.1f} MiB peak = "
          f"{plan_mib / find_mib:.2f}x the memory, {plan_s / find_s:.2f}x the time")


if __name__ == "__main__":
    main()
