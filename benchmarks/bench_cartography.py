"""Dataset cartography: how well the hard-to-learn rows find flipped labels, beside cleanlab, and
how fast `alray cartography` reads a large training log beside pyarrow alone. One run each.

Parts (both by default; ``--parts`` picks one):

- ``quality``: scikit-learn's digits, wine and breast cancer, features standardized, every row a
  training row, 10% of the rows (chosen uniformly, seeded) given a different class uniformly at
  random; 5 seeds. One learner for everything, chosen once and not tuned per dataset: an MLP
  (D -> 128 -> ReLU -> C), Adam (lr 1e-3), minibatches of 32 reshuffled each epoch,
  cross-entropy, 20 epochs, torch seeded, 1 thread.

  * alray: the learner trains on every row while :class:`~alray.cartography.DynamicsLogger`
    logs each batch's logits on its forward pass (parquet, a temporary folder); then
    :func:`alray.cartography.cartography` reads the log. Flags: the ``hard_to_learn`` region at
    the default share 0.33 and at ``--hard`` 0.10 (the flip rate); the k rows of lowest
    ``gold_confidence`` (k = the number flipped, so precision = recall); the k rows of lowest
    ``gold_correctness``, ties by lowest confidence.
  * cleanlab: 5-fold StratifiedKFold (shuffled, seeded) out-of-sample probabilities of the same
    learner (trained on 4 folds for the same 20 epochs, predicting the 5th), then
    ``cleanlab.filter.find_label_issues(filter_by="prune_by_noise_rate", n_jobs=1)``, and the
    k rows of lowest ``cleanlab.rank.get_label_quality_scores`` (self-confidence).
  * ``alray.cartography.confident.find_label_issues`` on the same out-of-sample probabilities,
    where that module imports, with the count of rows whose flag differs from cleanlab's.

  Per dataset: mean and sd over seeds of each precision and recall (against the flipped rows),
  and the mean wall time of training with logging, of the cartography pass and of the whole
  5-fold cleanlab pipeline. Also, for both rankings (alray's lowest confidence, cleanlab's
  lowest self-confidence), the precision of the shortest prefix that reaches recall 0.8 (a point
  of the precision-recall curve; the prefix is chosen with the answer). Target (issue 12):
  precision >= 0.9 at recall >= 0.8, and no worse than cleanlab.

- ``speed``: a synthetic log of N rows x E epochs x C classes, written as DynamicsLogger writes
  one (one zstd parquet file per epoch: id int64, gold int64, logits fixed_size_list<float32>[C],
  row groups of 65,536; each epoch's rows in their own random order), generated in chunks and
  kept in ``--log-dir`` for reruns (untimed). Then, interleaved, best of ``--repeats``:
  (1) pyarrow alone, two ways, every batch's ids, gold and logits turned into NumPy (the logits
  a [n, C] float32 matrix): ``pyarrow.dataset(files).to_batches(use_threads=True)`` and
  ``pq.read_table(file, use_threads=True)`` per epoch; (2) ``alray.cartography.cartography``
  on the folder, the whole call (statistics, regions, statistics.parquet, data map, selection).
  The faster pyarrow way is the baseline. Peak RSS of each pass is VmHWM after resetting it
  (``/proc/self/clear_refs``). The alray pass is split into reading the log (up to the last
  epoch's progress line) and the rest; ``--profile`` adds one more alray pass under cProfile.

    .venv/bin/python benchmarks/bench_cartography.py                       # both; 10M x 20
    .venv/bin/python benchmarks/bench_cartography.py --parts quality
    .venv/bin/python benchmarks/bench_cartography.py --parts speed --rows 1000000 --epochs 20 \
        --profile
    .venv/bin/python benchmarks/bench_cartography.py --parts speed --rows 200000 --epochs 5
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alray.cartography import DynamicsLogger, cartography  # noqa: E402
from benchmarks.printing import Out, table  # noqa: E402
from benchmarks.printing import header as run_header  # noqa: E402

HERE = Path(__file__).resolve().parent
PARTS = ("quality", "speed")
DATASETS = ("digits", "wine", "breast_cancer")
FLIP_RATE, FOLDS = 0.10, 5
HIDDEN, LR, BATCH, EPOCHS = 128, 1e-3, 32, 20
ROW_GROUP = 65_536
BYTES_PER_LOG_ROW = 60  # id + gold + 10 float32 logits after zstd (measured ~52), with margin


def header(out: Out) -> None:
    run_header(out, "bench_cartography.py", ("alray", "torch", "scikit-learn", "cleanlab",
                                             "numpy", "pyarrow"))


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


# ----------------------------------------------------------------------------------- quality


@dataclass
class NoisyData:
    x: np.ndarray        # [n, D] float32, standardized
    labels: np.ndarray   # [n] int64, the given (partly flipped) labels
    flipped: np.ndarray  # [n] bool
    classes: int


def noisy_data(name: str, seed: int) -> NoisyData:
    """A scikit-learn dataset, standardized, with FLIP_RATE of its labels flipped to another
    class (rows and new classes uniform, seeded)."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(y), size=int(round(FLIP_RATE * len(y))), replace=False)
    labels = y.astype(np.int64).copy()
    labels[rows] = (labels[rows] + rng.integers(1, classes, size=len(rows))) % classes
    flipped = np.zeros(len(y), bool)
    flipped[rows] = True
    x = StandardScaler().fit_transform(x).astype(np.float32)
    return NoisyData(x, labels, flipped, classes)


