"""Resume after a crash: SIGKILL `alray run` (its whole process group, Ray included) after about
half the shards are committed, run the same command again, and compare with an undisturbed run.

Reports the fraction of shards scored twice and the total time of the two runs against the
undisturbed one. Uses the 3M-row pool bench_scan.py writes (24 shards of 125k rows).

    python benchmarks/bench_resume.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scan import HERE  # noqa: E402


def alray_run(spec: Path, pools: list[Path], out: Path, *extra: str) -> subprocess.Popen:
    uris = "[" + ", ".join(str(p) for p in pools) + "]"
    return subprocess.Popen([sys.executable, "-m", "alray", "run", str(spec), "--set",
                             f"pool.uri={uris}", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def committed(out: Path) -> int:
    return len(list((out / "_shards").glob("*.json"))) if (out / "_shards").exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args()
    spec, pool = args.data / "bench.yaml", [args.data / "pool-a", args.data / "pool-b"]
    shards = sum(len(list(p.glob("*.parquet"))) for p in pool)

    started = time.perf_counter()
    whole = alray_run(spec, pool, args.data / "out-whole", "--fresh")
    whole.communicate()
    undisturbed = time.perf_counter() - started

    out = args.data / "out-crash"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    crashing = alray_run(spec, pool, out, "--fresh")
    while committed(out) < shards // 2 and crashing.poll() is None:
        time.sleep(0.02)
    os.killpg(crashing.pid, signal.SIGKILL)
    crashing.wait()
    before_kill = committed(out)
    resumed = alray_run(spec, pool, out)
    resumed.communicate()
    total = time.perf_counter() - started
    job = json.loads((out / "job.json").read_text())
    same = (out / "selection.parquet").read_bytes() == (
        args.data / "out-whole" / "selection.parquet").read_bytes()
    rescored = shards - job["shards_reused"]
    print(f"{shards} shards; driver killed with {before_kill} committed (actors already scoring "
          f"went on to commit {job['shards_reused'] - before_kill} more before they exited)")
    print(f"resume reused {job['shards_reused']} and scored {rescored}: "
          f"{rescored / shards:.0%} of the shards scored again")
    print(f"undisturbed: {undisturbed:.1f} s; killed + resumed: {total:.1f} s "
          f"({total / undisturbed:.2f}x); selection byte-identical: {same}")


if __name__ == "__main__":
    main()
