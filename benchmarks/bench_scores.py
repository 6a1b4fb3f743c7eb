"""What sampled scores cost: MC dropout (T passes) against one pass, a committee of 5 linear heads
against one, measured side by side in one run of the real engine.

The pool is read once whatever K is, so a job with K samples should cost one scan plus K times the
model, not K scans. To show it, the same run also times the model alone (one forward pass over an
in-memory batch, in this process, on the one thread an actor gets; with dropout off, and on as MC
dropout runs it) and prints the MC job's cost that reading once predicts beside the one measured.

Rates are the scoring phase of each job (``job.json``'s ``rows_per_second``: reading, the model,
the scores and the commits, without Ray's start-up). Each job runs ``--repeats`` times,
interleaved, and the fastest counts: these machines are shared and noisy.

    .venv/bin/python benchmarks/bench_scores.py                  # 2M x 256 pool, T = 20
    .venv/bin/python benchmarks/bench_scores.py --rows 500000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_scan import SHARD_ROWS, write_pool  # noqa: E402
from benchmarks.models import CLASSES, DIM, mlp  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 8192


def write_heads(folder: Path, count: int) -> list[str]:
    paths = []
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        path = folder / f"head-{i}.npz"
        np.savez(path, weight=rng.standard_normal((CLASSES, DIM)).astype(np.float32) * 0.1,
                 bias=np.zeros(CLASSES, np.float32))
        paths.append(str(path))
    return paths


def run_job(data: Path, name: str, model: dict, scoring: dict, actors: int) -> float:
    """Scoring-phase rows/s of one fresh `alray run` (from the repo root, so the benchmark's
    python model imports on the actors)."""
    spec = {"name": name, "pool": {"uri": str(data / "pool-scores"), "feature_column": "embedding"},
            "model": model, "scoring": {"batch_size": BATCH, **scoring},
            "selection": {"k": 1000}, "output": {"uri": str(data / f"out-{name}")},
            "resources": {"actors": actors, "gpus_per_actor": 0}}
    path = data / f"{name}.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "alray", "run", str(path), "--fresh", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    return json.loads((data / f"out-{name}" / "job.json").read_text())["rows_per_second"]


def model_alone(dropout: bool, seconds: float = 3.0) -> float:
    """Seconds of one forward pass of the MLP over an in-memory batch, dropout on or off, on
    one thread (one actor's share of this machine); the fastest of the passes in ``seconds``."""
    torch.set_num_threads(1)
    net = mlp().eval()
    if dropout:
        net[2].train()
    x = torch.randn(BATCH, DIM)
    best, started = float("inf"), time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            tick = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - tick)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="pool rows (x 125,000)")
    parser.add_argument("--passes", type=int, default=20, help="T, MC-dropout passes")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args()
    write_pool(args.data / "pool-scores", 0, args.rows // SHARD_ROWS, seed=7)
    heads = write_heads(args.data, args.members)
    python = {"kind": "python", "path": "benchmarks.models:mlp"}
    jobs = {
        "mlp-1-pass": (python, {"strategy": "entropy"}),
        f"mlp-mc-{args.passes}": (python, {"strategy": "bald", "mc_samples": args.passes}),
        "linear-1": ({"kind": "linear", "path": heads[0]}, {"strategy": "entropy"}),
        f"committee-{args.members}": ({"kind": "linear", "members": heads}, {"strategy": "bald"}),
    }
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeats):
        for name, (model, scoring) in jobs.items():
            rates[name].append(run_job(args.data, name, model, scoring, args.actors))
    best = {name: max(values) for name, values in rates.items()}
    plain_pass, dropout_pass = model_alone(dropout=False), model_alone(dropout=True)
    print(f"pool: {args.rows:,} rows x {DIM} float32, shards of {SHARD_ROWS:,}; {os.cpu_count()} "
          f"CPUs, {args.actors} actors, batches of {BATCH}; fastest of {args.repeats} runs")
    for name, rate in best.items():
        print(f"  {name:<16} {rate:>12,.0f} rows/s (scoring phase)")
    mc, plain = best[f"mlp-mc-{args.passes}"], best["mlp-1-pass"]
    batch_one = args.actors * BATCH / plain  # seconds per batch per actor, one pass
    read_once = batch_one - plain_pass + args.passes * dropout_pass
    print(f"model alone, one batch on one thread: {plain_pass * 1e3:.1f} ms, with dropout on "
          f"{dropout_pass * 1e3:.1f} ms (the dropout mask is drawn per pass)")
    print(f"MC dropout, T = {args.passes}: {plain / mc:.2f}x slower than one pass, measured; "
          f"reading once and running the model {args.passes} times predicts "
          f"{read_once / batch_one:.2f}x; reading {args.passes} times would be "
          f">= {args.passes * (batch_one - plain_pass + dropout_pass) / batch_one:.2f}x")
    committee, single = best[f"committee-{args.members}"], best["linear-1"]
    print(f"committee of {args.members} linear heads: {single / committee:.2f}x slower than one")


if __name__ == "__main__":
    main()