def train_mlp(x: np.ndarray, y: np.ndarray, classes: int, seed: int,
              logger: DynamicsLogger | None = None) -> torch.nn.Module:
    """The learner: D -> HIDDEN -> ReLU -> C, Adam, minibatches of BATCH, EPOCHS epochs. With a
    logger, each batch's logits on its forward pass are logged (ids: row positions in ``x``)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    features, targets = torch.from_numpy(x), torch.from_numpy(y)
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        for rows in torch.randperm(len(y), generator=shuffle).split(BATCH):
            logits = model(features[rows])
            loss = torch.nn.functional.cross_entropy(logits, targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if logger is not None:
                logger.log(rows, logits, targets[rows])
        if logger is not None:
            logger.end_epoch()
    return model.eval()


def out_of_sample_probs(data: NoisyData, seed: int) -> np.ndarray:
    """FOLDS-fold out-of-sample probabilities of the learner (StratifiedKFold on the given
    labels, shuffled, seeded). ``[n, C]``."""
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(data.labels), data.classes), np.float32)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    for fold, (train, held_out) in enumerate(folds.split(data.x, data.labels)):
        model = train_mlp(data.x[train], data.labels[train], data.classes, seed * 100 + fold)
        with torch.no_grad():
            probs[held_out] = torch.softmax(model(torch.from_numpy(data.x[held_out])), 1).numpy()
    return probs


def lowest(k: int, *keys: np.ndarray) -> np.ndarray:
    """The k rows lowest by ``keys`` (the first key first), ties to the lower row."""
    order = np.lexsort((np.arange(len(keys[0])), *reversed(keys)))
    return order[:k]


def precision_recall(flagged: np.ndarray, flipped: np.ndarray) -> tuple[float, float, int]:
    """Precision and recall of the flagged row positions against the flipped rows."""
    hits = int(flipped[flagged].sum())
    return hits / max(len(flagged), 1), hits / max(int(flipped.sum()), 1), len(flagged)


def at_recall(order: np.ndarray, flipped: np.ndarray,
              recall: float = 0.8) -> tuple[float, float, int]:
    """Precision, recall and size of the shortest prefix of the ranking ``order`` (row positions,
    most suspect first) whose recall reaches ``recall``: a point of the precision-recall curve,
    the prefix chosen with the answer."""
    hits = np.cumsum(flipped[order])
    k = int(np.searchsorted(hits, int(np.ceil(recall * flipped.sum())))) + 1
    return precision_recall(order[:k], flipped)


def confident_module():
    """``alray.cartography.confident`` where it imports, else None."""
    try:
        return importlib.import_module("alray.cartography.confident")
    except ImportError:
        return None


def alray_confident_flags(module, labels: np.ndarray, probs: np.ndarray,
                          classes: int) -> np.ndarray:
    """Row positions that ``alray.cartography.confident.find_label_issues`` flags, fed the
    probabilities in chunks of 512 rows."""
    ids = np.arange(len(labels), dtype=np.int64)

    def chunks():
        for start in range(0, len(ids), 512):
            part = slice(start, start + 512)
            yield pa.array(ids[part]), labels[part], probs[part]

    flagged = module.find_label_issues(chunks, classes)
    return np.sort(np.asarray(flagged.column("id").to_pylist(), np.int64))


@dataclass
class SeedResult:
    scores: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    disagreements: int | None = None


def cartography_flags(data: NoisyData, seed: int, work: Path, result: SeedResult) -> None:
    """Train with logging, run cartography at the default share and at the flip rate, and score
    its four flag sets."""
    started = time.perf_counter()
    logger = DynamicsLogger(str(work / "log"))
    train_mlp(data.x, data.labels, data.classes, seed, logger)
    result.seconds["train + log"] = time.perf_counter() - started
    started = time.perf_counter()
    default = cartography(str(work / "log"), str(work / "out-33"))
    result.seconds["cartography"] = time.perf_counter() - started
    at_rate = cartography(str(work / "log"), str(work / "out-10"), hard=FLIP_RATE)
    k = int(data.flipped.sum())
    for name, run in (("hard_to_learn, --hard 0.33", default),
                      (f"hard_to_learn, --hard {FLIP_RATE:.2f}", at_rate)):
        stats = run.statistics
        ids = stats.column("id").to_numpy()
        hard = ids[np.asarray(stats.column("region").to_pylist()) == "hard_to_learn"]
        result.scores[f"alray {name}"] = precision_recall(hard, data.flipped)
    stats = default.statistics
    ids = stats.column("id").to_numpy()
    confidence = stats.column("gold_confidence").to_numpy()
    correctness = stats.column("gold_correctness").to_numpy()
    result.scores["alray top-k lowest confidence"] = precision_recall(
        ids[lowest(k, confidence)], data.flipped)
    result.scores["alray top-k lowest correctness, conf."] = precision_recall(
        ids[lowest(k, correctness, confidence)], data.flipped)
    result.scores["alray lowest confidence @ recall 0.8"] = at_recall(
        ids[lowest(len(ids), confidence)], data.flipped)


def cleanlab_flags(data: NoisyData, seed: int, result: SeedResult, confident) -> None:
    """The 5-fold pipeline and cleanlab's two flag sets; alray's confident learning on the same
    probabilities where it imports."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    started = time.perf_counter()
    probs = out_of_sample_probs(data, seed)
    issues = find_label_issues(data.labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    result.seconds["5-fold cleanlab"] = time.perf_counter() - started
    flagged = np.flatnonzero(issues)
    result.scores["cleanlab find_label_issues"] = precision_recall(flagged, data.flipped)
    quality = get_label_quality_scores(data.labels, probs)
    result.scores["cleanlab top-k lowest self-confidence"] = precision_recall(
        lowest(int(data.flipped.sum()), quality), data.flipped)
    result.scores["cleanlab lowest self-conf. @ recall 0.8"] = at_recall(
        lowest(len(quality), quality), data.flipped)
    if confident is None:
        return
    started = time.perf_counter()
    mine = alray_confident_flags(confident, data.labels, probs, data.classes)
    result.seconds["alray confident"] = time.perf_counter() - started
    result.scores["alray confident find_label_issues"] = precision_recall(mine, data.flipped)
    result.disagreements = len(np.setxor1d(mine, flagged))


def quality_dataset(out: Out, name: str, seeds: int, confident) -> None:
    results = []
    for seed in range(seeds):
        data = noisy_data(name, seed)
        result = SeedResult()
        with tempfile.TemporaryDirectory(prefix="bench-cartography-") as work:
            cartography_flags(data, seed, Path(work), result)
        cleanlab_flags(data, seed, result, confident)
        results.append(result)
    data = noisy_data(name, 0)
    out(f"\n{name}: {len(data.labels):,} rows, {data.x.shape[1]} features, {data.classes} "
        f"classes, {int(data.flipped.sum())} flipped (k); {seeds} seeds (0..{seeds - 1})")
    rows = []
    for method in results[0].scores:
        scores = np.array([r.scores[method] for r in results])
        rows.append([method, mean_sd(scores[:, 0]), mean_sd(scores[:, 1]),
                     f"{scores[:, 2].mean():.1f}"])
    table(out, ["flags", "precision", "recall", "flagged"], rows, [39, 13, 13, 7])
    seconds = {part: np.mean([r.seconds[part] for r in results]) for part in results[0].seconds}
    out("mean wall: " + ", ".join(f"{part} {s:.2f} s" for part, s in seconds.items()))
    if confident is None:
        out("alray.cartography.confident: not available")
    else:
        counts = [r.disagreements for r in results]
        out(f"alray confident vs cleanlab find_label_issues: rows flagged differently per seed "
            f"{counts}" + (" (identical)" if not any(counts) else ""))
    verdict(out, results)


def verdict(out: Out, results: list[SeedResult]) -> None:
    """Issue 12's target for the top-k by confidence: precision >= 0.9 at recall >= 0.8, and no
    worse than cleanlab (its find_label_issues in both, its top-k in precision)."""
    def mean(method, i):
        return float(np.mean([r.scores[method][i] for r in results]))

    mine = "alray top-k lowest confidence"
    p, r = mean(mine, 0), mean(mine, 1)
    met = p >= 0.9 and r >= 0.8
    fli = "cleanlab find_label_issues"
    peer_top = mean("cleanlab top-k lowest self-confidence", 0)
    out(f"target: {mine} precision {p:.3f}, recall {r:.3f} -> "
        f"{'met' if met else 'NOT met'} (>= 0.9 at >= 0.8); against cleanlab top-k "
        f"{peer_top:.3f} ({p - peer_top:+.3f}), against find_label_issues precision "
        f"{mean(fli, 0):.3f} ({p - mean(fli, 0):+.3f}) and recall {mean(fli, 1):.3f} "
        f"({r - mean(fli, 1):+.3f})")
    curve = mean("alray lowest confidence @ recall 0.8", 0)
    peer_curve = mean("cleanlab lowest self-conf. @ recall 0.8", 0)
    out(f"        precision at recall 0.8 on the ranking: alray {curve:.3f} -> "
        f"{'met' if curve >= 0.9 else 'NOT met'}; cleanlab's ranking {peer_curve:.3f} "
        f"({curve - peer_curve:+.3f})")


def warm_up() -> None:
    """One untimed training with logging and one cartography pass, so that the first seed's
    times hold no first-call costs (torch's, matplotlib's import)."""
    data = noisy_data("wine", 0)
    with tempfile.TemporaryDirectory(prefix="bench-cartography-") as work:
        train_mlp(data.x, data.labels, data.classes, 0, DynamicsLogger(f"{work}/log"))
        cartography(f"{work}/log", f"{work}/out")


def part_quality(out: Out, args) -> None:
    torch.set_num_threads(1)
    confident = confident_module()
    warm_up()
    out(f"\nquality: {FLIP_RATE:.0%} of labels flipped to another class; learner D -> {HIDDEN} -> "
        f"ReLU -> C, Adam lr {LR:g}, batch {BATCH}, {EPOCHS} epochs, 1 torch thread; cleanlab "
        f"on {FOLDS}-fold out-of-sample probabilities of the same learner; precision and recall "
        "against the flipped rows, mean ± sd over seeds; top-k: k = the number flipped; "
        "'@ recall 0.8': the shortest prefix of the ranking with recall >= 0.8 (a point of the "
        "precision-recall curve, chosen with the answer)")
    for name in args.datasets.split(","):
        quality_dataset(out, name.strip(), args.seeds, confident)
    torch.set_num_threads(os.cpu_count() or 1)


# ----------------------------------------------------------------------------------- speed


def log_schema(classes: int) -> pa.Schema:
    return pa.schema([("id", pa.int64()), ("gold", pa.int64()),
                      ("logits", pa.list_(pa.float32(), classes))])


def write_epoch(path: Path, epoch: int, gold: np.ndarray, ease: np.ndarray, classes: int,
                chunk_rows: int) -> None:
    """One epoch file: every id once, in this epoch's random order; logits standard normal with
    the gold class raised by the row's ease (grows with the epoch, as a model learns)."""
    rng = np.random.default_rng([7, epoch])
    order = rng.permutation(len(gold))
    partial = path.with_suffix(".partial")
    with pq.ParquetWriter(partial, log_schema(classes), compression="zstd") as writer:
        for start in range(0, len(order), chunk_rows):
            ids = order[start:start + chunk_rows]
            logits = rng.standard_normal((len(ids), classes), dtype=np.float32)
            logits[np.arange(len(ids)), gold[ids]] += ease[ids] * (1 + 0.1 * epoch)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), classes)
            writer.write_table(pa.table([pa.array(ids), pa.array(gold[ids]), flat],
                                        schema=log_schema(classes)), row_group_size=ROW_GROUP)
    partial.rename(path)


