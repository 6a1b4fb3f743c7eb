"""Throughput of `alray run` against a raw pyarrow scan of the same files, measured side by side.

Writes a pool of N x 256 float32 embeddings in shards of 125k rows (zstd), then in one run:
  1. raw scan: one process reads every file of the large pool and turns the embedding into NumPy;
  2. `alray run` (linear head, 10 classes, the whole process, Ray start-up included) on the small
     pool (1M rows by default) and on the large one (3M rows).
Steady-state rows/s = (large - small) / (time on large - time on small), so Ray's start-up cancels
out; the fixed start-up cost is what remains of the small run. Each measurement runs --repeats
times, interleaved, and the fastest counts: start-up alone varies by seconds on a shared machine. Peak memory is the largest
proportional set size (PSS) summed over the alray process and all its children (Ray included),
sampled every 0.1 s.

    python benchmarks/bench_scan.py                 # 1M and 3M rows (about 3 GB of parquet)
    python benchmarks/bench_scan.py --rows 200000 600000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIM, CLASSES, SHARD_ROWS = 256, 10, 125_000
HERE = Path(__file__).resolve().parent


def write_pool(folder: Path, first_shard: int, shards: int, seed: int) -> None:
    """Write ``shards`` files of SHARD_ROWS rows: id int64, embedding fixed_size_list<float32>."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(first_shard, first_shard + shards):
        path = folder / f"part-{i:04d}.parquet"
        if path.exists():
            continue
        x = rng.standard_normal((SHARD_ROWS, DIM), dtype=np.float32)
        ids = np.arange(i * SHARD_ROWS, (i + 1) * SHARD_ROWS, dtype=np.int64)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
        pq.write_table(pa.table({"id": ids, "embedding": emb}), path, compression="zstd")


def write_head(path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    save_file({"weight": rng.standard_normal((CLASSES, DIM), dtype=np.float32) * 0.1,
               "bias": np.zeros(CLASSES, np.float32)}, str(path))


def raw_scan(files: list[Path]) -> tuple[int, float]:
    """Rows and seconds to read every file and turn the embedding into a [n, D] NumPy array."""
    rows, started = 0, time.perf_counter()
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            col = batch.column(1)
            matrix = col.values.slice(col.offset * DIM, len(col) * DIM).to_numpy().reshape(-1, DIM)
            rows += matrix.shape[0]
    return rows, time.perf_counter() - started


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(pid: int) -> int:
    """Proportional set size of ``pid`` and all its descendants: shared pages count once."""
    return sum(_pss(p) for p in [pid, *_children(pid)])


def run_alray(spec: Path, pool_uris: list[Path], out: Path, fresh: bool = True) -> tuple[float, int]:
    """Wall seconds of the whole `alray run` process and its peak tree PSS in bytes."""
    uris = "[" + ", ".join(str(p) for p in pool_uris) + "]"
    cmd = [sys.executable, "-m", "alray", "run", str(spec), "--set", f"pool.uri={uris}",
           "--out", str(out), *(["--fresh"] if fresh else [])]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"alray run failed:\n{output}")
    return seconds, peak


SPEC = """\
name: bench
pool: {{uri: ./pool, feature_column: embedding}}
model: {{kind: linear, path: ./head.safetensors}}
selection: {{k: 1000}}
output: {{uri: ./out}}
resources: {{actors: {actors}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=[1_000_000, 3_000_000],
                        metavar=("SMALL", "LARGE"), help="pool sizes (multiples of 125,000)")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="where pools are kept")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement, interleaved; the fastest counts")
    args = parser.parse_args()
    small, large = (r // SHARD_ROWS for r in args.rows)
    first, rest = args.data / "pool-a", args.data / "pool-b"
    write_pool(first, 0, small, seed=0)
    write_pool(rest, small, large - small, seed=1)
    write_head(args.data / "head.safetensors")
    spec = args.data / "bench.yaml"
    spec.write_text(SPEC.format(actors=args.actors))

    files = sorted(first.glob("*.parquet")) + sorted(rest.glob("*.parquet"))[: large - small]
    raw, small_runs, large_runs = [], [], []
    for _ in range(args.repeats):  # interleaved, so a noisy minute hurts every measure alike
        raw.append(raw_scan(files))
        small_runs.append(run_alray(spec, [first], args.data / "out-small"))
        large_runs.append(run_alray(spec, [first, rest], args.data / "out-large"))
    raw_rows, raw_seconds = min(raw, key=lambda r: r[1])
    raw_rate = raw_rows / raw_seconds
    t_small, pss_small = min(small_runs)
    t_large, pss_large = min(large_runs)
    in_job = json.loads((args.data / "out-large" / "job.json").read_text())["rows_per_second"]
    steady = (large - small) * SHARD_ROWS / (t_large - t_small)
    startup = t_small - small * SHARD_ROWS / steady
    print(f"pool: {DIM}-d float32 embeddings, shards of {SHARD_ROWS:,} rows, zstd; "
          f"{os.cpu_count()} CPUs; {args.actors} actors")
    print(f"raw pyarrow scan ({raw_rows:,} rows, one process): {raw_rate:,.0f} rows/s")
    print(f"fastest of {args.repeats} interleaved runs each:")
    print(f"alray run, {small * SHARD_ROWS:,} rows: {t_small:.2f} s; "
          f"{large * SHARD_ROWS:,} rows: {t_large:.2f} s")
    print(f"steady state: {steady:,.0f} rows/s = {steady / raw_rate:.2f}x the raw scan")
    print(f"fixed start-up cost: {startup:.2f} s")
    print(f"scoring phase alone (job.json, {large * SHARD_ROWS:,} rows): {in_job:,.0f} rows/s = "
          f"{in_job / raw_rate:.2f}x the raw scan")
    print(f"peak PSS (alray + Ray, whole tree): {pss_small / 2**20:,.0f} MiB at "
          f"{small * SHARD_ROWS:,} rows, {pss_large / 2**20:,.0f} MiB at {large * SHARD_ROWS:,}")


if __name__ == "__main__":
    main()
