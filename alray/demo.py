"""``alray demo``: the main job, end to end, on scikit-learn's handwritten digits.

Trains a linear head on a few labeled digits, writes the rest as a parquet pool, runs the job on a
local Ray twice (the top-k by entropy, then a diversity method over the same scores) and prints
what a user wants to see: the selection, and how the two batches differ in class mix and
near-copies. Fixed seed: the same selections every time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from alray.errors import ConfigError

__all__ = ["run_demo", "write_digits_pool", "train_head"]

SEED = 0
LABELED_PER_CLASS = 3
SHARDS = 4
#: The diversity method the demo sets beside top-k.
DIVERSE = "badge"
_MARKER = ".alray-demo"

JOB_YAML = """\
# Written by `alray demo`: a linear head over 8x8 digit images, 4 parquet shards.
name: digits-demo
pool:
  uri: ./pool/
  id_column: id
  feature_column: pixels
  carry: [label]            # the true digit, carried only so the demo can show the class mix
model:
  kind: linear
  path: ./head.safetensors
scoring:
  strategy: entropy
selection:
  k: {k}
  method: topk              # try: --set selection.method={diverse}
output:
  uri: ./output
resources:
  on_error: fail
"""


SIM_YAML = f"""\
# Written by `alray demo`: does a method beat random on digits? Each round trains a logistic
# head on the labels so far, runs the real job over the unlabeled rows and reveals the batch.
dataset: digits
learner: logistic
initial: 20
batch: 20
rounds: 9
repeats: 3
strategies:
  - {{name: entropy, scoring: {{strategy: entropy}}}}
  - {{name: {DIVERSE}, scoring: {{strategy: entropy}}, selection: {{method: {DIVERSE}}}}}
"""


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("demo", "needs scikit-learn for its data; pip install 'alray[demo]'") from None
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def train_head(x: np.ndarray, y: np.ndarray, classes: int, seed: int = SEED,
               l2: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by L-BFGS, loss ``mean cross-entropy + l2 * |W|^2``:
    ``weight [C, D]``, ``bias [C]``."""
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=gen)
        layer.bias.zero_()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()


def write_digits_pool(folder: Path, x: np.ndarray, y: np.ndarray, ids: np.ndarray,
                      shards: int = SHARDS) -> None:
    """Write rows as ``shards`` parquet files: ``id``, ``pixels`` (fixed_size_list<float32>[64]),
    ``label``."""
    folder.mkdir(parents=True, exist_ok=True)
    width = x.shape[1]
    for i, part in enumerate(np.array_split(np.arange(len(ids)), shards)):
        pixels = pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), width)
        table = pa.table({"id": ids[part], "pixels": pixels, "label": y[part]})
        pq.write_table(table, folder / f"digits-{i:02d}.parquet")