def synthetic_log(out: Out, root: Path, rows: int, epochs: int, classes: int,
                  chunk_rows: int) -> Path:
    """The log's folder, written where missing (files already there are kept)."""
    folder = root / f"log-{rows}x{epochs}x{classes}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [e for e in range(epochs) if not (folder / f"dynamics_epoch_{e}.parquet").exists()]
    if not missing:
        out(f"log: reusing {folder}")
        return folder
    need = len(missing) * rows * BYTES_PER_LOG_ROW
    free = shutil.disk_usage(folder).free
    if free < need * 1.2:
        raise SystemExit(f"{folder}: {free / 2**30:.1f} GiB free, the log needs about "
                         f"{need / 2**30:.1f} GiB; give --log-dir on a larger disk")
    rng = np.random.default_rng(11)
    gold = rng.integers(0, classes, size=rows, dtype=np.int64)
    ease = rng.normal(2.0, 1.5, size=rows).astype(np.float32)  # some rows stay hard
    started = time.perf_counter()
    for epoch in missing:
        write_epoch(folder / f"dynamics_epoch_{epoch}.parquet", epoch, gold, ease, classes,
                    chunk_rows)
    out(f"log: wrote {len(missing)} epoch files to {folder} in "
        f"{time.perf_counter() - started:.0f} s (untimed)")
    return folder


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """VmHWM in bytes (since the last reset_peak_rss)."""
    return _status("VmHWM")


