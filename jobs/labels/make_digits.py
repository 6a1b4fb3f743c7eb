"""A labeled set with wrong labels in it, for the README's "Which labels are wrong": scikit-learn's
1,797 handwritten digits with 10% of the labels replaced by another class on purpose (seed 0).

Writes, under jobs/labels/:
  dynamics/             the training log of a small MLP trained for 20 epochs on the given labels
                        (alray.cartography.DynamicsLogger, one parquet file per epoch)
  pool/                 the digits as a parquet pool: id, embedding (the 64 pixels), label (the
                        given one, class names), fold (0..4), text (what an annotator sees)
  folds/<i>.safetensors a linear head per fold, each trained without its fold (out-of-fold
                        scoring for confident learning)
  flipped.json          the ids whose label was flipped, and their true class: the answer key
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

from alray.cartography import DynamicsLogger
from alray.demo import train_head

HERE = Path(__file__).resolve().parent
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FLIP_SHARE, FOLDS, EPOCHS, SEED = 0.10, 5, 20, 0


def flipped_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x [N, 64]`` in [0, 1], true classes, given classes, the flipped ids."""
    data = load_digits()
    x, truth = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    flipped = np.sort(rng.choice(len(truth), int(FLIP_SHARE * len(truth)), replace=False))
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return x, truth, given, flipped


def train_logging_dynamics(x: np.ndarray, given: np.ndarray, log: Path) -> None:
    """A 64-128-10 MLP, Adam, batches of 32: each batch's logits go to the log as it trains."""
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    logger = DynamicsLogger(str(log))
    xt, yt = torch.from_numpy(x), torch.from_numpy(given)
    order = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x), generator=order).split(32):
            logits = model(xt[batch])
            loss = torch.nn.functional.cross_entropy(logits, yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            logger.log(batch, logits, yt[batch])
        logger.end_epoch()


def write_pool(x: np.ndarray, given: np.ndarray, folds: np.ndarray) -> None:
    (HERE / "pool").mkdir(exist_ok=True)
    ids = np.arange(len(x))
    table = pa.table({
        "id": ids,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
        "label": pa.array([CLASSES[c] for c in given]),
        "fold": pa.array(folds),
        "text": pa.array([f"digit #{i}" for i in ids])})
    for part, rows in enumerate(np.array_split(ids, 2)):
        pq.write_table(table.take(pa.array(rows)), HERE / "pool" / f"digits-{part}.parquet")


def main() -> None:
    x, truth, given, flipped = flipped_digits()
    train_logging_dynamics(x, given, HERE / "dynamics")
    folds = np.random.default_rng(SEED + 1).permutation(np.arange(len(x)) % FOLDS)
    write_pool(x, given, folds)
    (HERE / "folds").mkdir(exist_ok=True)
    for fold in range(FOLDS):
        weight, bias = train_head(x[folds != fold], given[folds != fold], 10)
        save_file({"weight": weight, "bias": bias}, str(HERE / "folds" / f"{fold}.safetensors"))
    answer = {int(i): CLASSES[truth[i]] for i in flipped}
    (HERE / "flipped.json").write_text(json.dumps(answer, indent=0) + "\n")
    print(f"{len(x):,} digits, {len(flipped)} labels flipped; log of {EPOCHS} epochs in "
          f"{HERE / 'dynamics'}, pool in {HERE / 'pool'}, {FOLDS} fold heads in {HERE / 'folds'}")


if __name__ == "__main__":
    main()