def _prepare(out: Path) -> None:
    if out.exists():
        if not (out / _MARKER).exists() and any(out.iterdir()):
            raise ConfigError("--out", f"{str(out)!r} exists and was not made by `alray demo`; "
                                       "choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).touch()


def _build(out: Path, k: int) -> Path:
    from safetensors.numpy import save_file

    x, y = _digits()
    rng = np.random.default_rng(SEED)
    labeled = np.concatenate([rng.choice(np.flatnonzero(y == c), LABELED_PER_CLASS, replace=False)
                              for c in range(10)])
    pool = np.setdiff1d(np.arange(len(y)), labeled)
    weight, bias = train_head(x[labeled], y[labeled], classes=10)
    save_file({"weight": weight, "bias": bias}, str(out / "head.safetensors"))
    write_digits_pool(out / "pool", x[pool], y[pool], ids=pool.astype(np.int64))
    spec_path = out / "job.yaml"
    spec_path.write_text(JOB_YAML.format(k=k, diverse=DIVERSE))
    return spec_path


def _class_mix(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10) / max(len(labels), 1)


def _near_copies(pixels: np.ndarray, threshold: float) -> int:
    """Selected rows that have another selected row closer than ``threshold`` (Euclidean)."""
    d = np.sqrt(((pixels[:, None, :] - pixels[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return int((d.min(1) < threshold).sum())


def _copy_threshold(pool_pixels: np.ndarray) -> float:
    """What counts as a near-copy: the 1st percentile of distances between random pool rows."""
    rng = np.random.default_rng(SEED)
    a, b = rng.integers(0, len(pool_pixels), (2, 20_000))
    return float(np.percentile(np.sqrt(((pool_pixels[a] - pool_pixels[b]) ** 2).sum(1)), 1))


def _comparison(pool: dict, batches: dict) -> list[str]:
    """Class mix, classes covered, near-copies and the head's accuracy, per batch."""
    threshold = _copy_threshold(pool["pixels"])
    lines = ["class mix        " + " ".join(f"{c:>5}" for c in range(10))
             + "  classes  near-copies  head right",
             "  pool         " + " ".join(f"{v:5.1%}" for v in _class_mix(pool["label"]))]
    for name, selection in batches.items():
        labels = selection.column("label").to_numpy()
        rows = np.searchsorted(pool["id"], selection.column("id").to_numpy())
        right = np.mean(selection.column("predicted").to_numpy() == labels)
        lines.append(f"  {name:<12} " + " ".join(f"{v:5.1%}" for v in _class_mix(labels))
                     + f"  {len(set(labels.tolist())):>7}  "
                     f"{_near_copies(pool['pixels'][rows], threshold):>11}  {right:>10.1%}")
    lines.append(f"  (near-copies: selected rows with another selected row closer than "
                 f"{threshold:.2f}, the 1st percentile of distances between pool rows)")
    return lines


def _report(result, diverse, pool: dict, pool_predicted: np.ndarray, seconds: float,
            labeled: int, out: Path) -> str:
    counts, selection = result.counts, result.selection
    sel_labels = selection.column("label").to_numpy()
    sel_predicted = selection.column("predicted").to_numpy()
    head = selection.slice(0, 10).to_pylist()
    lines = [
        f"alray demo: scikit-learn digits; a linear head trained on {labeled} labeled digits "
        f"scores the other {counts['rows_in']:,}",
        f"scored {counts['rows_scored']:,} rows in {counts['shards']} shards on "
        f"{len(result.job['actors'])} actors: {result.rows_per_second:,.0f} rows/s in the job, "
        f"{seconds:.1f} s including Ray start-up",
        "",
        f"top 10 of {selection.num_rows} selected (entropy, higher = less sure):",
        "  rank     id   score  predicted  true",
        *(f"  {r['rank']:>4} {r['id']:>6}  {r['score']:.3f}  {r['predicted']:>9}  {r['label']:>4}"
          for r in head),
        "",
        f"head accuracy: {np.mean(pool_predicted == pool['label']):.1%} on the pool, "
        f"{np.mean(sel_predicted == sel_labels):.1%} on the selection: the selected rows are "
        "where the model is wrong, worth a label",
        "",
        f"the same pool, the same scores, two ways to choose {selection.num_rows} rows:",
        *_comparison(pool, {"topk": selection, DIVERSE: diverse.selection}),
        f"top-k takes the rows the head is least sure of, many of them near-copies from a few "
        f"confusable classes; {DIVERSE} takes uncertain rows unlike each other",
        "",
        f"outputs: {result.paths['selection']}, {diverse.paths['selection']}",
        f"does it pay? simulate labeling rounds on this data: alray simulate "
        f"{out / 'digits.sim.yaml'} --out {out / 'simulate'}",
    ]
    return "\n".join(lines)


def _pool_predictions(output_uri: str) -> np.ndarray:
    from alray.output.folder import OutputFolder

    scores = pq.read_table(OutputFolder(output_uri).path(OutputFolder.SCORES),
                           columns=["id", "predicted"])
    return scores.sort_by("id")


def run_demo(out: str | Path = "alray-demo", k: int = 50) -> "object":
    """Build the digits pool under ``out``, run the job and print the summary; returns the Result."""
    from alray.config import JobSpec
    from alray.runtime.driver import run

    import ray

    started = time.perf_counter()
    out = Path(out).resolve()
    _prepare(out)
    spec_path = _build(out, k)
    (out / "digits.sim.yaml").write_text(SIM_YAML)
    ours = not ray.is_initialized()
    if ours:  # one Ray for both jobs
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        result = run(JobSpec.from_yaml(spec_path))
        diverse = run(JobSpec.from_yaml(spec_path, overrides={
            "selection.method": DIVERSE, "output.uri": "./output-" + DIVERSE}))
    finally:
        if ours:
            ray.shutdown()
    table = pq.read_table(out / "pool", columns=["id", "label", "pixels"]).sort_by("id")
    pool = {"id": table.column("id").to_numpy(), "label": table.column("label").to_numpy(),
            "pixels": np.stack(table.column("pixels").to_numpy(zero_copy_only=False))}
    predicted = _pool_predictions(result.output_uri)
    print(_report(result, diverse, pool, predicted.column("predicted").to_numpy(),
                  time.perf_counter() - started, labeled=10 * LABELED_PER_CLASS, out=out))
    return result