def rss() -> int:
    return _status("VmRSS")


def _to_numpy(batch: pa.RecordBatch, classes: int) -> int:
    ids = batch.column("id").to_numpy()
    gold = batch.column("gold").to_numpy()
    logits = batch.column("logits").flatten().to_numpy().reshape(-1, classes)
    assert logits.dtype == np.float32 and len(ids) == len(gold) == len(logits)
    return len(ids)


def scan_dataset(files: list[Path], classes: int) -> int:
    """pyarrow.dataset over every file, threads on; each batch's columns into NumPy."""
    dataset = pds.dataset([str(f) for f in files], format="parquet")
    return sum(_to_numpy(b, classes) for b in dataset.to_batches(
        columns=["id", "gold", "logits"], use_threads=True))


def scan_read_table(files: list[Path], classes: int) -> int:
    """pq.read_table per epoch file, threads on; each batch's columns into NumPy."""
    rows = 0
    for path in files:
        loaded = pq.read_table(path, columns=["id", "gold", "logits"], use_threads=True)
        rows += sum(_to_numpy(b, classes) for b in loaded.to_batches())
    return rows


@dataclass
class Pass:
    seconds: float
    peak: int
    start: int  # RSS when the pass began
    rows: int = 0
    reading: float = 0.0  # alray: up to the last epoch's progress line


def timed_scan(scan, files: list[Path], classes: int) -> Pass:
    reset_peak_rss()
    before, started = rss(), time.perf_counter()
    rows = scan(files, classes)
    return Pass(time.perf_counter() - started, peak_rss(), before, rows)


def timed_cartography(folder: Path, out_dir: Path) -> Pass:
    """The whole alray call."""
    lines: list[float] = []
    reset_peak_rss()
    before, started = rss(), time.perf_counter()
    result = cartography(str(folder), str(out_dir),
                         progress=lambda line: lines.append(time.perf_counter()))
    seconds = time.perf_counter() - started
    return Pass(seconds, peak_rss(), before, result.counts["rows"] * result.counts["epochs"],
                lines[-1] - started)


SCANS = {"pyarrow dataset.to_batches": scan_dataset, "pyarrow read_table": scan_read_table}
ALRAY = "alray cartography"


def part_speed(out: Out, args) -> None:
    folder = synthetic_log(out, args.log_dir, args.rows, args.epochs, args.classes,
                           args.chunk_rows)
    files = sorted(folder.glob("dynamics_epoch_*.parquet"))
    size = sum(f.stat().st_size for f in files)
    out(f"\nspeed: {args.rows:,} rows x {len(files)} epochs x {args.classes} classes, "
        f"{size / 2**30:.2f} GiB of zstd parquet ({size / (args.rows * len(files)):.1f} bytes a "
        f"row-epoch); best of {args.repeats}, interleaved; peak RSS resettable: "
        f"{reset_peak_rss()}")
    runs: dict[str, list[Pass]] = {name: [] for name in SCANS}
    runs[ALRAY] = []
    with tempfile.TemporaryDirectory(prefix="bench-cartography-out-", dir=args.log_dir) as work:
        for _ in range(args.repeats):
            for name, scan in SCANS.items():
                runs[name].append(timed_scan(scan, files, args.classes))
            runs[ALRAY].append(timed_cartography(folder, Path(work) / "out"))
        stats_size = (Path(work) / "out" / "statistics.parquet").stat().st_size
        job = json.loads((Path(work) / "out" / "job.json").read_text())
        report_speed(out, runs, args.rows * len(files), stats_size, job)
        if args.profile:
            profile_cartography(out, folder, Path(work))


def report_speed(out: Out, runs: dict[str, list[Pass]], total: int, stats_size: int,
                 job: dict) -> None:
    best = {name: min(passes, key=lambda p: p.seconds) for name, passes in runs.items()}
    baseline_name = min(SCANS, key=lambda n: best[n].seconds)
    baseline = best[baseline_name].seconds
    rows = [[name, f"{p.seconds:.2f}", f"{total / p.seconds / 1e6:.2f}",
             f"{p.seconds / baseline:.2f}", f"{p.peak / 2**20:,.0f}",
             f"{(p.peak - p.start) / 2**20:,.0f}"] for name, p in best.items()]
    table(out, ["pass", "seconds", "M row-epochs/s", "x baseline", "peak RSS MiB",
                "above start"], rows, [28, 8, 14, 10, 12, 11])
    out(f"baseline: {baseline_name}")
    for name, mine in best.items():
        if name in SCANS:
            continue
        out(f"{name}: alray / pyarrow time = {mine.seconds / baseline:.2f}; reading the log "
            f"into statistics {mine.reading:.2f} s ({mine.reading / baseline:.2f}x the "
            f"baseline), the rest (regions, statistics.parquet {stats_size / 2**20:,.0f} MiB, "
            f"data map, {job['counts']['selected']:,}-row selection, job.json) "
            f"{mine.seconds - mine.reading:.2f} s")
    out("all passes (seconds): " + "; ".join(
        f"{name} " + ", ".join(f"{p.seconds:.2f}" for p in passes)
        for name, passes in runs.items()))


def profile_cartography(out: Out, folder: Path, work: Path, top: int = 15) -> None:
    """One more alray pass, untimed, under cProfile: the functions that take the most time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    cartography(str(folder), str(work / "profiled"))
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "function calls" in line)
    out("profile of one more alray pass (cProfile, by own time; paths shortened):")
    for line in lines[start:]:
        out("  " + line.replace(str(HERE.parent) + "/", "").replace(
            str(Path(sys.prefix)) + "/lib/python3.11/site-packages/", ""))


# ----------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="scikit-learn datasets (load_NAME), comma-separated")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the speed log")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the speed log")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000,
                        help="rows generated at a time when writing the log")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/alray-bench-cartography"),
                        help="where the synthetic log is kept for reruns")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each speed pass, interleaved; the fastest counts")
    parser.add_argument("--profile", action="store_true",
                        help="speed: also profile one more alray pass (untimed)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_cartography.txt")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    out, started, walls = Out(), time.perf_counter(), {}
    header(out)
    for part in parts:
        tick = time.perf_counter()
        {"quality": part_quality, "speed": part_speed}[part](out, args)
        walls[part] = time.perf_counter() - tick
        out(f"[{part}: {walls[part]:.0f} s wall]")
    out(f"\nwall time: {time.perf_counter() - started:.0f} s in all ("
        + ", ".join(f"{p} {s:.0f} s" for p, s in walls.items()) + ")")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out.lines) + "\n")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
